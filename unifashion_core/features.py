"""Frozen vision features, computed once per image and cached on disk.

Training, phase 2 and the benches read the same cache, so it lives at the core's top level. The
caller chooses where caches live (the CLI: the workspace's ``cache/``); ``None`` keeps nothing.
When phase 1a trains the encoder's top stages, it caches the frozen trunk's feature maps instead
(``num_top``), keyed by the trunk's weights alone.
"""

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unifashion_core.batching import batch_slices
from unifashion_core.data.images import ImageError, open_image
from unifashion_core.data.manifest import Dataset, Item, SkipLog
from unifashion_core.fileio import refuse_corrupt
from unifashion_core.progress import NullProgress, Progress


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


def image_tokens(
    vision: torch.nn.Module,
    dataset: Dataset,
    items: list[Item],
    cache_dir: Path | None,
    progress: Progress = NullProgress(),
    batch_size: int = 32,
    num_top: int = 0,
) -> tuple[list[Item], torch.Tensor, SkipLog]:
    """Vision tokens for ``items``: (kept items, (N, T, C) float16 tokens, skipped log).

    Tokens already in ``cache_dir`` (keyed by the vision fingerprint) are reused; new ones are
    added to the cache. Items whose image cannot be read are skipped and logged. With ``num_top``
    > 0 the features are the trunk's ``(N, C', H', W')`` maps below the top ``num_top`` stages.
    """
    cache: dict[str, torch.Tensor] = {}
    cache_file = None
    if cache_dir is not None:
        kind = f"trunk{num_top}" if num_top else "tokens"
        cache_file = Path(cache_dir) / f"{kind}-{vision_fingerprint(vision, num_top)}.safetensors"
        if cache_file.is_file():
            with refuse_corrupt(cache_file, "delete it and the features are recomputed", errors=(SafetensorError,)):
                cache = load_file(cache_file)
    skipped = SkipLog()
    todo = [item for item in items if item.id not in cache]
    progress.start("vision features", len(todo))
    with torch.no_grad():
        for rows in batch_slices(len(todo), batch_size):
            batch = todo[rows]
            kept, pixels = load_pixels(dataset, batch, vision, skipped)
            if kept:
                pixels = pixels.to(next(vision.parameters()).device)
                features = vision.trunk(pixels, num_top) if num_top else vision(pixels)
                tokens = features.to(torch.float16).cpu().contiguous()
                cache.update({item.id: tokens[i].clone() for i, item in enumerate(kept)})
            progress.advance("vision features", len(batch))
    if cache_file is not None and todo:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        save_file(cache, str(tmp))
        tmp.replace(cache_file)
    kept_items = [item for item in items if item.id in cache]
    if not kept_items:
        return [], torch.empty(0), skipped
    return kept_items, torch.stack([cache[item.id] for item in kept_items]), skipped
