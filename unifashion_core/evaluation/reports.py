"""Bench reports: report.json + report.md with protocol, data hash, fingerprint and seed."""

from pathlib import Path
from typing import Any

from unifashion_core import __version__
from unifashion_core.fileio import write_json, write_text_atomic


def write_report(out: str | Path, report: dict[str, Any], markdown: str) -> Path:
    """Write ``report.json`` and ``report.md`` into ``out`` (each atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", {"unifashion_version": __version__, **report})
    write_text_atomic(out / "report.md", markdown)
    return out


def provenance(
    bench: str, protocol: str, split: str, seed: int, dataset: Any, meta: dict[str, Any], checkpoint: Any,
    num_queries: int,
) -> dict[str, Any]:
    """The fields every report starts with, so two numbers can be compared honestly."""
    return {
        "bench": bench, "protocol": protocol, "split": split, "seed": seed,
        "manifest_sha256": dataset.manifest_hash, "checkpoint_fingerprint": meta["fingerprint"],
        "checkpoint": str(checkpoint), "num_queries": num_queries,
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-flavoured Markdown table; floats with 4 decimals."""
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance_lines(report: dict[str, Any]) -> str:
    """The Markdown header lines every report carries."""
    keys = ("protocol", "split", "seed", "manifest_sha256", "checkpoint_fingerprint", "checkpoint", "num_queries")
    return "".join(f"- {key}: `{report[key]}`\n" for key in keys if key in report)
