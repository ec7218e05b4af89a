"""Leakage checks on a prepared dataset: what of the evaluation split the training data can see.

The released UniFashion code has two such pitfalls (DESIGN.md, section 7): gallery captions
generated with the validation queries in the prompt, and validation images used in pre-training.
``check_leakage`` looks for both, and for ids, images or products shared by several splits and
triplets that point outside their own split. Each section has a ``count`` and a few ``examples``.
"""

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from unifashion_core.data.manifest import Dataset, Item, check_split
from unifashion_core.errors import UserError
from unifashion_core.fileio import sha256_file


def check_leakage(
    dataset: Dataset, eval_split: str = "test", min_query_words: int = 3, max_examples: int = 20
) -> dict[str, Any]:
    """Look for evaluation data that leaks into training data or gallery captions.

    Sections of the report (each ``{"count": n, "examples": [...]}``):

    - ``duplicate_images``: training items whose image bytes (SHA-256) equal an evaluation
      item's image; ``missing_files`` counts images that could not be hashed.
    - ``ids_in_several_splits``, ``images_in_several_splits``, ``products_in_several_splits``:
      item ids, image paths and ``attributes["product_id"]`` found in more than one split.
    - ``captions_mentioning_queries``: items (any split: training captions and gallery captions)
      whose caption, description or reference contains an evaluation query text (a triplet's
      ``text`` or one of its ``texts``), verbatim or after lowercasing and dropping punctuation,
      as whole words; queries shorter than ``min_query_words`` words are ignored (too common).
    - ``triplets_crossing_splits``: triplets whose reference or target is an item of another
      split, or no item at all.

    Args:
        dataset: a prepared dataset (``load_dataset``).
        eval_split: the split held out for evaluation (``val`` or ``test``).
        min_query_words: shortest query text (in words) searched for in captions.
        max_examples: examples kept per section.

    Returns:
        The report, with ``clean`` True when every count is 0 and a one-line ``summary``.

    Raises:
        UserError: an unknown split, or ``train`` as the evaluation split.
    """
    check_split(eval_split)
    if eval_split == "train":
        raise UserError("the evaluation split of a leakage check must be val or test, not train.")
    sections = {
        "duplicate_images": _duplicate_images(dataset, eval_split),
        "ids_in_several_splits": _shared_across_splits(dataset.items, lambda item: item.id),
        "images_in_several_splits": _shared_across_splits(dataset.items, lambda item: item.image),
        "products_in_several_splits": _shared_across_splits(
            dataset.items, lambda item: str(item.attributes.get("product_id", ""))
        ),
        "captions_mentioning_queries": _caption_mentions(dataset, eval_split, min_query_words),
        "triplets_crossing_splits": _triplets_crossing_splits(dataset),
    }
    for section in sections.values():
        section["examples"] = section["examples"][:max_examples]
    found = [
        f"{key.replace('_', ' ')}: {section['count']}"
        for key, section in sections.items()
        if section["count"]
    ]
    summary = "; ".join(found) if found else f"no leakage into the {eval_split} split found"
    return {"eval_split": eval_split, "clean": not found, "summary": summary, **sections}


def _duplicate_images(dataset: Dataset, eval_split: str) -> dict[str, Any]:
    digests: dict[str, str | None] = {}  # image path -> SHA-256 (None when unreadable)

    def digest(item: Item) -> str | None:
        if item.image not in digests:
            path = dataset.image_path(item)
            digests[item.image] = sha256_file(path) if path.is_file() else None
        return digests[item.image]

    eval_by_digest: dict[str, str] = {}
    for item in dataset.split(eval_split):
        if (value := digest(item)) is not None:
            eval_by_digest.setdefault(value, item.id)
    examples = [
        {"train_id": item.id, "eval_id": eval_by_digest[value], "sha256": value}
        for item in dataset.split("train")
        if (value := digest(item)) is not None and value in eval_by_digest
    ]
    missing = sum(value is None for value in digests.values())
    return {"count": len(examples), "missing_files": missing, "examples": examples}


def _shared_across_splits(items: Iterable[Item], key: Callable[[Item], str]) -> dict[str, Any]:
    splits: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if value := key(item):
            splits[value].add(item.split)
    examples = [
        {"key": value, "splits": sorted(found)} for value, found in splits.items() if len(found) > 1
    ]
    return {"count": len(examples), "examples": examples}


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def _caption_mentions(dataset: Dataset, eval_split: str, min_query_words: int) -> dict[str, Any]:
    queries: dict[tuple[str, ...], tuple[str, str]] = {}  # words -> (triplet id, raw text)
    for triplet in dataset.split_triplets(eval_split):
        for text in (triplet.text, *triplet.texts):
            if len(words := _words(text)) >= max(min_query_words, 1):
                queries.setdefault(words, (triplet.id, text))
    lengths = sorted({len(words) for words in queries})
    examples = [
        {"item_id": item.id, "split": item.split, "field": field, "triplet_id": triplet_id,
         "query": query, "match": "verbatim" if query.strip() in text else "normalised"}
        for item in dataset.items
        for field, text in _item_texts(item)
        for triplet_id, query in _mentions(_words(text), queries, lengths)
    ]  # fmt: skip
    num_items = len({example["item_id"] for example in examples})
    return {"count": num_items, "num_matches": len(examples), "examples": examples}


def _mentions(
    words: tuple[str, ...], queries: dict[tuple[str, ...], tuple[str, str]], lengths: list[int]
) -> list[tuple[str, str]]:
    """The queries (of the given word counts) occurring as a run of ``words``, each once."""
    found: dict[tuple[str, str], None] = {}
    for n in lengths:
        for start in range(len(words) - n + 1):
            if (hit := queries.get(words[start : start + n])) is not None:
                found[hit] = None
    return list(found)


def _item_texts(item: Item) -> list[tuple[str, str]]:
    texts = [("caption", item.caption), ("description", item.description)]
    texts += [(f"references[{i}]", text) for i, text in enumerate(item.references)]
    return [(field, text) for field, text in texts if text]


def _triplets_crossing_splits(dataset: Dataset) -> dict[str, Any]:
    split_of = {item.id: item.split for item in dataset.items}
    examples, crossing = [], set()
    for triplet in dataset.triplets:
        for role, item_id in (("reference", triplet.reference), ("target", triplet.target)):
            if item_id and split_of.get(item_id) != triplet.split:
                crossing.add(triplet.id)
                examples.append(
                    {"triplet_id": triplet.id, "split": triplet.split, "role": role,
                     "item_id": item_id, "item_split": split_of.get(item_id)}
                )  # fmt: skip
    return {"count": len(crossing), "examples": examples}
