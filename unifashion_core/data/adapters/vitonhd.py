"""VITON-HD with the MGD captions: in-shop garments, the people wearing them, masks and sketches.

Two layouts are read:

- official: ``{train,test}_pairs.txt`` (``person.jpg cloth.jpg``), ``{split}/cloth/``,
  ``{split}/image/``, ``{split}/cloth-mask/``, ``{split}/agnostic-v3.2/``,
  ``{split}/agnostic-mask/`` (``00055_00_mask.png`` or ``00055_00.png``), optional
  ``{split}/im_sketch/``, and the MGD ``captions.json`` (or ``captions_mgd.json``) mapping
  the id without ``_00`` to 3 phrases.
  Without a pairs file, the ``{split}/cloth/`` folder is listed instead.
- flat (the OOTDiffusion examples): ``garment/``, ``model/`` and ``captions_mgd.json``, no pairs
  and no masks; everything goes to ``test``. The people are listed in the report (``persons``)
  and, since they wear none of the garments, each person with an MGD caption (of the garment they
  wear) also becomes a try-on item of its own: image and ``person`` extra the photo, ``mask`` an
  agnostic mask derived from it (:func:`derive_upper_body_mask`; ``attributes["mask"] =
  "derived"``), so that ``bench tryon --queries text`` measures paired try-on on them. Each
  garment names a person as ``unpaired_person`` (in turn), for the unpaired setting.

An item is one garment. caption = the first MGD phrase, references = the other two (independent
annotations, the reference set for caption evaluation), description = the three phrases joined
with ", " (the MGD text prompt). extras: ``person`` (the same id under ``image/``), ``agnostic``,
``mask`` (agnostic mask), ``cloth_mask`` and ``sketch``, where present and readable; an unreadable
extra is left out and reported (kind ``extra``). The unpaired person of ``test_pairs.txt`` is kept
in ``attributes["unpaired_person"]``. A garment without an MGD entry is skipped with reason
``missing_caption``. A file name (from a pairs file or a folder listing) that leads outside the
root, by ``..``, an absolute name or a symlink, is skipped with reason ``outside_root``.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from unifashion_core.data.adapters.common import (
    IMAGE_DIR,
    OUTSIDE_ROOT,
    clean_text,
    copy_files,
    destination,
    report_info,
    resolve_inside,
    source_image,
)
from unifashion_core.data.images import MAX_PIXELS, open_image
from unifashion_core.data.manifest import Item, SkipLog, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.fileio import read_json, read_text
from unifashion_core.progress import NullProgress, Progress

CAPTION_FILES = ("captions.json", "captions_mgd.json")
VITON_SPLITS = ("train", "test")
EXTRA_FOLDERS = {
    "person": "image",
    "agnostic": "agnostic-v3.2",
    "mask": "agnostic-mask",
    "cloth_mask": "cloth-mask",
    "sketch": "im_sketch",
}
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")
CATEGORY = "upper_body"  # VITON-HD holds upper-body garments only
DERIVED_MASKS = ("derived (flat layout): the person's silhouette between 24 % and 60 % of the height, "
                 "widened by 2 % of the width; not VITON-HD's agnostic masks")


@dataclass(frozen=True)
class _Garment:
    """A garment found in the layout; paths are names relative to the root."""

    id: str
    split: str
    image: str
    extras: dict[str, str] = field(default_factory=dict)
    unpaired_person: str = ""


@dataclass
class _Images:
    """Checks the images named relative to ``root`` and gathers the usable ones to copy."""

    root: Path
    max_pixels: int
    skipped: SkipLog = field(default_factory=SkipLog)
    files: dict[str, Path] = field(default_factory=dict)

    def add(self, name: str, id: str, kind: str = "item") -> str | None:
        """The manifest path of image ``name``, or None when it is unusable (reason recorded)."""
        image = source_image(self.root, name, id, self.skipped, kind, self.max_pixels)
        if image is None:
            return None
        dest = f"{IMAGE_DIR}/{name}"
        self.files[dest] = image
        return dest


def prepare_vitonhd(
    root: Path,
    out: Path,
    *,
    seed: int = 0,
    progress: Progress = NullProgress(),
    max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """Prepare VITON-HD (official or flat examples layout) with the MGD captions.

    Args:
        root: the VITON-HD directory (see the module docstring for both layouts).
        out: the prepared dataset directory.
        seed: recorded in the report (the official split is used).
        progress: receives progress events.
        max_pixels: images with more pixels are skipped (reason ``too_large``).

    Returns:
        The report of ``write_dataset``.
    """
    captions, caption_file = read_captions(root)
    images = _Images(root, max_pixels)
    if any((root / f"{s}_pairs.txt").is_file() or (root / s).is_dir() for s in VITON_SPLITS):
        layout, persons = "official", []
        garments = [g for split in VITON_SPLITS for g in _official_garments(root, split, images.skipped)]
    elif (root / "garment").is_dir():
        layout, garments = "flat", [_Garment(Path(n).stem, "test", n) for n in _files(root, "garment")]
        persons = [dest for n in _files(root, "model") if (dest := images.add(n, Path(n).stem, "person"))]
    else:
        raise UserError(f"{root} has no {{train,test}}_pairs.txt and no garment/; is it VITON-HD?")
    items = _garment_items(garments, captions, images, progress)
    derived: dict[str, Path] = {}
    if layout == "flat":
        items = _flat_tryon_items(items, persons, captions, images, derived)
    info = report_info("vitonhd", root, seed, layout=layout, captions=caption_file, persons=persons,
                       **({"masks": DERIVED_MASKS} if derived else {}))
    copy = copy_files(images.files, progress)

    def write(tmp: Path) -> None:
        copy(tmp)
        for dest, person in derived.items():
            derive_upper_body_mask(open_image(person)).save(destination(tmp, dest), format="PNG")

    return write_dataset(out, items, [], images.skipped, info, write)


def _flat_tryon_items(
    garments: list[Item], persons: list[str], captions: dict[str, list[str]], images: "_Images",
    derived: dict[str, Path],
) -> list[Item]:
    """The flat layout's garments, each naming a person in turn as its ``unpaired_person``, and
    per person with an MGD caption a try-on example: the extras of the garment of the same id when
    there is one, else an item of its own; ``derived`` gets {mask path: person photo}."""
    by_id = {garment.id: garment for garment in garments}
    people = []
    for person in persons:
        stem = Path(person).stem
        phrases, reason = _phrases(captions, stem)
        if reason:
            images.skipped.add(stem, reason, person, "person")
            continue
        mask = f"{IMAGE_DIR}/derived/agnostic-mask/{stem}.png"
        derived[mask] = images.files[person]
        extras = {"person": person, "mask": mask}
        if stem in by_id:
            by_id[stem] = dataclasses.replace(by_id[stem], extras={**by_id[stem].extras, **extras})
        else:
            people.append(Item(id=stem, image=person, split="test", caption=phrases[0],
                               description=", ".join(phrases), category=CATEGORY, references=tuple(phrases[1:]),
                               attributes={"mask": "derived"}, extras=extras))
    worn = [item.id for item in [*by_id.values(), *people] if "person" in item.extras]
    paired = [dataclasses.replace(g, attributes={**g.attributes, "unpaired_person": worn[i % len(worn)]})
              if worn and worn[i % len(worn)] != g.id else g for i, g in enumerate(by_id.values())]
    return paired + people


def derive_upper_body_mask(person: Image.Image) -> Image.Image:
    """An agnostic mask for a VITON-HD-framed photo without one: between 24 % and 60 % of the
    height (below the chin, above the hips), each row from the leftmost to the rightmost pixel of
    the person's silhouette within 4 % of the height around it (silhouette: more than 30 of 255
    away from the border's median colour; arms included, a light top on a light background filled
    in), widened by 2 % of the width.

    A heuristic for the flat examples only: the official layout's agnostic masks come from human
    parsing and pose, which need models this package does not ship.
    """
    array = np.asarray(person, np.float32)
    height, width = array.shape[:2]
    border = np.median(np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]]), axis=0)
    silhouette = np.abs(array - border).max(axis=-1) > 30  # (H, W)
    silhouette = np.asarray(Image.fromarray(silhouette.astype(np.uint8) * 255).filter(ImageFilter.MedianFilter(5))) > 0
    rows = range(int(0.24 * height), int(0.60 * height))
    window = max(1, round(0.04 * height))  # a row's span is the widest of its neighbours'
    spans = {row: np.flatnonzero(silhouette[max(0, row - window):row + window + 1].any(axis=0)) for row in rows}
    band = np.zeros_like(silhouette)
    for row, found in spans.items():
        if len(found):
            band[row, found[0]:found[-1] + 1] = True
    mask = Image.fromarray(band.astype(np.uint8) * 255)
    grow = max(1, round(0.02 * width))
    return mask.filter(ImageFilter.MaxFilter(2 * grow + 1))


def _garment_items(
    garments: list[_Garment], captions: dict[str, list[str]], images: _Images, progress: Progress
) -> list[Item]:
    progress.start("check images", len(garments))
    items: list[Item] = []
    seen: set[str] = set()
    for garment in garments:
        progress.advance("check images")
        if garment.id in seen:
            images.skipped.add(garment.id, "duplicate_id", images.root / garment.image)
            continue
        item = _garment_item(garment, captions, images)
        if item is not None:
            seen.add(item.id)
            items.append(item)
    return items


def read_captions(root: Path) -> tuple[dict[str, list[str]], str]:
    """The MGD captions (id without ``_00`` -> phrases) and the name of the file they came from.

    Raises:
        UserError: no captions file, or one that is not a JSON object.
    """
    path = next((root / name for name in CAPTION_FILES if (root / name).is_file()), None)
    if path is None:
        raise UserError(
            f"{root} has no {' or '.join(CAPTION_FILES)}; add the MGD captions of VITON-HD there."
        )
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} should map image ids to lists of phrases.")
    captions = {str(k): [v] if isinstance(v, str) else [str(p) for p in v] for k, v in data.items()}
    return captions, path.name


def _files(root: Path, folder: str) -> list[str]:
    """The names (relative to ``root``) of the files listed in ``root / folder``."""
    if not (root / folder).is_dir():
        return []
    listed = (p for p in (root / folder).iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(f"{folder}/{p.name}" for p in listed)


def _find(root: Path, folder: str, stem: str) -> str | None:
    names = [f"{stem}{suffix}{ext}" for suffix in ("", "_mask") for ext in IMAGE_EXTENSIONS]
    return next((f"{folder}/{n}" for n in names if (root / folder / n).is_file()), None)


def _read_pairs(root: Path, split: str, skipped: SkipLog) -> list[tuple[str, str]]:
    path = root / f"{split}_pairs.txt"
    if not path.is_file():  # no pairs file: every garment with its own person
        return [(Path(n).name, Path(n).name) for n in _files(root, f"{split}/cloth")]
    pairs = []
    for line_number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if len(fields) == 2:
            pairs.append((fields[0], fields[1]))
        elif fields:
            skipped.add(f"{path.name}:{line_number}", "malformed_line", path, "line")
    return pairs


def _official_garments(root: Path, split: str, skipped: SkipLog) -> list[_Garment]:
    garments: dict[str, _Garment] = {}
    for person, cloth in _read_pairs(root, split, skipped):
        stem, person_stem = Path(cloth).stem, Path(person).stem
        if cloth in garments:
            continue  # another pairing of a garment already listed
        if resolve_inside(root, cloth, f"{split}/cloth") is None:  # e.g. ../../x.png or /x.png
            skipped.add(stem, OUTSIDE_ROOT, root / split / "cloth" / cloth)
            continue
        extras = {
            key: name
            for key, folder in EXTRA_FOLDERS.items()
            if (name := _find(root, f"{split}/{folder}", stem)) is not None
        }
        unpaired = person_stem if person_stem != stem else ""
        garments[cloth] = _Garment(stem, split, f"{split}/cloth/{cloth}", extras, unpaired)
    return list(garments.values())


def _phrases(captions: dict[str, list[str]], stem: str) -> tuple[list[str], str]:
    raw = captions.get(stem.split("_")[0], captions.get(stem))
    if raw is None:
        return [], "missing_caption"
    phrases = [clean_text(p) for p in raw if clean_text(p)]
    return phrases, "" if phrases else "empty_caption"


def _garment_item(garment: _Garment, captions: dict[str, list[str]], images: _Images) -> Item | None:
    """The item of ``garment`` (its image inside the root and readable, its caption present)."""
    phrases, reason = _phrases(captions, garment.id)
    if reason:
        images.skipped.add(garment.id, reason, images.root / garment.image)
        return None
    image = images.add(garment.image, garment.id)
    if image is None:
        return None
    extras = {
        key: dest
        for key, name in garment.extras.items()
        if (dest := images.add(name, f"{garment.id}:{key}", "extra")) is not None
    }
    return Item(
        id=garment.id,
        image=image,
        split=garment.split,
        caption=phrases[0],
        description=", ".join(phrases),
        category=CATEGORY,
        references=tuple(phrases[1:]),
        attributes={"unpaired_person": garment.unpaired_person} if garment.unpaired_person else {},
        extras=extras,
    )
