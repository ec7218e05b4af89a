"""The one `prepare` entry point and its CLI: options forwarded, refused, results typed."""

import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from unifashion_cli.main import app
from unifashion_core.data.manifest import load_dataset
from unifashion_core.data.prepare import PrepareResult, adapter_options, prepare
from unifashion_core.errors import UserError

runner = CliRunner()
HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
ROWS = [
    "1,Men,Apparel,Topwear,Shirts,Blue,Summer,2012.0,Formal,Blue Shirt",
    "2,Men,Apparel,Topwear,Shirts,Red,Summer,2012.0,Formal,Red Shirt",
    "3,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012.0,Casual,Blue Tee",
    "4,Women,Apparel,Bottomwear,Skirts,Blue,Fall,2011.0,Casual,Blue Skirt",
    "5,Women,Apparel,Topwear,Tops,Blue,Fall,2011.0,Casual,Blue Top",
    "6,Women,Apparel,Topwear,Tops,Green,Fall,2011.0,Casual,Green Top",
]


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    root = tmp_path / "catalogue"
    (root / "images").mkdir(parents=True)
    (root / "styles.csv").write_text(HEADER + "\n".join(ROWS) + "\n", encoding="utf-8")
    for number in range(1, len(ROWS) + 1):
        Image.new("RGB", (12, 16), (20 * number, 30, 40)).save(root / "images" / f"{number}.jpg")
    return root


def _cli(*args: object, home: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["prepare", *map(str, args)], env={"UNIFASHION_HOME": str(home / "ws")})
    return result.exit_code, result.output


def test_prepare_forwards_options_and_returns_a_result(tmp_path: Path, catalogue: Path) -> None:
    demo = prepare("demo", tmp_path / "demo", num_items=40, image_size=32, seed=3, num_tryon=4)
    assert isinstance(demo, PrepareResult) and demo.out == tmp_path / "demo"
    assert sum(demo.num_items.values()) == 44 and demo.report["image_size"] == 32 and demo.report["num_tryon"] == 4
    assert demo.num_triplets == demo.report["num_triplets"] and demo.leakage is None
    product = prepare("fashion-product", tmp_path / "fp", catalogue, test_fraction=0.5, val_fraction=0.0)
    assert product.num_items == {"train": 3, "val": 0, "test": 3}
    assert product.report["test_fraction"] == 0.5 and product.num_skipped == 0


def test_unknown_options_are_refused_with_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"accepted options: max_pixels \(--max-pixels\)\.$"):
        prepare("fashioniq", tmp_path / "out", tmp_path, test_fraction=0.1)
    with pytest.raises(UserError, match="'triplets'.*for demo; accepted options: num_items"):
        prepare("demo", tmp_path / "out", triplets=True)
    assert adapter_options("fashion-product") == {
        "val_fraction": 0.1, "test_fraction": 0.2, "max_pixels": 64_000_000, "triplets": False,
    }  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_cli_forwards_only_the_flags_given(tmp_path: Path, catalogue: Path) -> None:
    code, output = _cli("fashion-product", "--root", catalogue, "--out", tmp_path / "a",
                        "--test-fraction", "0.5", "--val-fraction", "0", "-q", home=tmp_path)  # fmt: skip
    assert code == 0, output
    assert load_dataset(tmp_path / "a").report["test_fraction"] == 0.5
    code, output = _cli("fashion-product", "--root", catalogue, "--out", tmp_path / "b", "-q", home=tmp_path)
    assert code == 0 and load_dataset(tmp_path / "b").report["val_fraction"] == 0.1  # the adapter's default
    code, output = _cli("fashioniq", "--root", catalogue, "--out", tmp_path / "c", "--test-fraction", "0.1",
                        home=tmp_path)  # fmt: skip
    assert code == 2 and "--test-fraction" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    code, output = _cli("demo", "--out", tmp_path / "d", "--max-pixels", "10", home=tmp_path)
    assert code == 2 and "accepted options: num_items (--num-items), image_size (--image-size)" in output


def test_cli_huge_image_is_skipped_not_a_traceback(tmp_path: Path, catalogue: Path) -> None:
    Image.new("1", (5000, 5000)).save(catalogue / "images" / "6.jpg", format="PNG")  # 25M pixels
    code, output = _cli("fashion-product", "--root", catalogue, "--out", tmp_path / "a", "--max-pixels",
                        "1000000", "-q", home=tmp_path)  # fmt: skip
    assert code == 0, output
    report = load_dataset(tmp_path / "a").report
    assert report["skipped_counts"] == {"item:too_large": 1} and "6" not in load_dataset(tmp_path / "a").by_id()
    shutil.rmtree(tmp_path / "a")
    code, output = _cli("fashion-product", "--root", catalogue, "--out", tmp_path / "a", "--max-pixels",
                        "100", "-q", home=tmp_path)  # fmt: skip
    assert code == 0 and load_dataset(tmp_path / "a").report["skipped_counts"] == {"item:too_large": 6}


# --- catalogue triplets (fashion-product --triplets) -------------------------------------------


def _pairs(out: Path) -> set[tuple[str, str]]:
    return {(t.reference, t.target) for t in load_dataset(out).triplets}


def test_catalogue_triplets_on_a_hand_made_catalogue(tmp_path: Path, catalogue: Path) -> None:
    all_train = {"val_fraction": 0.0, "test_fraction": 0.0}
    result = prepare("fashion-product", tmp_path / "a", catalogue, triplets=True, **all_train)
    colour = {("1", "2"), ("2", "1"), ("5", "6"), ("6", "5")}  # same type and gender, other colour
    kind = {("1", "3"), ("3", "1"), ("4", "5"), ("5", "4")}  # same colour and master category
    assert _pairs(tmp_path / "a") == colour | kind  # never Men's 3 with Women's 5 (both blue)
    assert result.report["catalogue_triplets"]["num_triplets"] == {
        "colour": {"train": 4, "val": 0, "test": 0}, "type": {"train": 4, "val": 0, "test": 0},
    }  # fmt: skip
    texts = {(t.reference, t.target): t for t in load_dataset(tmp_path / "a").triplets}
    assert "red" in texts["1", "2"].text.lower() and texts["1", "2"].texts[0][0].islower()
    assert "tshirt" in texts["1", "3"].text.lower() and texts["1", "3"].category == "Tshirts"
    # A second red men's shirt makes "same but in red" ambiguous: that triplet is passed over.
    with open(catalogue / "styles.csv", "a", encoding="utf-8") as handle:
        handle.write("7,Men,Apparel,Topwear,Shirts,Red,Summer,2012.0,Formal,Another Red Shirt\n")
    Image.new("RGB", (12, 16)).save(catalogue / "images" / "7.jpg")
    ambiguous = prepare("fashion-product", tmp_path / "b", catalogue, triplets=True, **all_train)
    assert _pairs(tmp_path / "b") == (colour - {("1", "2")}) | kind | {("2", "1"), ("7", "1")}
    assert ambiguous.report["catalogue_triplets"]["num_ambiguous_references"]["colour"] == 1


def _check_catalogue_triplets(out: Path) -> None:
    dataset = load_dataset(out)
    items = dataset.by_id()
    identity = [(i.split, *(i.attributes[k] for k in ("gender", "articleType", "baseColour"))) for i in dataset.items]
    seen = set()
    for triplet in dataset.triplets:
        reference, target = items[triplet.reference].attributes, items[triplet.target].attributes
        assert items[triplet.reference].split == items[triplet.target].split == triplet.split
        assert reference["gender"] == target["gender"]
        same_type = reference["articleType"] == target["articleType"]
        same_colour = reference["baseColour"] == target["baseColour"]
        assert same_type != same_colour, triplet  # exactly one of the two changes
        assert same_type or reference["masterCategory"] == target["masterCategory"]
        key = (triplet.split, *(target[k] for k in ("gender", "articleType", "baseColour")))
        assert identity.count(key) == 1, triplet  # the text names exactly one item of the split
        assert (triplet.reference, same_type) not in seen  # one triplet per reference and kind
        seen.add((triplet.reference, same_type))


def test_catalogue_triplets_on_the_real_1k(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "fashion-product-1k"
    first = prepare("fashion-product", tmp_path / "a", root, triplets=True, check_leakage=True)
    assert first.num_triplets == {"train": 1099, "val": 142, "test": 263}
    counts = first.report["catalogue_triplets"]["num_triplets"]
    assert {s: counts["colour"][s] + counts["type"][s] for s in first.num_triplets} == first.num_triplets
    _check_catalogue_triplets(tmp_path / "a")
    assert first.leakage is not None and first.leakage["triplets_crossing_splits"]["count"] == 0
    again = prepare("fashion-product", tmp_path / "b", root, triplets=True)
    plain = prepare("fashion-product", tmp_path / "c", root)
    other_seed = prepare("fashion-product", tmp_path / "d", root, triplets=True, seed=1)
    assert (tmp_path / "a" / "triplets.jsonl").read_bytes() == (tmp_path / "b" / "triplets.jsonl").read_bytes()
    assert (tmp_path / "a" / "manifest.jsonl").read_bytes() == (tmp_path / "c" / "manifest.jsonl").read_bytes()
    assert again.report["manifest_sha256"] != plain.report["manifest_sha256"] != other_seed.report["manifest_sha256"]
