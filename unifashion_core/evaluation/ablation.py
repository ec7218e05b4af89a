"""`unifashion bench ablation`: the paper's Table 5 ablation as three recipes, not three models.

From one phase-1 checkpoint, phase 2 is trained three times on the same data with the same seed,
differing only in loss weights:

- ``Base``: CIR alone (``loss.itg_weight=0``, ``loss.q2i_weight=0``);
- ``+LLM``: CIR + ITG through the frozen captioner (``loss.q2i_weight=0``);
- ``+LLM+diffusion``: CIR + ITG + q2I through the frozen generator (the recipe as it is).

Each is evaluated by ``bench cir`` without and with gallery captions, and one table compares
them. The numbers are reported as measured: the paper's ordering is a hypothesis, not a target.
"""

from pathlib import Path

from unifashion_core.config import Recipe, replace
from unifashion_core.errors import UserError
from unifashion_core.evaluation.bench_cir import bench_cir
from unifashion_core.evaluation.reports import BenchReport, markdown_table, provenance_lines, write_report
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.train.phase2 import check_init_checkpoint, run_phase2

VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Base", "base", ("loss.itg_weight=0", "loss.q2i_weight=0")),
    ("+LLM", "llm", ("loss.q2i_weight=0",)),
    ("+LLM+diffusion", "llm-diffusion", ()),
)


def _check(recipe: Recipe, heads: list[str], checkpoint: Path) -> None:
    """The ablation needs both heads and non-zero ITG / q2I weights to switch on."""
    if not {"caption", "generate"} <= set(heads):
        raise UserError(f"the ablation needs a phase-1 checkpoint with caption and generate heads; {checkpoint} "
                        f"has {', '.join(heads) or 'none'}.")
    if recipe.loss.itg_weight <= 0 or recipe.loss.q2i_weight <= 0 or recipe.loss.cir_weight <= 0:
        raise UserError("the ablation switches ITG and q2I on over CIR: the recipe needs loss.cir_weight, "
                        "loss.itg_weight and loss.q2i_weight above 0.")


def run_ablation(
    recipe: Recipe,
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    seed: int = 0,
    exclude_reference: bool = False,
    use_captions: bool = True,
    caption_weight: float = 1.0,
    cache_dir: str | Path | None = None,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Train and evaluate Base, +LLM and +LLM+diffusion; write the comparison to ``out``.

    Args:
        recipe: the phase-2 recipe (data, loss and ``train.phase2`` settings) all variants share.
        checkpoint: the phase-1 checkpoint every variant starts from.
        data: prepared dataset with triplets (training on ``train``, evaluation on ``split``).
        out: report directory; variant runs go to ``out/runs/NAME``, their benches to ``out/bench/NAME``.
        split: evaluation split.
        seed: recorded with the bench reports (training uses ``recipe.seed``).
        exclude_reference: remove each query's reference from its gallery.
        use_captions: also evaluate with gallery captions.
        caption_weight: ``w`` of the caption term.
        cache_dir: where frozen vision features are cached (None: not on disk).
        progress: progress events.

    Returns:
        The comparison report (also ``out/report.json`` and ``out/report.md``).
    """
    init, init_meta = check_init_checkpoint(checkpoint)
    _check(recipe, init_meta.get("heads", []), init)
    out = Path(out)
    rows, variants = [], {}
    for label, slug, overrides in VARIANTS:
        progress.log(f"[ablation] {label}: phase 2 with {' '.join(overrides) or 'the recipe as it is'}")
        trained = run_phase2(replace(recipe, list(overrides)), init, data, out / "runs" / slug, overwrite=True,
                             cache_dir=cache_dir, progress=progress)
        bench = bench_cir(trained.checkpoint, data, out / "bench" / slug, split=split, seed=seed,
                          exclude_reference=exclude_reference, use_captions=use_captions,
                          caption_weight=caption_weight, zero_shot=False, cache_dir=cache_dir,
                          progress=progress)
        variants[label] = {"overrides": list(overrides), "terms": list(trained.terms),
                           "checkpoint": str(trained.checkpoint),
                           "checkpoint_fingerprint": bench["checkpoint_fingerprint"], "settings": bench["settings"]}
        rows += [{"variant": label, "captions": name, **summary["average"]}
                 for name, summary in bench["settings"].items()]
    report = {
        "bench": "ablation", "protocol": bench["protocol"], "split": split, "seed": seed,
        "training_seed": recipe.seed, "recipe": recipe.name, "manifest_sha256": bench["manifest_sha256"],
        "checkpoint_fingerprint": init_meta["fingerprint"], "checkpoint": str(init),
        "num_queries": bench["num_queries"], "phase2_steps": recipe.train.phase2.max_steps, "variants": variants,
    }
    markdown = (f"# Ablation: Base, +LLM, +LLM+diffusion (phase 2 from one phase-1 checkpoint)\n\n"
                f"{provenance_lines(report)}\n{markdown_table(rows, ['variant', 'captions', 'R@10', 'R@50', 'mean'])}\n"
                "Average over categories of the CIR recalls on the evaluation split, as measured.\n")
    return write_report("ablation", out, report, markdown)
