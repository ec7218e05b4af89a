"""`unifashion prepare`: one entry point that runs a dataset adapter and the leakage check.

Each dataset has its own adapter in ``unifashion_core.data.adapters`` (the built-in ``demo`` is
generated, the others are read from their official layout under ``root``). Adapter options are
the adapter's keyword-only parameters besides ``seed`` and ``progress``; they are forwarded as
given, and an option the adapter does not take is refused.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unifashion_core.errors import UserError
from unifashion_core.fileio import write_json
from unifashion_core.progress import NullProgress, Progress

DATASETS: tuple[str, ...] = ("demo", "fashion-product", "fashioniq", "fashiongen", "fashion200k", "vitonhd")
_COMMON_PARAMETERS = ("seed", "progress")


@dataclass(frozen=True)
class PrepareResult:
    """What ``prepare`` wrote.

    Attributes:
        out: the prepared dataset directory.
        num_items: items per split.
        num_triplets: triplets per split.
        num_skipped: entries left out (each one is in ``report["skipped"]`` with its reason).
        skipped_counts: skipped entries per ``"kind:reason"``.
        leakage: the leakage report (also in ``out/leakage.json``), or None when not checked.
        report: the full report, as written to ``out/report.json``.
    """

    out: Path
    num_items: dict[str, int]
    num_triplets: dict[str, int]
    num_skipped: int
    skipped_counts: dict[str, int]
    leakage: dict[str, Any] | None
    report: dict[str, Any]


def prepare(
    name: str,
    out: Path,
    root: Path | None = None,
    *,
    seed: int = 0,
    check_leakage: bool = False,
    progress: Progress = NullProgress(),
    **options: Any,
) -> PrepareResult:
    """Prepare dataset ``name`` into ``out`` (replaced as a whole when the write succeeds).

    Args:
        name: one of ``DATASETS``.
        out: the prepared dataset directory.
        root: the dataset in its official layout (None for ``demo``, which is generated).
        seed: seed of every random choice (splits; for ``demo`` also drawing and texts).
        check_leakage: also run ``check_leakage`` and write ``out/leakage.json``.
        progress: receives progress events.
        **options: adapter options, e.g. ``test_fraction=0.1`` for ``fashion-product`` or
            ``num_items=300`` for ``demo``.

    Returns:
        The counts, the report and (with ``check_leakage``) the leakage report.

    Raises:
        UserError: unknown dataset or option, a missing or unexpected root, or a root that is
            not the dataset.
    """
    adapter = _adapter(name)
    _check_options(name, options)
    if name == "demo":
        if root is not None:
            raise UserError("demo is generated, not read: drop --root.")
        report = adapter(Path(out), seed=seed, progress=progress, **options)
    else:
        report = adapter(_check_root(name, root), Path(out), seed=seed, progress=progress, **options)
    leakage = _check_leakage(Path(out)) if check_leakage else None
    return PrepareResult(
        out=Path(out),
        num_items=report["num_items"],
        num_triplets=report["num_triplets"],
        num_skipped=report["num_skipped"],
        skipped_counts=report["skipped_counts"],
        leakage=leakage,
        report=report,
    )


def adapter_options(name: str) -> dict[str, Any]:
    """The options dataset ``name`` accepts, with their defaults.

    Raises:
        UserError: unknown dataset.
    """
    parameters = inspect.signature(_adapter(name)).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON_PARAMETERS
    }


def _adapter(name: str) -> Callable[..., dict[str, Any]]:
    # Imported here so that one adapter's optional dependency (h5py) never blocks the others.
    match name:
        case "demo":
            from unifashion_core.data.adapters.demo import prepare_demo as adapter
        case "fashion-product":
            from unifashion_core.data.adapters.fashion_product import prepare_fashion_product as adapter
        case "fashioniq":
            from unifashion_core.data.adapters.fashioniq import prepare_fashioniq as adapter
        case "fashiongen":
            from unifashion_core.data.adapters.fashiongen import prepare_fashiongen as adapter
        case "fashion200k":
            from unifashion_core.data.adapters.fashion200k import prepare_fashion200k as adapter
        case "vitonhd":
            from unifashion_core.data.adapters.vitonhd import prepare_vitonhd as adapter
        case _:
            raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    return adapter


def _check_options(name: str, options: dict[str, Any]) -> None:
    accepted = adapter_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = ", ".join(f"{o} (--{o.replace('_', '-')})" for o in accepted) or "none"
        raise UserError(
            f"unknown option {unknown[0]!r} (--{unknown[0].replace('_', '-')}) for {name}; "
            f"accepted options: {listed}."
        )


def _check_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise UserError(f"{name} needs --root, the directory of the dataset in its official layout.")
    if not Path(root).is_dir():
        raise UserError(f"--root {root} is not a directory; point it at the {name} dataset.")
    return Path(root)


def _check_leakage(out: Path) -> dict[str, Any]:
    from unifashion_core.data.leakage import check_leakage
    from unifashion_core.data.manifest import load_dataset

    leakage = check_leakage(load_dataset(out))
    write_json(out / "leakage.json", leakage)
    return leakage
