"""`unifashion bench tryon`: virtual try-on (paper Table 3) and design from a sketch (the MGD task),
each next to baselines measured in the same run (docs/design.md sections 7 and 10).

Try-on examples are the split's items with person + mask extras (VITON-HD, the demo's drawn
people). The garment conditions the generator through its in-shop image, its caption, or both
(``queries``), and the generator fills the person's mask at its try-on side
(``model.generator.tryon_resolution``); every figure is taken at that side.

- paired: each person with the garment they wear, the person being the ground truth. FID and
  KID against the real persons, SSIM and PSNR over the whole image and inside the mask, and the
  share of pixels outside the mask that changed (0: the known region is copied back). The same
  for two baselines: ``mean_colour`` (the mask filled with the garment's mean colour) and
  ``untrained`` (a generator of the same recipe at step 0, with the trained one's query
  statistics). LPIPS is not reported: its AlexNet/VGG weights cannot be had offline here.
- unpaired: each person wearing another garment (the garment item's
  ``attributes["unpaired_person"]``): FID and KID against the real persons; pixels changed outside.
- design (generators with a sketch input): one garment per item of the split from its caption and
  the edges of its image; the edge IoU between that sketch and the result's edges, for the result
  and for the same caption and seed without the sketch; FID/KID against the real garments; the
  colour accuracy on the demo. CLIP-S needs a CLIP model: ``bench clip-score --clip``.

FID and KID estimate a 2048-dimensional feature distribution: from a few dozen images they are
not meaningful, and the report says so next to them.
"""

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import LoadedCheckpoint, load_checkpoint
from unifashion_core.config import QUERY_SOURCES
from unifashion_core.data.images import image_to_array, open_image
from unifashion_core.data.manifest import Dataset, Item, load_dataset
from unifashion_core.data.tryon import TryOnInputs, edges, has_tryon, load_tryon, stack_tryon
from unifashion_core.errors import UserError
from unifashion_core.evaluation.reports import BenchReport, markdown_table, provenance, provenance_lines, write_report
from unifashion_core.features import image_tokens
from unifashion_core.metrics.generation import MIN_FID_IMAGES, MemoFeatures, load_inception
from unifashion_core.metrics.tryon import changed_outside, edge_iou, paired_scores
from unifashion_core.progress import NullProgress, Progress

LPIPS_NOTE = "not reported: LPIPS needs pretrained AlexNet/VGG weights, which cannot be had offline here"
RELIABLE_FID_IMAGES = 2048  # fewer images than Inception features: a rank-deficient covariance
EXAMPLE_ROWS = 6
CELL = 96  # pixels per picture in the example sheets


@dataclass(frozen=True)
class Sampling:
    """How every image of the run is sampled."""

    steps: int
    sampler: str
    guidance: float
    seed: int


def bench_tryon(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    max_items: int = 0,
    queries: str = "image",
    with_sketch: bool = False,
    steps: int = 20,
    sampler: str = "dpm++",
    guidance: float | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Paired and unpaired try-on, and design from a sketch, on ``split`` (see the module doc).

    Args:
        checkpoint: a checkpoint with the generate head (an inpainting generator).
        data: a prepared dataset with try-on items (person + mask extras).
        out: the report directory (``report.json``, ``report.md``, ``tryon.png``, ``design.png``).
        split: the evaluation split.
        max_items: at most this many try-on items and design items (0 = all).
        queries: how the garment conditions try-on: ``image`` (its in-shop image), ``text`` (its
            caption) or ``multimodal`` (both).
        with_sketch: also give the person's sketch (when the item has one) to the try-on settings.
        steps, sampler, guidance: sampling (guidance None: the recipe's).
        seed: seed of every sample.
        cache_dir: the vision-feature cache.
        progress: progress events.

    Raises:
        UserError: an unknown ``queries``, a generator without inpainting, or no try-on items.
    """
    if queries not in QUERY_SOURCES:
        raise UserError(f"--queries {queries!r}: choose one of {', '.join(QUERY_SOURCES)}.")
    loaded = load_checkpoint(checkpoint, heads=("generate",))
    head, g = loaded.model.generator, loaded.model.config.generator
    if not head.inpainting:
        raise UserError("this checkpoint's generator takes no person and mask (model.generator.inpainting: false); "
                        "train one with inpainting to bench try-on.")
    dataset = load_dataset(data)
    items = _tryon_items(dataset, split, max_items, queries)
    sampling = Sampling(steps, sampler, g.guidance_scale if guidance is None else guidance, seed)
    run = _Run(loaded, dataset, sampling, queries, cache_dir, progress)
    report: dict[str, Any] = {
        **provenance("tryon", _protocol(queries, with_sketch, sampling, g.tryon_resolution), split, seed,
                     dataset, loaded, len(items)),
        "resolution": g.tryon_resolution, "queries": queries, "lpips": LPIPS_NOTE,
    }
    inputs = run.inputs(items)
    report["paired"] = run.paired(items, inputs, with_sketch, Path(out))
    garments = [item for item in dataset.split(split) if "unpaired_person" in item.attributes][: max_items or None]
    report["unpaired"] = run.unpaired(garments, torch.from_numpy((inputs.pixel_values + 1) / 2), with_sketch)
    if head.use_sketch:
        garments = [item for item in dataset.split(split) if item.image != item.extras.get("person")]
        report["design"] = run.design(garments[: max_items or None], Path(out))
    return write_report("tryon", out, report, _markdown(report))


def _protocol(queries: str, with_sketch: bool, sampling: Sampling, size: int) -> str:
    return (f"try-on items of the split, garment as {queries} queries{' + sketch' if with_sketch else ''}, "
            f"{sampling.sampler} {sampling.steps} steps, guidance {sampling.guidance}, {size}px; "
            "paired vs the persons themselves, unpaired vs attributes.unpaired_person")


def _tryon_items(dataset: Dataset, split: str, max_items: int, queries: str) -> list[Item]:
    items = [item for item in dataset.split(split) if has_tryon(item)][: max_items or None]
    if not items:
        raise UserError(f"split {split!r} of {dataset.root} has no try-on items (a person and an agnostic mask "
                        "among the extras): prepare demo, or VITON-HD with its agnostic-mask folder.")
    if queries != "text" and any(item.image == item.extras["person"] for item in items):
        raise UserError("these try-on items have no in-shop garment image (the item's image is the person): "
                        "use --queries text.")
    return items


class _Run:
    """One bench run: the model, its step-0 twin, and how to condition and sample."""

    def __init__(self, loaded: LoadedCheckpoint, dataset: Dataset, sampling: Sampling, source: str,
                 cache_dir: Path | None, progress: Progress) -> None:
        self.loaded, self.model, self.dataset = loaded, loaded.model, dataset
        self.head, self.config = loaded.model.generator, loaded.model.config.generator
        self.sampling, self.source, self.cache_dir, self.progress = sampling, source, cache_dir, progress

    def paired(self, items: list[Item], inputs: TryOnInputs, with_sketch: bool, out: Path) -> dict[str, Any]:
        """Model and baselines on each person (``inputs``) with their own garment."""
        truth = torch.from_numpy((inputs.pixel_values + 1) / 2)  # (N, 3, S, S)
        mask = torch.from_numpy(inputs.mask)
        queries = self.conditions(items, self.source)
        results = {
            "model": self.sample(self.head, queries, inputs, with_sketch, "try-on (paired)"),
            "mean_colour": _mean_colour_fill(self.dataset, items, truth, mask),
            "untrained": self.sample(_untrained(self.loaded), queries, inputs, with_sketch, "try-on (step 0)"),
        }
        scores = {name: paired_scores(result, truth, mask) | self.distribution(truth, result)
                  for name, result in results.items()}
        _tryon_sheet(self.dataset, items, truth, mask, results, out / "tryon.png")
        return {"num_pairs": len(items), **scores}

    def unpaired(self, items: list[Item], truth: torch.Tensor, with_sketch: bool) -> dict[str, Any]:
        """The model on each person dressed in another garment (``items``: the garments, which name
        the person), against the real persons ``truth``."""
        by_id = self.dataset.by_id()
        pairs = [(item, by_id[other]) for item in items
                 if (other := item.attributes.get("unpaired_person")) in by_id and has_tryon(by_id[other])]
        if not pairs:
            return {"num_pairs": 0, "note": "no item names an unpaired_person with a person and a mask"}
        garments, people = [garment for garment, _ in pairs], [person for _, person in pairs]
        inputs = self.inputs(people)
        result = self.sample(self.head, self.conditions(garments, self.source), inputs, with_sketch,
                             "try-on (unpaired)")
        known = torch.from_numpy((inputs.pixel_values + 1) / 2)
        return {"num_pairs": len(pairs), "changed_outside_mask": changed_outside(result, known,
                                                                                 torch.from_numpy(inputs.mask)),
                **self.distribution(truth, result)}

    def design(self, items: list[Item], out: Path) -> dict[str, Any]:
        """Garments from caption + sketch (the edges of the real garment), and without the sketch."""
        from unifashion_core.metrics.generation import colour_accuracy

        size = self.config.resolution
        real = torch.from_numpy(np.stack([image_to_array(open_image(self.dataset.image_path(i)), size) for i in items]))
        sketch = torch.from_numpy(np.stack([edges(image) for image in real.numpy()]))[:, None]  # (N, 1, R, R)
        queries = self.conditions(items, "text")
        made = {name: self.generate(queries, sketch if name == "with_sketch" else None, f"design ({name})")
                for name in ("with_sketch", "without_sketch")}
        report: dict[str, Any] = {"num_items": len(items), "resolution": size}
        for name, images in made.items():
            ious = [edge_iou(s[0].numpy(), edges(image.numpy())) for s, image in zip(sketch, images, strict=True)]
            report[name] = {"edge_iou": float(np.mean(ious)), **self.distribution(real, images)}
            accuracy = colour_accuracy(images, [item.attributes.get("colour") for item in items])
            if accuracy is not None:
                report[name]["colour_accuracy"] = accuracy
        report["clip_score"] = "not computed here: bench clip-score --clip DIR measures it"
        _design_sheet(sketch, made, real, out / "design.png")
        return report

    @cached_property
    def features(self) -> MemoFeatures | str:
        """The FID Inception-v3 (remembering features), or why it cannot be loaded; loaded by the
        first image set large enough to score, so a bench of small sets never loads it."""
        try:
            return MemoFeatures(load_inception())
        except UserError as exc:
            return str(exc)

    def distribution(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, Any]:
        """FID and KID (Inception-v3) of ``fake`` against ``real``, with a note when too few to mean much."""
        from unifashion_core.metrics.generation import fid_kid

        count = min(len(real), len(fake))
        if count < MIN_FID_IMAGES:  # noise, and bench fid refuses it; the Inception passes are not spent on it
            return {"fid": None, "kid_mean": None,
                    "fid_note": f"FID/KID not computed from {count} images (fewer than the {MIN_FID_IMAGES} that bench "
                                "fid requires, not meaningful); compare SSIM/PSNR instead"}
        if isinstance(self.features, str):
            return {"fid": None, "kid_mean": None, "fid_note": self.features}
        scores = fid_kid(real, fake, kid_subset_size=min(50, count), extractor=self.features)
        if count < RELIABLE_FID_IMAGES:
            scores["fid_note"] = (f"{count} images: FID/KID estimate a {RELIABLE_FID_IMAGES}-dimensional feature "
                                  "distribution and are not meaningful from so few; compare SSIM/PSNR instead")
        return scores

    def inputs(self, items: list[Item]) -> TryOnInputs:
        return stack_tryon([load_tryon(self.dataset, item, self.config.tryon_resolution) for item in items])

    def conditions(self, items: list[Item], source: str) -> torch.Tensor:
        """(N, Q, H) query outputs of the garments of ``items`` from ``source``."""
        texts = [item.caption for item in items]
        if source == "text":
            tokens = torch.zeros(len(items), 1, 1)
        else:
            kept, tokens, skipped = image_tokens(self.model.vision, self.dataset, items, self.cache_dir, self.progress)
            if len(kept) != len(items):
                raise UserError(f"{len(skipped.entries)} garment images cannot be read: {skipped.entries[0].path}.")
        return self.model.source_queries(source, tokens, texts)

    def sample(
        self, head: Any, queries: torch.Tensor, inputs: TryOnInputs, with_sketch: bool, task: str
    ) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1]: ``head`` filling each person's mask."""
        mask, masked = torch.from_numpy(inputs.mask), torch.from_numpy(inputs.masked_pixel_values)
        sketch = torch.from_numpy(inputs.sketch) if with_sketch and head.use_sketch else None
        return self.batched(head, queries, self.source, task, lambda rows: {
            "mask": mask[rows], "masked_pixel_values": masked[rows],
            **({"sketch": sketch[rows]} if sketch is not None else {})})

    def generate(self, queries: torch.Tensor, sketch: torch.Tensor | None, task: str) -> torch.Tensor:
        return self.batched(self.head, queries, "text", task,
                            lambda rows: {} if sketch is None else {"sketch": sketch[rows]})

    def batched(self, head: Any, queries: torch.Tensor, source: str, task: str, extra: Any,
                batch_size: int = 16) -> torch.Tensor:
        """Sample in batches; ``extra(rows)`` gives each batch's inpainting or sketch inputs."""
        s, images = self.sampling, []
        self.progress.start(task, len(queries))
        for rows in batch_slices(len(queries), batch_size):
            result = head.sample(queries[rows], num_inference_steps=s.steps, sampler=s.sampler,
                                 guidance_scale=s.guidance, seed=s.seed + rows.start, source=source, **extra(rows))
            images.append(result.images.float().clamp(0, 1).cpu())
            self.progress.advance(task, rows.stop - rows.start)
        return torch.cat(images)


def _untrained(loaded: LoadedCheckpoint) -> Any:
    """The checkpoint's generator as it was at step 0: built from the recipe under its seed, with
    the trained generator's query statistics (set before training, not learnt)."""
    from unifashion_core.models.generator import build_generator

    trained = loaded.model.generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(loaded.recipe.seed)
        fresh = build_generator(loaded.model.config.generator, trained.adapter.in_features,
                                trained.null_context.shape[1])
    fresh.query_mean.copy_(trained.query_mean)
    fresh.query_std.copy_(trained.query_std)
    return fresh.to(trained.unet.device).eval()


def _mean_colour_fill(dataset: Dataset, items: list[Item], truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The baseline: each person's mask filled with the mean colour of their garment's pixels."""
    colours = torch.from_numpy(np.stack([_garment_colour(dataset, item) for item in items]))  # (N, 3)
    return truth * (1 - mask) + colours[:, :, None, None].float() * mask


def _garment_colour(dataset: Dataset, item: Item) -> np.ndarray:
    """(3,) in [0, 1]: the mean of the garment's pixels (its cloth mask, else those that differ
    from the image's border colour by more than 40 of 255 in some channel)."""
    image = np.asarray(open_image(dataset.image_path(item)), np.float32)
    if "cloth_mask" in item.extras:
        pixels = image[np.asarray(open_image(dataset.image_path(item, "cloth_mask")).convert("L")) >= 128]
    else:
        border = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]), axis=0)
        pixels = image[np.abs(image - border).max(axis=-1) > 40]
    return (pixels.mean(axis=0) if len(pixels) else image.reshape(-1, 3).mean(axis=0)) / 255


def _cells(images: torch.Tensor) -> list[Image.Image]:
    """(N, C, H, W) in [0, 1] -> N RGB pictures of CELL x CELL (nearest-neighbour upscaled)."""
    arrays = (images.float().clamp(0, 1).expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()).resize((CELL, CELL), Image.Resampling.NEAREST)
            for a in arrays]


def _sheet(columns: list[list[Image.Image]], path: Path) -> None:
    """Write the pictures column by column as one PNG (rows = examples)."""
    rows = min(len(column) for column in columns)
    sheet = Image.new("RGB", (CELL * len(columns), CELL * rows), "white")
    for x, column in enumerate(columns):
        for y, picture in enumerate(column[:rows]):
            sheet.paste(picture, (x * CELL, y * CELL))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    sheet.save(tmp)
    tmp.replace(path)


def _tryon_sheet(dataset: Dataset, items: list[Item], truth: torch.Tensor, mask: torch.Tensor,
                 results: dict[str, torch.Tensor], path: Path) -> None:
    """tryon.png: person, garment, masked person, then the model and each baseline."""
    rows = slice(0, EXAMPLE_ROWS)
    size = truth.shape[-1]
    garments = torch.from_numpy(np.stack([image_to_array(open_image(dataset.image_path(i)), size)
                                          for i in items[rows]]))
    columns = [truth[rows], garments, truth[rows] * (1 - mask[rows]) + 0.5 * mask[rows],
               *(result[rows] for result in results.values())]
    _sheet([_cells(column) for column in columns], path)


def _design_sheet(sketch: torch.Tensor, made: dict[str, torch.Tensor], real: torch.Tensor, path: Path) -> None:
    """design.png: the sketch, the garment with it, without it, and the real garment."""
    rows = slice(0, EXAMPLE_ROWS)
    _sheet([_cells(1 - sketch[rows]), *(_cells(images[rows]) for images in made.values()), _cells(real[rows])], path)


def _markdown(report: dict[str, Any]) -> str:
    paired = report["paired"]
    columns = ["method", "ssim_mask", "psnr_mask", "ssim", "psnr", "fid", "kid_mean", "changed_outside_mask"]
    rows = [{"method": name, **paired[name]} for name in ("model", "mean_colour", "untrained")]
    lines = [f"# Try-on\n\n{provenance_lines(report)}",
             f"## Paired ({paired['num_pairs']} persons with their own garment)\n",
             markdown_table(rows, columns), f"LPIPS: {report['lpips']}.\n",
             "![](tryon.png) person, garment, masked person, model, mean colour, step 0\n"]
    unpaired = report["unpaired"]
    lines.append(f"## Unpaired ({unpaired['num_pairs']} persons with another garment)\n")
    lines.append(markdown_table([unpaired], ["fid", "kid_mean", "changed_outside_mask"]))
    if "design" in report:
        design = report["design"]
        rows = [{"sketch": name, **design[name]} for name in ("with_sketch", "without_sketch")]
        lines += [f"## Design from a sketch ({design['num_items']} garments, {design['resolution']}px)\n",
                  markdown_table(rows, ["sketch", "edge_iou", "fid", "kid_mean", "colour_accuracy"]),
                  "![](design.png) sketch, with the sketch, without it, the real garment\n"]
    notes = {paired["model"].get("fid_note"), unpaired.get("fid_note"),
             *(report["design"][name].get("fid_note") for name in ("with_sketch", "without_sketch")
               if "design" in report)} - {None}
    lines += [f"Note: {note}.\n" for note in sorted(notes)]
    return "\n".join(lines)
