"""Phase-1a text augmentation: vary each training text so that short shopper queries match too.

Training captions are whole product titles ("Mark Taylor Men Striped Blue Shirt"); shoppers type
"blue shirt". Per example and per step, with the probabilities of ``data.augment``:

1. ``other_field``: the description trains in place of the caption (or the reverse);
2. ``attribute_captions``: the text becomes a phrase of the item's noun (its type) and a random
   subset of its other attributes, each kept with probability 1/2 ("blue shirt", "men's shirt");
3. ``word_dropout``: each word is dropped with this probability (one always stays);
4. ``paraphrase``: the text is wrapped in one of ``PARAPHRASES``.

Every draw comes from the stage's ``torch.Generator``, so the texts of a batch are a pure function
of its items and the generator state: a resumed run sees the same texts. An option at 0 draws
nothing, so a recipe without augmentation consumes the generator exactly as before.
"""

import torch

from unifashion_core.config import DataConfig
from unifashion_core.data.attribute_text import NOUN_FIELDS, attribute_phrase, phrase_fields
from unifashion_core.data.manifest import Item

# How a shopper might ask; kept apart from the phrasings `bench queries` tests with.
PARAPHRASES = ("i want {}", "find me {}", "searching for {}", "{}, thanks", "need {}", "any {}?", "shop {}")
OTHER_FIELD = {"caption": "description", "description": "caption"}


def _chance(probability: float, generator: torch.Generator) -> bool:
    """True with ``probability``; draws nothing when it is 0."""
    return probability > 0 and float(torch.rand((), generator=generator)) < probability


def _choice(count: int, generator: torch.Generator) -> int:
    return int(torch.randint(count, (), generator=generator))


def _attribute_caption(item: Item, generator: torch.Generator) -> str | None:
    """A phrase of the item's noun and a random subset of its other attributes (None: no attributes)."""
    fields = phrase_fields(item.attributes)
    if not fields:
        return None
    keep = (torch.rand(len(fields), generator=generator) < 0.5) | torch.tensor([f in NOUN_FIELDS for f in fields])
    if not keep.any():
        keep[_choice(len(fields), generator)] = True
    return attribute_phrase(item.attributes, [name for name, kept in zip(fields, keep.tolist(), strict=True) if kept])


def _drop_words(text: str, probability: float, generator: torch.Generator) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    keep = torch.rand(len(words), generator=generator) >= probability  # (W,)
    if not keep.any():
        keep[_choice(len(words), generator)] = True
    return " ".join(word for word, kept in zip(words, keep.tolist(), strict=True) if kept)


def augment_text(item: Item, data: DataConfig, generator: torch.Generator) -> str:
    """One training text for ``item``: its ``data.caption_field`` text, varied as ``data.augment`` says."""
    augment = data.augment
    field = OTHER_FIELD[data.caption_field] if _chance(augment.other_field, generator) else data.caption_field
    text = item.text(field)
    if _chance(augment.attribute_captions, generator):
        text = _attribute_caption(item, generator) or text
    if augment.word_dropout > 0:
        text = _drop_words(text, augment.word_dropout, generator)
    if _chance(augment.paraphrase, generator):
        text = PARAPHRASES[_choice(len(PARAPHRASES), generator)].format(text)
    return text


def augment_texts(items: list[Item], data: DataConfig, generator: torch.Generator) -> list[str]:
    """Training texts of a batch's ``items``, in order (see :func:`augment_text`)."""
    return [augment_text(item, data, generator) for item in items]
