"""The built-in demo dataset: readable, deterministic, and true to its attributes."""

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unifashion_core.data.adapters.demo import make_items, prepare_demo
from unifashion_core.data.demo.attributes import ATTRIBUTES, PALETTE, attribute_space, space_summary
from unifashion_core.data.demo.drawing import draw_garment, garment_pixels, nearest_colour
from unifashion_core.data.demo.triplets import make_triplets
from unifashion_core.data.images import open_image
from unifashion_core.data.manifest import SPLITS, Dataset, Item, Triplet, load_dataset
from unifashion_core.errors import UserError

NUM_ITEMS = 300
NUM_TRYON = 144  # the default: DEFAULT_NUM_TRYON
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    prepare_demo(out, num_items=NUM_ITEMS, seed=0, image_size=IMAGE_SIZE)
    return out


@pytest.fixture(scope="module")
def dataset(demo_dir: Path) -> Dataset:
    return load_dataset(demo_dir)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_readable_images_and_artifacts(demo_dir: Path, dataset: Dataset) -> None:
    assert {"manifest.jsonl", "triplets.jsonl", "report.json"} <= set(_tree(demo_dir))
    assert len(dataset.items) == NUM_ITEMS + NUM_TRYON
    for item in dataset.items:
        image = open_image(dataset.image_path(item))
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert re.fullmatch(r"images/demo-(tryon-)?\d{6}\.png", item.image)
    report = dataset.report
    assert report["dataset"] == "demo" and report["seed"] == 0
    assert report["image_size"] == IMAGE_SIZE and report["num_items_requested"] == NUM_ITEMS
    assert report["num_tryon"] == NUM_TRYON
    assert report["attribute_space"]["size"] == len(attribute_space())
    assert sum(report["num_items"].values()) == NUM_ITEMS + NUM_TRYON
    assert report["num_skipped"] == 0


def test_same_seed_is_byte_identical_and_another_seed_differs(demo_dir: Path, tmp_path: Path) -> None:
    prepare_demo(tmp_path / "same", num_items=NUM_ITEMS, seed=0, image_size=IMAGE_SIZE)
    prepare_demo(tmp_path / "other", num_items=NUM_ITEMS, seed=1, image_size=IMAGE_SIZE)
    reference = _tree(demo_dir)
    assert _tree(tmp_path / "same") == reference
    other = _tree(tmp_path / "other")
    assert other["manifest.jsonl"] != reference["manifest.jsonl"]
    assert other["triplets.jsonl"] != reference["triplets.jsonl"]
    assert other["images/demo-000000.png"] != reference["images/demo-000000.png"]


def test_attribute_combinations_are_unique(dataset: Dataset) -> None:
    keys = [tuple(sorted(item.attributes.items(), key=str)) for item in dataset.items]
    assert len(set(keys)) == len(keys)
    assert len({item.caption for item in dataset.items}) == len(dataset.items)


def _parse_caption(caption: str, space: dict[str, Any]) -> dict[str, str | None]:
    """Read "colour pattern [sleeve] [length] type" back into attributes (order enforced)."""
    words = caption.split(" ")
    lengths = {v for values in space["length"].values() for v in values}
    parsed: dict[str, str | None] = {
        "colour": words[0],
        "pattern": words[1],
        "type": words[-1],
        "sleeve": None,
        "length": None,
    }
    keys = []
    for word in words[2:-1]:
        keys.append("sleeve" if word in space["sleeve"] else "length" if word in lengths else "?")
        parsed[keys[-1]] = word
    assert keys in ([], ["sleeve"], ["length"], ["sleeve", "length"]), caption
    return parsed


def test_captions_and_descriptions_match_attributes(dataset: Dataset) -> None:
    space = dataset.report["attribute_space"]
    for item in dataset.items:
        attributes = {key: item.attributes[key] for key in ATTRIBUTES}
        assert _parse_caption(item.caption, space) == attributes
        assert item.category == attributes["type"]
        assert attributes["colour"] in PALETTE and attributes["pattern"] in space["pattern"]
        assert (attributes["sleeve"] is None) == (attributes["type"] not in space["sleeve_by_type"])
        assert (attributes["length"] is None) == (attributes["type"] not in space["length"])
        words = set(re.findall(r"[a-z]+(?:-[a-z]+)*", item.description))
        assert {v for v in attributes.values() if v} <= words, item.description
        assert 2 <= item.description.count(". ") + 1 <= 3


def test_drawn_garment_mean_colour_is_the_named_colour(dataset: Dataset) -> None:
    for item in dataset.items:
        pixels = garment_pixels(np.asarray(open_image(dataset.image_path(item))))
        assert len(pixels) > 0.05 * IMAGE_SIZE**2
        assert nearest_colour(pixels.mean(axis=0)) == item.attributes["colour"], item.caption


def test_nearest_colour_and_garment_pixels() -> None:
    for name, rgb in PALETTE.items():
        assert nearest_colour(rgb) == name
    image = np.full((4, 4, 3), 255, np.uint8)
    image[1:3, 1:3] = PALETTE["teal"]
    assert garment_pixels(image).shape == (4, 3)
    assert garment_pixels(np.full((4, 4, 3), 250, np.uint8)).shape == (0, 3)


def _silhouette(attributes: dict[str, str | None], seed: int) -> tuple[int, int]:
    """(lowest garment row, garment pixel count) of one drawing."""
    image = np.asarray(draw_garment(attributes, 128, np.random.default_rng(seed)))
    rows = np.flatnonzero((np.abs(image.astype(int) - 255).max(axis=-1) > 40).any(axis=1))
    return int(rows.max()), len(garment_pixels(image))


def _variants() -> list[dict[str, str | None]]:
    return [a for a in attribute_space() if a["colour"] == "blue" and a["pattern"] == "solid"]


def test_longer_garments_reach_lower_and_longer_sleeves_cover_more() -> None:
    space = space_summary()
    orders = {"length": space["length"], "sleeve": space["sleeve_by_type"]}
    for variant in _variants():
        for key, column in (("length", 0), ("sleeve", 1)):
            order = orders[key].get(variant["type"], [])
            if variant[key] is None or variant[key] == order[-1]:
                continue
            longer = {**variant, key: order[order.index(variant[key]) + 1]}
            shorter_most = max(_silhouette(variant, seed)[column] for seed in range(3))
            longer_least = min(_silhouette(longer, seed)[column] for seed in range(3))
            assert shorter_most < longer_least, (variant, key)


def _parse_clause(clause: str, space: dict[str, Any]) -> tuple[str, str]:
    """(attribute, value or 'longer'/'shorter') named by one modification clause."""
    tokens = re.findall(r"[a-z]+(?:-[a-z]+)*", clause.lower())
    patterns = {
        "plain": "solid",
        "no": "solid",
        "striped": "striped",
        "stripes": "striped",
        "polka": "polka-dot",
        "polka-dot": "polka-dot",
        "checked": "checked",
        "check": "checked",
        "checks": "checked",
    }
    lengths = {v for values in space["length"].values() for v in values}
    if any("sleeve" in t for t in tokens):
        vocab = {
            "sleeveless": "sleeveless",
            "no": "sleeveless",
            "short": "short-sleeve",
            "long": "long-sleeve",
            "longer": "longer",
            "shorter": "shorter",
        }
        return "sleeve", next(vocab[t] for t in tokens if t in vocab)
    for key, vocab in (
        ("type", {t: t for t in space["type"]}),
        ("length", {"longer": "longer", "shorter": "shorter"}),
        ("colour", {c: c for c in space["colour"]}),
        ("pattern", patterns),
        ("length", {v: v for v in lengths}),
    ):
        found = [vocab[t] for t in tokens if t in vocab]
        if found:
            return key, found[0]
    raise AssertionError(f"cannot parse clause {clause!r}")


def _allowed(reference: dict[str, Any], clauses: dict[str, str], space: dict[str, Any]) -> dict[str, set[Any] | None]:
    """Values each attribute may take; None means unconstrained."""
    garment = clauses.get("type", reference["type"])
    orders = {"sleeve": space["sleeve_by_type"].get(garment), "length": space["length"].get(garment)}
    allowed: dict[str, set[Any] | None] = {"type": {garment}}
    for key in ("colour", "pattern", "sleeve", "length"):
        if key in orders and orders[key] is None:
            allowed[key] = {None}
        elif clauses.get(key) in ("longer", "shorter"):
            order = orders[key]
            start = order.index(reference[key])
            allowed[key] = set(order[start + 1 :] if clauses[key] == "longer" else order[:start])
        elif key in clauses:
            allowed[key] = {clauses[key]}
        else:
            allowed[key] = None if reference[key] is None else {reference[key]}
    return allowed


def _matches(item: Item, allowed: dict[str, set[Any] | None]) -> bool:
    return all(values is None or item.attributes[key] in values for key, values in allowed.items())


def test_triplet_targets_are_unique_in_their_split_gallery(dataset: Dataset) -> None:
    space = dataset.report["attribute_space"]
    by_id = dataset.by_id()
    assert dataset.triplets
    for triplet in dataset.triplets:
        reference, target = by_id[triplet.reference], by_id[triplet.target]
        parsed = [_parse_clause(clause, space) for clause in triplet.texts]
        clauses = dict(parsed)
        assert len(clauses) == len(parsed) == len(triplet.texts) and 1 <= len(parsed) <= 2
        described = {k for k, v in target.attributes.items() if v and v != reference.attributes[k]}
        assert set(clauses) == described, triplet
        allowed = _allowed(reference.attributes, clauses, space)
        gallery = dataset.split(triplet.split)
        assert [item.id for item in gallery if _matches(item, allowed)] == [target.id], triplet


def test_splits_are_disjoint_and_triplets_stay_in_their_split(dataset: Dataset) -> None:
    by_id = dataset.by_id()
    assert len(by_id) == len(dataset.items)
    assert all(item.split in SPLITS for item in dataset.items)
    assert all(dataset.split(split) for split in SPLITS)
    assert len({t.id for t in dataset.triplets}) == len(dataset.triplets)
    for triplet in dataset.triplets:
        assert by_id[triplet.reference].split == triplet.split == by_id[triplet.target].split
        assert triplet.reference != triplet.target
        assert triplet.category == by_id[triplet.target].category
        assert triplet.text.lower() == " and ".join(triplet.texts).lower()
    assert dataset.report["num_triplets"] == {s: len(dataset.split_triplets(s)) for s in SPLITS}


def test_default_size_gives_enough_triplets() -> None:
    items = make_items(1200, seed=0)
    triplets, _ = make_triplets(items, seed=0)
    counts = {s: sum(t.split == s for t in triplets) for s in SPLITS}
    num_train = sum(item.split == "train" for item in items)
    assert counts["train"] >= 0.9 * num_train
    assert counts["val"] >= 150 and counts["test"] >= 150
    assert all(isinstance(t, Triplet) for t in triplets)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def start(self, task: str, total: int | None) -> None:
        self.events.append(("start", (task, total)))

    def advance(self, task: str, n: int = 1, **fields: float | str) -> None:
        self.events.append(("advance", (task, n)))

    def log(self, message: str) -> None:
        pass


def test_reports_progress(tmp_path: Path) -> None:
    recorder = _Recorder()
    prepare_demo(tmp_path / "data", num_items=20, seed=3, image_size=32, progress=recorder, num_tryon=5)
    assert recorder.events[0] == ("start", ("prepare", 25))
    assert recorder.events[1:] == [("advance", ("prepare", 1))] * 25


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_items": len(attribute_space()) + 1}, str(len(attribute_space()))),
        ({"num_items": 0}, "num_items"),
        ({"seed": -1}, "seed"),
        ({"image_size": 8}, "image_size"),
        ({"num_items": len(attribute_space()), "num_tryon": 1}, "between 0 and 0"),
        ({"num_tryon": -1}, "num_tryon"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path: Path, arguments: dict[str, int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        prepare_demo(tmp_path / "data", **arguments)
    assert not (tmp_path / "data").exists()


# --- the try-on part ---------------------------------------------------------------------------

# SHA-256 of manifest.jsonl and triplets.jsonl of prepare_demo(num_items=60, seed=0, image_size=32)
# as written before the try-on part existed: adding it must not change the catalogue.
CATALOGUE_60 = ("176d07304e931014e3dd97d8c70aab8eca89d5befc679aba548a3a697d813215",
                "1c8e29194cf573dc4cae211954826b2530e4ff7d69e9f2c8d780d3db9dc9fb65")


def test_tryon_part_leaves_the_catalogue_byte_identical(tmp_path: Path) -> None:
    import hashlib

    trees = {}
    for num_tryon in (0, None):
        out = tmp_path / str(num_tryon)
        prepare_demo(out, num_items=60, seed=0, image_size=32, num_tryon=num_tryon)
        lines = (out / "manifest.jsonl").read_bytes().splitlines(keepends=True)
        digests = (hashlib.sha256(b"".join(lines[:60])).hexdigest(),
                   hashlib.sha256((out / "triplets.jsonl").read_bytes()).hexdigest())
        assert digests == CATALOGUE_60
        trees[num_tryon] = _tree(out)
    assert len(trees[None]) > len(trees[0])
    written = {"report.json", "manifest.jsonl"}  # the report counts the try-on part; the manifest lists it after
    assert {name: data for name, data in trees[None].items() if name in trees[0] and name not in written} == {
        name: data for name, data in trees[0].items() if name not in written}


def test_tryon_items_are_viton_style_examples(dataset: Dataset) -> None:
    from unifashion_core.data.adapters.demo import TRYON_FOLDERS
    from unifashion_core.data.demo.people import REGIONS
    from unifashion_core.data.tryon import has_tryon

    tryon = [item for item in dataset.items if item.id.startswith("demo-tryon-")]
    assert len(tryon) == NUM_TRYON and all(has_tryon(item) for item in tryon)
    assert not any(has_tryon(item) for item in dataset.items if item not in tryon)
    assert {t.reference for t in dataset.triplets} & {item.id for item in tryon} == set()
    by_id = dataset.by_id()
    for item in tryon:
        assert set(item.extras) == set(TRYON_FOLDERS)
        files = {key: np.asarray(open_image(dataset.image_path(item, key))) for key in item.extras}
        assert all(array.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) for array in files.values())
        mask = files["mask"][..., 0]
        assert set(np.unique(mask)) == {0, 255} and 0.05 < (mask > 0).mean() < 0.6
        lines = files["sketch"][..., 0] < 128  # dark lines on white
        assert lines.any() and (mask[lines] > 0).mean() > 0.9  # drawn inside the region to generate
        kept = mask == 0
        assert np.array_equal(files["agnostic"][kept], files["person"][kept])
        worn = garment_pixels(files["person"][mask > 0], background=(232, 232, 232))
        assert len(worn) > 0
        partner = by_id[item.attributes["unpaired_person"]]
        assert partner.id != item.id and partner.split == item.split and has_tryon(partner)
        same_region = [m for m in tryon if m.split == item.split
                       and REGIONS[m.attributes["type"]] == REGIONS[item.attributes["type"]]]
        if len(same_region) > 1:
            assert REGIONS[partner.attributes["type"]] == REGIONS[item.attributes["type"]]
