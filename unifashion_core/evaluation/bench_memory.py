"""`unifashion bench memory`: training's peak memory and seconds per step at two dataset sizes.

Training streams its data (features from the on-disk cache, frozen query outputs from shards,
images decoded per batch), so neither memory nor step time should grow with the dataset. This
bench checks it: it prepares the demo data, repeats it to each size (each copy its own item id and
image file, a hard link; triplets repeated with their items), then in a fresh Python process per
size and phase trains a fixed number of steps of every phase-1 stage, and of phase 2, from an
empty feature cache. Each process records its peak resident memory (``VmHWM``, the feature
pass and the frozen-query pass included); seconds per step are the mean over each stage's steps
after the first, from ``metrics.jsonl`` (a mean, not a median: retrieval alternates ITM steps with
plain ones, about 3x apart, and the median of such a series jumps between the two). The smallest
size is measured again after the others (its own run and cache), and the report gives the ratio of
the largest size to the mean of the two smallest-size runs (targets: memory within 1.3x and
seconds within 1.2x at 10x the data): the machine this was built on changes speed by up to 1.6x
within a day, and a drift between the first and the last run shows as a difference between the
two smallest-size runs (``drift`` in the report) instead of as a ratio.
"""

import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from unifashion_core.config import load_recipe
from unifashion_core.data.manifest import SkipLog, load_dataset, write_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.bench_index import peak_rss_mb
from unifashion_core.evaluation.reports import BenchReport, markdown_table, write_report
from unifashion_core.fileio import read_json, read_jsonl, write_json
from unifashion_core.progress import NullProgress, Progress

TARGETS = {"peak_rss": 1.3, "seconds_per_step": 1.2}  # largest / smallest, at 10x the data
BASE_ITEMS = 1200  # distinct demo garments (the generator's attribute space holds 1,344)


def bench_memory(
    out: str | Path,
    recipe: str | Path = "demo",
    sizes: tuple[int, ...] = (2000, 20000),
    steps: int = 12,
    image_size: int = 64,
    overrides: list[str] | tuple[str, ...] = (),
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Measure peak memory and seconds per step of training at each of ``sizes``; write the report.

    Args:
        out: report directory (also holds the datasets, runs and caches it makes).
        recipe: the recipe trained (file or packaged name).
        sizes: dataset sizes in items, smallest first.
        steps: optimiser steps of each stage.
        image_size: side of the demo images.
        overrides: ``key=value`` overrides applied after the bench's own (steps, no saving).
        progress: progress events.
    """
    from unifashion_core.data.adapters.demo import prepare_demo

    if len(sizes) < 2 or list(sizes) != sorted(sizes) or sizes[0] < 100 or steps < 2:
        raise UserError("bench memory needs two or more sizes of at least 100 items, smallest first, and 2+ steps.")
    out = Path(out)
    base = out / "data" / "base"
    progress.log(f"[memory] preparing the demo data ({BASE_ITEMS} items, {image_size} px)")
    prepare_demo(base, num_items=BASE_ITEMS, image_size=image_size)
    rows = []
    datasets = {size: repeat_dataset(base, out / "data" / str(size), size) for size in sizes}
    for repeat, size in [(0, size) for size in sizes] + [(1, sizes[0])]:  # the smallest again, last
        name = str(size) if repeat == 0 else f"{size}-again"
        for phase in (1, 2):
            progress.log(f"[memory] {size} items{' (again)' if repeat else ''}: phase {phase} in a fresh process")
            rows.append({"num_items": size, "repeat": repeat, "phase": phase,
                         **_measure(out / "runs" / name, datasets[size], recipe, phase, steps, overrides)})
    report = {"bench": "memory", "recipe": str(recipe), "steps": steps, "image_size": image_size,
              "sizes": list(sizes), "protocol": " ".join(__doc__.split("\n\n")[1:]).replace("\n", " "),
              "runs": rows, "ratios": _ratios(rows, sizes), "drift": _drift(rows, sizes[0]), "targets": TARGETS,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0]}
    return write_report("memory", out, report, _markdown(report))


def repeat_dataset(base: Path, out: Path, num_items: int) -> Path:
    """``base`` repeated to ``num_items`` items: copy k of item X is ``X~k`` with the same texts and
    split and its own image file (a hard link); every triplet whose two items have copy k is
    repeated with them."""
    source = load_dataset(base)
    copies = [(k, item) for k in range(-(-num_items // len(source.items))) for item in source.items][:num_items]
    items = [replace(item, id=f"{item.id}~{k}", image=f"images/{k}/{Path(item.image).name}",
                     extras={key: f"images/{k}/{key}/{Path(path).name}" for key, path in item.extras.items()})
             for k, item in copies]  # try-on people, masks and sketches are linked with the image
    made = {item.id for item in items}
    triplets = [replace(t, id=f"{t.id}~{k}", reference=f"{t.reference}~{k}", target=f"{t.target}~{k}")
                for k in range(-(-num_items // len(source.items))) for t in source.triplets
                if {f"{t.reference}~{k}", f"{t.target}~{k}"} <= made]

    def link_images(tmp: Path) -> None:
        for (_, item), copy in zip(copies, items, strict=True):
            for key in ("image", *item.extras):
                target = tmp / (copy.image if key == "image" else copy.extras[key])
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(source.image_path(item, key), target)

    write_dataset(out, items, triplets, SkipLog(), {"dataset": "demo-repeated", "source": str(base.absolute())},
                  link_images)
    return out


def _measure(run: Path, data: Path, recipe: str | Path, phase: int, steps: int,
             overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Train one phase in a fresh Python process; its peak memory and seconds per step."""
    spec = {"recipe": str(recipe), "data": str(data), "out": str(run / f"phase{phase}"), "phase": phase,
            "init": str(run / "phase1"), "cache": str(run / "cache"), "result": str(run / f"phase{phase}.json"),
            "overrides": [*(f"train.{stage}.max_steps={steps}" for stage in ("retrieval", "caption", "generate",
                                                                             "phase2")),
                          "train.eval_every=0", "train.save_every=0", "train.eval_fid_items=0", "train.log_every=1",
                          *overrides]}
    spec_path = run / f"phase{phase}-spec.json"
    write_json(spec_path, spec)
    code = f"from unifashion_core.evaluation.bench_memory import measure_run; measure_run({str(spec_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the phase-{phase} training process failed:\n{done.stderr[-3000:]}")
    result = read_json(spec["result"])
    records = [r for r in read_jsonl(Path(spec["out"]) / "metrics.jsonl") if "loss" in r and r["step"] > 1]
    step_seconds: dict[str, list[float]] = {}
    for r in records:
        step_seconds.setdefault(r["stage"], []).append(r["seconds_per_step"])
    return {"peak_rss_mib": result["peak_rss_mib"], "wall_seconds": result["wall_seconds"],
            "seconds_per_step": {stage: statistics.fmean(seconds) for stage, seconds in step_seconds.items()},
            "step_seconds": step_seconds}


def measure_run(spec_path: str) -> None:
    """Train the phase a spec file describes, then write this process's peak memory next to it.

    Run in a fresh process by :func:`bench_memory`, so the peak is this training alone.
    """
    spec = read_json(spec_path)
    recipe = load_recipe(spec["recipe"], spec["overrides"])
    started = time.perf_counter()
    if spec["phase"] == 1:
        from unifashion_core.train.phase1 import run_training

        run_training(recipe, spec["data"], spec["out"], overwrite=True, cache_dir=spec["cache"])
    else:
        from unifashion_core.train.phase2 import run_phase2

        run_phase2(recipe, spec["init"], spec["data"], spec["out"], overwrite=True, cache_dir=spec["cache"])
    peak = peak_rss_mb()  # this process's own high-water mark, not its parent's (see bench_index)
    write_json(spec["result"], {"peak_rss_mib": peak, "wall_seconds": time.perf_counter() - started})


def _ratios(rows: list[dict[str, Any]], sizes: tuple[int, ...]) -> dict[str, float]:
    """Largest size over the mean of the smallest size's runs: peak memory per phase and seconds
    per step per stage."""
    large = {row["phase"]: row for row in rows if row["num_items"] == sizes[-1]}
    ratios = {}
    for phase, row in large.items():
        small = [r for r in rows if r["num_items"] == sizes[0] and r["phase"] == phase]
        ratios[f"peak_rss/phase{phase}"] = row["peak_rss_mib"] / statistics.fmean(r["peak_rss_mib"] for r in small)
        for stage, seconds in row["seconds_per_step"].items():
            baseline = statistics.fmean(r["seconds_per_step"][stage] for r in small)
            ratios[f"seconds_per_step/{stage}"] = seconds / baseline
    return ratios


def _drift(rows: list[dict[str, Any]], size: int) -> dict[str, float]:
    """Seconds per step of the smallest size's last run over its first, per stage: the machine's
    own drift over the bench (1.0 = none)."""
    def seconds(repeat: int) -> dict[str, float]:  # per stage, over both phases' runs
        return {stage: s for r in rows if r["num_items"] == size and r["repeat"] == repeat
                for stage, s in r["seconds_per_step"].items()}

    first, last = seconds(0), seconds(1)
    return {stage: last[stage] / first[stage] for stage in first if stage in last}


def _markdown(report: dict[str, Any]) -> str:
    rows = [{"num_items": r["num_items"] if not r.get("repeat") else f"{r['num_items']} (again)",
             "phase": r["phase"], "peak_rss_mib": r["peak_rss_mib"],
             **{f"s/step {stage}": s for stage, s in r["seconds_per_step"].items()}} for r in report["runs"]]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    ratios = [{"measure": name, "ratio": value, "target": TARGETS[name.split("/")[0]],
               "met": value <= TARGETS[name.split("/")[0]]} for name, value in report["ratios"].items()]
    return (f"# Training memory and speed against data size ({report['recipe']})\n\n"
            f"- protocol: {report['protocol']}\n- steps per stage: {report['steps']}, images {report['image_size']} px,"
            f" load average at the end {report['load_average']:.1f} on {report['cpu_count']} CPUs\n\n"
            + markdown_table(rows, columns) + "\n" + markdown_table(ratios, ["measure", "ratio", "target", "met"])
            + "\nDrift (the smallest size's last run over its first, seconds per step): "
            + ", ".join(f"{stage} {value:.2f}x" for stage, value in report["drift"].items()) + "\n"
            + "\nSeconds per step are wall-clock: on a shared machine they move with the load.\n")
