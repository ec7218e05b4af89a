"""New items for the live catalogue: embed them as the index does and upsert them.

Two sources: decoded images with their texts and fields (``unifashion serve``'s ``POST /items``),
and the items of a prepared dataset (``unifashion index add --data D``). An item whose image is
not a file of the base index's dataset gets its bytes stored in the catalogue (``uploads/``).
"""

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.manifest import Item, SkipLog, load_dataset
from unifashion_core.features import load_pixels
from unifashion_core.models.unifashion import UniFashion
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.retrieval.build import embed_batch
from unifashion_core.retrieval.catalogue import Catalogue, ItemBatch, Upload
from unifashion_core.retrieval.index import read_meta
from unifashion_core.retrieval.payload import ItemRecord
from unifashion_core.retrieval.search import index_checkpoint


@dataclass(frozen=True)
class NewItem:
    """One item to add or replace.

    Attributes:
        id: the item id (an existing id is replaced).
        text: its text (what text search and image->text search match; shown as its caption).
        image: the decoded image.
        upload: the image's bytes to store in the catalogue, or None when ``image_path`` names a
            file of the base index's dataset.
        image_path: the image relative to the base index's data directory (with no upload).
        fields: filterable fields (category, split, any attribute), as strings.
    """

    id: str
    text: str
    image: Image.Image
    upload: Upload | None
    image_path: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def embed_items(model: UniFashion, items: list[NewItem], captions: bool) -> ItemBatch:
    """Embed new items (images, texts and, with ``captions``, generated gallery captions) for an upsert."""
    from unifashion_core.models.vision import preprocess

    embedded = embed_batch(model, preprocess([i.image for i in items], model.vision), [i.text for i in items],
                           captions)
    records = [ItemRecord(i.id, i.text, i.image_path, dict(i.fields)) for i in items]
    return ItemBatch(records, embedded.image_vectors, embedded.text_vectors, embedded.caption_vectors,
                     embedded.captions, [i.upload for i in items])


@dataclass(frozen=True)
class AddSummary:
    """What ``unifashion index add`` did.

    Attributes:
        index: the index directory.
        num_added: items that were new.
        num_replaced: items whose id was already in the catalogue.
        skipped: unreadable images, each ``{"id", "reason", "path", "kind"}``.
        num_items: items in the catalogue afterwards.
        uploads: whether the images were copied into the catalogue (another dataset than the base's).
    """

    index: Path
    num_added: int
    num_replaced: int
    skipped: tuple[dict[str, Any], ...]
    num_items: int
    uploads: bool


def add_dataset(
    index: str | Path,
    data: str | Path,
    split: str | None = None,
    checkpoint: str | Path | None = None,
    batch_size: int = 64,
    progress: Progress = NullProgress(),
) -> AddSummary:
    """Upsert the items of a prepared dataset (one split, or all) into an index's live catalogue.

    Each batch is one durable write, so an interrupted add keeps the batches it finished (and a
    re-run replaces them with the same vectors). Unreadable images are skipped and counted. Items
    of the base index's own dataset keep pointing at its files; another dataset's images are
    copied into the catalogue.

    Args:
        index: the index directory.
        data: the prepared dataset.
        split: only this split; None adds every item.
        checkpoint: the query model (default: the one that built the index; must match it).
        batch_size: items embedded and written per batch.
        progress: receives one ``add`` step per item.

    Raises:
        UserError: unknown split, missing checkpoint, an index built by another model.
    """
    meta = read_meta(Path(index))
    captions = bool(meta["has_captions"])
    loaded = load_checkpoint(checkpoint or index_checkpoint(index), heads=("caption",) if captions else ())
    catalogue = Catalogue.open(index, expected_fingerprint=loaded.fingerprint)
    dataset = load_dataset(data)
    items = dataset.split(split) if split else list(dataset.items)
    same_data = bool(meta.get("data")) and Path(meta["data"]).resolve() == dataset.root.resolve()
    text_field = meta.get("caption_field") or loaded.recipe.data.caption_field
    skipped, before = SkipLog(), catalogue.snapshot()
    replaced = sum(before.contains(item.id) for item in items)
    progress.start("add", len(items))
    for rows in batch_slices(len(items), batch_size):
        kept, pixels = load_pixels(dataset, items[rows], loaded.model.vision, skipped)
        if kept:
            embedded = embed_batch(loaded.model, pixels, [i.text(text_field) for i in kept], captions)
            records = [_record(item, same_data) for item in kept]
            uploads = [None if same_data else _upload(dataset.image_path(item)) for item in kept]
            catalogue.upsert(ItemBatch(records, embedded.image_vectors, embedded.text_vectors,
                                       embedded.caption_vectors, embedded.captions, uploads))
        progress.advance("add", rows.stop - rows.start)
    entries = tuple(vars(e) for e in skipped.entries)
    skipped_ids = {e["id"] for e in entries}
    replaced -= sum(before.contains(i.id) for i in items if i.id in skipped_ids)
    added = len(items) - len(entries) - replaced
    return AddSummary(catalogue.path, added, replaced, entries, catalogue.snapshot().num_items, not same_data)


def _record(item: Item, same_data: bool) -> ItemRecord:
    """The record of a dataset item: its image path is kept only when it is the base's dataset."""
    record = ItemRecord.from_manifest(item)
    return record if same_data else replace(record, image="")


def _upload(path: Path) -> Upload:
    return Upload(path.read_bytes(), path.suffix.lower() or ".img")
