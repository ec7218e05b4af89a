"""Bench reports: report.json + report.md with protocol, data hash, fingerprint and seed."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unifashion_core import __version__
from unifashion_core.checkpoint import LoadedCheckpoint
from unifashion_core.data.manifest import Dataset
from unifashion_core.fileio import write_json, write_text_atomic


@dataclass(frozen=True)
class BenchReport:
    """A written bench report.

    Attributes:
        subject: what was measured (``retrieval``, ``cir``, ...).
        out: the report directory (``report.json``, ``report.md`` and any listings).
        data: the contents of ``report.json``: provenance fields, protocol and figures.
        markdown: the contents of ``report.md``.
    """

    subject: str
    out: Path
    data: dict[str, Any]
    markdown: str

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def write_report(subject: str, out: str | Path, report: dict[str, Any], markdown: str) -> BenchReport:
    """Write ``report.json`` and ``report.md`` into ``out`` (each atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"unifashion_version": __version__, **report}
    write_json(out / "report.json", data)
    write_text_atomic(out / "report.md", markdown)
    return BenchReport(subject, out, data, markdown)


def provenance(
    bench: str, protocol: str, split: str, seed: int, dataset: Dataset, checkpoint: LoadedCheckpoint,
    num_queries: int,
) -> dict[str, Any]:
    """The fields every report starts with, so two numbers can be compared honestly."""
    return {
        "bench": bench, "protocol": protocol, "split": split, "seed": seed,
        "manifest_sha256": dataset.manifest_hash, "checkpoint_fingerprint": checkpoint.fingerprint,
        "checkpoint": str(checkpoint.path), "num_queries": num_queries,
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-flavoured Markdown table; floats with 4 decimals, "n/a" for a value not computed (None)."""
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance_lines(report: dict[str, Any]) -> str:
    """The Markdown header lines every report carries."""
    keys = ("protocol", "split", "seed", "manifest_sha256", "checkpoint_fingerprint", "checkpoint", "num_queries")
    return "".join(f"- {key}: `{report[key]}`\n" for key in keys if key in report)
