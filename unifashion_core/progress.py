"""How core code reports progress without knowing about rich or typer."""

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    """Receives progress events from long-running core functions.

    ``start(task, total)`` opens a task, ``advance(task, n, **fields)`` moves it (fields such as
    ``loss=0.31`` are shown next to the bar), ``log(message)`` prints a line.
    """

    def start(self, task: str, total: int | None) -> None: ...

    def advance(self, task: str, n: int = 1, **fields: float | str) -> None: ...

    def log(self, message: str) -> None: ...


class NullProgress:
    """A Progress that discards everything (tests, quiet mode)."""

    def start(self, task: str, total: int | None) -> None:
        pass

    def advance(self, task: str, n: int = 1, **fields: float | str) -> None:
        pass

    def log(self, message: str) -> None:
        pass


class CallbackProgress(NullProgress):
    """A Progress that forwards log lines to a function (handy in scripts)."""

    def __init__(self, log_fn: Callable[[str], None]) -> None:
        self._log_fn = log_fn

    def log(self, message: str) -> None:
        self._log_fn(message)
