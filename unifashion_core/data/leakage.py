"""Leakage checks on a prepared dataset: what of the evaluation splits the training data can see.

The released UniFashion code has two such pitfalls (docs/design.md, section 7): gallery captions
generated with the validation queries in the prompt, and validation images used in pre-training.
``check_leakage`` looks for both on every pair of splits (train/val, train/test, val/test: Fashion-IQ
evaluates on ``val``, most others on ``test``), and for triplets that point into another split.
Each section has a ``count`` and a few ``examples``.
"""

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from unifashion_core.data.manifest import SPLITS, Dataset, Item, Triplet
from unifashion_core.fileio import sha256_file

EVAL_SPLITS = ("val", "test")
Queries = dict[tuple[str, ...], tuple[str, str]]  # query words -> (triplet id, raw text)


def check_leakage(dataset: Dataset, min_query_words: int = 3, max_examples: int = 20) -> dict[str, Any]:
    """Look for evaluation data that leaks into training data or gallery captions.

    Per pair of splits ``"a/b"`` (``train/val``, ``train/test``, ``val/test``), each
    ``{"count": n, "examples": [...]}``:

    - ``duplicate_images``: items of ``a`` whose image bytes (SHA-256) equal an image of ``b``.
    - ``shared_ids``, ``shared_images``, ``shared_products``: item ids, image paths and
      ``attributes["product_id"]`` found in both splits.
    - ``captions_mentioning_queries``: items of ``a`` whose caption, description or reference
      contains a query text of ``b`` (a triplet's ``text`` or one of its ``texts``), verbatim or
      after lowercasing and dropping punctuation, as whole words; queries shorter than
      ``min_query_words`` words are ignored (too common).

    Besides: ``gallery_captions_mentioning_queries`` per evaluation split (its own items mentioning
    its own queries), ``triplets_crossing_splits`` (reference or target an item of another split),
    ``triplets_without_items`` (reference or target an id with no item, e.g. a missing image: not
    leakage, reported apart) and ``missing_files`` (images that could not be hashed).

    Args:
        dataset: a prepared dataset (``load_dataset``).
        min_query_words: shortest query text (in words) searched for in captions.
        max_examples: examples kept per section.

    Returns:
        The report, with ``clean`` True when no leakage was found and a one-line ``summary``.
    """
    digests = _image_digests(dataset)
    queries = {split: _queries(dataset.split_triplets(split), min_query_words) for split in EVAL_SPLITS}
    pairs = {
        f"{a}/{b}": _pair_sections(dataset.split(a), dataset.split(b), digests, queries[b])
        for a, b in itertools.combinations(SPLITS, 2)
    }
    gallery = {split: _caption_mentions(dataset.split(split), queries[split]) for split in EVAL_SPLITS}
    crossing, without_items = _triplet_sections(dataset)
    report = {
        "splits": {split: len(dataset.split(split)) for split in SPLITS},
        "pairs": pairs,
        "gallery_captions_mentioning_queries": gallery,
        "triplets_crossing_splits": crossing,
        "triplets_without_items": without_items,
        "missing_files": sum(value is None for value in digests.values()),
    }
    for section in _sections(report):
        section["examples"] = section["examples"][:max_examples]
    return {**report, **_verdict(report)}


def _sections(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ``{"count", "examples"}`` section of the report."""
    sections = [section for pair in report["pairs"].values() for section in pair.values()]
    sections += report["gallery_captions_mentioning_queries"].values()
    return [*sections, report["triplets_crossing_splits"], report["triplets_without_items"]]


def _verdict(report: dict[str, Any]) -> dict[str, Any]:
    found = [
        f"{pair} {key.replace('_', ' ')}: {section['count']}"
        for pair, sections in report["pairs"].items()
        for key, section in sections.items()
        if section["count"]
    ]
    found += [
        f"{split} gallery captions mentioning its queries: {section['count']}"
        for split, section in report["gallery_captions_mentioning_queries"].items()
        if section["count"]
    ]
    if count := report["triplets_crossing_splits"]["count"]:
        found.append(f"triplets crossing splits: {count}")
    summary = "; ".join(found) if found else "no leakage between train, val and test found"
    if count := report["triplets_without_items"]["count"]:
        summary += f" ({count} triplets name ids without an item, e.g. missing images: not leakage)"
    return {"clean": not found, "summary": summary}


def _image_digests(dataset: Dataset) -> dict[str, str | None]:
    """Image path -> SHA-256 of its bytes (None when the file is not there)."""
    digests: dict[str, str | None] = {}
    for item in dataset.items:
        if item.image not in digests:
            path = dataset.image_path(item)
            digests[item.image] = sha256_file(path) if path.is_file() else None
    return digests


def _pair_sections(
    first: list[Item], second: list[Item], digests: dict[str, str | None], queries: Queries
) -> dict[str, dict[str, Any]]:
    return {
        "duplicate_images": _duplicate_images(first, second, digests),
        "shared_ids": _shared(first, second, lambda item: item.id),
        "shared_images": _shared(first, second, lambda item: item.image),
        "shared_products": _shared(first, second, lambda item: str(item.attributes.get("product_id", ""))),
        "captions_mentioning_queries": _caption_mentions(first, queries),
    }


def _duplicate_images(first: list[Item], second: list[Item], digests: dict[str, str | None]) -> dict[str, Any]:
    second_by_digest: dict[str, str] = {}
    for item in second:
        if (value := digests[item.image]) is not None:
            second_by_digest.setdefault(value, item.id)
    examples = [
        {"id": item.id, "other_id": second_by_digest[value], "sha256": value}
        for item in first
        if (value := digests[item.image]) is not None and value in second_by_digest
    ]
    return {"count": len(examples), "examples": examples}


def _shared(first: list[Item], second: list[Item], key: Callable[[Item], str]) -> dict[str, Any]:
    in_second = {value for item in second if (value := key(item))}
    shared = sorted({value for item in first if (value := key(item)) in in_second})
    return {"count": len(shared), "examples": shared}


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def _queries(triplets: Iterable[Triplet], min_query_words: int) -> Queries:
    queries: Queries = {}
    for triplet in triplets:
        for text in (triplet.text, *triplet.texts):
            if len(words := _words(text)) >= max(min_query_words, 1):
                queries.setdefault(words, (triplet.id, text))
    return queries


def _caption_mentions(items: list[Item], queries: Queries) -> dict[str, Any]:
    lengths = sorted({len(words) for words in queries})
    examples = [
        {"item_id": item.id, "split": item.split, "field": field, "triplet_id": triplet_id,
         "query": query, "match": "verbatim" if query.strip() in text else "normalised"}
        for item in items
        for field, text in _item_texts(item)
        for triplet_id, query in _mentions(_words(text), queries, lengths)
    ]  # fmt: skip
    num_items = len({example["item_id"] for example in examples})
    return {"count": num_items, "num_matches": len(examples), "examples": examples}


def _mentions(words: tuple[str, ...], queries: Queries, lengths: list[int]) -> list[tuple[str, str]]:
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


def _triplet_sections(dataset: Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Triplets pointing at an item of another split, and triplets naming ids without an item."""
    split_of = {item.id: item.split for item in dataset.items}
    crossing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    without: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for triplet in dataset.triplets:
        for role, item_id in (("reference", triplet.reference), ("target", triplet.target)):
            example = {"triplet_id": triplet.id, "split": triplet.split, "role": role, "item_id": item_id}
            if item_id and item_id not in split_of:
                without[triplet.id].append(example)
            elif item_id and split_of[item_id] != triplet.split:
                crossing[triplet.id].append({**example, "item_split": split_of[item_id]})
    by_role = {role: sum(e["role"] == role for found in without.values() for e in found)
               for role in ("reference", "target")}  # fmt: skip
    return (
        {"count": len(crossing), "examples": [e for found in crossing.values() for e in found]},
        {"count": len(without), "by_role": by_role, "examples": [e for found in without.values() for e in found]},
    )
