"""The bad-input corpus: every command fed the inputs a new user, a broken disk or a hostile file
would give it. Each case runs one command line through the CLI, in process, and asserts:

- refused: exit status 2, exactly one line on stderr (``error: ...`` naming the problem), no
  traceback, and nothing written where the command would write (``--out`` stays as it was);
- converted: exit status 0 after a documented conversion (stated below), every valid item kept,
  and the conversion reported where it is not silent by design (a warning, a skip count).

Warnings reach stderr as they would in a terminal (Python's default filters), so a library's
warning counts against the one line. The kinds (74):

Images given to a command (search/caption/generate as the query):
   1. garbage bytes with a .png name                        refused: could not be decoded
   2. an empty (0-byte) file                                refused: 0-byte
   3. a PNG cut in half                                     refused: truncated
   4. a 900-megapixel PNG (a decompression bomb)            refused: pixel limit
   5. a folder named like an image                          refused: not a file
   6. a CMYK JPEG                                           converted to RGB
   7. a 16-bit greyscale PNG                                converted to 8-bit RGB
   8. a palette PNG with transparency                       converted, alpha onto white
   9. an animated GIF                                       converted: first frame
  10. a JPEG with an EXIF rotation                          converted: rotation applied
  11. caption --image on its only, broken image             refused with the reason
  12. caption --image on a folder where nothing decodes     refused
  13. caption --image on a folder of good and bad images    converted: bad ones skipped and counted
  14. caption --image on an empty folder                    refused: holds no images
  15. generate --image broken                               refused
  16. generate --person with a broken --mask (try-on)        refused: could not be decoded
  17. prepare fashion-product over every image kind above   converted: bad ones skipped by reason
Data files:
  18. styles.csv with a row of too few fields               converted: row skipped as malformed_row
  19. styles.csv without a required column                  refused: names the columns
  20. styles.csv in Latin-1                                 refused: not UTF-8, names the line
  21. styles.csv with a UTF-8 byte-order mark               converted: every item kept
  22. styles.csv empty                                      refused
  23. Fashion-IQ captions that are not JSON                 refused
  24. Fashion-IQ captions that are an object, not a list    refused
  25. VITON-HD pairs naming ../../../x.png                  converted: skipped as outside_root
  26. manifest.jsonl with a line that is not JSON           refused: names the line
  27. manifest.jsonl with a record missing its image        refused: names the record
  28. manifest.jsonl with an unknown split                  refused
  29. manifest.jsonl in UTF-16                              refused: not UTF-8
  30. manifest.jsonl listing one id twice                   refused
  31. triplets.jsonl with a line that is a JSON list        refused
  32. prepare --root that does not exist                    refused
  33. prepare --out that is a file                          refused
  34. prepare of an unknown dataset                         refused
Recipes:
  35. an unknown key                                        refused: did you mean
  36. a wrong type (lr: fast)                               refused
  37. an out-of-range value (log_every: 0)                  refused
  38. an out-of-range value in an override (guidance -1)    refused
  39. a recipe file that does not exist                     refused
  40. YAML that does not parse                              refused
  41. a YAML list instead of a mapping                      refused
  42. data.path naming a missing dataset                    refused
  43. an override without '='                               refused
  44. vision weights naming a missing file                  refused
Checkpoints, indexes, caches:
  45. a truncated model.safetensors                         refused: names the file
  46. a meta.json whose fingerprint does not match the weights   refused
  47. a meta.json that is not JSON                          refused
  48. a checkpoint without config.yaml                      refused
  49. a truncated training_state.pt under --resume          refused
  50. an index whose ids and vectors disagree               refused: inconsistent
  51. an index with image_vectors.npy cut short             refused: names the folder
  52. a first stage (image.pq) of garbage                   refused
  53. an index without meta.json                            refused
  54. a feature-cache file cut short                        converted: says so, computes that shard again
  55. train --resume into a run killed before its first checkpoint   converted: starts at step 0, says so
  56. search with --checkpoint that is not a checkpoint     refused
CLI values:
  57. search -k 0                                           refused
  58. search -k -5                                          refused
  59. search --text ""                                      refused
  60. search --text of 1 MB                                 converted: truncated, with a warning
  61. generate --steps 10000                                refused
  62. generate --guidance -1                                refused
  63. generate --text ""                                    refused
  64. generate --text of 1 MB                               converted: truncated, with a warning
  65. generate --num-images 0                               refused
  66. generate --sampler nosuch                             refused
  67. caption --num-beams 1000                              refused
  68. caption --max-new-tokens 0                            refused
  69. index --kind nosuch                                   refused
  70. index --split nosuch                                  refused
  71. bench fid --max-items 0 on a 44-image split           refused: says how many are needed
  72. bench fid --max-items -1                              refused
  73. train --phase 3                                       refused (usage error, one line)
  74. search -k abc                                         refused (usage error, one line)
"""

import json
import re
import shutil
import struct
import sys
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from unifashion_cli.main import app

ROOT = Path(__file__).resolve().parents[1]
STYLES_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
ONE_MB = "red striped shirt " * 58_255  # 1,048,590 characters
runner = CliRunner()


# --- the shared artifacts: one tiny checkpoint, one index, one folder of bad files ---------------


@dataclass(frozen=True)
class Corpus:
    """Paths every case may read (never write): the tiny model, its data and index, bad files."""

    data: Path
    checkpoint: Path
    index: Path
    files: Path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(side: int = 30_000) -> bytes:
    """A 1-bit PNG of side x side pixels (900 million) in about 110 KB."""
    row = bytes(1 + side // 8)
    compressor = zlib.compressobj(9)
    pixels = compressor.compress(row * side) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)
            + _png_chunk(b"IEND", b""))


def _write_images(folder: Path) -> None:
    """One file per image kind; the good ones are drawn with a red garment on white."""
    folder.mkdir(parents=True)
    rgb = Image.new("RGB", (48, 64), "white")
    rgb.paste((200, 30, 30), (10, 10, 38, 54))
    rgb.save(folder / "good.png")
    (folder / "garbage.png").write_bytes(b"this is not an image")
    (folder / "empty.png").write_bytes(b"")
    whole = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "bomb.png").write_bytes(_bomb_png())
    (folder / "folder.png").mkdir()
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(folder / "sixteen.png")
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    rgb.save(folder / "animated.gif", save_all=True, append_images=[rgb.rotate(90)], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb.save(folder / "rotated.jpg", exif=exif)


@pytest.fixture(scope="module")
def corpus(tiny_phase1: Path, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    from unifashion_core.retrieval.build import build_index

    root = tmp_path_factory.mktemp("corpus")
    build_index(tiny_phase1 / "phase1", tiny_phase1 / "data", root / "index")
    _write_images(root / "files")
    return Corpus(tiny_phase1 / "data", tiny_phase1 / "phase1" / "checkpoint", root / "index",
                  root / "files")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def invoke(args: list[str], home: Path) -> Result:
    """Run the CLI in process with a terminal's warning filters (pytest's are set aside)."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category in (("default", DeprecationWarning), ("ignore", DeprecationWarning),
                                 ("ignore", PendingDeprecationWarning), ("ignore", ImportWarning),
                                 ("ignore", ResourceWarning)):  # fmt: skip
            warnings.filterwarnings(action, category=category, module="__main__" if action == "default" else "")
        warnings.showwarning = _show_warning
        return runner.invoke(app, [str(a) for a in args], env={"UNIFASHION_HOME": str(home)})


def _no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr


def refused(*words: str) -> Callable[[Result], None]:
    """Exit 2, one stderr line ``error: ...`` containing ``words`` (case-insensitive)."""

    def check(result: Result) -> None:
        _no_traceback(result)
        assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        for word in words:
            assert word.lower() in lines[0].lower(), (word, lines[0])

    return check


def converted(check: Callable[[Result], None] | None = None, **expect: str) -> Callable[[Result], None]:
    """Exit 0, no traceback, then ``check(result)``; ``stderr=...`` must appear on stderr."""

    def run(result: Result) -> None:
        _no_traceback(result)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        if "stderr" in expect:
            assert expect["stderr"] in " ".join(result.stderr.split()), result.stderr
        if check is not None:
            check(result)

    return run


# --- builders of the inputs that need more than a file of the shared folder ----------------------


def _made(path: Path, text: str | None = None) -> Path:
    """``path`` created: a file holding ``text``, or an empty folder."""
    path.write_text(text) if text is not None else path.mkdir()
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(c: Corpus, tmp: Path, edit: Callable[[list[str]], list[str]], name: str = "manifest.jsonl",
                   encoding: str = "utf-8") -> Path:
    data = _copy(c.data, tmp / "data")
    lines = (data / name).read_text().splitlines()
    (data / name).write_text("\n".join(edit(lines)) + "\n", encoding=encoding)
    return data


def _replace_record(lines: list[str], change: Callable[[dict], object]) -> list[str]:
    """The manifest with its 4th record changed in place by ``change``."""
    record = json.loads(lines[3])
    change(record)
    return [*lines[:3], json.dumps(record), *lines[4:]]


def _catalogue(tmp: Path, rows: list[str], header: str = STYLES_HEADER, encoding: str = "utf-8",
               images: dict[str, Path] | None = None, files: Path | None = None) -> Path:
    """A Kaggle-layout catalogue: styles.csv with ``rows`` and one good image per row id."""
    root = tmp / "kaggle"
    (root / "images").mkdir(parents=True)
    (root / "styles.csv").write_bytes((header + "\n".join(rows) + "\n").encode(encoding))
    for row in rows:
        item_id = row.split(",")[0].lstrip("\ufeff")
        if item_id.isdigit():
            source = (images or {}).get(item_id, files / "good.png" if files else None)
            if source is not None and source.is_file():
                shutil.copy(source, root / "images" / f"{item_id}.jpg")
    return root


def _row(item_id: int, name: str = "Red Shirt") -> str:
    return f"{item_id},Men,Apparel,Topwear,Shirts,Red,Summer,2012.0,Casual,{name}"


def _recipe(tmp: Path, text: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(text)
    return path


def _checkpoint(c: Corpus, tmp: Path, change: Callable[[Path], None]) -> Path:
    checkpoint = _copy(c.checkpoint, tmp / "checkpoint")
    change(checkpoint)
    return checkpoint


def _truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(int(path.stat().st_size * keep))


def _index(c: Corpus, tmp: Path, change: Callable[[Path], None]) -> Path:
    index = _copy(c.index, tmp / "index")
    change(index)
    return index


def _garbage_stage(path: Path) -> None:
    """Make the flat index claim a pq first stage whose FAISS file is garbage."""
    _meta(path, kind="pq", ann={"image": {"candidates": 256}})
    (path / "image.pq").write_bytes(b"garbage")


def _meta(path: Path, **fields: object) -> None:
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, **fields}))


def _mixed_folder(c: Corpus, tmp: Path, names: tuple[str, ...]) -> Path:
    folder = tmp / "images"
    folder.mkdir()
    for name in names:
        shutil.copy(c.files / name, folder / name)
    return folder


def _cut_cache_short(cache: Path) -> list[Path]:
    """Cut every file of a feature cache to half its size (whatever the cache's file layout)."""
    files = [path for path in sorted(cache.rglob("*")) if path.is_file()]
    for path in files:
        _truncate(path)
    return files


def _feature_cache_cut_short(c: Corpus, tmp: Path) -> list[str]:
    """Features of four items cached by the checkpoint's vision encoder, then the cache cut short."""
    from unifashion_core.checkpoint import load_checkpoint
    from unifashion_core.data.manifest import load_dataset
    from unifashion_core.features import feature_cache_dir, image_tokens

    dataset = load_dataset(c.data)
    cache = feature_cache_dir(tmp / "ws" / "cache", dataset)  # the workspace each case runs in
    image_tokens(load_checkpoint(c.checkpoint).model.vision, dataset, list(dataset.items[:4]), cache)
    assert _cut_cache_short(cache)
    return ["bench", "retrieval", "--checkpoint", c.checkpoint, "--data", c.data, "--out", tmp / "bench"]


def _feature_cache_whole(tmp: Path) -> Callable[[Result], None]:
    """Every shard of the workspace's feature cache reads back whole (the cut one was computed again)."""
    from unifashion_core.shards import open_shard

    def check(result: Result) -> None:
        records = sorted((tmp / "ws" / "cache").glob("*/tokens-*/*.json"))
        assert records
        for record in records:
            shard, _, problem = open_shard(record.parent, record.stem)
            assert shard is not None and not problem, (record, problem)

    return check


def _resume_before_first_checkpoint(c: Corpus, tmp: Path) -> list[str]:
    run = tmp / "run"
    run.mkdir()
    from unifashion_core.config import dump_recipe, load_recipe

    overrides = ["train.stages=[retrieval]", "train.retrieval.max_steps=1"]
    (run / "config.yaml").write_text(dump_recipe(load_recipe("tiny", overrides)))  # what a killed run left
    return ["train", "tiny", *overrides, "--data", c.data, "--out", run, "--resume"]


def _search(c: Corpus, image: Path) -> list[str]:
    return ["search", "--image", image, "--index", c.index, "-k", "3", "--json"]


def _results(count: int) -> Callable[[Result], None]:
    return lambda result: len(json.loads(result.stdout)["results"]) == count or pytest.fail(result.stdout)


def _captioned(count: int, skipped: int) -> Callable[[Result], None]:
    def check(result: Result) -> None:
        captions = json.loads(result.stdout)
        assert len(captions["captions"]) == count and len(captions["skipped"]) == skipped

    return check


def _report(tmp: Path, **counts: int) -> Callable[[Result], None]:
    """The prepared dataset in tmp/out has ``items`` items and these skip counts."""

    def check(result: Result) -> None:
        report = json.loads((tmp / "out" / "report.json").read_text())
        expected_items = counts.pop("items")
        assert sum(report["num_items"].values()) == expected_items, report
        assert {k: v for k, v in report["skipped_counts"].items() if k in counts} == counts, report

    return check


def _product_folder(c: Corpus, tmp: Path) -> list[str]:
    kinds = ["good.png", "garbage.png", "empty.png", "truncated.png", "bomb.png", "cmyk.jpg", "sixteen.png",
             "palette.png", "animated.gif", "rotated.jpg"]
    images = {str(i): c.files / name for i, name in enumerate(kinds, start=1)}
    root = _catalogue(tmp, [_row(i, f"Shirt {i}") for i in range(1, len(kinds) + 1)], images=images)
    return ["prepare", "fashion-product", "--root", root, "--out", tmp / "out", "-q"]


def _fashioniq(tmp: Path, captions: str) -> list[str]:
    root = tmp / "fiq"
    (root / "image_splits").mkdir(parents=True)
    (root / "captions").mkdir()
    (root / "images").mkdir()
    (root / "image_splits" / "split.dress.train.json").write_text('["D1"]')
    (root / "captions" / "cap.dress.train.json").write_text(captions)
    return ["prepare", "fashioniq", "--root", root, "--out", tmp / "out", "-q"]


def _vitonhd_traversal(c: Corpus, tmp: Path) -> list[str]:
    root = tmp / "viton"
    (root / "train" / "cloth").mkdir(parents=True)
    shutil.copy(c.files / "good.png", root / "train" / "cloth" / "00001_00.jpg")
    shutil.copy(c.files / "good.png", tmp / "x.png")
    (root / "train_pairs.txt").write_text("00001_00.jpg 00001_00.jpg\n00002_00.jpg ../../../x.png\n")
    (root / "captions.json").write_text(json.dumps({"00001": ["a red top"], "x": ["stolen"]}))
    return ["prepare", "vitonhd", "--root", root, "--out", tmp / "out", "-q"]


# --- the cases ---------------------------------------------------------------------------------------

Build = Callable[[Corpus, Path], list]
CASES: dict[str, tuple[Build, Callable[[Path], Callable[[Result], None]]]] = {
    # images given to a command
    "image: garbage bytes": (
        lambda c, t: _search(c, c.files / "garbage.png"), lambda t: refused("could not be decoded")),
    "image: empty file": (lambda c, t: _search(c, c.files / "empty.png"), lambda t: refused("0-byte")),
    "image: truncated PNG": (lambda c, t: _search(c, c.files / "truncated.png"), lambda t: refused("truncated.png")),
    "image: 900-megapixel PNG": (lambda c, t: _search(c, c.files / "bomb.png"), lambda t: refused("pixel limit")),
    "image: a folder": (lambda c, t: _search(c, c.files / "folder.png"), lambda t: refused("not a file")),
    "image: CMYK JPEG": (lambda c, t: _search(c, c.files / "cmyk.jpg"), lambda t: converted(_results(3))),
    "image: 16-bit PNG": (lambda c, t: _search(c, c.files / "sixteen.png"), lambda t: converted(_results(3))),
    "image: palette + alpha PNG": (lambda c, t: _search(c, c.files / "palette.png"), lambda t: converted(_results(3))),
    "image: animated GIF": (lambda c, t: _search(c, c.files / "animated.gif"), lambda t: converted(_results(3))),
    "image: EXIF-rotated JPEG": (lambda c, t: _search(c, c.files / "rotated.jpg"), lambda t: converted(_results(3))),
    "caption: its only image broken": (
        lambda c, t: ["caption", "--image", c.files / "garbage.png", "--checkpoint", c.checkpoint, "-q"],
        lambda t: refused("garbage.png", "could not be decoded")),
    "caption: nothing in the folder decodes": (
        lambda c, t: ["caption", "--image", _mixed_folder(c, t, ("garbage.png", "empty.png")), "--checkpoint",
                      c.checkpoint, "--out", t / "captions.jsonl", "-q"],
        lambda t: refused("none of the 2 images")),
    "caption: good and bad images in a folder": (
        lambda c, t: ["caption", "--image", _mixed_folder(c, t, ("good.png", "cmyk.jpg", "garbage.png", "bomb.png")),
                      "--checkpoint", c.checkpoint, "--max-new-tokens", "4", "--json", "-q"],
        lambda t: converted(_captioned(2, 2))),
    "caption: an empty folder": (
        lambda c, t: ["caption", "--image", _made(t / "none"), "--checkpoint", c.checkpoint],
        lambda t: refused("holds no images")),
    "generate: --image broken": (
        lambda c, t: ["generate", "--image", c.files / "truncated.png", "--out", t / "g.png", "--checkpoint",
                      c.checkpoint, "--steps", "2", "-q"],
        lambda t: refused("truncated.png")),
    "generate: --person with a broken --mask": (  # a generator without inpainting: test_tryon.py
        lambda c, t: ["generate", "--person", c.files / "good.png", "--mask", c.files / "garbage.png", "--text", "red",
                      "--out", t / "g.png", "--checkpoint", c.checkpoint, "--steps", "2", "-q"],
        lambda t: refused("could not be decoded")),
    "prepare: every image kind in a catalogue": (
        _product_folder,
        lambda t: converted(_report(t, items=6, **{"item:unreadable": 1, "item:empty": 1, "item:truncated": 1,
                                                   "item:too_large": 1}))),
    # data files
    "styles.csv: a row of too few fields": (
        lambda c, t: ["prepare", "fashion-product", "--root", _catalogue(t, [_row(1), "2,Men,Apparel", _row(3)],
                                                                         files=c.files), "--out", t / "out", "-q"],
        lambda t: converted(_report(t, items=2, **{"row:malformed_row": 1}))),
    "styles.csv: a column missing": (
        lambda c, t: ["prepare", "fashion-product", "--root",
                      _catalogue(t, ["1,Men,Red Shirt"], header="id,gender,productDisplayName\n", files=c.files),
                      "--out", t / "out"],
        lambda t: refused("does not start with the columns")),
    "styles.csv: Latin-1": (
        lambda c, t: ["prepare", "fashion-product", "--root",
                      _catalogue(t, [_row(1), _row(2, "Café Shirt")], encoding="latin-1", files=c.files),
                      "--out", t / "out"],
        lambda t: refused("not UTF-8", "line 3")),
    "styles.csv: byte-order mark": (
        lambda c, t: ["prepare", "fashion-product", "--root",
                      _catalogue(t, [_row(1), _row(2)], header="\ufeff" + STYLES_HEADER, files=c.files),
                      "--out", t / "out", "-q"],
        lambda t: converted(_report(t, items=2))),
    "styles.csv: empty": (
        lambda c, t: ["prepare", "fashion-product", "--root", _catalogue(t, [], header="", files=c.files),
                      "--out", t / "out"],
        lambda t: refused("styles.csv")),
    "fashioniq: captions not JSON": (lambda c, t: _fashioniq(t, "[{"), lambda t: refused("not valid JSON")),
    "fashioniq: captions an object": (lambda c, t: _fashioniq(t, '{"a": 1}'), lambda t: refused("JSON list")),
    "vitonhd: pairs naming ../../../x.png": (
        _vitonhd_traversal, lambda t: converted(_report(t, items=1, **{"item:outside_root": 1}))),
    "manifest: a line that is not JSON": (
        lambda c, t: ["index", "--data", _edit_manifest(c, t, lambda lines: [*lines[:5], "{oops", *lines[5:]]),
                      "--checkpoint", c.checkpoint, "--out", t / "index"],
        lambda t: refused("manifest.jsonl:6", "not valid JSON")),
    "manifest: a record without its image": (
        lambda c, t: ["index", "--data", _edit_manifest(c, t, lambda lines: _replace_record(
            lines, lambda r: r.pop("image"))), "--checkpoint", c.checkpoint, "--out", t / "index"],
        lambda t: refused("record 4")),
    "manifest: an unknown split": (
        lambda c, t: ["index", "--data", _edit_manifest(c, t, lambda lines: _replace_record(
            lines, lambda r: r.update(split="dev"))), "--checkpoint", c.checkpoint, "--out", t / "index"],
        lambda t: refused("split 'dev'")),
    "manifest: UTF-16": (
        lambda c, t: ["index", "--data", _edit_manifest(c, t, lambda lines: lines, encoding="utf-16"),
                      "--checkpoint", c.checkpoint, "--out", t / "index"],
        lambda t: refused("not UTF-8")),
    "manifest: one id twice": (
        lambda c, t: ["index", "--data", _edit_manifest(c, t, lambda lines: [*lines, lines[0]]),
                      "--checkpoint", c.checkpoint, "--out", t / "index"],
        lambda t: refused("more than once")),
    "triplets: a line that is a JSON list": (
        lambda c, t: ["index", "--data", _edit_manifest(c, t, lambda lines: ["[1, 2]", *lines], "triplets.jsonl"),
                      "--checkpoint", c.checkpoint, "--out", t / "index"],
        lambda t: refused("triplets.jsonl:1", "not a JSON object")),
    "prepare: --root missing": (
        lambda c, t: ["prepare", "fashion-product", "--root", t / "nowhere", "--out", t / "out"],
        lambda t: refused("nowhere")),
    "prepare: --out is a file": (
        lambda c, t: ["prepare", "demo", "--out", _made(t / "file", "mine")],
        lambda t: refused("is a file")),
    "prepare: an unknown dataset": (
        lambda c, t: ["prepare", "deepfashion", "--root", t, "--out", t / "out"], lambda t: refused("unknown dataset")),
    # recipes
    "recipe: an unknown key": (
        lambda c, t: ["train", _recipe(t, "name: x\ntrian: {}\n"), "--data", c.data, "--out", t / "run"],
        lambda t: refused("did you mean 'train'")),
    "recipe: a wrong type": (
        lambda c, t: ["train", _recipe(t, "train:\n  retrieval: {lr: fast}\n"), "--data", c.data, "--out", t / "run"],
        lambda t: refused("train.retrieval.lr must be a float")),
    "recipe: an out-of-range value": (
        lambda c, t: ["train", _recipe(t, "train: {log_every: 0}\n"), "--data", c.data, "--out", t / "run"],
        lambda t: refused("train.log_every must be at least 1")),
    "recipe: an out-of-range override": (
        lambda c, t: ["train", "tiny", "model.generator.guidance_scale=-1", "--data", c.data, "--out", t / "run"],
        lambda t: refused("guidance_scale must be between")),
    "recipe: no such file": (
        lambda c, t: ["train", t / "missing.yaml", "--data", c.data], lambda t: refused("does not exist")),
    "recipe: YAML that does not parse": (
        lambda c, t: ["train", _recipe(t, "train: [unclosed\n"), "--data", c.data],
        lambda t: refused("not valid YAML")),
    "recipe: a list, not a mapping": (
        lambda c, t: ["train", _recipe(t, "- a\n- b\n"), "--data", c.data], lambda t: refused("mapping")),
    "recipe: data.path missing": (
        lambda c, t: ["train", "tiny", f"data.path={t / 'gone'}", "--out", t / "run"], lambda t: refused("gone")),
    "recipe: an override without '='": (
        lambda c, t: ["train", "tiny", "train.lr", "--data", c.data], lambda t: refused("key=value")),
    "recipe: vision weights missing": (
        lambda c, t: ["train", "tiny", "model.vision.name=efficientnet_lite0", f"model.vision.weights={t / 'w.pt'}",
                      "--data", c.data, "--out", t / "run", "-q"],
        lambda t: refused("w.pt")),
    # checkpoints, indexes, caches
    "checkpoint: model.safetensors truncated": (
        lambda c, t: ["search", "--text", "red", "--index", c.index, "--checkpoint",
                      _checkpoint(c, t, lambda p: _truncate(p / "model.safetensors"))],
        lambda t: refused("model.safetensors", "cut short")),
    "checkpoint: fingerprint does not match": (
        lambda c, t: ["caption", "--image", c.files / "good.png", "--checkpoint",
                      _checkpoint(c, t, lambda p: _meta(p, fingerprint="0123456789abcdef"))],
        lambda t: refused("meta.json", "0123456789abcdef")),
    "checkpoint: meta.json not JSON": (
        lambda c, t: ["caption", "--image", c.files / "good.png", "--checkpoint",
                      _checkpoint(c, t, lambda p: (p / "meta.json").write_text("{"))],
        lambda t: refused("meta.json", "not valid JSON")),
    "checkpoint: config.yaml missing": (
        lambda c, t: ["caption", "--image", c.files / "good.png", "--checkpoint",
                      _checkpoint(c, t, lambda p: (p / "config.yaml").unlink())],
        lambda t: refused("config.yaml")),
    "checkpoint: training_state.pt truncated": (
        lambda c, t: ["train", "tiny", "--data", c.data, "--out", _resume_run(c, t), "--resume", "-q"],
        lambda t: refused("training_state.pt", "--overwrite")),
    "index: ids and vectors disagree": (
        lambda c, t: ["search", "--text", "red", "--index", _index(c, t, lambda p: _drop_first_id(p))],
        lambda t: refused("inconsistent")),
    "index: image_vectors.npy cut short": (
        lambda c, t: ["search", "--text", "red", "--index", _index(c, t, lambda p: _truncate(p / "image_vectors.npy"))],
        lambda t: refused("index", "cut short", "rebuild")),
    "index: first stage image.pq of garbage": (
        lambda c, t: ["search", "--text", "red", "--checkpoint", c.checkpoint, "--index",
                      _index(c, t, _garbage_stage)],
        lambda t: refused("cut short", "rebuild")),
    "index: no meta.json": (
        lambda c, t: ["search", "--text", "red", "--index", _index(c, t, lambda p: (p / "meta.json").unlink())],
        lambda t: refused("not a unifashion index")),
    "feature cache: a file cut short": (
        _feature_cache_cut_short, lambda t: converted(_feature_cache_whole(t), stderr="computing it again")),
    "train --resume before the first checkpoint": (
        _resume_before_first_checkpoint, lambda t: converted(stderr="starting it from step 0")),
    "search: --checkpoint not a checkpoint": (
        lambda c, t: ["search", "--text", "red", "--index", c.index, "--checkpoint", c.data],
        lambda t: refused("not a unifashion checkpoint")),
    # CLI values
    "search -k 0": (lambda c, t: ["search", "--text", "red", "--index", c.index, "-k", "0"], lambda t: refused("-k")),
    "search -k -5": (lambda c, t: ["search", "--text", "red", "--index", c.index, "-k", "-5"], lambda t: refused("-k")),
    "search --text ''": (lambda c, t: ["search", "--text", "", "--index", c.index], lambda t: refused("empty")),
    "search --text of 1 MB": (
        lambda c, t: ["search", "--text", ONE_MB, "--index", c.index, "-k", "3", "--json"],
        lambda t: converted(_results(3), stderr="truncated from 1048590")),
    "generate --steps 10000": (
        lambda c, t: ["generate", "--text", "red", "--steps", "10000", "--out", t / "g.png"],
        lambda t: refused("--steps")),
    "generate --guidance -1": (
        lambda c, t: ["generate", "--text", "red", "--guidance", "-1", "--out", t / "g.png"],
        lambda t: refused("--guidance")),
    "generate --text ''": (lambda c, t: ["generate", "--text", "", "--out", t / "g.png"], lambda t: refused("empty")),
    "generate --text of 1 MB": (
        lambda c, t: ["generate", "--text", ONE_MB, "--out", t / "g.png", "--checkpoint", c.checkpoint, "--steps",
                      "2"],
        lambda t: converted(lambda r: Image.open(t / "g.png").size == (32, 32) or pytest.fail("size"),
                            stderr="--text truncated from 1048590")),
    "generate --num-images 0": (
        lambda c, t: ["generate", "--text", "red", "--num-images", "0", "--out", t / "g.png"],
        lambda t: refused("--num-images")),
    "generate --sampler nosuch": (
        lambda c, t: ["generate", "--text", "red", "--sampler", "nosuch", "--out", t / "g.png"],
        lambda t: refused("sampler")),
    "caption --num-beams 1000": (
        lambda c, t: ["caption", "--image", c.files / "good.png", "--num-beams", "1000", "--checkpoint", c.checkpoint],
        lambda t: refused("--num-beams")),
    "caption --max-new-tokens 0": (
        lambda c, t: ["caption", "--image", c.files / "good.png", "--max-new-tokens", "0", "--checkpoint",
                      c.checkpoint],
        lambda t: refused("--max-new-tokens")),
    "index --kind nosuch": (
        lambda c, t: ["index", "--kind", "nosuch", "--checkpoint", c.checkpoint, "--data", c.data, "--out", t / "i"],
        lambda t: refused("flat", "pq")),
    "index --split nosuch": (
        lambda c, t: ["index", "--split", "nosuch", "--checkpoint", c.checkpoint, "--data", c.data, "--out", t / "i"],
        lambda t: refused("unknown split")),
    "bench fid --max-items 0 on 44 images": (
        lambda c, t: ["bench", "fid", "--checkpoint", c.checkpoint, "--data", c.data, "--max-items", "0", "--out",
                      t / "fid", "-q"],
        lambda t: refused("at least 50", "gives 44")),
    "bench fid --max-items -1": (
        lambda c, t: ["bench", "fid", "--checkpoint", c.checkpoint, "--data", c.data, "--max-items", "-1", "--out",
                      t / "fid", "-q"],
        lambda t: refused("--max-items")),
    "train --phase 3": (lambda c, t: ["train", "tiny", "--phase", "3"], lambda t: refused("--phase")),
    "search -k abc": (lambda c, t: ["search", "--text", "red", "-k", "abc"], lambda t: refused("-k")),
}


def _drop_first_id(index: Path) -> None:
    lines = (index / "ids.jsonl").read_text().splitlines()
    (index / "ids.jsonl").write_text("\n".join(lines[1:]) + "\n")


def _resume_run(c: Corpus, tmp: Path) -> Path:
    """A run directory of the tiny recipe whose training_state.pt was cut short."""
    run = tmp / "run"
    (run / "checkpoint").parent.mkdir(parents=True)
    shutil.copytree(c.checkpoint, run / "checkpoint")
    shutil.copy(c.checkpoint / "config.yaml", run / "config.yaml")
    _truncate(run / "checkpoint" / "training_state.pt")
    return run


def test_the_docstring_lists_every_case() -> None:
    listed = re.findall(r"^\s+\d+\. ", __doc__, flags=re.MULTILINE)
    assert len(listed) == len(CASES) >= 40
    assert f"The kinds ({len(CASES)})" in __doc__


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, corpus: Corpus, tmp_path: Path) -> None:
    build, expect = CASES[name]
    args = build(corpus, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(args, tmp_path / "ws")
    expect(tmp_path)(result)
    if result.exit_code == 2:  # a refusal writes nothing next to its inputs
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_image_tokens_computes_a_feature_cache_cut_short_again(corpus: Corpus, tmp_path: Path) -> None:
    from unifashion_core.checkpoint import load_checkpoint
    from unifashion_core.data.manifest import load_dataset
    from unifashion_core.features import image_tokens

    dataset, vision = load_dataset(corpus.data), load_checkpoint(corpus.checkpoint).model.vision
    items = list(dataset.items[:4])
    _, tokens, _ = image_tokens(vision, dataset, items, tmp_path / "cache")
    assert _cut_cache_short(tmp_path / "cache")
    logged = []
    from unifashion_core.progress import NullProgress

    progress = NullProgress()
    progress.log = logged.append
    _, again, _ = image_tokens(vision, dataset, items, tmp_path / "cache", progress)
    assert torch.equal(again, tokens)  # computed again, not mixed with the damaged rows
    assert any("computing it again" in line for line in logged)
