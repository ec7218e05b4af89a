"""VITON-HD with the MGD captions: in-shop garments, the people wearing them, masks and sketches.

Two layouts are read:

- official: ``{train,test}_pairs.txt`` (``person.jpg cloth.jpg``), ``{split}/cloth/``,
  ``{split}/image/``, ``{split}/cloth-mask/``, ``{split}/agnostic-v3.2/``,
  ``{split}/agnostic-mask/`` (``00055_00_mask.png`` or ``00055_00.png``), optional
  ``{split}/im_sketch/``, and the MGD ``captions.json`` (or ``captions_mgd.json``) mapping
  the id without ``_00`` to 3 phrases.
  Without a pairs file, the ``{split}/cloth/`` folder is listed instead.
- flat (the OOTDiffusion examples): ``garment/``, ``model/`` and ``captions_mgd.json``, no pairs;
  every garment goes to ``test`` and the people are listed in the report (``persons``), since
  they are not paired with the garments.

An item is one garment. caption = the first MGD phrase, references = the other two (independent
annotations, the reference set for caption evaluation), description = the three phrases joined
with ", " (the MGD text prompt). extras: ``person`` (the same id under ``image/``), ``agnostic``,
``mask`` (agnostic mask), ``cloth_mask`` and ``sketch``, where present and readable; an unreadable
extra is left out and reported (kind ``extra``). The unpaired person of ``test_pairs.txt`` is kept
in ``attributes["unpaired_person"]``. A garment without an MGD entry is skipped with reason
``missing_caption``.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unifashion_core.data.adapters.common import IMAGE_DIR, check_image, clean_text, copy_files, report_info
from unifashion_core.data.manifest import Item, SkipLog, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.fileio import read_json
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


@dataclass(frozen=True)
class _Garment:
    id: str
    split: str
    image: Path
    extras: dict[str, Path] = field(default_factory=dict)
    unpaired_person: str = ""


def prepare_vitonhd(
    root: Path, out: Path, *, seed: int = 0, progress: Progress = NullProgress()
) -> dict[str, Any]:
    """Prepare VITON-HD (official or flat examples layout) with the MGD captions.

    Args:
        root: the VITON-HD directory (see the module docstring for both layouts).
        out: the prepared dataset directory.
        seed: recorded in the report (the official split is used).
        progress: receives progress events.

    Returns:
        The report of ``write_dataset``.
    """
    captions, caption_file = read_captions(root)
    skipped, files = SkipLog(), {}
    if any((root / f"{s}_pairs.txt").is_file() or (root / s).is_dir() for s in VITON_SPLITS):
        layout, persons = "official", []
        garments = [g for split in VITON_SPLITS for g in _official_garments(root, split, skipped)]
    elif (root / "garment").is_dir():
        layout, garments = "flat", [_Garment(p.stem, "test", p) for p in _files(root / "garment")]
        persons = _check_persons(root, files, skipped)
    else:
        raise UserError(f"{root} has no {{train,test}}_pairs.txt and no garment/; is it VITON-HD?")
    progress.start("check images", len(garments))
    items: list[Item] = []
    seen: set[str] = set()
    for garment in garments:
        progress.advance("check images")
        if garment.id in seen:
            skipped.add(garment.id, "duplicate_id", garment.image)
            continue
        item = _garment_item(root, garment, captions, files, skipped)
        if item is not None:
            seen.add(item.id)
            items.append(item)
    info = report_info("vitonhd", root, seed, layout=layout, captions=caption_file, persons=persons)
    return write_dataset(out, items, [], skipped, info, copy_files(files, progress))


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


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _find(folder: Path, stem: str) -> Path | None:
    names = [f"{stem}{suffix}{ext}" for suffix in ("", "_mask") for ext in IMAGE_EXTENSIONS]
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _read_pairs(root: Path, split: str, skipped: SkipLog) -> list[tuple[str, str]]:
    path = root / f"{split}_pairs.txt"
    if not path.is_file():  # no pairs file: every garment with its own person
        return [(p.name, p.name) for p in _files(root / split / "cloth")]
    pairs = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
        extras = {
            key: path
            for key, folder in EXTRA_FOLDERS.items()
            if (path := _find(root / split / folder, stem)) is not None
        }
        unpaired = person_stem if person_stem != stem else ""
        garments[cloth] = _Garment(stem, split, root / split / "cloth" / cloth, extras, unpaired)
    return list(garments.values())


def _check_persons(root: Path, files: dict[str, Path], skipped: SkipLog) -> list[str]:
    persons = []
    for path in _files(root / "model"):
        if check_image(path, path.stem, skipped, kind="person"):
            persons.append(_add_file(root, path, files))
    return persons


def _add_file(root: Path, path: Path, files: dict[str, Path]) -> str:
    dest = f"{IMAGE_DIR}/{path.relative_to(root).as_posix()}"
    files[dest] = path
    return dest


def _phrases(captions: dict[str, list[str]], stem: str) -> tuple[list[str], str]:
    raw = captions.get(stem.split("_")[0], captions.get(stem))
    if raw is None:
        return [], "missing_caption"
    phrases = [clean_text(p) for p in raw if clean_text(p)]
    return phrases, "" if phrases else "empty_caption"


def _garment_item(
    root: Path,
    garment: _Garment,
    captions: dict[str, list[str]],
    files: dict[str, Path],
    skipped: SkipLog,
) -> Item | None:
    phrases, reason = _phrases(captions, garment.id)
    if reason:
        skipped.add(garment.id, reason, garment.image)
        return None
    if not check_image(garment.image, garment.id, skipped):
        return None
    extras = {
        key: _add_file(root, path, files)
        for key, path in garment.extras.items()
        if check_image(path, f"{garment.id}:{key}", skipped, kind="extra")
    }
    return Item(
        id=garment.id,
        image=_add_file(root, garment.image, files),
        split=garment.split,
        caption=phrases[0],
        description=", ".join(phrases),
        category=CATEGORY,
        references=tuple(phrases[1:]),
        attributes={"unpaired_person": garment.unpaired_person} if garment.unpaired_person else {},
        extras=extras,
    )
