"""Data-parallel analysis under ``torchrun``: each rank streams its own shards; statistics are all-reduced.

Gram statistics are additive. Every rank holds ``(n_k, mean_k, scatter_k)`` of its rows; with the
global mean ``m = sum n_k mean_k / n`` (one all-reduce), the global centred scatter is
``sum_k scatter_k + n_k (mean_k - m)(mean_k - m)^T`` (one more all-reduce), with no cancellation.
Tensors travel in float64 over the gloo backend (CPU), whatever device did the reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from sdetool.errors import BadInputError
from sdetool.spectral.gram import GramState
from sdetool.spectral.rowsets import RowSample


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job (``rank 0 of 1`` when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_share(self, count: int) -> list[int]:
        """Indices of the items (shards) this rank handles: round-robin."""
        return [i for i in range(count) if i % self.size == self.rank]


def current_world() -> World:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    ``WORLD_SIZE`` > 1 initialises ``torch.distributed`` with the gloo backend (once); otherwise the
    job is a single process and torch is not imported.
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def _all_reduce(array: np.ndarray, smallest: bool = False) -> np.ndarray:
    """Sum (or, with ``smallest``, the minimum) over ranks, in float64."""
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN if smallest else dist.ReduceOp.SUM)
    return tensor.numpy()


def all_reduce_state(state: GramState, world: World) -> GramState:
    """Combine the :class:`GramState` of every rank; every rank gets the global statistics.

    Row samples for entry-wise estimators are gathered and merged by their keys; kept rows
    (direct-SVD mode) are not supported across ranks and are dropped.
    """
    if not world.distributed:
        return state
    d = state.dim
    counts = _all_reduce(np.array([state.n, state.zero_rows, state.nonfinite_rows], dtype=np.float64))
    n = int(counts[0])
    weighted = _all_reduce(state.mean * state.n)
    mean = weighted / n if n else np.zeros(d)
    delta = state.mean - mean
    scatter = _all_reduce(state.scatter + state.n * np.outer(delta, delta))
    unit_sum = _all_reduce(state.unit_sum)
    first = _all_reduce(np.array([np.inf if state.first_nonfinite is None else state.first_nonfinite]), smallest=True)
    sample, keys = _gather_samples(state)
    blocks = None if state.blocks is None else tuple(all_reduce_state(block, world) for block in state.blocks)
    return GramState(
        n=n,
        mean=mean,
        scatter=0.5 * (scatter + scatter.T),
        unit_sum=unit_sum,
        zero_rows=int(counts[1]),
        nonfinite_rows=int(counts[2]),
        first_nonfinite=None if not np.isfinite(first[0]) else int(first[0]),
        rows=None,
        entry_sample=sample,
        entry_keys=keys,
        sample_rows=state.sample_rows,
        fingerprints=_gather_fingerprints(state),
        blocks=blocks,
    )


def _gather_fingerprints(state: GramState) -> np.ndarray | None:
    """The union of every rank's distinct row fingerprints (the distinct rows of the whole set)."""
    if state.fingerprints is None:
        return None
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state.fingerprints)
    return np.unique(np.concatenate(gathered))


def _gather_samples(state: GramState) -> tuple[np.ndarray | None, np.ndarray | None]:
    if state.entry_sample is None:
        return None, None
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (state.entry_sample, state.entry_keys))
    merged = RowSample(state.sample_rows, state.dim, seed=0)  # keys are already drawn: the seed is unused
    for sample, keys in gathered:
        merged.add(keys, sample)
    return merged.sorted()


def on_main(world: World, work):
    """Run ``work`` on rank 0 only and give every rank its result (or its error)."""
    if not world.distributed:
        return work()
    import torch.distributed as dist

    message, failure = [None, None], None
    if world.is_main:
        try:
            message = [work(), None]
        except Exception as error:  # tell the other ranks before raising, or they would wait forever
            message, failure = [None, str(error) or type(error).__name__], error
    dist.broadcast_object_list(message, src=0)
    if failure is not None:
        raise failure
    if message[1] is not None:
        raise BadInputError(message[1])
    return message[0]


def on_every_rank(world: World, work) -> None:
    """Run ``work`` on every rank; if any rank fails, every rank raises (nobody waits forever)."""
    if not world.distributed:
        work()
        return
    import torch.distributed as dist

    error_text, failure = None, None
    try:
        work()
    except Exception as error:  # every rank must reach the gather below, or the others wait forever
        error_text, failure = str(error) or type(error).__name__, error
    statuses: list = [None] * world.size
    dist.all_gather_object(statuses, error_text)
    if failure is not None:
        raise failure
    failures = [s for s in statuses if s is not None]
    if failures:
        raise BadInputError(failures[0])
