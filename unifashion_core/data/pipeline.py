"""One entry point for `prepare`: the demo generator or a dataset adapter, plus the leakage check."""

from pathlib import Path
from typing import Any

from unifashion_core.fileio import write_json
from unifashion_core.progress import NullProgress, Progress


def run_prepare(
    name: str,
    out: str | Path,
    root: str | Path | None = None,
    seed: int = 0,
    num_items: int = 1200,
    image_size: int = 128,
    check_leakage: bool = False,
    progress: Progress = NullProgress(),
) -> dict[str, Any]:
    """Prepare dataset ``name`` into ``out`` and return its report.

    With ``check_leakage`` the leakage report is written to ``out/leakage.json`` and its
    summary added to the returned report under ``leakage``.
    """
    if name == "demo":
        from unifashion_core.data.demo import prepare_demo

        report = prepare_demo(out, num_items=num_items, seed=seed, image_size=image_size, progress=progress)
    else:
        from unifashion_core.data.prepare import prepare_dataset

        report = prepare_dataset(name, root, out, seed=seed, progress=progress)
    if check_leakage:
        from unifashion_core.data.leakage import check_leakage as run_check
        from unifashion_core.data.manifest import load_dataset

        leakage = run_check(load_dataset(out))
        write_json(Path(out) / "leakage.json", leakage)
        report = {**report, "leakage": leakage}
    return report
