"""Frozen vision features, computed once per image and cached on disk in shards.

Training, phase 2 and the benches read the same cache, so it lives at the core's top level. The
caller chooses where caches live (the CLI: the workspace's ``cache/``); ``None`` keeps the
features of one call in memory.

Layout: ``CACHE/<manifest hash>/tokens-<vision fingerprint>/<shard>.npy`` + ``<shard>.json``
(see ``unifashion_core.shards``): float16 ``(n, T, C)`` tokens of up to ``SHARD_BATCHES`` vision
batches, the item ids of their rows, and the manifest hash and vision fingerprint they were
computed with. Items still missing are computed in vision batches of ``batch_size`` in the
order asked, and, with several processes (``torch.distributed``), shard by shard across them;
a run killed in the middle keeps the shards it finished. A shard that is cut short, unreadable,
or of another model or manifest is logged, removed and computed again: old and new features are
never mixed. Training reads the tokens a batch at a time (``shards.Rows``), so memory does
not grow with the dataset.

When phase 1a trains the encoder's top stages, it caches the frozen trunk's ``(C', H', W')``
feature maps instead (``num_top``), in ``trunk<num_top>-<trunk fingerprint>/``, keyed by the
trunk's weights alone. The features of the images mirrored left-right (``flipped``, phase 1a's
``data.image_flip``) live beside them, in ``tokens-flip-...`` (``trunk<num_top>-flip-...``).
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unifashion_core.batching import batch_slices
from unifashion_core.data.images import ImageError, open_image
from unifashion_core.data.manifest import Dataset, Item, SkipLog
from unifashion_core.distributed import barrier, gather_objects, world
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.shards import Rows, Shard, open_shard, remove_shard, remove_stale_temporaries, write_shard

SHARD_BATCHES = 8  # vision batches per cache shard (256 items at the default batch of 32)


def feature_cache_dir(cache_root: str | Path | None, dataset: Dataset) -> Path | None:
    """The cache directory of one dataset under ``cache_root`` (None: no cache)."""
    return None if cache_root is None else Path(cache_root) / dataset.manifest_hash[:16]


def vision_fingerprint(vision: torch.nn.Module, num_top: int = 0) -> str:
    """16-hex digest of the vision encoder's weights and input size (the cache key), leaving out the
    top ``num_top`` stages (those that train)."""
    from unifashion_core.models.vision import top_prefixes

    skip = top_prefixes(vision.stage_prefixes(), num_top) if num_top else ()
    digest = hashlib.sha256((str(vision.image_size) + (f":top{num_top}" if num_top else "")).encode())
    for name, tensor in sorted(vision.state_dict().items()):
        if skip and name.startswith(skip):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_pixels(
    dataset: Dataset, items: list[Item], vision: torch.nn.Module, skipped: SkipLog
) -> tuple[list[Item], torch.Tensor]:
    """Open and preprocess images; unusable ones go to ``skipped`` (never silently dropped)."""
    from unifashion_core.models.vision import preprocess

    kept, images = [], []
    for item in items:
        try:
            images.append(open_image(dataset.image_path(item)))
            kept.append(item)
        except ImageError as exc:
            skipped.add(item.id, exc.reason, item.image)
    if not images:
        return kept, torch.empty(0)
    return kept, preprocess(images, vision)


class _Images(torch.utils.data.Dataset):
    """Preprocessed images of items for the vision encoder (mirrored left-right when ``flipped``);
    an unreadable one gives its reason."""

    def __init__(self, dataset: Dataset, items: list[Item], vision: torch.nn.Module, flipped: bool = False) -> None:
        self.dataset, self.items, self.vision, self.flipped = dataset, items, vision, flipped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        from unifashion_core.models.vision import preprocess

        try:
            image = open_image(self.dataset.image_path(self.items[index]))
        except ImageError as exc:
            return index, None, exc.reason
        if self.flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return index, preprocess([image], self.vision)[0], ""  # (3, S, S)


def cached_tokens(
    vision: torch.nn.Module,
    dataset: Dataset,
    items: list[Item],
    cache_dir: Path | None,
    progress: Progress = NullProgress(),
    batch_size: int = 32,
    num_workers: int = 0,
    num_top: int = 0,
    flipped: bool = False,
) -> tuple[list[Item], Rows, SkipLog]:
    """Vision tokens of ``items``, left on disk: (kept items, their float16 ``(T, C)`` rows, skipped log).

    Tokens already in ``cache_dir`` (keyed by the manifest hash and the vision fingerprint) are
    reused; the others are computed (images decoded by ``num_workers`` DataLoader processes) and
    added. Items whose image cannot be read are skipped and logged, and tried again next time.
    With ``num_top`` > 0 the rows are the trunk's float16 ``(C', H', W')`` maps below the top
    ``num_top`` stages (``vision.trunk``), cached apart from the tokens. With ``flipped`` they are
    the features of the images mirrored left-right (cached apart too).
    """
    fingerprint = vision_fingerprint(vision, num_top)
    kind = (f"trunk{num_top}" if num_top else "tokens") + ("-flip" if flipped else "")
    key = {"manifest_sha256": dataset.manifest_hash, "vision_fingerprint": fingerprint, "kind": kind}
    folder = None if cache_dir is None else Path(cache_dir) / f"{kind}-{fingerprint}"
    shards, where = _open_cache(folder, key, progress)
    todo = [item for item in items if item.id not in where]
    barrier()  # every process has listed the cache before any adds to it
    skipped = SkipLog()
    computed = _compute_tokens(vision, dataset, todo, folder, key, batch_size, num_workers, num_top, flipped,
                               skipped, progress)
    barrier()
    if folder is not None:
        shards, where = _open_cache(folder, key, progress)
        skipped.entries = [entry for entries in gather_objects(skipped.entries) for entry in entries]
    for shard, ids in computed if folder is None else ():
        where |= {item_id: (len(shards), row) for row, item_id in enumerate(ids)}
        shards.append(shard)
    kept = [item for item in items if item.id in where]
    return kept, Rows(shards, np.array([where[item.id] for item in kept], dtype=np.int64)), skipped


def image_tokens(
    vision: torch.nn.Module,
    dataset: Dataset,
    items: list[Item],
    cache_dir: Path | None,
    progress: Progress = NullProgress(),
    batch_size: int = 32,
    num_top: int = 0,
) -> tuple[list[Item], torch.Tensor, SkipLog]:
    """Vision tokens of ``items`` in memory: (kept items, (N, T, C) float16 tokens, skipped log).

    As :func:`cached_tokens`, with every row read into one tensor (for evaluation-sized splits).
    """
    kept, tokens, skipped = cached_tokens(vision, dataset, items, cache_dir, progress, batch_size, num_top=num_top)
    return kept, tokens.load(), skipped


def _open_cache(folder: Path | None, key: dict[str, str], progress: Progress) -> tuple[list[Shard], dict]:
    """The usable shards in ``folder`` and where each cached item's row is: id -> (shard, row).

    A shard that cannot be used is logged and removed, so that its items are computed again.
    """
    shards: list[Shard] = []
    where: dict[str, tuple[int, int]] = {}
    if folder is None or not folder.is_dir():
        return shards, where
    remove_stale_temporaries(folder)
    for name in sorted(path.stem for path in folder.glob("*.json")):
        shard, record, problem = open_shard(folder, name)
        # shards written before the trunk caches have no kind: they hold tokens
        if shard is not None and any(({"kind": "tokens"} | record).get(field) != value for field, value in key.items()):
            problem = "it holds the features of another vision model or manifest"
        elif shard is not None and (len(record.get("ids", ())) != shard.num_rows or
                                    (shards and shard.row_shape != shards[0].row_shape)):
            problem = "its rows do not match its item ids"
        if problem:
            progress.log(f"feature cache: {folder / name}.npy cannot be used: {problem}; computing it again.")
            remove_shard(folder, name)
            continue
        where |= {item_id: (len(shards), row) for row, item_id in enumerate(record["ids"])}
        shards.append(shard)
    return shards, where


def _compute_tokens(
    vision: torch.nn.Module, dataset: Dataset, todo: list[Item], folder: Path | None, key: dict[str, str],
    batch_size: int, num_workers: int, num_top: int, flipped: bool, skipped: SkipLog, progress: Progress,
) -> list[tuple[Shard, list[str]]]:
    """Compute the tokens of ``todo`` shard by shard: this process's shards of a shared folder
    (written there), or all of them in memory (returned as (shard, ids))."""
    rank, size = world() if folder is not None else (0, 1)
    chunks = [todo[rows] for number, rows in enumerate(batch_slices(len(todo), batch_size * SHARD_BATCHES))
              if number % size == rank]
    mine = [item for chunk in chunks for item in chunk]
    ends = np.cumsum([len(chunk) for chunk in chunks]).tolist()
    batches = [list(range(end - len(chunk) + rows.start, end - len(chunk) + rows.stop))
               for end, chunk in zip(ends, chunks, strict=True) for rows in batch_slices(len(chunk), batch_size)]
    loader = torch.utils.data.DataLoader(_Images(dataset, mine, vision, flipped), batch_sampler=batches,
                                         collate_fn=list, num_workers=num_workers, generator=torch.Generator())
    device = next(vision.parameters()).device
    computed, ids, arrays, done, finished = [], [], [], 0, 0
    progress.start("vision features", len(mine))
    with torch.no_grad():
        for batch in loader:
            for index, _, reason in (entry for entry in batch if entry[1] is None):
                skipped.add(mine[index].id, reason, mine[index].image)
            readable = [entry for entry in batch if entry[1] is not None]
            if readable:
                # channels-last, as ``preprocess`` lays a batch out: the encoders' float results depend on it
                pixels = torch.stack([entry[1] for entry in readable]).contiguous(memory_format=torch.channels_last)
                pixels = pixels.to(device)  # (b, 3, S, S)
                features = vision.trunk(pixels, num_top) if num_top else vision(pixels)
                arrays.append(features.to(torch.float16).cpu().numpy())  # (b, T, C) or (b, C', H', W')
                ids += [mine[entry[0]].id for entry in readable]
            done += len(batch)
            progress.advance("vision features", len(batch))
            if done == ends[finished]:  # a shard's last batch
                computed += _store(folder, [item.id for item in chunks[finished]], ids, arrays, key)
                ids, arrays, finished = [], [], finished + 1
    return computed


def _store(folder: Path | None, chunk_ids: list[str], ids: list[str], arrays: list[np.ndarray],
           key: dict[str, str]) -> list[tuple[Shard, list[str]]]:
    """Write one computed shard to ``folder`` (or keep it in memory); nothing when no image was readable."""
    if not ids:
        return []
    array = np.concatenate(arrays)  # (n, T, C)
    if folder is None:
        return [(Shard.in_memory(array), ids)]
    name = hashlib.sha256("\n".join(chunk_ids).encode()).hexdigest()[:16]
    write_shard(folder, name, array, {**key, "ids": ids})
    return []
