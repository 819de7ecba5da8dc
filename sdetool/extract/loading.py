"""Feeding images to a model: the DataLoader dataset, its collate function, and the choice of how many
worker processes decode while the model runs.

On a GPU the model is rarely the bottleneck on the host: as many workers as spare cores (at most 8).
On a CPU, workers and the model's threads share the same cores, and the right split depends on the
model: for a small CNN decoding dominates (workers pay), for a ViT the model does (workers only take
cores from it). With ``--num-workers`` unset, :func:`plan_pipeline` times the preprocessing and the
model on the first few items and picks the split the timings predict to be fastest.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from sdetool.extract.data.items import ItemError, ItemSource

_MAX_WORKERS = 8
_PROBE_ITEMS = 8


class ImageDataset:
    """Map-style dataset: item index -> (index, pixels or None, failure reason or None)."""

    def __init__(self, source: ItemSource, transform) -> None:
        self.source = source
        self.transform = transform
        self.draft = getattr(transform, "draft", None)  # (mode, size) a JPEG may be decoded at, if the model allows

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(self.source.load_image(index, draft=self.draft)), None
        except ItemError as error:
            return index, None, str(error)
        except (OSError, ValueError) as error:  # the model's preprocessing refused the decoded image
            return index, None, f"cannot preprocess: {str(error).splitlines()[0] if str(error) else type(error).__name__}"


def collate(samples):
    """Stack the good samples; keep the failures aside: ``(indices, pixels or None, [(index, reason)])``."""
    import torch

    good = [(index, pixels) for index, pixels, _ in samples if pixels is not None]
    failed = [(index, reason) for index, _, reason in samples if reason is not None]
    pixels = torch.stack([p for _, p in good]) if good else None
    return [index for index, _ in good], pixels, failed


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Pipeline:
    """How to run: ``workers`` DataLoader processes, the model on ``threads`` torch threads (None: as is)."""

    workers: int
    threads: int | None = None
    reason: str = ""


def best_split(preprocess_s: float, model_s: float, cores: int) -> Pipeline:
    """The worker/thread split with the lowest predicted time per image (a pure function).

    With ``w`` workers and ``cores - w`` model threads a pipelined item costs
    ``max(preprocess / w, model * cores / (cores - w))`` (model time scaling with threads); with no
    workers it costs ``preprocess + model``.
    """
    best, best_cost = Pipeline(0, None), preprocess_s + model_s
    for workers in range(1, min(cores, _MAX_WORKERS + 1)):
        threads = cores - workers
        cost = max(preprocess_s / workers, model_s * cores / threads)
        if cost < best_cost * 0.95:  # a split must promise a clear gain over the plain loop
            best, best_cost = Pipeline(workers, threads), cost
    return Pipeline(best.workers, best.threads,
                    f"measured per image: preprocessing {preprocess_s * 1e3:.2f} ms, model {model_s * 1e3:.2f} ms on "
                    f"{cores} cores -> {best.workers} workers" + (f", model on {best.threads} threads" if best.threads else ""))


def plan_pipeline(requested: int | None, device: str, world_size: int, dataset: ImageDataset, embed) -> Pipeline:
    """Workers (and model threads on a CPU) for this run; ``requested`` (``--num-workers``) wins."""
    cores = max(1, available_cores() // max(1, world_size))
    if requested is not None:
        return Pipeline(requested)
    if not device.startswith("cpu"):
        return Pipeline(max(1, min(_MAX_WORKERS, cores - 1)))
    if cores < 2 or len(dataset) < 4 * _PROBE_ITEMS:
        return Pipeline(0)
    started = time.perf_counter()
    samples = [dataset[index] for index in range(_PROBE_ITEMS)]
    preprocess_s = (time.perf_counter() - started) / _PROBE_ITEMS
    _, pixels, _ = collate(samples)
    if pixels is None:
        return Pipeline(0)
    embed(pixels[:2])  # warm-up: first calls allocate
    started = time.perf_counter()
    embed(pixels)
    model_s = (time.perf_counter() - started) / len(pixels)
    return best_split(preprocess_s, model_s, cores)
