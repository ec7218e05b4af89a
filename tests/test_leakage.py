"""Leakage checks on a small hand-made prepared dataset."""

from pathlib import Path

import pytest
from PIL import Image

from unifashion_core.data.leakage import check_leakage
from unifashion_core.data.manifest import Item, SkipLog, Triplet, load_dataset, write_dataset
from unifashion_core.errors import UserError

COLORS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 255, 0), "d": (0, 0, 255), "e": (9, 9, 9)}


def _write_images(tmp: Path) -> None:
    (tmp / "images").mkdir()
    for name, color in COLORS.items():  # b and c have the same pixels, hence the same bytes
        Image.new("RGB", (8, 8), color).save(tmp / "images" / f"{name}.png")


def _item(id: str, split: str, caption: str, **fields: object) -> Item:
    return Item(id=id, image=f"images/{id}.png", split=split, caption=caption, **fields)


def _dataset(tmp_path: Path, items: list[Item], triplets: list[Triplet]) -> Path:
    out = tmp_path / "data"
    write_dataset(out, items, triplets, SkipLog(), {"dataset": "hand-made"}, _write_images)
    return out


QUERY = Triplet(
    id="q1",
    split="test",
    reference="c",
    target="d",
    text="Has long sleeves and is red",
    texts=("has long sleeves", "is red"),
)


def test_check_leakage_finds_each_kind(tmp_path: Path) -> None:
    items = [
        _item("a", "train", "blue shirt", description="A shirt that has long sleeves and is red."),
        _item("b", "train", "green dress", attributes={"product_id": "p1"}),
        _item("c", "test", "green dress, front", attributes={"product_id": "p1"}),
        _item("d", "test", "is red"),  # a 2-word query: too common to count as a mention
        _item("e", "val", "grey coat", references=("Has long sleeves and is red",)),
    ]
    crossing = Triplet(id="t1", split="train", reference="a", target="c", text="is green")
    dataset = load_dataset(_dataset(tmp_path, items, [QUERY, crossing]))

    report = check_leakage(dataset)

    assert report["eval_split"] == "test" and report["clean"] is False
    assert report["summary"].startswith("duplicate images: 1; products in several splits: 1;")
    duplicates = report["duplicate_images"]
    assert duplicates["count"] == 1 and duplicates["missing_files"] == 0
    assert duplicates["examples"][0]["train_id"] == "b"
    assert duplicates["examples"][0]["eval_id"] == "c"
    assert report["products_in_several_splits"]["examples"] == [
        {"key": "p1", "splits": ["test", "train"]}
    ]
    assert report["ids_in_several_splits"]["count"] == 0
    assert report["images_in_several_splits"]["count"] == 0
    mentions = report["captions_mentioning_queries"]
    assert mentions["count"] == 2  # items a and e
    found = {(m["item_id"], m["field"], m["query"], m["match"]) for m in mentions["examples"]}
    assert found == {
        ("a", "description", "Has long sleeves and is red", "normalised"),
        ("a", "description", "has long sleeves", "verbatim"),
        ("e", "references[0]", "Has long sleeves and is red", "verbatim"),
        ("e", "references[0]", "has long sleeves", "normalised"),
    }
    crossings = report["triplets_crossing_splits"]
    assert crossings["count"] == 1
    assert crossings["examples"] == [
        {
            "triplet_id": "t1",
            "split": "train",
            "role": "target",
            "item_id": "c",
            "item_split": "test",
        }
    ]


def test_check_leakage_clean_dataset(tmp_path: Path) -> None:
    items = [
        _item("a", "train", "red shirt"),
        _item("b", "train", "green dress"),
        _item("d", "test", "blue skirt"),
        _item("e", "test", "grey coat"),
    ]
    query = Triplet(id="q1", split="test", reference="d", target="e", text="Is grey and longer")
    dataset = load_dataset(_dataset(tmp_path, items, [query]))
    report = check_leakage(dataset)
    assert report["clean"] is True
    assert report["summary"] == "no leakage into the test split found"
    assert all(
        section["count"] == 0 for key, section in report.items() if isinstance(section, dict)
    )


def test_check_leakage_eval_split_and_missing_files(tmp_path: Path) -> None:
    items = [_item("a", "train", "red shirt"), _item("zz", "val", "no file on disk")]
    dataset = load_dataset(_dataset(tmp_path, items, []))
    assert check_leakage(dataset, eval_split="val")["duplicate_images"]["missing_files"] == 1
    with pytest.raises(UserError, match="val or test"):
        check_leakage(dataset, eval_split="train")
    with pytest.raises(UserError, match="unknown split"):
        check_leakage(dataset, eval_split="dev")
