"""Streamed training inputs: per-example tensors read from disk a batch at a time.

A stage's examples are an :class:`ExampleData`: named per-example readers (vision tokens from
the feature cache, frozen query outputs, decoded images...), so the data never has to fit in
memory and a stage that needs more per-item tensors (a try-on stage's person image, mask and
sketch) adds a field. A DataLoader reads them with ``train.num_workers`` processes.

Which examples form a batch is a pure function of (seed, step) (:func:`batch_indices`), so
resuming needs no sampler state. With several processes every global batch of ``B * N`` is
split by rank: process ``r`` reads rows ``r*B .. (r+1)*B`` (:class:`StepBatches`).
"""

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import default_collate

from unifashion_core.batching import batch_slices
from unifashion_core.distributed import BatchShard, barrier, world
from unifashion_core.errors import UserError
from unifashion_core.shards import Rows, open_shard, write_shard

Field = Callable[[int], torch.Tensor]  # example index -> its tensor
PIECE_BYTES = 64 * 2**20  # frozen outputs computed, stored and summarised this much at a time


class Siblings:
    """Hard-negative partners for batches: items of the anchor's category with another value of an
    attribute (a red dress next to a blue one), so that a batch's contrastive loss must read that
    attribute in both directions (``loss.sibling_batches``).

    Held as per-category member lists and one value code per item, not as pair lists, so it stays
    O(N) for any catalogue size.

    Args:
        categories: ``(N,)`` category code of each example.
        values: ``(N,)`` code of its value of the attribute, -1 where it has none.
        fraction: share of each batch that is partners of the batch's first items.
    """

    TRIES = 8  # draws from the category before giving up on a partner with another value

    def __init__(self, categories: torch.Tensor, values: torch.Tensor, fraction: float) -> None:
        self.values, self.fraction = values, fraction
        order = torch.argsort(categories, stable=True)
        counts = torch.bincount(categories)
        self.members = torch.split(order, counts.tolist())  # per category: its examples
        self.categories = categories

    @classmethod
    def of(cls, categories: list[str], values: list[str | None], fraction: float) -> "Siblings":
        """From each example's category and attribute value (None: no value)."""
        category_codes = {name: code for code, name in enumerate(sorted(set(categories)))}
        value_codes = {name: code for code, name in enumerate(sorted({v for v in values if v is not None}))}
        return cls(torch.tensor([category_codes[c] for c in categories], dtype=torch.long),
                   torch.tensor([-1 if v is None else value_codes[v] for v in values], dtype=torch.long), fraction)

    def draw(self, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One partner per anchor: a random example of its category whose value differs from the
        anchor's; where none turns up in ``TRIES`` draws (or the anchor has no value), a random
        example of the whole set."""
        partners = []
        for anchor in anchors.tolist():
            members, own = self.members[int(self.categories[anchor])], int(self.values[anchor])
            picks = members[torch.randint(len(members), (self.TRIES,), generator=generator)]
            other = picks[(self.values[picks] != own) & (self.values[picks] >= 0)] if own >= 0 else picks[:0]
            partners.append(int(other[0]) if len(other) else int(torch.randint(len(self.values), (1,),
                                                                                    generator=generator)))
        return torch.tensor(partners, dtype=torch.long)


def batch_indices(
    seed: int, num_examples: int, batch_size: int, micro_step: int, siblings: Siblings | None = None
) -> torch.Tensor:
    """Example indices of one (global) micro-batch, a pure function of (seed, micro_step).

    Each epoch is a seeded permutation (drop-last), so the data position is just the step
    number and resuming needs no sampler state. With ``siblings``, a share ``siblings.fraction``
    of the batch are partners drawn for its first anchors (seeded by the step too), after them.
    """
    batch_size = min(batch_size, num_examples)
    num_partners = min(int(round(siblings.fraction * batch_size)), batch_size - 1) if siblings is not None else 0
    num_anchors = batch_size - num_partners
    per_epoch = num_examples // num_anchors
    epoch, position = divmod(micro_step, per_epoch)
    permutation = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    anchors = permutation[position * num_anchors : (position + 1) * num_anchors]
    if not num_partners:
        return anchors
    generator = torch.Generator().manual_seed(seed * 100_003 + 7_919 * micro_step + 1)
    return torch.cat([anchors, siblings.draw(anchors[:num_partners], generator)])


def batch_shard(batch_size: int, num_examples: int, rank: int, num_processes: int) -> BatchShard:
    """This process's rows of a global batch of ``batch_size`` per process (fewer when the data is
    smaller than a global batch).

    Raises:
        UserError: fewer examples than processes.
    """
    if num_examples < num_processes:
        raise UserError(f"{num_examples} training examples cannot be shared by {num_processes} processes; "
                        "launch fewer processes or train on more data.")
    local = min(batch_size, num_examples // num_processes)
    return BatchShard(local * num_processes, slice(rank * local, (rank + 1) * local))


@dataclass
class Batch:
    """One process's micro-batch.

    Attributes:
        indices: ``(G,)`` example indices of the whole (global) batch, the same in every process.
        shard: this process's rows of it (all of it in one process).
        fields: this process's per-example tensors, ``(B, ...)`` each, on the training device.
    """

    indices: torch.Tensor
    shard: BatchShard
    fields: dict[str, torch.Tensor]

    @property
    def local_indices(self) -> torch.Tensor:
        """``(B,)`` the example indices of this process's rows."""
        return self.indices[self.shard.rows]

    @classmethod
    def read(cls, data: "ExampleData", indices: torch.Tensor) -> "Batch":
        """One process's batch of the examples ``indices``, read at once (what the loop streams)."""
        fields = default_collate([data[index] for index in indices.tolist()]) if len(indices) else {}
        return cls(indices, BatchShard.whole(len(indices)), fields)


class ExampleData(torch.utils.data.Dataset):
    """The per-example tensors of a stage: ``fields[name](index)`` reads one example's tensor."""

    def __init__(self, num_examples: int, fields: dict[str, Field], siblings: Siblings | None = None) -> None:
        self.num_examples = num_examples
        self.fields = fields
        self.siblings = siblings  # hard-negative partners that batches bring (retrieval stage)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: read(index) for name, read in self.fields.items()}


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """This process's indices of the global micro-batches ``start`` to ``stop`` (a batch sampler)."""

    def __init__(self, seed: int, num_examples: int, shard: BatchShard, start: int, stop: int,
                 siblings: Siblings | None = None) -> None:
        self.seed, self.num_examples, self.shard = seed, num_examples, shard
        self.start, self.stop, self.siblings = start, stop, siblings

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for micro_step in range(self.start, self.stop):
            yield batch_indices(self.seed, self.num_examples, self.shard.size, micro_step,
                                self.siblings)[self.shard.rows].tolist()


def stream_batches(
    data: ExampleData, seed: int, shard: BatchShard, start: int, stop: int, num_workers: int, device: torch.device,
) -> Iterator[Batch]:
    """The :class:`Batch` of every micro step from ``start`` to ``stop``, read by a DataLoader.

    Workers (``num_workers`` > 0) read ahead; on a GPU the tensors come through pinned memory.
    """
    sampler = StepBatches(seed, data.num_examples, shard, start, stop, data.siblings)
    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                                         generator=torch.Generator())  # keeps the global RNG untouched
    for micro_step, fields in zip(range(start, stop), loader, strict=True):
        indices = batch_indices(seed, data.num_examples, shard.size, micro_step, data.siblings)
        yield Batch(indices, shard, {name: value.to(device, non_blocking=pin) for name, value in fields.items()})


def rows_per_piece(row_bytes: int, multiple: int) -> int:
    """Rows in a piece of about ``PIECE_BYTES``: a multiple of ``multiple`` (the batch of the
    computation, so pieces batch the rows as one pass over all of them would), at least one."""
    return max(multiple, PIECE_BYTES // row_bytes // multiple * multiple)


def compute_rows(folder: Path, num_rows: int, piece_rows: int, compute: Callable[[slice], torch.Tensor]) -> Rows:
    """Rows ``0 .. num_rows`` computed ``piece_rows`` at a time (``compute(rows) -> (n, ...)``)
    into shards in ``folder`` (replaced), the pieces shared out across processes, then opened by
    every process: the whole array is never in memory.
    """
    rank, size = world()
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
    barrier()
    pieces = list(batch_slices(num_rows, piece_rows))
    for number, rows in enumerate(pieces):
        if number % size == rank:
            write_shard(folder, f"{number:06d}", compute(rows).cpu().numpy(), {"start": rows.start})
    barrier()
    shards = []
    for number in range(len(pieces)):
        shard, _, problem = open_shard(folder, f"{number:06d}")
        if shard is None:
            raise RuntimeError(f"{folder}: piece {number} cannot be read back: {problem}")
        shards.append(shard)
    return Rows.sequential(shards)
