"""Watching a run: ``metrics.jsonl``, accelerate's trackers and ``curves.png``.

Every record goes to ``metrics.jsonl`` (one JSON object per line) and, with ``train.log_with``
``tensorboard`` or ``wandb``, to that accelerate tracker as ``STAGE/NAME`` at the stage's step.
``curves.png`` (each stage's training losses and validation metrics against step) is redrawn
from ``metrics.jsonl`` after each evaluation. Only the main process writes.
"""

import io
import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from unifashion_core.config import Recipe, to_dict
from unifashion_core.errors import UserError
from unifashion_core.fileio import read_jsonl, write_bytes_atomic

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
NOT_PLOTTED = {"stage", "step", "lr", "seconds_per_step"}


def check_tracker(log_with: str) -> None:
    """Raise a one-line error when ``train.log_with`` names a tracker whose package is not installed."""
    import importlib.util

    package = TRACKER_PACKAGES.get(log_with)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f"train.log_with={log_with} needs the {package} package: pip install {package} "
                        "(or set train.log_with=none).")


class RunLog:
    """Where a run's metrics go (see the module docstring).

    Args:
        out: the run directory.
        accelerator: the run's accelerator (built with the recipe's ``log_with``).
        recipe: the resolved recipe (the trackers' run configuration).
    """

    def __init__(self, out: Path, accelerator: Accelerator, recipe: Recipe) -> None:
        self.path, self.curves = out / "metrics.jsonl", out / "curves.png"
        self.accelerator = accelerator
        self.tracking = recipe.train.log_with != "none"
        if self.tracking:
            accelerator.init_trackers(recipe.name, config=_flat(to_dict(recipe)))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (``stage``, ``step`` and values) to the file and the trackers."""
        if not self.accelerator.is_main_process:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tracking:
            values = {f"{record['stage']}/{key}": value for key, value in record.items()
                      if key not in ("stage", "step")}
            self.accelerator.log(values, step=record["step"])

    def draw(self) -> None:
        """Redraw ``curves.png`` from ``metrics.jsonl``."""
        if self.accelerator.is_main_process and self.path.is_file():
            write_bytes_atomic(self.curves, draw_curves(read_jsonl(self.path)))

    def close(self) -> None:
        """Flush and close the trackers."""
        if self.tracking:
            self.accelerator.end_training()


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe as ``a.b.c: value`` (lists as text), what trackers take as run configuration."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = str(value) if isinstance(value, list) else value
    return flat


def draw_curves(records: list[dict[str, Any]]) -> bytes:
    """PNG of each stage's training values (left) and validation metrics (right) against step.

    A step logged twice (a resumed run repeats the steps after its last checkpoint) shows its
    last value.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only the object API: no global backend
    from matplotlib.figure import Figure

    stages = list(dict.fromkeys(record["stage"] for record in records))
    figure = Figure(figsize=(11, 3.2 * max(len(stages), 1)), layout="constrained")
    for row, stage in enumerate(stages):
        for column, kind in enumerate(("training", "validation")):
            axes = figure.add_subplot(len(stages), 2, 2 * row + column + 1)
            series = _series([r for r in records if r["stage"] == stage and ("loss" in r) == (kind == "training")])
            for name, points in series.items():
                steps, values = zip(*sorted(points.items()), strict=True)
                axes.plot(steps, values, label=name, marker="o" if kind == "validation" else None, markersize=3)
            axes.set_title(f"{stage}: {kind}")
            axes.set_xlabel("step")
            if series:
                axes.legend(fontsize="small")
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _series(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """name -> {step: value} of the numeric values in ``records`` (later records win)."""
    series: dict[str, dict[int, float]] = {}
    for record in records:
        for name, value in record.items():
            if name not in NOT_PLOTTED and isinstance(value, int | float):
                series.setdefault(name, {})[record["step"]] = float(value)
    return series
