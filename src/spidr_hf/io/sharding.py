"""
Which part of a job this process does: `--shard K/N` (independent jobs), `--shard slurm` (a SLURM job array) and the
processes of `torchrun` / `accelerate launch` (RANK, WORLD_SIZE, LOCAL_RANK), alone or combined (an array of
multi-GPU jobs), and a deterministic split of work items balanced by cost.
"""

import heapq
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import SpidrError

SLURM = "slurm"


@dataclass(frozen=True)
class Shard:
    """Part `index` (0-based) of `count` parts."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """A file-name part that sorts in shard order: 00001-of-00004."""
        return f"{self.index:05d}-of-{self.count:05d}"


WHOLE = Shard(0, 1)


def parse_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> Shard:
    """`K/N` (0 <= K < N), `slurm` (the task of a SLURM job array) or None (the whole job)."""
    if text is None:
        return WHOLE
    if text == SLURM:
        index, count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
        if index is None or count is None:
            raise SpidrError(
                "--shard slurm needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT: run it as a SLURM job array "
                "(sbatch --array=0-N-1), or pass --shard K/N"
            )
        # An array 1-N numbers its tasks from 1: SLURM_ARRAY_TASK_MIN says where it starts
        first = environ.get("SLURM_ARRAY_TASK_MIN", "0")
        text = f"{int(index) - int(first)}/{count}"
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise SpidrError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), or slurm; got {text!r}")
    return Shard(int(index), int(count))


@dataclass(frozen=True)
class Process:
    """This process's part of the job, and its place among the processes of one machine (None: launched alone)."""

    shard: Shard
    local_rank: int | None


ALONE = Process(WHOLE, None)  # a process launched alone, doing the whole job


def this_process(requested: Shard = WHOLE, environ: Mapping[str, str] = os.environ) -> Process:
    """
    The requested shard, split again among the processes of a launcher (torchrun, accelerate launch): rank r of W
    within shard K of N does part K * W + r of N * W.
    """
    world_size = int(environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Process(requested, None)
    rank = int(environ["RANK"])
    local_rank = int(environ.get("LOCAL_RANK", rank))
    return Process(Shard(requested.index * world_size + rank, requested.count * world_size), local_rank)


def process_device(device: str, process: Process) -> str:
    """A launched process's own accelerator: `cuda` becomes `cuda:LOCAL_RANK`; an explicit index is kept."""
    if process.local_rank is not None and device in ("cuda", "xpu"):
        return f"{device}:{process.local_rank}"
    return device


def balanced_split(costs: Sequence[float], count: int) -> list[int]:
    """
    The part (0 to count - 1) of each item, so that parts cost about the same: items in order of decreasing cost
    (ties: in their given order) each go to the part that costs least so far (ties: the lowest part). Deterministic:
    every process computes the same split from the same costs.
    """
    parts = [(0.0, part) for part in range(count)]
    assignment = [0] * len(costs)
    for item in sorted(range(len(costs)), key=lambda item: (-costs[item], item)):
        total, part = heapq.heappop(parts)
        assignment[item] = part
        heapq.heappush(parts, (total + costs[item], part))
    return assignment
