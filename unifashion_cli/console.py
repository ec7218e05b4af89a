"""Shared CLI plumbing: consoles, the rich progress adapter, user-error handling, JSON output."""

import functools
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from unifashion_core.errors import UserError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def print_error(message: str) -> None:
    """``error: MESSAGE`` as one line on stderr (line breaks folded, brackets printed as they are)."""
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Turn a UserError into one line on stderr and exit status 2 (bugs keep their traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print_error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; completed work is kept (re-run to resume where supported).")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class OneLineErrors(TyperGroup):
    """The app's command group: usage errors (an unknown option, a value out of range, a missing
    argument) are one line on stderr with exit status 2, like a UserError; the libraries'
    FutureWarnings (deprecations meant for developers) are not shown."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(?!unifashion)")
            if not standalone_mode:
                return super().main(*args, standalone_mode=False, **kwargs)
            try:
                code = super().main(*args, standalone_mode=False, **kwargs)
            except typer.TyperException as exc:  # the vendored Click's errors
                ctx = getattr(exc, "ctx", None)
                if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
                    print_error(exc.format_message() + (f" (see `{ctx.command_path} --help`)" if ctx else ""))
                sys.exit(exc.exit_code)
            except typer.Abort:
                print_error("aborted.")
                sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


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
        return self  # the bars start with the first task: an early error prints its line alone

    def __exit__(self, *exc: object) -> None:
        if self._tasks:
            self._bars.stop()

    def start(self, task: str, total: int | None) -> None:
        if not self._tasks:
            self._bars.start()
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
            self._bars.console.print(message, soft_wrap=True)
