"""Data parallelism under ``torchrun``: the process group, analysis statistics, and training's gathered batch.

Analysis: each rank streams its own shards; statistics are all-reduced.

Gram statistics are additive. Every rank holds ``(n_k, mean_k, scatter_k)`` of its rows; with the
global mean ``m = sum n_k mean_k / n`` (one all-reduce), the global centred scatter is
``sum_k scatter_k + n_k (mean_k - m)(mean_k - m)^T`` (one more all-reduce), with no cancellation.
Tensors travel in float64 over the gloo backend (CPU), whatever device did the reading.

Training (``sdetool finetune``): every rank embeds its slice of the global batch; :func:`gather_rows` joins the
slices in rank order with gradients (open_clip's ``gather_with_grad``), so that the InfoNCE negatives and the
batch spectrum are those of the whole batch, and :func:`synchronize_batchnorm` gives batch normalization the
statistics of the whole batch (torch's ``SyncBatchNorm`` runs on GPUs only). With gradients averaged by
``DistributedDataParallel``, K ranks then take the step one process takes on the same global batch.
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

    ``WORLD_SIZE`` > 1 initialises ``torch.distributed`` (once): gloo for CPU tensors, and nccl for CUDA
    tensors where CUDA and nccl are there; otherwise the job is a single process and torch is not imported.
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and dist.is_nccl_available()  # no CUDA context made here: CPU jobs need none
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def rank_slices(count: int, size: int) -> list[slice]:
    """Contiguous, nearly equal slices of ``count`` rows, one per rank (rank order is row order)."""
    bounds = np.linspace(0, count, size + 1).round().astype(int) if size > 1 else np.array([0, count])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def gather_rows(tensor, counts: list[int], world: World):
    """Every rank's rows (``counts[k]`` on rank ``k``) concatenated in rank order, with gradients.

    Forward: an all-gather (slices of unequal size are padded for the collective and cut back). Backward:
    the gradients of the gathered rows are summed over ranks (an all-reduce) and each rank keeps its own
    rows' part, as open_clip's ``gather_with_grad``. Every rank computes the same loss of the whole batch,
    so after DDP's average each parameter gets the gradient one process would compute. Rows travel in
    the tensor's own floating dtype (float32 under autocast).
    """
    if not world.distributed:
        return tensor
    if int(tensor.shape[0]) != counts[world.rank]:
        raise ValueError(f"rank {world.rank} holds {tensor.shape[0]} rows; expected {counts[world.rank]}")
    if not tensor.dtype.is_floating_point or tensor.element_size() < 4:
        tensor = tensor.float()  # gloo has no bfloat16
    return _row_gather().apply(tensor, tuple(counts), world.rank)


_CACHE: dict = {}


def _row_gather():
    """The autograd function behind :func:`gather_rows` (built on first use: torch is imported late)."""
    if "gather" in _CACHE:
        return _CACHE["gather"]
    import torch
    import torch.distributed as dist

    class RowGather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, counts, rank):
            ctx.counts, ctx.rank = counts, rank
            padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
            padded[:tensor.shape[0]] = tensor
            parts = [torch.empty_like(padded) for _ in counts]
            dist.all_gather(parts, padded.contiguous())
            return torch.cat([part[:count] for part, count in zip(parts, counts)])

        @staticmethod
        def backward(ctx, gradient):
            summed = gradient.contiguous().clone()
            dist.all_reduce(summed)  # every rank's loss reaches every row
            start = sum(ctx.counts[:ctx.rank])
            return summed[start:start + ctx.counts[ctx.rank]], None, None

    _CACHE["gather"] = RowGather
    return RowGather


def synchronize_batchnorm(module, world: World):
    """Make every batch normalization in ``module`` use the whole global batch's statistics in training.

    Each ``BatchNorm1d/2d/3d`` becomes a ``GlobalBatchNorm`` holding the very same parameter and buffer tensors: in training
    under ``torchrun`` it sums per-channel count, sum and sum of squares over ranks (float64, with
    gradients) and normalizes with the global mean and biased variance, updating the running statistics
    as torch does (unbiased variance). In evaluation, or in one process, it is plain batch normalization.
    Returns ``module`` (changed in place; a bare batch norm is returned converted).
    """
    if not world.distributed:
        return module
    from torch import nn

    global_class = _global_batchnorm()
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, global_class):
        converted = global_class(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        for name, parameter in module.named_parameters(recurse=False):
            setattr(converted, name, parameter)  # the same tensors: an optimizer or checkpoint holding them still works
        for name, buffer in module.named_buffers(recurse=False):
            converted.register_buffer(name, buffer)
        converted.train(module.training)
        return converted
    for name, child in list(module.named_children()):
        replaced = synchronize_batchnorm(child, world)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _global_batchnorm():
    if "batchnorm" in _CACHE:
        return _CACHE["batchnorm"]
    import torch
    import torch.distributed as dist
    from torch import nn

    class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
        """Batch normalization over the rows of every rank (see :func:`synchronize_batchnorm`)."""

        def _check_input_dim(self, input) -> None:
            if input.dim() < 2:
                raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

        def forward(self, input):
            if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
                return super().forward(input)
            self._check_input_dim(input)
            channels = input.shape[1]
            dims = [0, *range(2, input.dim())]
            values = input.double()
            local = torch.cat([values.sum(dims), (values * values).sum(dims),
                               values.new_full((1,), input.numel() / max(channels, 1))])
            del values
            size = dist.get_world_size()
            total = gather_rows(local[None], [1] * size, World(dist.get_rank(), size)).sum(0)
            count = total[-1]
            mean = total[:channels] / count
            variance = (total[channels:2 * channels] / count - mean * mean).clamp_min(0.0)
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                    unbiased = variance * (count / (count - 1).clamp_min(1.0))
                    self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                    self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
            shape = [1, channels] + [1] * (input.dim() - 2)
            scale = torch.rsqrt(variance + self.eps)  # the sums in float64; the activations in their own dtype
            output = (input - mean.to(input.dtype).view(shape)) * scale.to(input.dtype).view(shape)
            if self.affine:
                output = output * self.weight.view(shape) + self.bias.view(shape)
            return output

    _CACHE["batchnorm"] = GlobalBatchNorm
    return GlobalBatchNorm


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
