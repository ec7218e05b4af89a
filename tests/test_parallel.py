"""Data parallel training: two CPU processes (gloo) with batch B train as one process with batch 2B.

The processes are forked from the test (torch.distributed over 127.0.0.1, accelerate's MULTI_CPU),
which is what `accelerate launch --num_processes 2 unifashion train ...` sets up. The recipes
switch the Q-Former's dropout off: dropout draws its masks per process from the global RNG, so no
data-parallel run can match a single process while it is on.
"""

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from unifashion_core.checkpoint import read_meta
from unifashion_core.config import load_recipe
from unifashion_core.distributed import BatchShard
from unifashion_core.errors import UserError
from unifashion_core.progress import NullProgress
from unifashion_core.train.data import StepBatches, batch_indices, batch_shard
from unifashion_core.train.phase1 import run_training
from unifashion_core.train.phase2 import run_phase2

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
PROCESSES, BATCH = 2, 4
# AdamW with eps 1 is SGD with momentum for these gradients (all well under 1): each update is
# proportional to its gradient, so a gradient of the wrong scale would show (AdamW's default eps
# makes the first steps blind to scale), and a gradient that is float noise (attention key biases:
# zero in exact arithmetic) stays noise instead of a step of +-lr on its sign.
SGD_LIKE = ["lr=0.5", "eps=1.0", "weight_decay=0.0"]
NO_NOISE = ["model.qformer.dropout=0"]  # dropout draws its masks per process
# Text augmentation (the demo's): attribute phrases such as "blue dress" describe several items of the
# global batch, so ITC's positives and ITM's excluded negatives span the processes; the swapped-colour
# negative texts come from the whole batch too; each process classifies its own rows' colours.
AUGMENT = ["data.augment={other_field: 0.25, attribute_captions: 0.5, word_dropout: 0.1, paraphrase: 0.15}",
           "loss.swap_negatives=0.5", "loss.sibling_batches=0.25", "loss.attribute_weight=0.5"]
RETRIEVAL = [*NO_NOISE, *AUGMENT, "train.stages=[retrieval]", "train.retrieval.max_steps=4", "train.save_every=2",
             "train.eval_every=0", *(f"train.retrieval.{option}" for option in SGD_LIKE)]
# ITG is a mean over each process's caption tokens, and captions differ in length, so its average
# over processes weighs tokens differently from one process's mean: it is left out of the parity.
PHASE2 = [*NO_NOISE, "train.phase2.max_steps=3", "loss.itg_weight=0", "train.eval_every=0",
          *(f"train.phase2.{option}" for option in SGD_LIKE)]
# float32 sums in another order (gradient all-reduce, gathered similarities, batch-size dependent
# kernels) through 3-4 steps. Measured largest differences: retrieval 1.5e-7; phase 2 5e-6 on the
# Q-Former and 7e-5 on the generator's query means retaken from it; phase 2 moved the Q-Former by 0.1.
# After the merge with shopper's branch (its tiny phase-1 model): 6e-6 on the Q-Former and 1.6e-4 on
# the query means, which average the Q-Former's outputs and so carry its rounding amplified.
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
STATISTICS_TOLERANCE = {"atol": 5e-4, "rtol": 1e-4}  # generator.query_mean / query_std


def test_each_process_reads_its_own_rows_of_every_global_batch():
    shards = [batch_shard(BATCH, 50, rank, PROCESSES) for rank in range(PROCESSES)]
    assert shards == [BatchShard(8, slice(0, 4)), BatchShard(8, slice(4, 8))]
    for step in range(10):
        whole = batch_indices(3, 50, 8, step)
        parts = [next(iter(StepBatches(3, 50, shard, step, step + 1))) for shard in shards]
        assert parts[0] + parts[1] == whole.tolist()
    alone = batch_shard(BATCH, 50, 0, 1)
    assert list(StepBatches(3, 50, alone, 0, 5)) == [batch_indices(3, 50, BATCH, s).tolist() for s in range(5)]
    assert batch_shard(32, 10, 1, 2) == BatchShard(10, slice(5, 10))  # data smaller than a global batch


class _InterruptAt(NullProgress):
    """Raises KeyboardInterrupt when training reaches a given step (a kill, in every process)."""

    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def advance(self, task: str, n: int = 1, **fields: float | str) -> None:
        if task.startswith("train"):
            self.seen += n
            if self.seen >= self.step:
                raise KeyboardInterrupt


def _train_in_two_processes(rank: int, port: int, root: str) -> None:
    """One of the two processes: phase 1 retrieval, the same killed at step 3 and resumed, phase 2."""
    from accelerate.state import AcceleratorState, GradientState

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(PROCESSES),
                      LOCAL_WORLD_SIZE=str(PROCESSES), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    AcceleratorState._reset_state(reset_partial_state=True)  # forked from a process that trained alone
    GradientState._reset_state()
    work = Path(root)
    retrieval = load_recipe(TINY, [*RETRIEVAL, f"train.retrieval.batch_size={BATCH}"])
    run_training(retrieval, work / "data", work / "two" / "retrieval")
    with pytest.raises(KeyboardInterrupt):
        run_training(retrieval, work / "data", work / "two" / "resumed", progress=_InterruptAt(3))
    if rank == 0:  # kept as it was killed, to resume with one process
        shutil.copytree(work / "two" / "resumed", work / "two" / "interrupted")
    torch.distributed.barrier()
    run_training(retrieval, work / "data", work / "two" / "resumed", resume=True)
    phase2 = load_recipe(TINY, [*PHASE2, f"train.phase2.batch_size={BATCH}"])
    run_phase2(phase2, work / "phase1", work / "data", work / "two" / "phase2")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_phase1: Path) -> Path:
    """The two-process runs (forked) and the one-process runs with twice the batch."""
    mp.start_processes(_train_in_two_processes, args=(_free_port(), str(tiny_phase1)), nprocs=PROCESSES,
                       start_method="fork")
    one = tiny_phase1 / "one"
    run_training(load_recipe(TINY, [*RETRIEVAL, f"train.retrieval.batch_size={2 * BATCH}"]), tiny_phase1 / "data",
                 one / "retrieval")
    run_phase2(load_recipe(TINY, [*PHASE2, f"train.phase2.batch_size={2 * BATCH}"]), tiny_phase1 / "phase1",
               tiny_phase1 / "data", one / "phase2")
    return tiny_phase1


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


@pytest.mark.parametrize("run", ["retrieval", "phase2"])
def test_two_processes_with_batch_b_train_as_one_with_batch_2b(runs, run):
    two, one = _weights(runs / "two" / run), _weights(runs / "one" / run)
    assert two.keys() == one.keys()
    if run == "phase2":  # training moved the Q-Former far more than the tolerance
        start = _weights(runs / "phase1")
        assert max(float((one[key] - start[key]).abs().max()) for key in one if key.startswith("qformer.")) > 1e-2
    for key in one:
        tolerance = STATISTICS_TOLERANCE if key.startswith("generator.query_") else TOLERANCE
        torch.testing.assert_close(two[key], one[key], **tolerance, msg=key)
    losses = [[json.loads(line) for line in (runs / side / run / "metrics.jsonl").read_text().splitlines()
               if '"loss"' in line] for side in ("two", "one")]
    assert [record["step"] for record in losses[0]] == list(range(1, len(losses[1]) + 1))  # written once
    for mine, theirs in zip(*losses, strict=True):  # the two processes' losses averaged
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)


def test_a_two_process_run_resumes_exactly(runs):
    straight, resumed = _weights(runs / "two" / "retrieval"), _weights(runs / "two" / "resumed")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_checkpoints_record_the_processes_and_resume_only_with_as_many(runs):
    two, one = (read_meta(runs / side / "retrieval" / "checkpoint") for side in ("two", "one"))
    assert (two["num_processes"], two["batch_size"], two["global_batch_size"]) == (2, BATCH, 2 * BATCH)
    assert (one["num_processes"], one["batch_size"], one["global_batch_size"]) == (1, 2 * BATCH, 2 * BATCH)
    assert read_meta(runs / "two" / "interrupted" / "checkpoint")["step"] == 2
    recipe = load_recipe(TINY, [*RETRIEVAL, f"train.retrieval.batch_size={BATCH}"])
    with pytest.raises(UserError, match="trained with 2 process"):
        run_training(recipe, runs / "data", runs / "two" / "interrupted", resume=True)
