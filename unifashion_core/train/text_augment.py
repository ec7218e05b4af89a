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

A short text fits more than its own item ("blue dress" fits every blue dress in the batch), so
:func:`augment_batch` also says which items each text describes; the contrastive and matching
losses then treat those pairs as positives, not as negatives.

In-batch negatives rarely differ from an item in colour alone (a batch of 32 seldom holds two
items that share everything else), so a contrastive model can rank full captions well while
hardly reading the colour, and "red dress" then returns green ones. :func:`swap_negatives` adds
the missing negatives, as NegCLIP (Yuksekgonul et al., ICLR 2023) does for word order: a copy of
the text with one attribute value replaced by another value of the same field.
"""

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unifashion_core.config import DataConfig
from unifashion_core.data.attribute_text import NOUN_FIELDS, attribute_fields, attribute_phrase, phrase_fields
from unifashion_core.data.manifest import Item
from unifashion_core.errors import UserError

# How a shopper might ask; kept apart from the phrasings `bench queries` tests with.
PARAPHRASES = ("i want {}", "find me {}", "searching for {}", "{}, thanks", "need {}", "any {}?", "shop {}")
OTHER_FIELD = {"caption": "description", "description": "caption"}


def _chance(probability: float, generator: torch.Generator) -> bool:
    """True with ``probability``; draws nothing when it is 0."""
    return probability > 0 and float(torch.rand((), generator=generator)) < probability


def _choice(count: int, generator: torch.Generator) -> int:
    return int(torch.randint(count, (), generator=generator))


@dataclass(frozen=True)
class TrainingText:
    """One training text and, for a phrase of attributes, the values it names (else None)."""

    text: str
    named: Mapping[str, Any] | None = None

    def describes(self, item: Item) -> bool:
        """Whether the text fits ``item`` (an attribute phrase: the item has every value it names)."""
        return self.named is not None and all(item.attributes.get(k) == v for k, v in self.named.items())


def _attribute_caption(item: Item, generator: torch.Generator) -> TrainingText | None:
    """A phrase of the item's noun and a random subset of its other attributes (None: no attributes)."""
    fields = phrase_fields(item.attributes)
    if not fields:
        return None
    keep = (torch.rand(len(fields), generator=generator) < 0.5) | torch.tensor([f in NOUN_FIELDS for f in fields])
    if not keep.any():
        keep[_choice(len(fields), generator)] = True
    named = {name: item.attributes[name] for name, kept in zip(fields, keep.tolist(), strict=True) if kept}
    return TrainingText(attribute_phrase(item.attributes, named), named)


def _drop_words(text: str, probability: float, generator: torch.Generator) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    keep = torch.rand(len(words), generator=generator) >= probability  # (W,)
    if not keep.any():
        keep[_choice(len(words), generator)] = True
    return " ".join(word for word, kept in zip(words, keep.tolist(), strict=True) if kept)


def augment_text(item: Item, data: DataConfig, generator: torch.Generator) -> TrainingText:
    """One training text for ``item``: its ``data.caption_field`` text, varied as ``data.augment`` says."""
    augment = data.augment
    field = OTHER_FIELD[data.caption_field] if _chance(augment.other_field, generator) else data.caption_field
    text = TrainingText(item.text(field))
    if _chance(augment.attribute_captions, generator):
        text = _attribute_caption(item, generator) or text
    words = _drop_words(text.text, augment.word_dropout, generator) if augment.word_dropout > 0 else text.text
    named = text.named if words == text.text else None  # a dropped word may have named a value
    if _chance(augment.paraphrase, generator):
        words = PARAPHRASES[_choice(len(PARAPHRASES), generator)].format(words)
    return TrainingText(words, named)


def augment_batch(items: list[Item], data: DataConfig, generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """Training texts of a batch's ``items`` and which items each describes.

    Returns:
        The B texts and ``(B, B)`` bool positives: ``[i, j]`` is True when text ``j`` is item ``i``'s
        own, is identical to item ``i``'s text, or is an attribute phrase whose every value item
        ``i`` has.
    """
    texts = [augment_text(item, data, generator) for item in items]
    positives = torch.tensor([[i == j or texts[i].text == text.text or text.describes(item)
                               for j, text in enumerate(texts)] for i, item in enumerate(items)])
    return [text.text for text in texts], positives


def attribute_vocabulary(
    items: list[Item], fields: Collection[str], option: str = "loss.swap_negatives",
    fields_key: str = "loss.swap_fields",
) -> dict[str, list[str]]:
    """The distinct values of each of ``fields`` among ``items`` (sorted; fields with < 2 left out),
    in the order of ``fields``.

    Raises:
        UserError: none of ``fields`` has two values (the message names ``option``, the recipe
            key that needs them, and ``fields_key``, the one that lists them, and the items' fields).
    """
    values = {name: sorted({str(item.attributes[name]) for item in items
                            if item.attributes.get(name) not in (None, "")}) for name in fields}
    vocabulary = {name: found for name, found in values.items() if len(found) > 1}
    if not vocabulary:
        raise UserError(f"{option} needs a field of {fields_key} ({', '.join(fields)}) with two or "
                        f"more values among the training items; their fields: "
                        f"{', '.join(attribute_fields(items)) or 'none'}.")
    return vocabulary


def _value_pattern(value: str) -> re.Pattern[str]:
    """``value`` as a whole word or phrase, any case ("blue" in "Men Blue Shirt", not in "bluebell")."""
    return re.compile(rf"(?<![\w-]){re.escape(value)}(?![\w-])", re.IGNORECASE)


def _cased(new: str, old: str) -> str:
    """``new`` in the case style of the text it replaces (lower, Title or as given)."""
    return new.lower() if old.islower() else (new.title() if old[:1].isupper() else new)


def swap_negatives(
    items: Sequence[Item], texts: Sequence[str], vocabulary: Mapping[str, Sequence[str]], probability: float,
    generator: torch.Generator,
) -> tuple[list[str], torch.Tensor]:
    """Hard negative texts: copies of the batch's texts with one attribute value swapped.

    With ``probability`` per item, one of the ``vocabulary`` fields whose value appears in the
    item's text (as a whole word, any case) is chosen and every occurrence replaced by another
    value of that field, drawn uniformly ("red striped dress" -> "teal striped dress"). An item
    whose text names none of the fields brings no negative.

    Returns:
        The K negative texts and ``(B, K)`` bool ``excluded``: ``[i, k]`` True when negative ``k``
        may still describe item ``i`` (item ``i`` has the swapped-in value and every other value of
        the source item that the text names), so it must not count as a negative for item ``i``.
    """
    negatives: list[TrainingText] = []
    for item, text in zip(items, texts, strict=True):
        if not _chance(probability, generator):
            continue
        present = [name for name in vocabulary if item.attributes.get(name) not in (None, "")
                   and _value_pattern(str(item.attributes[name])).search(text)]
        if not present:
            continue
        name = present[_choice(len(present), generator)]
        old = str(item.attributes[name])
        others = [value for value in vocabulary[name] if value.lower() != old.lower()]
        new = others[_choice(len(others), generator)]
        said = {key: value for key, value in item.attributes.items()
                if value not in (None, "") and _value_pattern(str(value)).search(text)}
        swapped = _value_pattern(old).sub(lambda match, new=new: _cased(new, match.group(0)), text)
        negatives.append(TrainingText(swapped, {**said, name: new}))
    excluded = torch.tensor([[negative.describes(item) for negative in negatives] for item in items],
                            dtype=torch.bool).reshape(len(items), len(negatives))
    return [negative.text for negative in negatives], excluded
