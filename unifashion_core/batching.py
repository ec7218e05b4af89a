"""Batches over a sequence: the one loop every batched pass in the project uses."""

from collections.abc import Iterator


def batch_slices(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``.

    Raises:
        ValueError: ``size`` below 1.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))
