"""Dataset adapters of `unifashion prepare`: tiny fixtures in each layout, plus the real data."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from unifashion_core.data.adapters.common import assign_splits
from unifashion_core.data.adapters.fashion_product import describe
from unifashion_core.data.adapters.fashiongen import decode
from unifashion_core.data.adapters.fashioniq import query_text
from unifashion_core.data.images import open_image
from unifashion_core.data.manifest import load_dataset
from unifashion_core.data.prepare import DATASETS, prepare
from unifashion_core.errors import UserError


def _image(path: Path, color: tuple[int, int, int] = (200, 30, 30), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (12, 16), color)
    if mode == "CMYK":
        image.convert("CMYK").save(path, format="JPEG")
    elif mode == "P":
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(path, format="PNG")
    else:
        image.save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def prepare_dataset(name: str, root: Path | None, out: Path, **options: Any) -> dict[str, Any]:
    """``prepare`` with the root first, returning the report (as most tests read it)."""
    return prepare(name, out, root, **options).report


def _check_self_contained(out: Path) -> None:
    dataset = load_dataset(out)
    for item in dataset.items:
        assert not Path(item.image).is_absolute()
        for key in ("image", *item.extras):
            open_image(dataset.image_path(item, key))


# --- dispatch and shared helpers ---------------------------------------------------------------


def test_prepare_dataset_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="demo, fashion-product, fashioniq"):
        prepare_dataset("deepfashion", tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="not a directory"):
        prepare_dataset("fashioniq", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(UserError, match="needs --root"):
        prepare_dataset("fashioniq", None, tmp_path / "out")
    with pytest.raises(UserError, match=r"unknown option 'test_fraction' \(--test-fraction\) for fashioniq"):
        prepare_dataset("fashioniq", tmp_path, tmp_path / "out", test_fraction=0.1)
    with pytest.raises(UserError, match="drop --root"):
        prepare_dataset("demo", tmp_path, tmp_path / "out")
    for name in DATASETS[1:]:  # an empty directory is not any dataset: one clear sentence each
        with pytest.raises(UserError):
            prepare_dataset(name, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_assign_splits_is_seeded_and_exact() -> None:
    keys = [str(i) for i in range(50)]
    splits = assign_splits(keys, seed=3, val_fraction=0.1, test_fraction=0.2)
    assert [list(splits.values()).count(s) for s in ("train", "val", "test")] == [35, 5, 10]
    assert assign_splits(reversed(keys), seed=3, val_fraction=0.1, test_fraction=0.2) == splits
    assert assign_splits(keys, seed=4, val_fraction=0.1, test_fraction=0.2) != splits
    with pytest.raises(UserError, match="sum to less than 1"):
        assign_splits(keys, seed=0, val_fraction=0.5, test_fraction=0.5)


# --- Fashion Product Images --------------------------------------------------------------------

STYLES_HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName\n"
)


@pytest.fixture
def product_root(tmp_path: Path) -> Path:
    root = tmp_path / "kaggle"
    rows = [
        "1,Men,Apparel,Topwear,Shirts,Blue,Summer,2012.0,Formal,Mark Taylor Men Blue Shirt",
        "2,Women,Apparel,Bottomwear,Jeans,Black,Fall,2011.0,Casual,Levis Women Black Jeans",
        "3,Men,Apparel,Topwear,Tshirts,Red,Fall,2011.0,Casual,Missing Image Tee",
        "4,Men,Apparel,Topwear,Tshirts,Red,Fall,2011.0,Casual,Empty File Tee",
        "5,Girls,Apparel,Dress,Dresses,Pink,Summer,2012.0,Casual,CMYK Girls Dress",
        "6,Boys,Apparel,Topwear,Tshirts,Green,,2012.0,,Palette Boys Tee",
        "7,Men,Apparel,Topwear,Shirts,White,Summer,2012.0,Formal,Brand X, Men White Shirt",
        "8,Men,Apparel,Topwear,Shirts,Blue,Summer,2012.0,Formal,",
        "9,Men,Apparel,Topwear,Shirts,Blue,Summer,2012.0,Formal,Garbage Bytes Shirt",
        "10,Men,Apparel,too,few,fields",
        ",Men,Apparel,Topwear,Shirts,Blue,Summer,2012.0,Formal,No Id Shirt",
        "",
    ]
    _write(root / "styles.csv", STYLES_HEADER + "\n".join(rows) + "\n")
    for i in (1, 2, 7, 8):
        _image(root / "images" / f"{i}.jpg")
    _write(root / "images" / "4.jpg", "")
    _image(root / "images" / "5.jpg", mode="CMYK")
    _image(root / "images" / "6.jpg", mode="P")  # PNG bytes under the Kaggle .jpg name
    _write(root / "images" / "9.jpg", "not a jpeg")
    return root


def test_fashion_product_fixture_reports_every_skip(product_root: Path, tmp_path: Path) -> None:
    report = prepare_dataset("fashion-product", product_root, tmp_path / "out", seed=1)

    assert report["skipped_counts"] == {
        "row:malformed_row": 1,
        "row:missing_id": 1,
        "item:missing": 1,
        "item:empty": 1,
        "item:empty_caption": 1,
        "item:unreadable": 1,
    }
    dataset = load_dataset(tmp_path / "out")
    items = dataset.by_id()
    assert sorted(items, key=int) == ["1", "2", "5", "6", "7"]
    # The split is drawn over the ids of the 9 well-formed rows (val 0.1 and test 0.2 by default).
    expected = assign_splits([str(i) for i in range(1, 10)], seed=1, val_fraction=0.1, test_fraction=0.2)
    assert {item.id: item.split for item in dataset.items} == {i: expected[i] for i in items}
    assert report["val_fraction"] == 0.1 and report["test_fraction"] == 0.2
    assert items["7"].caption == "Brand X, Men White Shirt"  # unquoted comma joined back
    assert items["1"].description == "Men's blue shirt, topwear for formal use, summer season."
    assert items["2"].description == "Women's black jeans, bottomwear for casual use, fall season."
    assert items["6"].description == "Boys' green tshirt, topwear."
    assert items["1"].category == "Shirts" and items["1"].attributes["year"] == "2012"
    assert items["1"].image == "images/1.jpg"
    copied = (tmp_path / "out" / "images" / "5.jpg").read_bytes()
    assert copied == (product_root / "images" / "5.jpg").read_bytes()
    _check_self_contained(tmp_path / "out")
    assert report["dataset"] == "fashion-product" and report["seed"] == 1
    assert report["source"] == str(product_root)


def _splits(out: Path) -> dict[str, str]:
    return {item.id: item.split for item in load_dataset(out).items}


def test_fashion_product_split_is_reproducible_and_stable(product_root: Path, tmp_path: Path) -> None:
    options = {"val_fraction": 0.2, "test_fraction": 0.4}
    first = prepare_dataset("fashion-product", product_root, tmp_path / "a", seed=7, **options)
    second = prepare_dataset("fashion-product", product_root, tmp_path / "b", seed=7, **options)
    assert first["manifest_sha256"] == second["manifest_sha256"]
    assert set(_splits(tmp_path / "a").values()) == {"train", "val", "test"}
    # An image that becomes unreadable moves no other item to another split.
    (product_root / "images" / "2.jpg").write_bytes(b"broken")
    prepare_dataset("fashion-product", product_root, tmp_path / "c", seed=7, **options)
    assert _splits(tmp_path / "c") == {k: v for k, v in _splits(tmp_path / "a").items() if k != "2"}
    # The test items do not depend on the validation share.
    prepare_dataset("fashion-product", product_root, tmp_path / "d", seed=7, test_fraction=0.4, val_fraction=0.0)
    tests = {k for k, v in _splits(tmp_path / "c").items() if v == "test"}
    assert tests == {k for k, v in _splits(tmp_path / "d").items() if v == "test"}


def test_describe_handles_missing_attributes() -> None:
    assert describe({"gender": "Unisex", "articleType": "Watches"}) == "Unisex watch."
    assert describe({"usage": "Sports"}) == "For sports use."
    assert describe({}) == ""


def test_fashion_product_real_1k(shared_data: Path, tmp_path: Path) -> None:
    report = prepare_dataset("fashion-product", shared_data / "fashion-product-1k", tmp_path / "fp")
    assert report["num_rows"] == 1000 and report["csv"] == "sample_styles.csv"
    assert report["num_items"] == {"train": 700, "val": 100, "test": 200}
    assert report["num_skipped"] == 0
    dataset = load_dataset(tmp_path / "fp")
    ids = [item.id for item in dataset.items]
    expected = assign_splits(ids, seed=0, val_fraction=0.1, test_fraction=0.2)
    assert {item.id: item.split for item in dataset.items} == expected
    before = assign_splits(ids, seed=0, test_fraction=0.2)  # the default before val existed
    assert {k for k, v in expected.items() if v == "test"} == {k for k, v in before.items() if v == "test"}
    assert len(list((tmp_path / "fp" / "images").iterdir())) == 1000
    assert all(item.caption and item.description and item.category for item in dataset.items)


# --- Fashion-IQ --------------------------------------------------------------------------------


@pytest.fixture
def fashioniq_root(tmp_path: Path) -> Path:
    root = tmp_path / "fiq"
    splits = {
        "dress.train": ["D1", "D2", "D3"],
        "dress.val": ["D4", "D5", "DX"],
        "dress.test": ["D6"],
        "shirt.train": ["S1", "D1"],
    }
    for name, ids in splits.items():
        _write(root / "image_splits" / f"split.{name}.json", json.dumps(ids))
    for asin in ("D1", "D2", "D3", "D4", "D5", "S1"):
        _image(root / "images" / f"{asin}.png")
    _image(root / "images" / "D6.jpg")
    captions = {
        "dress.train": [
            {"candidate": "D1", "target": "D2", "captions": ["is red.", " has long sleeves? "]},
            {"candidate": "D3", "target": "D9", "captions": ["is blue", "is longer"]},
            {"candidate": "D9", "target": "D1", "captions": ["is blue", "is longer"]},
        ],
        "dress.val": [
            {"candidate": "D4", "target": "D5", "captions": ["Is SHORTER", ""]},
            {"candidate": "D4", "target": "DX", "captions": ["a", "b"]},
            {"candidate": "D5", "target": "D4", "captions": [" .", "?"]},
        ],
        "dress.test": [{"candidate": "D6", "captions": ["is green", "has a belt"]}],
        "shirt.train": [{"candidate": "S1", "target": "D1", "captions": ["is plain", "no logo"]}],
    }
    for name, entries in captions.items():
        _write(root / "captions" / f"cap.{name}.json", json.dumps(entries))
    return root


def test_fashioniq_fixture(fashioniq_root: Path, tmp_path: Path) -> None:
    report = prepare_dataset("fashioniq", fashioniq_root, tmp_path / "out")

    dataset = load_dataset(tmp_path / "out")
    items = dataset.by_id()
    assert sorted(items) == sorted(
        [
            "dress-D1",
            "dress-D2",
            "dress-D3",
            "dress-D4",
            "dress-D5",
            "dress-D6",
            "shirt-S1",
            "shirt-D1",
        ]
    )
    assert items["dress-D1"].image == items["shirt-D1"].image == "images/D1.png"
    assert items["dress-D6"].image == "images/D6.jpg" and items["dress-D6"].split == "test"
    assert items["dress-D1"].caption == "" and items["dress-D1"].category == "dress"
    assert report["skipped_counts"] == {"item:missing": 1, "triplet:empty_caption": 1}
    assert report["num_caption_entries"] == 8
    assert report["triplets"] == {
        "train": {"num_read": 4, "num_answerable": 2,
                  "unanswerable": {"missing_reference": 1, "missing_target": 1}},
        "val": {"num_read": 3, "num_answerable": 1, "unanswerable": {"empty_caption": 1, "missing_target": 1}},
        "test": {"num_read": 1, "num_answerable": 0, "unanswerable": {"no_target": 1}},
    }  # fmt: skip
    triplets = {t.id: t for t in dataset.triplets}
    assert len(triplets) == 7  # every entry but the one without text, images missing or not
    assert (triplets["dress-train-00001"].target, triplets["dress-train-00002"].reference) == ("dress-D9", "dress-D9")
    assert "dress-D9" not in items and triplets["dress-val-00001"].target == "dress-DX"
    first = triplets["dress-train-00000"]
    assert (first.reference, first.target, first.split) == ("dress-D1", "dress-D2", "train")
    assert first.text == "Is red and has long sleeves"
    assert first.texts == ("is red.", "has long sleeves?")
    assert triplets["dress-val-00000"].text == "Is shorter"
    assert triplets["dress-test-00000"].target == ""
    assert triplets["shirt-train-00000"].target == "shirt-D1"
    assert "image_splits/split.toptee.train.json" in report["absent_files"]
    _check_self_contained(tmp_path / "out")


def test_query_text_matches_the_evaluation_form() -> None:
    assert query_text(["is black, ", "has a V-neck."]) == "Is black and has a V-neck"
    assert query_text(["", "is longer"]) == "Is longer"
    assert query_text([" ?", ""]) == ""


def test_fashioniq_real_captions_without_images(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "fashion-iq-text"
    report = prepare_dataset("fashioniq", root, tmp_path / "fiq")
    entries = sum(len(json.loads(p.read_text())) for p in (root / "captions").glob("cap.*.json"))
    listed = sum(len(json.loads(p.read_text())) for p in (root / "image_splits").glob("*.json"))
    assert entries == 30_134 and report["num_caption_entries"] == entries
    assert len(load_dataset(tmp_path / "fiq").triplets) == entries  # none dropped for its images
    assert sum(report["num_triplets"].values()) == entries
    for split, counts in report["triplets"].items():
        assert counts["num_answerable"] == 0
        assert counts["unanswerable"] == {"missing_reference": counts["num_read"]}
        assert counts["num_read"] == report["num_triplets"][split] > 0
    assert report["skipped_counts"] == {"item:missing": listed}
    assert sum(report["num_items"].values()) == 0
    assert report["absent_files"] == []


# --- FashionGen --------------------------------------------------------------------------------


def _h5(path: Path, rows: list[dict[str, bytes]], seed: int) -> np.ndarray:
    h5py = pytest.importorskip("h5py")
    images = np.random.default_rng(seed).integers(0, 256, (len(rows), 8, 8, 3), dtype=np.uint8)
    with h5py.File(path, "w") as handle:
        handle["input_image"] = images
        for key in rows[0]:
            handle[key] = np.array([[row[key]] for row in rows])  # (N, 1) bytes, as released
    return images


def _gen_row(product: str, name: bytes, description: bytes) -> dict[str, bytes]:
    return {
        "input_productID": product.encode(),
        "input_name": name,
        "input_description": description,
        "input_category": b"TOPS",
        "input_subcategory": b"SHIRTS",
        "input_pose": b"id_gridfs_1",
    }


@pytest.fixture
def fashiongen_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path / "fashiongen"
    root.mkdir()
    train_rows = [
        _gen_row("100", b"WHITE SHIRT", b"Long sleeve cotton shirt."),
        _gen_row("100", b"WHITE SHIRT", b""),  # another view, no description
        _gen_row("200", b"CAF\xc9 TEE", b"Caf\xe9-coloured jersey tee."),  # latin-1 bytes
        _gen_row("300", b"", b"A nameless row."),
    ]
    train = _h5(root / "fashiongen_256_256_train.h5", train_rows, seed=0)
    validation_rows = [_gen_row("400", "NAÏVE TOP".encode(), b"Silk top.")]
    validation = _h5(root / "fashiongen_256_256_validation.h5", validation_rows, seed=1)
    return root, train, validation


def test_fashiongen_fixture(fashiongen_root: tuple, tmp_path: Path) -> None:
    root, train, validation = fashiongen_root
    report = prepare_dataset("fashiongen", root, tmp_path / "out")

    assert report["skipped_counts"] == {"item:empty_caption": 1}
    assert report["num_items"] == {"train": 3, "val": 0, "test": 1}
    assert report["num_empty_descriptions"] == 1
    dataset = load_dataset(tmp_path / "out")
    items = dataset.by_id()
    assert sorted(items) == ["100-0", "100-1", "200-2", "400-0"]
    assert items["100-0"].caption == "WHITE SHIRT" and items["100-1"].description == ""
    assert items["200-2"].caption == "CAFÉ TEE" and items["400-0"].caption == "NAÏVE TOP"
    assert items["100-0"].category == "TOPS"
    assert items["100-0"].attributes["product_id"] == "100"
    assert items["100-0"].attributes["pose"] == "id_gridfs_1"
    assert items["400-0"].split == "test"
    for item, expected in ((items["200-2"], train[2]), (items["400-0"], validation[0])):
        assert np.array_equal(np.asarray(open_image(dataset.image_path(item))), expected)


def test_fashiongen_val_carve_out_keeps_views_together(
    fashiongen_root: tuple, tmp_path: Path
) -> None:
    root, _, _ = fashiongen_root
    report = prepare_dataset("fashiongen", root, tmp_path / "out", seed=0, val_fraction=0.5)
    splits = {item.id: item.split for item in load_dataset(tmp_path / "out").items}
    assert splits["100-0"] == splits["100-1"]
    assert report["num_items"]["val"] in (1, 2) and splits["400-0"] == "test"


def test_decode_handles_hdf5_cells() -> None:
    assert decode(np.array([b"  two  words "])) == "two words"
    assert decode(np.bytes_(b"caf\xe9")) == "café"
    assert decode(np.array([1234], dtype=np.int32)) == "1234"


# --- Fashion200K -------------------------------------------------------------------------------


def test_fashion200k_fixture(tmp_path: Path) -> None:
    root = tmp_path / "f200k"
    dress = "women/dresses/casual_and_day_dresses/51727804/51727804_0.jpeg"
    top = "women/tops/blouses/9001/9001_1.jpeg"
    _image(root / dress)
    _image(root / top)
    lines = [
        f"{dress}\t0.82\tblack  multicolor maxi dress",
        "women/dresses/gone/1/1_0.jpeg\t0.5\tred dress",
        "just-a-path\t0.9",
        "women/dresses/x/2/2_0.jpeg\tnot-a-score\tblue dress",
        f"{dress}\t0.82\tblack multicolor maxi dress",
        "../outside.jpeg\t0.9\tsneaky",
    ]
    _write(root / "labels" / "dress_train_detect_all.txt", "\n".join(lines) + "\n")
    _write(root / "labels" / "top_test_detect_all.txt", f"{top}\t0.7\twhite blouse\n")

    report = prepare_dataset("fashion200k", root, tmp_path / "out")
    assert report["skipped_counts"] == {
        "item:missing": 1,
        "line:malformed_line": 2,
        "item:duplicate_id": 1,
        "item:outside_root": 1,
    }
    items = load_dataset(tmp_path / "out").by_id()
    assert sorted(items) == ["51727804_0", "9001_1"]
    dress_item = items["51727804_0"]
    assert dress_item.caption == "black multicolor maxi dress" and dress_item.category == "dress"
    assert dress_item.split == "train" and items["9001_1"].split == "test"
    assert dress_item.image == f"images/{dress}"
    assert dress_item.attributes["product_id"] == "51727804"
    _check_self_contained(tmp_path / "out")


# --- VITON-HD ----------------------------------------------------------------------------------


def test_vitonhd_official_layout(tmp_path: Path) -> None:
    root = tmp_path / "viton"
    _write(root / "train_pairs.txt", "00001_00.jpg 00001_00.jpg\n00002_00.jpg 00002_00.jpg\n")
    _write(root / "test_pairs.txt", "00004_00.jpg 00005_00.jpg\n00003_00.jpg 00003_00.jpg\n")
    for folder in ("cloth", "image", "cloth-mask", "agnostic-v3.2"):
        _image(root / "train" / folder / "00001_00.jpg")
    _image(root / "train" / "agnostic-mask" / "00001_00_mask.png")
    _image(root / "train" / "im_sketch" / "00001_00.png")
    for stem in ("00003_00", "00005_00"):
        _image(root / "test" / "cloth" / f"{stem}.jpg")
    _image(root / "test" / "image" / "00005_00.jpg")
    _image(root / "test" / "agnostic-mask" / "00005_00.png")  # the other mask naming
    _write(root / "test" / "image" / "00004_00.jpg", "")  # unreadable person of another item
    captions = {
        "00001": ["white t-shirt", "cotton tee", "crew-neck t-shirt"],
        "00002": ["red blouse", "silk blouse", "blouse"],
        "00005": ["striped top", "", "navy top"],
    }
    _write(root / "captions.json", json.dumps(captions))

    report = prepare_dataset("vitonhd", root, tmp_path / "out")
    assert report["layout"] == "official" and report["captions"] == "captions.json"
    assert report["skipped_counts"] == {"item:missing": 1, "item:missing_caption": 1}
    items = load_dataset(tmp_path / "out").by_id()
    assert sorted(items) == ["00001_00", "00005_00"]
    first, second = items["00001_00"], items["00005_00"]
    assert first.caption == "white t-shirt" and first.references == (
        "cotton tee",
        "crew-neck t-shirt",
    )
    assert first.description == "white t-shirt, cotton tee, crew-neck t-shirt"
    assert first.image == "images/train/cloth/00001_00.jpg" and first.split == "train"
    assert first.extras == {
        "person": "images/train/image/00001_00.jpg",
        "agnostic": "images/train/agnostic-v3.2/00001_00.jpg",
        "mask": "images/train/agnostic-mask/00001_00_mask.png",
        "cloth_mask": "images/train/cloth-mask/00001_00.jpg",
        "sketch": "images/train/im_sketch/00001_00.png",
    }
    assert second.references == ("navy top",) and second.split == "test"
    assert second.extras["mask"] == "images/test/agnostic-mask/00005_00.png"
    assert second.attributes == {"unpaired_person": "00004_00"}
    _check_self_contained(tmp_path / "out")


def test_vitonhd_flat_examples(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "vitonhd-examples"
    report = prepare_dataset("vitonhd", root, tmp_path / "viton")
    assert report["layout"] == "flat" and report["num_skipped"] == 0
    assert report["num_items"] == {"train": 0, "val": 0, "test": 14 + 7}  # garments, and people to dress
    assert len(report["persons"]) == 7 and "derived" in report["masks"]
    assert all((tmp_path / "viton" / person).is_file() for person in report["persons"])
    captions = json.loads((root / "captions_mgd.json").read_text())
    dataset = load_dataset(tmp_path / "viton")
    for item in dataset.items:
        assert list(item.all_captions()) == captions[item.id.split("_")[0]]
    people = [item for item in dataset.items if item.extras]
    assert sorted(item.image for item in people) == sorted(report["persons"])
    for item in people:
        assert item.extras["person"] == item.image and item.attributes == {"mask": "derived"}
        mask = np.asarray(Image.open(dataset.image_path(item, "mask")))
        assert mask.shape == (1024, 768) and 0.1 < (mask > 0).mean() < 0.5
        assert not mask[: int(0.2 * 1024)].any()  # the face is kept
    unpaired = {item.attributes["unpaired_person"] for item in dataset.items if not item.extras}
    assert unpaired == {item.id for item in people}
    _check_self_contained(tmp_path / "viton")


# --- path containment ---------------------------------------------------------------------------


def _all_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the adapters decode, recorded."""
    import unifashion_core.data.adapters.common as common

    paths: list[Path] = []

    def recording_open_image(path: Path, max_pixels: int) -> Image.Image:
        paths.append(Path(path))
        return open_image(path, max_pixels)

    monkeypatch.setattr(common, "open_image", recording_open_image)
    return paths


def test_vitonhd_pairs_naming_files_outside_root_are_refused(tmp_path: Path, opened: list[Path]) -> None:
    root = tmp_path / "viton"
    outside = _image(tmp_path / "x.png")  # root/train/cloth/../../../x.png
    absolute = _image(tmp_path / "elsewhere" / "y.png")
    _image(root / "train" / "cloth" / "00001_00.jpg")
    pairs = ["00001_00.jpg 00001_00.jpg", "00002_00.jpg ../../../x.png", f"00003_00.jpg {absolute}",
             "00004_00.jpg ../../../../x.png"]  # fmt: skip
    _write(root / "train_pairs.txt", "\n".join(pairs) + "\n")
    _write(root / "captions.json", json.dumps({k: ["a top"] for k in ("00001", "x", "y")}))
    before = _all_files(tmp_path)

    report = prepare_dataset("vitonhd", root, tmp_path / "out")
    assert report["skipped_counts"] == {"item:outside_root": 3}
    assert {e["id"] for e in report["skipped"]} == {"x", "y"}
    assert sorted(load_dataset(tmp_path / "out").by_id()) == ["00001_00"]
    assert all(p.resolve().is_relative_to(root.resolve()) for p in opened) and opened
    assert {p for p in _all_files(tmp_path) - before if not p.is_relative_to(tmp_path / "out")} == set()
    assert outside.is_file() and absolute.is_file()


def test_fashion_product_symlink_out_of_root_is_refused(product_root: Path, tmp_path: Path, opened: list[Path]) -> None:
    secret = _image(tmp_path / "secret" / "photo.jpg", color=(1, 2, 3))
    (product_root / "images" / "3.jpg").symlink_to(secret)  # row 3 had no image
    (product_root / "images" / "2.jpg").unlink()
    (product_root / "images" / "2.jpg").symlink_to(product_root / "images" / "5.jpg")  # inside: fine

    report = prepare_dataset("fashion-product", product_root, tmp_path / "out")
    assert report["skipped_counts"]["item:outside_root"] == 1
    assert [e["id"] for e in report["skipped"] if e["reason"] == "outside_root"] == ["3"]
    assert "3" not in load_dataset(tmp_path / "out").by_id()
    assert not (tmp_path / "out" / "images" / "3.jpg").exists()
    assert all(p.is_relative_to(product_root.resolve()) for p in opened)
    # a symlink within the root is copied as the file it points to, not as a link
    copied = tmp_path / "out" / "images" / "2.jpg"
    assert not copied.is_symlink() and copied.read_bytes() == (product_root / "images" / "5.jpg").read_bytes()


def test_fashion200k_label_path_through_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "f200k"
    _image(tmp_path / "private" / "1_0.jpeg")
    (root / "women").mkdir(parents=True)
    (root / "women" / "leak").symlink_to(tmp_path / "private", target_is_directory=True)
    _write(root / "labels" / "dress_train_detect_all.txt", "women/leak/1_0.jpeg\t0.9\tred dress\n")
    report = prepare_dataset("fashion200k", root, tmp_path / "out")
    assert report["skipped_counts"] == {"item:outside_root": 1}
    assert sum(report["num_items"].values()) == 0


def test_fashiongen_product_id_cannot_write_outside_out(tmp_path: Path) -> None:
    root = tmp_path / "fashiongen"
    root.mkdir()
    rows = [_gen_row("../../../escaped", b"SHIRT", b"A shirt."), _gen_row("100", b"TEE", b"A tee.")]
    _h5(root / "fashiongen_256_256_train.h5", rows, seed=0)
    before = _all_files(tmp_path)

    report = prepare_dataset("fashiongen", root, tmp_path / "deep" / "out")
    assert report["skipped_counts"] == {"item:outside_root": 1}
    assert sorted(load_dataset(tmp_path / "deep" / "out").by_id()) == ["100-1"]
    new = _all_files(tmp_path) - before
    assert new and all(p.is_relative_to(tmp_path / "deep" / "out") for p in new)
