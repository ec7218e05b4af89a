"""`unifashion search`: text->image, image->text, image->image and composed (image + text) queries
against the live catalogue of a local index (retrieval/catalogue.py) or a Qdrant collection.

Composed queries use one of two scores (``COMPOSED_SCORES``): ``fused``, the Q-Former's fused
(image + text) embedding that phase 2 trains (plus gallery captions when indexed), or
``zero-shot``, a late fusion of image->image and text->image similarity that needs no composed
training (``metrics.cir.zero_shot_scores``). ``auto`` takes ``fused`` for a phase-2 checkpoint and
``zero-shot`` for any other.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unifashion_core.checkpoint import load_checkpoint, read_meta
from unifashion_core.data.images import as_image, load_user_image
from unifashion_core.errors import UserError
from unifashion_core.models.unifashion import UniFashion
from unifashion_core.retrieval.catalogue import Catalogue, CatalogueView
from unifashion_core.retrieval.index import CatalogueIndex, RetrievalIndex
from unifashion_core.retrieval.index import read_meta as read_index_meta
from unifashion_core.retrieval.payload import Filter, ItemRecord
from unifashion_core.retrieval.query_text import check_query_words, tokenizer_warnings

MODES = ("auto", "t2i", "i2t", "i2i", "cir")
COMPOSED_SCORES = ("auto", "fused", "zero-shot")
MAX_QUERY_CHARS = 2000  # longer user texts are truncated (with a warning from the caller)


def open_index(path: str | Path, expected_fingerprint: str | None = None) -> CatalogueIndex:
    """Open an index directory of either backend: an ``index.RetrievalIndex``, or a
    ``qdrant.QdrantIndex`` when the directory names a Qdrant collection. Both search alike.

    Raises:
        UserError: as :meth:`RetrievalIndex.load` (and an unreachable or foreign collection).
    """
    if read_index_meta(Path(path)).get("backend") == "qdrant":
        from unifashion_core.retrieval.qdrant import QdrantIndex

        return QdrantIndex.open(path, expected_fingerprint)
    return RetrievalIndex.load(path, expected_fingerprint)


@dataclass(frozen=True)
class SearchResult:
    """One ranked item: its id, score, caption, image path and filterable fields."""

    rank: int
    id: str
    score: float
    caption: str
    image: str
    fields: dict[str, str] = field(default_factory=dict)


def check_query(
    text: str | None, image: object | None, mode: str, names: tuple[str, str] = ("--text", "--image")
) -> tuple[str, list[str]]:
    """Validate the query; return the effective mode and warnings (e.g. a truncated text).

    ``names`` are how messages call the text and the image (the CLI's options by default).
    """
    text_name, image_name = names
    if mode not in MODES:
        raise UserError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}.")
    warnings = []
    if text is not None and not text.strip():
        raise UserError(f'the query text is empty; give some words, e.g. {text_name} "red striped shirt".')
    if text is not None:
        check_query_words(text)
    if text is not None and len(text) > MAX_QUERY_CHARS:
        warnings.append(f"query text truncated from {len(text)} to {MAX_QUERY_CHARS} characters")
    if text is None and image is None:
        raise UserError(f"give {text_name}, {image_name}, or both (composed retrieval).")
    if mode == "auto":
        mode = "cir" if text is not None and image is not None else ("t2i" if text is not None else "i2t")
    needs = {"t2i": (True, False), "i2t": (False, True), "i2i": (False, True), "cir": (True, True)}[mode]
    if needs != (text is not None, image is not None):
        wanted = " and ".join(name for name, needed in zip(names, needs, strict=True) if needed)
        raise UserError(f"mode {mode} takes {wanted}{'' if all(needs) else ' only'}.")
    return mode, warnings


def load_searcher(
    index_path: str | Path, checkpoint: str | Path | None
) -> tuple[UniFashion, CatalogueView | CatalogueIndex]:
    """Load the query model and the index: the live catalogue of a local index (its base and every
    change since), or a Qdrant collection.

    Raises:
        UserError: the index was built by a different model, or its checkpoint is gone.
    """
    loaded = load_checkpoint(checkpoint or index_checkpoint(index_path))
    if read_index_meta(Path(index_path)).get("backend") == "qdrant":
        return loaded.model, open_index(index_path, expected_fingerprint=loaded.fingerprint)
    return loaded.model, Catalogue.open(index_path, expected_fingerprint=loaded.fingerprint).snapshot()


def composed_score(requested: str, index_path: str | Path, checkpoint: str | Path | None) -> str:
    """:func:`composed_for` the query model (``checkpoint``, else the one that built the index).

    Raises:
        UserError: an unknown score name.
    """
    phase = read_meta(checkpoint or index_checkpoint(index_path)).get("phase", 1) if requested == "auto" else 1
    return composed_for(requested, phase)


def composed_for(requested: str, phase: int) -> str:
    """The composed score a search uses: ``requested``, or for ``auto`` the one a model of training
    ``phase`` has been trained for (``fused`` after phase 2, else ``zero-shot``), on either backend.

    Raises:
        UserError: an unknown score name.
    """
    if requested not in COMPOSED_SCORES:
        raise UserError(f"unknown composed score {requested!r}; choose one of {', '.join(COMPOSED_SCORES)}.")
    if requested != "auto":
        return requested
    return "fused" if phase == 2 else "zero-shot"


def zero_shot_weight(model: UniFashion, image_weight: float | None) -> float:
    """The zero-shot composed score's image weight: ``image_weight``, or the model's recipe's
    ``model.zero_shot_image_weight`` when None.

    Raises:
        UserError: a weight outside [0, 1].
    """
    weight = model.config.zero_shot_image_weight if image_weight is None else image_weight
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"the zero-shot image weight must be in [0, 1], got {weight}.")
    return weight


def index_checkpoint(index_path: str | Path) -> Path:
    """The checkpoint that built an index (recorded in its meta), which must still exist."""
    path = read_index_meta(Path(index_path)).get("checkpoint", "")
    if not path or not Path(path).exists():
        raise UserError(f"the checkpoint that built {index_path} is gone; pass --checkpoint.")
    return Path(path)


@dataclass(frozen=True)
class Query:
    """An embedded query, ready to rank.

    Attributes:
        mode: ``t2i``, ``i2t``, ``i2i`` or ``cir``.
        vectors: t2i ``(1, D)`` text embedding; i2t, i2i and zero-shot cir ``(1, Q, D)`` image
            query embeddings; fused cir ``(1, D)`` fused embedding.
        texts: zero-shot cir only: ``(1, D)`` embedding of the modification text.
    """

    mode: str
    vectors: np.ndarray
    texts: np.ndarray | None = None


def embed_query(model: UniFashion, mode: str, text: str | None, image: Image.Image | None,
                composed: str = "fused") -> Query:
    """Embed a checked query (see :func:`check_query`) with the model, for :func:`rank`."""
    from unifashion_core.models.vision import preprocess

    if mode == "t2i":
        return Query(mode, model.embed_texts([text]).numpy())
    tokens = model.image_tokens(preprocess([image], model.vision).to(model.device))  # (1, T, C)
    if mode == "cir" and composed == "fused":
        return Query(mode, model.embed_composed(tokens, [text]).numpy())
    if mode == "cir":
        return Query(mode, model.embed_images(tokens).numpy(), model.embed_texts([text]).numpy())
    return Query(mode, model.embed_images(tokens).numpy())


def search(
    model: UniFashion,
    index: CatalogueView | CatalogueIndex,
    text: str | None = None,
    image: str | Path | Image.Image | None = None,
    k: int = 10,
    mode: str = "auto",
    caption_weight: float = 1.0,
    use_captions: bool = True,
    composed: str = "fused",
    image_weight: float | None = None,
    filter: Filter | None = None,
) -> list[SearchResult]:
    """Run one query against a catalogue and return the top ``k`` items, best first.

    ``image`` is a path or an already decoded image.

    Args:
        composed: the composed (image + text) score: ``fused`` or ``zero-shot`` (see the module).
        image_weight: the zero-shot score's image weight, in [0, 1] (None: the model's
            ``zero_shot_image_weight``, which its recipe chose).
        filter: ``{field: value or [values]}`` on manifest fields (category, split, any attribute):
            the ranking is restricted to the items that match.
    """
    mode, _ = check_query(text, image, mode)
    if not 1 <= k <= index.num_items:
        raise UserError(f"-k must be between 1 and the number of indexed items ({index.num_items}), got {k}.")
    image_weight = zero_shot_weight(model, image_weight)
    if composed not in COMPOSED_SCORES[1:]:
        raise UserError(f"composed score {composed!r}: choose fused or zero-shot.")
    text = text[:MAX_QUERY_CHARS] if text is not None else None
    if text is not None:
        tokenizer_warnings(model.tokenizer, text)
    query = embed_query(model, mode, text, None if image is None else as_image(image), composed)
    return rank(index, query, k, caption_weight, use_captions, filter, image_weight)


def rank(
    index: CatalogueView | CatalogueIndex,
    query: Query,
    k: int,
    caption_weight: float = 1.0,
    use_captions: bool = True,
    filter: Filter | None = None,
    image_weight: float | None = None,
) -> list[SearchResult]:
    """The top ``k`` items of the catalogue for an embedded query, best first.

    ``image_weight``: the zero-shot composed score's image weight (needed for a zero-shot query;
    callers pass the model's ``config.zero_shot_image_weight`` unless told otherwise)."""
    if query.mode == "t2i":
        scores, rows = index.search_images(query.vectors, k, filter)
    elif query.mode == "i2t":
        scores, rows = index.search_texts(query.vectors, k, filter)
    elif query.mode == "i2i":
        scores, rows = _search_by_image(index, query.vectors[0], k, filter)
    elif query.texts is not None:
        if image_weight is None:
            raise ValueError("a zero-shot composed query needs its image weight.")
        scores, rows = index.search_zero_shot(query.vectors, query.texts, k, image_weight, filter)
    else:
        scores, rows = index.search_composed(query.vectors, k, caption_weight=caption_weight,
                                             use_captions=use_captions, filter=filter)
    results = []
    for rank_, (score, row) in enumerate(zip(scores[0].tolist(), rows[0].tolist(), strict=True), start=1):
        if row >= 0:
            record = index.item_at(row)
            image_path = _image_file(index, record)
            results.append(SearchResult(rank_, record.id, float(score), record.caption,
                                        str(image_path) if image_path else "", record.fields))
    return results


def _image_file(index: CatalogueView | CatalogueIndex, record: ItemRecord) -> Path | None:
    """Where a result's image is on this machine: an upload of the live catalogue, or a dataset file."""
    if isinstance(index, CatalogueView):
        return index.image_file(record.id, record)
    return Path(index.meta.get("data") or ".") / record.image if record.image else None


def _search_by_image(
    index: CatalogueView | CatalogueIndex, query: np.ndarray, k: int, filter: Filter | None
) -> tuple[np.ndarray, np.ndarray]:
    """Image->image: max over query pairs of <z_q, z'_q'> (through the index's image search)."""
    per_query_scores, per_query_rows = index.search_images(query.astype(np.float32), min(k * 4, index.num_items),
                                                           filter)
    best: dict[int, float] = {}
    for scores, rows in zip(per_query_scores, per_query_rows, strict=True):
        for score, row in zip(scores.tolist(), rows.tolist(), strict=True):
            if row >= 0:
                best[row] = max(best.get(row, -np.inf), score)
    ranked = sorted(best.items(), key=lambda pair: -pair[1])[:k]
    return np.array([[s for _, s in ranked]]), np.array([[r for r, _ in ranked]], dtype=np.int64)


def results_as_dicts(results: list[SearchResult]) -> list[dict[str, Any]]:
    return [vars(r) for r in results]


def contact_sheet(
    results: list[SearchResult],
    out: str | Path,
    query_image: str | Path | None,
    query_text: str | None,
    thumb: int = 128,
) -> Path:
    """Write a PNG: the query tile, then the top results with rank and score.

    The query tile shows the query image (the reference of a composed query) or, for a text
    query, the text itself; a composed query's text is also written under the row.
    """
    from PIL import Image, ImageDraw, ImageOps

    from unifashion_core.data.images import ImageError, open_image

    columns = len(results) + 1
    sheet = Image.new("RGB", (columns * (thumb + 8) + 8, thumb + 60), "white")
    draw = ImageDraw.Draw(sheet)
    tiles: list[tuple[Any, str]] = [(_query_tile(query_image, query_text, thumb),
                                     "query" if query_image is None or query_text is None else "reference + text")]
    for r in results:
        try:
            tiles.append((open_image(r.image), f"#{r.rank} {r.score:.3f}"))
        except ImageError:
            tiles.append((None, f"#{r.rank} missing"))
    for column, (picture, label) in enumerate(tiles):
        x = 8 + column * (thumb + 8)
        if picture is not None:
            sheet.paste(ImageOps.contain(picture, (thumb, thumb)), (x, 8))  # small photos scale up too
        draw.text((x, thumb + 14), label, fill="black")
    if query_text:
        draw.text((8, thumb + 34), f"text: {query_text[:120]}", fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    sheet.save(tmp)
    tmp.replace(out)
    return out


def _query_tile(query_image: str | Path | None, query_text: str | None, thumb: int) -> Any:
    """The query's picture: its image, or a framed tile with the query text wrapped inside."""
    import textwrap

    from PIL import Image, ImageDraw

    if query_image is not None:
        return load_user_image(query_image)
    tile = Image.new("RGB", (thumb, thumb), (235, 235, 235))
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, thumb - 1, thumb - 1), outline="black")
    lines = textwrap.wrap(query_text or "", width=max(8, thumb // 7))[: max(1, (thumb - 8) // 12)]
    draw.multiline_text((6, 6), "\n".join(lines), fill="black", spacing=2)
    return tile
