"""`unifashion search`: text->image, image->text, image->image and composed (image + text) queries.

Composed queries use one of two scores (``COMPOSED_SCORES``): ``fused``, the Q-Former's fused
(image + text) embedding that phase 2 trains (plus gallery captions when indexed), or
``zero-shot``, a late fusion of image->image and text->image similarity that needs no composed
training (``metrics.cir.zero_shot_scores``). ``auto`` takes ``fused`` for a phase-2 checkpoint and
``zero-shot`` for any other.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import load_checkpoint, read_meta
from unifashion_core.data.images import load_user_image
from unifashion_core.errors import UserError
from unifashion_core.metrics.cir import ZERO_SHOT_IMAGE_WEIGHT, zero_shot_scores
from unifashion_core.models.unifashion import UniFashion
from unifashion_core.retrieval.build import item_texts
from unifashion_core.retrieval.index import RetrievalIndex
from unifashion_core.retrieval.query_text import check_query_words, tokenizer_warnings

MODES = ("auto", "t2i", "i2t", "i2i", "cir")
COMPOSED_SCORES = ("auto", "fused", "zero-shot")
ZERO_SHOT_BLOCK = 65_536  # gallery items scored at a time by the zero-shot composed score
MAX_QUERY_CHARS = 2000  # longer user texts are truncated (with a warning from the caller)


@dataclass(frozen=True)
class SearchResult:
    rank: int
    id: str
    score: float
    caption: str
    image: str


def check_query(text: str | None, image: str | Path | None, mode: str) -> tuple[str, list[str]]:
    """Validate the query; return the effective mode and warnings (e.g. a truncated text)."""
    if mode not in MODES:
        raise UserError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}.")
    warnings = []
    if text is not None and not text.strip():
        raise UserError('the query text is empty; give some words, e.g. --text "red striped shirt".')
    if text is not None:
        check_query_words(text)
    if text is not None and len(text) > MAX_QUERY_CHARS:
        warnings.append(f"query text truncated from {len(text)} to {MAX_QUERY_CHARS} characters")
    if text is None and image is None:
        raise UserError("give --text, --image, or both (composed retrieval).")
    if mode == "auto":
        mode = "cir" if text is not None and image is not None else ("t2i" if text is not None else "i2t")
    needs = {"t2i": (True, False), "i2t": (False, True), "i2i": (False, True), "cir": (True, True)}[mode]
    if needs != (text is not None, image is not None):
        raise UserError(
            f"mode {mode} needs {'--text ' if needs[0] else ''}{'--image' if needs[1] else ''}".strip() + "."
        )
    return mode, warnings


def load_searcher(index_path: str | Path, checkpoint: str | Path | None) -> tuple[UniFashion, RetrievalIndex]:
    """Load the query model and the index, refusing an index built by a different model."""
    loaded = load_checkpoint(checkpoint or _index_checkpoint(index_path))
    return loaded.model, RetrievalIndex.load(index_path, expected_fingerprint=loaded.fingerprint)


def composed_score(requested: str, index_path: str | Path, checkpoint: str | Path | None) -> str:
    """The composed score a search uses: ``requested``, or for ``auto`` the one the query model has
    been trained for (``fused`` after phase 2, else ``zero-shot``).

    Raises:
        UserError: an unknown score name.
    """
    if requested not in COMPOSED_SCORES:
        raise UserError(f"unknown composed score {requested!r}; choose one of {', '.join(COMPOSED_SCORES)}.")
    if requested != "auto":
        return requested
    phase = read_meta(checkpoint or _index_checkpoint(index_path)).get("phase", 1)
    return "fused" if phase == 2 else "zero-shot"


def _index_checkpoint(index_path: str | Path) -> str:
    index = RetrievalIndex.load(index_path)
    path = index.meta.get("checkpoint", "")
    if not path or not Path(path).exists():
        raise UserError(f"the checkpoint that built {index_path} is gone; pass --checkpoint.")
    return path


def search(
    model: UniFashion,
    index: RetrievalIndex,
    text: str | None = None,
    image: str | Path | None = None,
    k: int = 10,
    mode: str = "auto",
    caption_weight: float = 1.0,
    use_captions: bool = True,
    composed: str = "fused",
    image_weight: float = ZERO_SHOT_IMAGE_WEIGHT,
) -> list[SearchResult]:
    """Run one query against an index and return the top ``k`` items, best first.

    Args:
        composed: the composed (image + text) score: ``fused`` or ``zero-shot`` (see the module).
        image_weight: the zero-shot score's image weight, in [0, 1].
    """
    from unifashion_core.models.vision import preprocess

    mode, _ = check_query(text, image, mode)
    if k < 1:
        raise UserError("-k must be at least 1.")
    if composed not in COMPOSED_SCORES[1:] or not 0.0 <= image_weight <= 1.0:
        raise UserError(f"composed score {composed!r} with image weight {image_weight}: choose fused or zero-shot "
                        "and a weight in [0, 1].")
    text = text[:MAX_QUERY_CHARS] if text is not None else None
    if text is not None:
        tokenizer_warnings(model.tokenizer, text)
    tokens = image_embeds = None
    if image is not None:
        tokens = model.image_tokens(preprocess([load_user_image(image)], model.vision).to(model.device))
        image_embeds = model.embed_images(tokens).numpy()  # (1, Q, D)
    if mode == "t2i":
        scores, rows = index.search_images(model.embed_texts([text]).numpy(), k)
    elif mode == "i2t":
        scores, rows = index.search_texts(image_embeds, k)
    elif mode == "i2i":
        scores, rows = _search_by_image(index, image_embeds[0], k)
    elif composed == "zero-shot":
        scores, rows = _search_zero_shot(index, image_embeds, model.embed_texts([text]).numpy(), k, image_weight)
    else:
        fused = model.embed_composed(tokens, [text]).numpy()
        scores, rows = index.search_composed(fused, k, caption_weight=caption_weight, use_captions=use_captions)
    info = item_texts(index)
    results = []
    for rank, (score, row) in enumerate(zip(scores[0].tolist(), rows[0].tolist(), strict=True), start=1):
        item_id = index.ids[row]
        entry = info.get(item_id, {"caption": "", "image": ""})
        results.append(SearchResult(rank, item_id, float(score), entry["caption"], entry["image"]))
    return results


def _search_by_image(index: RetrievalIndex, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Image->image: max over query pairs of <z_q, z'_q'> (exact, through the index's vectors)."""
    per_query_scores, per_query_rows = index.search_images(query.astype(np.float32), min(k * 4, len(index.ids)))
    best: dict[int, float] = {}
    for scores, rows in zip(per_query_scores, per_query_rows, strict=True):
        for score, row in zip(scores.tolist(), rows.tolist(), strict=True):
            best[row] = max(best.get(row, -np.inf), score)
    ranked = sorted(best.items(), key=lambda pair: -pair[1])[:k]
    return np.array([[s for _, s in ranked]]), np.array([[r for r, _ in ranked]])


def _search_zero_shot(
    index: RetrievalIndex, reference: np.ndarray, text: np.ndarray, k: int, image_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Composed search by the zero-shot late fusion, exact over the index's vectors.

    Args:
        reference: ``(1, Q, D)`` reference image embeddings.
        text: ``(1, D)`` embedding of the modification text.
    """
    chunks = []
    for rows in batch_slices(index.num_items, ZERO_SHOT_BLOCK):
        gallery = torch.from_numpy(np.asarray(index.image_vectors[rows], dtype=np.float32))  # (n, Q, D)
        chunks.append(zero_shot_scores(torch.from_numpy(reference), torch.from_numpy(text), gallery, image_weight))
    top = torch.cat(chunks, dim=1).topk(min(k, index.num_items), dim=1)  # (1, k)
    return top.values.numpy(), top.indices.numpy()


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
