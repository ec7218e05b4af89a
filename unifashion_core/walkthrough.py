"""`unifashion demo`: the whole main job on the embedded default (demo data + `small` preset).

Stages: prepare -> train (phase 1: retrieval, caption, generate) -> index -> search -> caption ->
generate -> tryon (drawn test people dressed by the generator, bench tryon) -> bench -> composed
(phase 2, captioned index, a composed query, bench cir). Everything
is written under one home directory (the CLI passes its workspace); ``demo/report.md`` summarises
what ran and the figures measured, and :class:`DemoResult` says where each artifact is.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unifashion_core.config import Recipe, load_recipe
from unifashion_core.fileio import write_json, write_text_atomic
from unifashion_core.progress import NullProgress, Progress

RECIPE = "demo"  # the packaged recipe

# --quick: a few minutes on 2 cores; numbers are smoke-level, not the demo's real figures.
QUICK_OVERRIDES = [
    "train.retrieval.max_steps=60",
    "train.caption.max_steps=40",
    "train.generate.max_steps=100",
    "train.phase2.max_steps=5",
    "train.eval_every=0",
    "train.eval_fid_items=0",
    "train.save_every=0",
]
# --tryon: the try-on batches at 64 px instead of the generator's 32 (each such batch costs about
# twice as much); the plain generator stays at 32 px.
TRYON_OVERRIDES = ["model.generator.tryon.resolution=64"]
TRYON_EXAMPLES = 3  # test people dressed for the report's try-on rows
TRYON_BENCH_ITEMS = 40  # bench tryon: all 18 test people; 40 garments designed from sketches (x2 samples)
# Example searches and the attribute values their first result must have.
TEXT_QUERIES: dict[str, dict[str, str]] = {
    "red striped long-sleeve shirt": {"colour": "red", "pattern": "striped", "sleeve": "long-sleeve", "type": "shirt"},
    "blue dress": {"colour": "blue", "type": "dress"},
    "black trousers": {"colour": "black", "type": "trousers"},
}
GENERATION_PROMPTS = ("red solid t-shirt", "blue polka-dot dress", "green checked skirt", "yellow striped shirt")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put everything, and its report (also ``demo/report.json``).

    Attributes:
        report: stage timings and figures.
        report_path: ``demo/report.md``.
        data: the prepared demo dataset.
        phase1: the phase-1 checkpoint.
        checkpoint: the final (phase-2) checkpoint.
        index: the captioned index of the test split (composed search with captions).
    """

    report: dict[str, Any]
    report_path: Path
    data: Path
    phase1: Path
    checkpoint: Path
    index: Path


def run_demo(
    home: str | Path, quick: bool = False, num_items: int | None = None, progress: Progress = NullProgress(),
    tryon: bool = False,
) -> DemoResult:
    """Run every built stage on the demo data under ``home``.

    Args:
        home: where data, runs, indexes, benches, the feature cache and ``demo/`` go.
        quick: a few-minute smoke run (short training; numbers are smoke-level).
        num_items: demo items to draw (default 1200, quick 300).
        progress: progress events.
        tryon: train and show try-on at 64 px (``TRYON_OVERRIDES``) rather than 32.
    """
    home = Path(home).absolute()
    recipe = load_recipe(RECIPE, (QUICK_OVERRIDES if quick else []) + (TRYON_OVERRIDES if tryon else []))
    report: dict[str, Any] = {"quick": quick, "tryon": tryon, "workspace": str(home), "stages": {}}
    paths = {
        "data": home / "data" / "demo",
        "run": home / "runs" / recipe.name,
        "index": home / "index",
        "bench": home / "bench",
        "demo": home / "demo",
        "cache": home / "cache",
    }
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("prepare", lambda: _prepare(paths, num_items or (300 if quick else 1200), progress)),
        ("train", lambda: _train(recipe, paths, progress)),
        ("index", lambda: _index(paths, progress)),
        ("search", lambda: _search(paths)),
        ("caption", lambda: _caption(paths, progress)),
        ("generate", lambda: _generate(paths, progress)),
        ("tryon", lambda: _tryon(paths, quick, progress)),
        ("bench", lambda: _bench(paths, quick, progress)),
        ("composed", lambda: _composed(recipe, paths, progress)),
    ]
    for name, step in steps:
        started = time.perf_counter()
        progress.log(f"[demo] {name} ...")
        result = step()
        report["stages"][name] = {"seconds": round(time.perf_counter() - started, 1), **result}
    write_json(paths["demo"] / "report.json", report)
    write_text_atomic(paths["demo"] / "report.md", render_report(report))
    composed = report["stages"]["composed"]
    return DemoResult(report, paths["demo"] / "report.md", paths["data"], paths["run"] / "checkpoint",
                      Path(composed["checkpoint"]), Path(composed["index"]))


def _prepare(paths: dict[str, Path], num_items: int, progress: Progress) -> dict[str, Any]:
    from unifashion_core.data.prepare import prepare

    report = prepare("demo", paths["data"], num_items=num_items, progress=progress).report
    return {"num_items": report["num_items"], "num_triplets": report["num_triplets"], "skipped": report["num_skipped"]}


def _train(recipe: Recipe, paths: dict[str, Path], progress: Progress) -> dict[str, Any]:
    from unifashion_core.train.phase1 import run_training

    result = run_training(recipe, paths["data"], paths["run"], overwrite=True, cache_dir=paths["cache"],
                          progress=progress)
    return {"checkpoint": str(result.checkpoint), "metrics": result.metrics}


def _index(paths: dict[str, Path], progress: Progress) -> dict[str, Any]:
    import shutil

    from unifashion_core.retrieval.build import build_index

    shutil.rmtree(paths["index"], ignore_errors=True)
    summary = build_index(paths["run"] / "checkpoint", paths["data"], paths["index"], progress=progress)
    return {"num_items": summary.num_items, "skipped": len(summary.skipped)}


def _search(paths: dict[str, Path]) -> dict[str, Any]:
    from unifashion_core.data.manifest import load_dataset
    from unifashion_core.retrieval.search import contact_sheet, load_searcher, search

    model, index = load_searcher(paths["index"], None)
    dataset = load_dataset(paths["data"])
    attributes = {item.id: item.attributes for item in dataset.items}
    sheets, queries = [], []
    for number, (text, wanted) in enumerate(TEXT_QUERIES.items()):
        ranked = search(model, index, text=text, k=index.num_items)
        results = ranked[:5]
        sheet = contact_sheet(results, paths["demo"] / f"search-text-{number}.png", None, text)
        sheets.append(sheet.name)
        hits = [all(attributes[r.id].get(name) == value for name, value in wanted.items()) for r in ranked]
        queries.append({"query": text, "top": [(r.id, r.caption, round(r.score, 4)) for r in results],
                        "first_matches": hits[0], "num_matching": sum(hits),
                        "first_match_rank": hits.index(True) + 1 if any(hits) else None})
    reference = dataset.split("test")[0]
    image = dataset.image_path(reference)
    results = search(model, index, image=image, k=5, mode="i2i")
    sheets.append(contact_sheet(results, paths["demo"] / "search-image.png", image, None).name)
    queries.append(
        {
            "query": f"image {reference.id} ({reference.caption})",
            "top": [(r.id, r.caption, round(r.score, 4)) for r in results],
        }
    )
    return {"queries": queries, "sheets": sheets}


def _caption(paths: dict[str, Path], progress: Progress) -> dict[str, Any]:
    from unifashion_core.data.manifest import load_dataset
    from unifashion_core.inference import caption_images

    dataset = load_dataset(paths["data"])
    examples = dataset.split("test")[:6]
    folder = paths["demo"] / "caption-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    for item in examples:
        (folder / Path(item.image).name).write_bytes(dataset.image_path(item).read_bytes())
    results, _ = caption_images(paths["run"] / "checkpoint", folder, progress=progress)
    truth = {Path(item.image).name: item.caption for item in examples}
    return {
        "examples": [
            {
                "image": f"caption-inputs/{Path(r.image).name}",
                "caption": r.caption,
                "reference": truth[Path(r.image).name],
            }
            for r in results
        ]
    }


def _generate(paths: dict[str, Path], progress: Progress) -> dict[str, Any]:
    from unifashion_core.inference import GenerationRequest, generate_images, save_png

    made = []
    for number, prompt in enumerate(GENERATION_PROMPTS):
        images, settings = generate_images(
            paths["run"] / "checkpoint",
            GenerationRequest(text=prompt, seed=number),
            progress,
        )
        made.append(
            {"prompt": prompt, "image": save_png(images[0], paths["demo"] / f"generate-{number}.png", settings).name}
        )
    return {"images": made}


def _tryon(paths: dict[str, Path], quick: bool, progress: Progress) -> dict[str, Any]:
    """Dress a few test people as ``unifashion generate --person --mask --image`` does, and (not
    with --quick) bench tryon: paired, unpaired and design, with the same-run baselines."""
    from unifashion_core.evaluation.bench_tryon import bench_tryon

    result: dict[str, Any] = {"examples": _dress_examples(paths, progress)}
    if not quick:
        report = bench_tryon(paths["run"] / "checkpoint", paths["data"], paths["bench"] / "tryon",
                             max_items=TRYON_BENCH_ITEMS, cache_dir=paths["cache"], progress=progress)
        result["bench"] = {"resolution": report["resolution"], "paired": report["paired"],
                           "unpaired": report["unpaired"], "design": report.data.get("design")}
    return result


def _dress_examples(paths: dict[str, Path], progress: Progress) -> list[dict[str, Any]]:
    """The first test people wearing their own garment, given as its in-shop image; the inputs
    are copied next to the report."""
    from unifashion_core.data.manifest import load_dataset
    from unifashion_core.data.tryon import has_tryon
    from unifashion_core.inference import GenerationRequest, generate_images, save_png

    dataset = load_dataset(paths["data"])
    rows = []
    for number, item in enumerate([item for item in dataset.split("test") if has_tryon(item)][:TRYON_EXAMPLES]):
        inputs = {"person": dataset.image_path(item, "person"), "garment_image": dataset.image_path(item),
                  "mask": dataset.image_path(item, "mask")}
        request = GenerationRequest(image=inputs["garment_image"], person=inputs["person"], mask=inputs["mask"],
                                    seed=number)
        images, settings = generate_images(paths["run"] / "checkpoint", request, progress)
        row = {"garment": item.caption,
               "result": save_png(images[0], paths["demo"] / f"tryon-{number}.png", settings).name}
        for key, source in inputs.items():
            row[key] = f"tryon-inputs/{number}-{key}.png"
            (paths["demo"] / row[key]).parent.mkdir(parents=True, exist_ok=True)
            (paths["demo"] / row[key]).write_bytes(source.read_bytes())
        rows.append(row)
    return rows


def _render_tryon(stage: dict[str, Any]) -> list[str]:
    """Markdown lines for the demo report's try-on section."""
    from unifashion_core.evaluation.reports import markdown_table

    lines = ["## Try-on", "", "| person | garment | mask | result |", "|---|---|---|---|"]
    lines += [f"| ![]({e['person']}) | ![]({e['garment_image']}) {e['garment']} | ![]({e['mask']}) | "
              f"![]({e['result']}) |" for e in stage["examples"]]
    if "bench" in stage:
        bench = stage["bench"]
        paired = [{"method": name, **bench["paired"][name]} for name in ("model", "mean_colour", "untrained")]
        lines += ["", f"bench tryon, {bench['paired']['num_pairs']} test people, {bench['resolution']} px:", "",
                  markdown_table(paired, ["method", "ssim_mask", "psnr_mask", "ssim", "psnr", "changed_outside_mask"])]
        if bench.get("design"):
            design = bench["design"]
            rows = [{"sketch": name, **design[name]} for name in ("with_sketch", "without_sketch")]
            lines += [f"Design from a sketch ({design['num_items']} test garments):", "",
                      markdown_table(rows, ["sketch", "edge_iou", "colour_accuracy"])]
    return lines + [""]


def _bench(paths: dict[str, Path], quick: bool, progress: Progress) -> dict[str, Any]:
    from unifashion_core.evaluation.bench_caption import bench_caption
    from unifashion_core.evaluation.bench_generation import bench_generation
    from unifashion_core.evaluation.bench_queries import bench_queries
    from unifashion_core.evaluation.bench_retrieval import bench_retrieval

    checkpoint, data, bench, cache = paths["run"] / "checkpoint", paths["data"], paths["bench"], paths["cache"]
    benches = {"retrieval": lambda: bench_retrieval(checkpoint, data, bench / "retrieval", cache_dir=cache,
                                                    progress=progress),
               "queries": lambda: bench_queries(checkpoint, data, bench / "queries", cache_dir=cache,
                                                progress=progress)}
    # --quick measures retrieval only: the caption metrics (Java METEOR) and FID take minutes.
    if not quick:
        benches["caption"] = lambda: bench_caption(checkpoint, data, bench / "caption", cache_dir=cache,
                                                   progress=progress)
        benches["fid"] = lambda: bench_generation("fid", checkpoint, data, bench / "fid", max_items=100,
                                                  progress=progress)
    keys = ("protocols", "fid", "kid_mean", "colour_accuracy", "shapes")
    return {subject: {k: v for k, v in run().data.items() if k in keys} for subject, run in benches.items()}


def _composed(recipe: Any, paths: dict[str, Path], progress: Progress) -> dict[str, Any]:
    """Phase 2 from the demo's phase-1 run, a captioned index, one composed query, and bench cir.

    The CLI remembers the captioned index as the workspace's latest index (and the phase-2
    checkpoint as its latest checkpoint), so ``unifashion search --image ref.png --text "..."``
    works afterwards with no other flags.

    Args:
        recipe: the demo recipe (``train.phase2`` sets the phase-2 run).
        paths: the demo's ``data``, ``run`` (phase 1), ``index``, ``bench`` and ``demo`` directories.
        progress: progress events.

    Returns:
        The phase-2 checkpoint and metrics, the composed query and its results, the contact
        sheet's file name and the bench's category-averaged recalls per caption setting.
    """
    from unifashion_core.data.manifest import load_dataset
    from unifashion_core.evaluation.bench_cir import bench_cir
    from unifashion_core.retrieval.build import build_index
    from unifashion_core.retrieval.search import contact_sheet, load_searcher, search
    from unifashion_core.train.phase2 import run_phase2

    run = paths["run"].with_name(f"{paths['run'].name}-phase2")
    trained = run_phase2(recipe, paths["run"], paths["data"], run, overwrite=True, cache_dir=paths["cache"],
                         progress=progress)
    index_dir = paths["index"].with_name(f"{paths['index'].name}-captions")
    build_index(trained.checkpoint, paths["data"], index_dir, captions=True, progress=progress)
    dataset = load_dataset(paths["data"])
    triplet = next(t for t in dataset.split_triplets("test") if t.target)
    image = dataset.image_path(dataset.by_id()[triplet.reference])
    model, index = load_searcher(index_dir, None)
    results = search(model, index, text=triplet.text, image=image, k=5)
    sheet = contact_sheet(results, paths["demo"] / "search-composed.png", image, triplet.text)
    report = bench_cir(trained.checkpoint, paths["data"], paths["bench"] / "cir", cache_dir=paths["cache"],
                       progress=progress)
    return {
        "checkpoint": str(trained.checkpoint),
        "metrics": trained.metrics,
        "index": str(index_dir),
        "query": {
            "reference": triplet.reference,
            "text": triplet.text,
            "target": triplet.target,
            "top": [(r.id, r.caption, round(r.score, 4)) for r in results],
        },
        "sheet": sheet.name,
        "figures": {name: summary["average"] for name, summary in report["settings"].items()},
    }


def _render_composed(stage: dict[str, Any]) -> list[str]:
    """Markdown lines for the demo report's composed-retrieval section."""
    from unifashion_core.evaluation.reports import markdown_table

    query = stage["query"]
    rows = [{"captions": name, **values} for name, values in stage["figures"].items()]
    return [
        "## Composed retrieval",
        "",
        f'**{query["reference"]} + "{query["text"]}"** (target {query["target"]}): '
        + "; ".join(f"{item_id} ({score})" for item_id, _, score in query["top"]),
        "",
        f"![]({stage['sheet']})",
        "",
        markdown_table(rows, ["captions", "R@10", "R@50", "mean"]),
    ]


def _render_short_queries(shapes: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Markdown lines: `bench queries` P@5 and nDCG@10 per query shape, model next to the baseline."""
    from unifashion_core.evaluation.reports import markdown_table

    rows = [{"shape": shape, "model P@5": figures["P@5"], "model nDCG@10": figures["nDCG@10"],
             "baseline P@5": shapes["baseline"][shape]["P@5"], "queries": figures["num_queries"]}
            for shape, figures in shapes["model"].items()]
    return ["## Short queries (`bench queries`, test split)", "",
            markdown_table(rows, ["shape", "model P@5", "model nDCG@10", "baseline P@5", "queries"])]


def render_report(report: dict[str, Any]) -> str:
    """demo/report.md: what ran, how long it took, and what it measured."""
    stages = report["stages"]
    lines = [
        "# unifashion demo",
        "",
        f"Mode: {'quick' if report['quick'] else 'full'}; workspace `{report['workspace']}`.",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {info['seconds']} |" for name, info in stages.items()]
    lines += ["", "## Training", ""]
    lines += [
        f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in stages["train"]["metrics"].items()
    ]
    lines += ["", "## Search", ""]
    for query, sheet in zip(stages["search"]["queries"], stages["search"]["sheets"], strict=True):
        lines.append(f"**{query['query']}**: " + "; ".join(f"{c} ({s})" for _, c, s in query["top"]))
        if "first_matches" in query:
            found = (f"{query['num_matching']} indexed item(s) have them; the first at rank {query['first_match_rank']}"
                     if query.get("num_matching") else "no indexed item has them all")
            lines += ["", f"First result has every value named: {'yes' if query['first_matches'] else '**no**'} "
                          f"({found})."]
        lines += ["", f"![]({sheet})", ""]
    lines += _render_short_queries(stages["bench"]["queries"]["shapes"])
    lines += ["## Captions", "", "| image | generated | reference |", "|---|---|---|"]
    lines += [f"| ![]({e['image']}) | {e['caption']} | {e['reference']} |" for e in stages["caption"]["examples"]]
    lines += ["", "## Generation", "", "| prompt | image |", "|---|---|"]
    lines += [f"| {g['prompt']} | ![]({g['image']}) |" for g in stages["generate"]["images"]]
    lines += [""] + _render_tryon(stages["tryon"])
    lines += ["## Bench", "", "```", _format(stages["bench"]), "```", ""]
    lines += _render_composed(stages["composed"])
    return "\n".join(lines) + "\n"


def _format(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, default=str)
