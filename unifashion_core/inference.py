"""Captioning and generation entry points: check inputs first, then run numbered steps."""

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import LoadedCheckpoint, load_checkpoint
from unifashion_core.data.images import ImageError, as_image, load_user_image, open_image
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
    """What to generate; ``image`` is a path or an already decoded image (e.g. an upload)."""

    text: str | None = None
    image: str | Path | Image.Image | None = None
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

    if request.text is None and request.image is None:
        raise UserError("give --text, --image or both: the garment to draw (with --person and --mask: on that "
                        "person; with --sketch: following the sketch).")
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
    if request.text is not None and len(request.text) > MAX_PROMPT_CHARS:
        return [f"--text truncated from {len(request.text)} to {MAX_PROMPT_CHARS} characters"]
    return []


def generate_images(
    checkpoint: str | Path, request: GenerationRequest, progress: Progress = NullProgress()
) -> tuple[list[Any], dict[str, Any]]:
    """Generate ``num_images`` PIL images for a request; returns (images, settings for metadata).

    Text, image or both describe the garment. With ``person`` and ``mask`` it is drawn into the
    person's masked region (try-on; the result has the person's size and every pixel outside the
    mask is the person's), else a garment image is made; ``sketch`` adds its lines as a condition.
    Conversions made to the inputs (a resized or thresholded mask, a resized sketch) are listed in
    the settings' ``notes``.
    """
    # 1. check inputs (cheap, before loading anything)
    check_request(request)
    # 2. load the model with its generator head
    return generate_with(load_checkpoint(checkpoint, heads=("generate",)), request, progress)


def generate_with(
    loaded: LoadedCheckpoint, request: GenerationRequest, progress: Progress = NullProgress()
) -> tuple[list[Any], dict[str, Any]]:
    """:func:`generate_images` with a model already loaded (with its generator head), e.g. by a server."""
    from unifashion_core.models.vision import preprocess

    check_request(request)
    # 1. unset sampling options come from the checkpoint's recipe
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
    # 2. condition: text only, image, or image + text
    tokens = None
    if request.image is not None:
        pixels = preprocess([as_image(request.image)], model.vision)
        tokens = model.image_tokens(pixels).expand(n, -1, -1)
    texts = [request.text] * n if request.text else None
    with torch.no_grad():
        queries = model.generation_queries(tokens, texts)
    # 3. the person, mask (and sketch) of a try-on, or the sketch of a design
    person = _TryOnRequest.load(request, head, g.tryon_resolution) if request.person is not None else None
    inputs = person.tensors(n) if person is not None else _sketch_input(request, head, g.resolution, n)
    # 4. sample, and put the result back into the person at full size
    progress.start("generate", None)
    result = head.sample(queries, num_inference_steps=request.steps, sampler=request.sampler,
                         guidance_scale=request.guidance, seed=request.seed,
                         source=model.query_source(tokens, texts), **inputs)
    progress.advance("generate", 1)
    images = result.images.float().clamp(0, 1).cpu().numpy()  # (n, 3, S, S)
    pictures = [person.paste(image) if person is not None else _to_picture(image) for image in images]
    settings = {
        "text": request.text,
        "image": _describe(request.image),
        "person": str(request.person) if request.person else None,
        "mask": str(request.mask) if request.mask else None,
        "sketch": str(request.sketch) if request.sketch else None,
        "sampler": request.sampler,
        "steps": request.steps,
        "guidance": request.guidance,
        "seed": request.seed,
        "unet_calls": result.num_unet_calls,
        "checkpoint_fingerprint": loaded.fingerprint,
        "notes": person.notes if person is not None else [],
    }
    return pictures, settings


@dataclass(frozen=True)
class _TryOnRequest:
    """A try-on request's person, its mask at full size, the generator's inputs, and the notes on
    any conversion made to the user's files."""

    person: Any
    mask: Any  # (H, W) bool
    inputs: Any  # tryon.TryOnInputs at the generator's try-on side
    notes: list[str]

    @classmethod
    def load(cls, request: GenerationRequest, head: Any, size: int) -> "_TryOnRequest":
        """Check and convert ``--person``, ``--mask`` and ``--sketch``.

        Raises:
            UserError: a generator without inpainting, a mask or sketch of another shape than the
                person, an empty mask, or a mask that covers the whole person.
        """
        import numpy as np
        from PIL import Image

        from unifashion_core.data.tryon import full_mask, tryon_inputs

        if not getattr(head, "inpainting", False):
            raise UserError("this checkpoint's generator was not trained for inpainting "
                            "(model.generator.inpainting: false): --person/--mask need one that was.")
        person = load_user_image(request.person)
        mask_image, notes = _fit_to(load_user_image(request.mask), person.size, "--mask")
        grey = np.asarray(mask_image.convert("L"))
        if ((grey > 0) & (grey < 255)).any():
            notes.append("--mask is not pure black and white: pixels at least 50 % white are generated")
        mask = full_mask(mask_image)
        if not mask.any():
            raise UserError("--mask is empty (all black): nothing to generate; white marks the region to generate.")
        if mask.all():
            raise UserError("--mask covers the whole image, so nothing of --person would be kept; drop "
                            "--person and --mask to generate a garment image instead.")
        sketch = None
        if request.sketch is not None:
            sketch, more = _fit_to(load_user_image(request.sketch), person.size, "--sketch")
            notes += more
        mask_picture = Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB")
        return cls(person, mask, tryon_inputs(person, mask_picture, sketch, size), notes)

    def tensors(self, n: int) -> dict[str, torch.Tensor]:
        """The generator's ``mask``, ``masked_pixel_values`` (and ``sketch``) for ``n`` images."""
        inputs = {"mask": self.inputs.mask, "masked_pixel_values": self.inputs.masked_pixel_values}
        if self.inputs.sketch.any():
            inputs["sketch"] = self.inputs.sketch
        return {key: torch.from_numpy(value).expand(n, -1, -1, -1) for key, value in inputs.items()}

    def paste(self, image: Any) -> Any:
        """The person with the generated (3, S, S) square in the mask, at the person's size."""
        from unifashion_core.data.tryon import paste_result

        return paste_result(self.person, self.mask, image)


def _fit_to(image: Any, size: tuple[int, int], flag: str) -> tuple[Any, list[str]]:
    """``image`` at the person's ``size``: resized (and noted) when only its scale differs.

    Raises:
        UserError: another aspect ratio than the person's (more than 2 % apart).
    """
    from PIL import Image

    if image.size == size:
        return image, []
    (width, height), (target_width, target_height) = image.size, size
    if abs(width * target_height - height * target_width) > 0.02 * height * target_width:
        raise UserError(f"{flag} is {width}x{height} but --person is {target_width}x{target_height}, another "
                        f"shape; give a {flag.lstrip('-')} of the person's size.")
    resized = image.resize(size, Image.Resampling.BOX)
    return resized, [f"{flag} resized from {width}x{height} to the person's {target_width}x{target_height}"]


def _sketch_input(request: GenerationRequest, head: Any, size: int, n: int) -> dict[str, torch.Tensor]:
    """``{"sketch": (n, 1, R, R)}`` for a design from a sketch, or nothing without one.

    Raises:
        UserError: the generator takes no sketch.
    """
    from unifashion_core.data.tryon import sketch_to_array

    if request.sketch is None:
        return {}
    if not getattr(head, "use_sketch", False):
        raise UserError("this checkpoint's generator takes no sketch (model.generator.use_sketch: false); "
                        "drop --sketch or use one trained with sketches.")
    sketch = sketch_to_array(load_user_image(request.sketch), size)  # (R, R)
    return {"sketch": torch.from_numpy(sketch)[None, None].expand(n, -1, -1, -1)}


def _to_picture(image: Any) -> Any:
    """(3, H, W) float in [0, 1] -> an RGB PIL image."""
    from PIL import Image

    return Image.fromarray((image * 255).round().astype("uint8").transpose(1, 2, 0))


def _describe(image: str | Path | Image.Image | None) -> str | None:
    """How the settings name the reference image: its path, or that it was uploaded."""
    if image is None:
        return None
    return "(uploaded image)" if isinstance(image, Image.Image) else str(image)


def _png_info(settings: dict[str, Any]) -> Any:
    """The generation settings as PNG text chunks ``unifashion:KEY``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in settings.items():
        info.add_text(f"unifashion:{key}", str(value))
    return info


def save_png(image: Any, path: str | Path, settings: dict[str, Any]) -> Path:
    """Save a PNG with the generation settings in its text metadata (written atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp, pnginfo=_png_info(settings))
    tmp.replace(path)
    return path


def png_bytes(image: Any, settings: dict[str, Any]) -> bytes:
    """A PNG file's bytes with the generation settings in its text metadata (as :func:`save_png`)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(settings))
    return buffer.getvalue()
