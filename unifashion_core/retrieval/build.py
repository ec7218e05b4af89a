"""`unifashion index`: embed a split's images and texts and write a resumable index."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unifashion_core import __version__
from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.manifest import SkipLog, load_dataset
from unifashion_core.features import load_pixels
from unifashion_core.fileio import write_json
from unifashion_core.models.unifashion import UniFashion
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.retrieval.index import IndexWriter, check_kind
from unifashion_core.retrieval.payload import ItemRecord

if TYPE_CHECKING:
    from unifashion_core.retrieval.qdrant import QdrantTarget


@dataclass(frozen=True)
class IndexSummary:
    """What an index build produced.

    Attributes:
        index: the index directory.
        split: the dataset split that was indexed.
        kind: ``flat`` (exact), ``pq`` (PQ-scan candidates + exact re-rank) or ``qdrant``.
        num_items: items in the index.
        skipped: unreadable images, each ``{"id", "reason", "path", "kind"}`` (also ``skipped.json``).
        fingerprint: the query model's fingerprint stored in the index.
        captions: whether gallery captions were generated and embedded.
    """

    index: Path
    split: str
    kind: str
    num_items: int
    skipped: tuple[dict[str, Any], ...]
    fingerprint: str
    captions: bool


@dataclass(frozen=True)
class EmbeddedBatch:
    """What the index stores for a batch of B items.

    Attributes:
        image_vectors: ``(B, Q, D)`` image query embeddings.
        text_vectors: ``(B, D)`` embeddings of the items' texts.
        caption_vectors: ``(B, D)`` embeddings of generated gallery captions, or None.
        captions: the B generated captions, or None.
    """

    image_vectors: np.ndarray
    text_vectors: np.ndarray
    caption_vectors: np.ndarray | None
    captions: list[str] | None


def embed_batch(model: UniFashion, pixel_values: torch.Tensor, texts: list[str], captions: bool) -> EmbeddedBatch:
    """Embed B items (their images and texts) as an index stores them.

    Args:
        model: the query model.
        pixel_values: ``(B, 3, S, S)`` preprocessed images.
        texts: the B items' texts.
        captions: also caption the images (the model's captioner, its default style) and embed
            the captions (composed retrieval "w/ cap").
    """
    tokens = model.image_tokens(pixel_values.to(model.device))  # (B, T, C)
    generated = model.caption_images(tokens, batch_size=32, task="caption gallery") if captions else None
    return EmbeddedBatch(model.embed_images(tokens).numpy(), model.embed_texts(texts).numpy(),
                         None if generated is None else model.embed_texts(generated).numpy(), generated)


def build_index(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    kind: str = "flat",
    batch_size: int = 64,
    captions: bool = False,
    progress: Progress = NullProgress(),
    qdrant: "QdrantTarget | None" = None,
) -> IndexSummary:
    """Embed ``split`` of ``data`` with ``checkpoint`` into an index at ``out``.

    Interrupted builds resume from their finished shards when run again with the same
    checkpoint and data. Unreadable images are skipped and listed in ``skipped.json``.
    With ``captions``, every image is also captioned by the checkpoint's captioner and the
    captions and their text embeddings are stored (composed retrieval "w/ cap").
    With ``qdrant``, the items go to that Qdrant collection instead (``kind`` does not apply)
    and ``out`` becomes the small directory that names it; searching it works the same.
    """
    check_kind(kind)
    loaded = load_checkpoint(checkpoint, heads=("caption",) if captions else ())
    model, field = loaded.model, loaded.recipe.data.caption_field
    dataset = load_dataset(data)
    items = dataset.split(split)
    writer = IndexWriter(Path(out), {
        "fingerprint": loaded.fingerprint, "manifest_sha256": dataset.manifest_hash, "split": split,
        "data": str(dataset.root.absolute()), "checkpoint": str(Path(checkpoint).absolute()),
        "caption_field": field, "unifashion_version": __version__,
        "gallery_captions": model.config.captioner.style if captions else None,
    })
    done = writer.done_ids()
    todo = [item for item in items if item.id not in done]
    skipped = SkipLog()
    progress.start("index", len(items))
    progress.advance("index", len(items) - len(todo))
    for rows in batch_slices(len(todo), batch_size):
        kept, pixels = load_pixels(dataset, todo[rows], model.vision, skipped)
        if kept:
            embedded = embed_batch(model, pixels, [i.text(field) for i in kept], captions)
            writer.add([i.id for i in kept], embedded.image_vectors, embedded.text_vectors,
                       embedded.caption_vectors, embedded.captions, [ItemRecord.from_manifest(i) for i in kept])
        progress.advance("index", rows.stop - rows.start)
    done = writer.done_ids()
    order = [item.id for item in items if item.id in done]
    if qdrant is None:
        writer.finalize(kind, order=order)
    else:
        from unifashion_core.retrieval.qdrant import write_collection

        write_collection(writer, qdrant)
        kind = "qdrant"
    entries = tuple(vars(e) for e in skipped.entries)
    write_json(Path(out) / "skipped.json", {"num_items": len(order), "num_skipped": len(entries),
                                            "skipped": list(entries), "kind": kind, "split": split})
    return IndexSummary(Path(out), split, kind, len(order), entries, loaded.fingerprint, captions)

