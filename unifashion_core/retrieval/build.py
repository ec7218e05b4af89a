"""`unifashion index`: embed a split's images and texts and write a resumable FAISS index."""

from pathlib import Path
from typing import Any

from unifashion_core import __version__
from unifashion_core.data.manifest import SkipLog, load_dataset
from unifashion_core.fileio import write_json
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.retrieval.captions import caption_gallery
from unifashion_core.retrieval.embed import embed_image_tokens, embed_texts
from unifashion_core.retrieval.index import IndexWriter, RetrievalIndex
from unifashion_core.train.checkpoint import load_checkpoint
from unifashion_core.train.features import load_pixels


def build_index(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    kind: str = "flat",
    batch_size: int = 64,
    captions: bool = False,
    progress: Progress = NullProgress(),
) -> dict[str, Any]:
    """Embed ``split`` of ``data`` with ``checkpoint`` into an index at ``out``.

    Interrupted builds resume from their finished shards when run again with the same
    checkpoint and data. Unreadable images are skipped and listed in ``skipped.json``.
    With ``captions``, every image is also captioned by the checkpoint's captioner and the
    captions and their text embeddings are stored (composed retrieval "w/ cap").
    """
    model, meta = load_checkpoint(checkpoint, heads=("caption",) if captions else ())
    dataset = load_dataset(data)
    items = dataset.split(split)
    field = model.recipe.data.caption_field
    writer = IndexWriter(Path(out), {
        "fingerprint": meta["fingerprint"], "manifest_sha256": dataset.manifest_hash, "split": split,
        "data": str(dataset.root.absolute()), "checkpoint": str(Path(checkpoint).absolute()),
        "caption_field": field, "unifashion_version": __version__,
        "gallery_captions": model.recipe.model.captioner.style if captions else None,
    })
    done = writer.done_ids()
    todo = [item for item in items if item.id not in done]
    skipped = SkipLog()
    progress.start("index", len(items))
    progress.advance("index", len(items) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        kept, pixels = load_pixels(dataset, batch, model.vision, skipped)
        if kept:
            tokens = model.image_tokens(pixels)
            image_vectors = embed_image_tokens(model, tokens)
            text_vectors = embed_texts(model, [getattr(i, field) or i.caption for i in kept])
            generated, caption_vectors = caption_gallery(model, tokens) if captions else (None, None)
            writer.add([i.id for i in kept], image_vectors, text_vectors, caption_vectors, generated)
        progress.advance("index", len(batch))
    order = [item.id for item in items if item.id in writer.done_ids()]
    index = writer.finalize(kind, order=order)
    report = {"num_items": len(index.ids), "num_skipped": len(skipped.entries),
              "skipped": [vars(e) for e in skipped.entries], "kind": kind, "split": split}
    write_json(Path(out) / "skipped.json", report)
    return {**report, "index": str(out), "fingerprint": meta["fingerprint"], "captions": captions}


def item_texts(index: RetrievalIndex) -> dict[str, dict[str, Any]]:
    """id -> {caption, image path} for an index's items, read from the dataset it was built on."""
    dataset = load_dataset(index.meta["data"])
    wanted = set(index.ids)
    return {
        item.id: {"caption": item.caption, "image": str(dataset.image_path(item)), "category": item.category}
        for item in dataset.items if item.id in wanted
    }

