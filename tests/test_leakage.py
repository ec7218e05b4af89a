"""Leakage checks on small hand-made prepared datasets, and on the real Fashion-IQ texts."""

from pathlib import Path

from PIL import Image

from unifashion_core.data.leakage import check_leakage
from unifashion_core.data.manifest import Item, SkipLog, Triplet, load_dataset, write_dataset
from unifashion_core.data.prepare import prepare

# b and c have the same pixels, hence the same bytes; so have a and g.
COLORS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 255, 0), "d": (0, 0, 255), "e": (9, 9, 9), "g": (255, 0, 0)}


def _write_images(tmp: Path) -> None:
    (tmp / "images").mkdir()
    for name, color in COLORS.items():
        Image.new("RGB", (8, 8), color).save(tmp / "images" / f"{name}.png")


def _item(id: str, split: str, caption: str, **fields: object) -> Item:
    return Item(id=id, image=f"images/{id}.png", split=split, caption=caption, **fields)


def _dataset(tmp_path: Path, items: list[Item], triplets: list[Triplet]) -> Path:
    out = tmp_path / "data"
    write_dataset(out, items, triplets, SkipLog(), {"dataset": "hand-made"}, _write_images)
    return out


TEST_QUERY = Triplet(
    id="q1", split="test", reference="c", target="d", text="Has long sleeves and is red",
    texts=("has long sleeves", "is red"),
)  # fmt: skip
VAL_QUERY = Triplet(id="v1", split="val", reference="e", target="g", text="Is much longer and darker")


def test_check_leakage_finds_each_kind_on_every_pair(tmp_path: Path) -> None:
    items = [
        _item("a", "train", "blue shirt", description="A shirt that has long sleeves and is red."),
        _item("b", "train", "green dress", description="It is much longer, and darker.",
              attributes={"product_id": "p1"}),
        _item("c", "test", "green dress, front", attributes={"product_id": "p1"}),
        _item("d", "test", "is red"),  # a 2-word query: too common to count as a mention
        _item("e", "val", "grey coat", references=("Has long sleeves and is red",)),
        _item("g", "val", "red top"),
    ]  # fmt: skip
    crossing = Triplet(id="t1", split="train", reference="a", target="c", text="is green")
    dangling = Triplet(id="t2", split="test", reference="zz", target="d", text="is blue")
    report = check_leakage(load_dataset(_dataset(tmp_path, items, [TEST_QUERY, VAL_QUERY, crossing, dangling])))

    assert report["clean"] is False and report["splits"] == {"train": 2, "val": 2, "test": 2}
    train_val, train_test, val_test = (report["pairs"][p] for p in ("train/val", "train/test", "val/test"))
    # Fashion-IQ evaluates on val: train is checked against val as well as test.
    assert train_val["duplicate_images"]["examples"] == [
        {"id": "a", "other_id": "g", "sha256": train_val["duplicate_images"]["examples"][0]["sha256"]}
    ]
    assert [m["item_id"] for m in train_val["captions_mentioning_queries"]["examples"]] == ["b"]
    assert train_test["duplicate_images"]["count"] == 1 and train_test["duplicate_images"]["examples"][0]["id"] == "b"
    assert train_test["shared_products"] == {"count": 1, "examples": ["p1"]}
    assert train_test["shared_ids"]["count"] == 0 and train_test["shared_images"]["count"] == 0
    mentions = train_test["captions_mentioning_queries"]["examples"]
    found = {(m["item_id"], m["field"], m["query"], m["match"]) for m in mentions}
    assert found == {
        ("a", "description", "Has long sleeves and is red", "normalised"),
        ("a", "description", "has long sleeves", "verbatim"),
    }
    assert val_test["captions_mentioning_queries"]["count"] == 1  # item e's reference caption
    assert val_test["duplicate_images"]["count"] == 0
    assert report["gallery_captions_mentioning_queries"]["test"]["count"] == 0
    assert report["triplets_crossing_splits"]["examples"] == [
        {"triplet_id": "t1", "split": "train", "role": "target", "item_id": "c", "item_split": "test"}
    ]
    assert report["triplets_without_items"]["count"] == 1  # a missing image, not a crossing
    assert report["triplets_without_items"]["by_role"] == {"reference": 1, "target": 0}
    assert report["summary"].startswith("train/val duplicate images: 1; train/val captions mentioning queries: 1;")
    assert report["summary"].endswith("(1 triplets name ids without an item, e.g. missing images: not leakage)")


def test_check_leakage_clean_dataset(tmp_path: Path) -> None:
    items = [
        _item("a", "train", "red shirt"),
        _item("b", "train", "green dress"),
        _item("d", "test", "blue skirt"),
        _item("e", "val", "grey coat"),
        _item("zz", "test", "no file on disk"),
    ]
    query = Triplet(id="q1", split="test", reference="d", target="zz", text="Is grey and longer")
    report = check_leakage(load_dataset(_dataset(tmp_path, items, [query])))
    assert report["clean"] is True and report["missing_files"] == 1
    assert report["summary"] == "no leakage between train, val and test found"
    counts = [s["count"] for pair in report["pairs"].values() for s in pair.values()]
    assert len(counts) == 15 and not any(counts)


def test_fashioniq_triplets_without_images_are_not_leakage(shared_data: Path, tmp_path: Path) -> None:
    result = prepare("fashioniq", tmp_path / "fiq", shared_data / "fashion-iq-text", check_leakage=True)
    leakage = result.leakage
    assert leakage is not None and leakage["clean"] is True
    assert leakage["triplets_crossing_splits"]["count"] == 0
    assert leakage["triplets_without_items"]["count"] == sum(result.num_triplets.values()) == 30_134
    assert load_dataset(tmp_path / "fiq").root.joinpath("leakage.json").is_file()
