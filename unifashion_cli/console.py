"""Shared CLI plumbing: consoles, the rich progress adapter, user-error handling, JSON output."""

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from unifashion_core.errors import UserError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn a UserError into one line on stderr and exit status 2 (bugs keep their traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; completed work is kept (re-run to resume where supported).")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Machine-readable output on stdout, nothing else mixed in."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


class RichProgress:
    """Implements unifashion_core.progress.Progress with rich bars on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=err,
            disable=quiet,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "RichProgress":
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def start(self, task: str, total: int | None) -> None:
        if task in self._tasks:  # the same step again (e.g. features of another split): reuse its bar
            self._bars.reset(self._tasks[task], total=total, info="")
        else:
            self._tasks[task] = self._bars.add_task(task, total=total, info="")

    def advance(self, task: str, n: int = 1, **fields: float | str) -> None:
        if task not in self._tasks:
            self.start(task, None)
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._bars.update(self._tasks[task], advance=n, info=info)

    def log(self, message: str) -> None:
        if not self.quiet:
            self._bars.console.print(message)
