"""Where this process stands among the data-parallel processes (torch.distributed), for the code
below accelerate: the feature cache, the losses and the batch shards.

Every helper degrades to one process when no process group is running.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every process (nothing to wait for in one process)."""
    if world()[1] > 1:
        dist.barrier()


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0 (no gradient); itself in one process."""
    size = world()[1]
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)  # (W * B, ...)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every process's gradient for this process's rows.

    (``torch.distributed.nn.functional.all_gather`` emulates that sum on gloo with an all-to-all
    of the gradient chunks, and returned wrong gradients for the text embeddings of ITC on CPU.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return gather(tensor)  # (W * B, ...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # the gradient of every process's loss
        rank = world()[0]
        return grad[rank * ctx.rows : (rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0, the gradient flowing back to each
    process's own rows from every process's loss; itself in one process."""
    return tensor if world()[1] == 1 else _GatherWithGrad.apply(tensor)


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every process, in rank order (picklable values; ``[value]`` in one process)."""
    size = world()[1]
    if size == 1:
        return [value]
    values: list[Any] = [None] * size
    dist.all_gather_object(values, value)
    return values


@dataclass(frozen=True)
class BatchShard:
    """This process's rows of a global batch: every process draws the randomness of the whole
    batch from the same seeded generator and keeps its own rows, so N processes with batch B
    see the draws one process with batch N * B would.

    Attributes:
        size: the global batch size G (= B in one process).
        rows: this process's rows of it.
    """

    size: int
    rows: slice

    @classmethod
    def whole(cls, size: int) -> "BatchShard":
        """All of a batch of ``size`` (one process)."""
        return cls(size, slice(0, size))

    @property
    def local_size(self) -> int:
        return self.rows.stop - self.rows.start
