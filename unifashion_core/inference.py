"""Captioning and generation entry points: check inputs first, then run numbered steps."""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.images import ImageError, load_user_image, open_image
from unifashion_core.data.manifest import SkipLog, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress, Progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_NEW_TOKENS = 256
MAX_PROMPT_CHARS = 2000  # a longer --text is cut (with a warning), as search cuts its queries


def collect_images(source: str | Path, split: str | None = None) -> list[Path]:
    """One image file, every image in a folder, or the images of a prepared dataset (split).

    Raises:
        UserError: ``source`` does not exist, is another kind of file, or holds no image.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    if source.is_dir() and (source / "manifest.jsonl").is_file():
        dataset = load_dataset(source)
        items = dataset.split(split) if split else list(dataset.items)
        paths = [dataset.image_path(item) for item in items]
    elif source.name == "manifest.jsonl":
        return collect_images(source.parent, split)
    elif source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif not source.exists():
        raise UserError(f"{source} does not exist.")
    else:
        raise UserError(f"{source} is not an image ({', '.join(IMAGE_SUFFIXES)}), a folder or a prepared dataset.")
    if not paths:
        raise UserError(f"{source} holds no images{f' in split {split!r}' if split else ''} "
                        f"({', '.join(IMAGE_SUFFIXES)}).")
    return paths


@dataclass(frozen=True)
class Caption:
    image: str
    caption: str


def caption_images(
    checkpoint: str | Path,
    source: str | Path,
    style: str | None = None,
    max_new_tokens: int = 40,
    num_beams: int = 1,
    batch_size: int = 16,
    split: str | None = None,
    progress: Progress = NullProgress(),
) -> tuple[list[Caption], SkipLog]:
    """Caption one image, a folder or a dataset split; unreadable images are skipped and logged."""
    from unifashion_core.models.captioner import instruction_for
    from unifashion_core.models.vision import preprocess

    # 1. check inputs
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise UserError(f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}.")
    if not 1 <= num_beams <= 16:
        raise UserError("--num-beams must be between 1 and 16.")
    paths = collect_images(source, split)
    if len(paths) == 1:
        load_user_image(paths[0])  # one image: its problem is the error, before the model loads
    # 2. load the model with its captioner head
    model = load_checkpoint(checkpoint, heads=("caption",)).model
    style = style or model.config.captioner.style
    instruction_for(style)
    # 3. decode and caption in batches
    results, skipped = [], SkipLog()
    progress.start("caption", len(paths))
    for rows in batch_slices(len(paths), batch_size):
        batch, images = [], []
        for path in paths[rows]:
            try:
                images.append(open_image(path))
                batch.append(path)
            except ImageError as exc:
                skipped.add(path.name, exc.reason, str(path))
        if images:
            tokens = model.image_tokens(preprocess(images, model.vision).to(model.device))
            texts = model.caption_images(tokens, style, max_new_tokens, num_beams, batch_size=batch_size)
            results += [Caption(str(p), t) for p, t in zip(batch, texts, strict=True)]
        progress.advance("caption", rows.stop - rows.start)
    if not results:
        raise UserError(f"none of the {len(paths)} images in {source} could be read "
                        f"({', '.join(f'{n} {k}' for k, n in skipped.counts().items())}); nothing was captioned.")
    return results, skipped


@dataclass(frozen=True)
class GenerationRequest:
    text: str | None = None
    image: str | Path | None = None
    person: str | Path | None = None
    mask: str | Path | None = None
    sketch: str | Path | None = None
    steps: int | None = None  # None: the checkpoint recipe's model.generator settings
    sampler: str | None = None
    guidance: float | None = None
    seed: int = 0
    num_images: int = 1


def check_request(request: GenerationRequest) -> list[str]:
    """Refuse impossible requests before any model is loaded; return warnings (a text cut short)."""
    from unifashion_core.models.generator import SAMPLERS

    if request.text is None and request.image is None and request.person is None:
        raise UserError("give --text, --image, or --person with --mask (try-on / design).")
    if request.text is not None and not request.text.strip():
        raise UserError("--text is empty.")
    if request.sampler is not None and request.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {request.sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if request.steps is not None and not 1 <= request.steps <= 1000:
        raise UserError("--steps must be between 1 and 1000.")
    if request.guidance is not None and not 0.0 <= request.guidance <= 50.0:
        raise UserError("--guidance must be between 0 and 50.")
    if not 1 <= request.num_images <= 64:
        raise UserError("--num-images must be between 1 and 64.")
    if (request.person is None) != (request.mask is None):
        raise UserError("--person and --mask go together (the mask marks the region to generate).")
    if request.sketch is not None and request.person is None:
        raise UserError("--sketch needs --person and --mask.")
    if request.text is not None and len(request.text) > MAX_PROMPT_CHARS:
        return [f"--text truncated from {len(request.text)} to {MAX_PROMPT_CHARS} characters"]
    return []


def generate_images(
    checkpoint: str | Path, request: GenerationRequest, progress: Progress = NullProgress()
) -> tuple[list[Any], dict[str, Any]]:
    """Generate ``num_images`` PIL images for a request; returns (images, settings for metadata)."""
    from PIL import Image

    from unifashion_core.models.vision import preprocess

    # 1. check inputs (cheap, before loading anything)
    check_request(request)
    # 2. load the model with its generator head; unset sampling options come from its recipe
    loaded = load_checkpoint(checkpoint, heads=("generate",))
    model, head = loaded.model, loaded.model.generator
    g = model.config.generator
    request = replace(
        request,
        text=request.text[:MAX_PROMPT_CHARS] if request.text is not None else None,
        steps=request.steps or g.num_inference_steps,
        sampler=request.sampler or g.sampler,
        guidance=g.guidance_scale if request.guidance is None else request.guidance,
    )
    n = request.num_images
    # 3. condition: text only, image (+ text), or the inpainting inputs
    tokens = None
    if request.image is not None:
        pixels = preprocess([load_user_image(request.image)], model.vision)
        tokens = model.image_tokens(pixels).expand(n, -1, -1)
    texts = [request.text] * n if request.text else None
    with torch.no_grad():
        queries = model.generation_queries(tokens, texts)
    inpaint = _inpainting_inputs(request, head, n) if request.person is not None else {}
    # 4. sample
    progress.start("generate", None)
    result = head.sample(
        queries,
        num_inference_steps=request.steps,
        sampler=request.sampler,
        guidance_scale=request.guidance,
        seed=request.seed,
        source=model.query_source(tokens, texts),
        **inpaint,
    )
    progress.advance("generate", 1)
    arrays = (result.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    settings = {
        "text": request.text,
        "image": str(request.image) if request.image else None,
        "person": str(request.person) if request.person else None,
        "sampler": request.sampler,
        "steps": request.steps,
        "guidance": request.guidance,
        "seed": request.seed,
        "unet_calls": result.num_unet_calls,
        "checkpoint_fingerprint": loaded.fingerprint,
    }
    return [Image.fromarray(a) for a in arrays], settings


def _inpainting_inputs(request: GenerationRequest, head: Any, n: int) -> dict[str, torch.Tensor]:
    """Person image, mask (and sketch) as tensors at the generator's resolution."""
    if not getattr(head, "inpainting", False):
        raise UserError(
            "this checkpoint's generator was not trained for inpainting "
            "(model.generator.inpainting=false); --person/--mask need the paper preset."
        )
    height, width = head.default_size
    person = load_user_image(request.person)
    mask_image = load_user_image(request.mask)
    if mask_image.size != person.size:
        raise UserError(
            f"--mask is {mask_image.size[0]}x{mask_image.size[1]} but --person is "
            f"{person.size[0]}x{person.size[1]}; give a mask of the same size."
        )
    person_pixels = _to_tensor(person, height, width) * 2 - 1
    mask = _to_tensor(mask_image, height, width)[:, :1]
    mask = (mask > 0.5).float()
    if mask.sum() == 0:
        raise UserError("--mask is empty (all black): nothing to generate.")
    inputs = {
        "mask": mask.expand(n, -1, -1, -1),
        "masked_pixel_values": (person_pixels * (1 - mask)).expand(n, -1, -1, -1),
    }
    if request.sketch is not None:
        sketch = _to_tensor(load_user_image(request.sketch), height, width)[:, :1]
        inputs["sketch"] = sketch.expand(n, -1, -1, -1)
    return inputs


def _to_tensor(image: Any, height: int, width: int) -> torch.Tensor:
    """A PIL image resized (bicubic) to (height, width) as (1, 3, H, W) in [0, 1]."""
    import numpy as np
    from PIL import Image

    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0)[None]


def save_png(image: Any, path: str | Path, settings: dict[str, Any]) -> Path:
    """Save a PNG with the generation settings in its text metadata (written atomically)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in settings.items():
        info.add_text(f"unifashion:{key}", str(value))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp, pnginfo=info)
    tmp.replace(path)
    return path
