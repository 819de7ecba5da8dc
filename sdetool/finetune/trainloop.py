"""The training loop of ``sdetool finetune``: batches, the step, checkpoints, interruptions.

One step (:meth:`TrainingLoop.step`): this rank's rows of the global batch of that step (a seeded
permutation per epoch, so a resumed run reads the same batches), images decoded ahead by a thread,
features from the target under autocast, the loss of :mod:`sdetool.finetune.sde`, backward, gradient clipping
and an AdamW step with linear warm-up and cosine decay.

Under ``torchrun`` the trainable modules run inside ``torch.nn.parallel.DistributedDataParallel`` (nccl on CUDA,
gloo on CPU), each rank embedding a contiguous slice of the global batch. With ``gather_features`` (the
default) the slices are gathered with gradients before the loss and batch normalization uses the global
batch's statistics (:mod:`sdetool.runtime.distributed`), so every rank computes the loss one process computes
on the same global batch and DDP's averaged gradient is that process's gradient. Without it each rank's loss
sees its own slice only (its negatives, its batch spectrum), and the gradients are averaged.
"""

from __future__ import annotations

import functools
import math
import os
import time

import numpy as np

from sdetool.errors import BadInputError, TrainingError, TrainingInterrupted
from sdetool.finetune.pairs import PairData
from sdetool.finetune.runfolder import CHECKPOINT, PENDING, RunFolder
from sdetool.finetune.sde import SDEState, observe_bands, sde_loss

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def batch_rows(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Training rows of global step ``step``: epoch ``e`` walks a permutation seeded by ``(seed, e)``.

    A function of the step alone, so a resumed run sees the batches an uninterrupted one would.
    """
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    return _epoch_order(n, seed, epoch)[position * batch_size:(position + 1) * batch_size].copy()


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False  # shared by every step of the epoch
    return order


def learning_rate_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warm-up over ``warmup * steps`` steps, then cosine decay to 0 at ``steps``."""
    warm = max(1, int(round(warmup * steps)))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))



class TrainingLoop:
    """The optimizer, the method's state, checkpoints, and the loop itself (``options``: a ``FinetuneOptions``)."""

    def __init__(self, folder: RunFolder, target, data: PairData, options, world, device: str) -> None:
        import torch

        self.folder, self.target, self.data, self.options, self.world = folder, target, data, options, world
        self.device = device
        self.method = options.method
        self.groups = torch.from_numpy(data.train.groups(options.positives)).to(device)
        self.gather = bool(options.gather_features) and world.distributed
        self.model = self._parallel(target, world, device)
        self.optimizer = torch.optim.AdamW(target.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
        self.state = SDEState.create(self.method, options.seed)
        self.scaler = torch.amp.GradScaler(enabled=options.precision == "fp16" and device.startswith("cuda"))
        self.last_saved: int | None = None
        self.pending: int | None = None
        self._prefetcher = None
        self._next = None

    def _parallel(self, target, world, device: str):
        """The target's modules as one module, inside DistributedDataParallel under ``torchrun``."""
        import torch
        from torch import nn

        from sdetool.runtime.distributed import synchronize_batchnorm

        class Features(nn.Module):
            """Runs ``target.features``; holds every trainable tensor, the temperature included, for DDP."""

            def __init__(self) -> None:
                super().__init__()
                self.parts = nn.ModuleDict(target.modules)
                held = {id(p) for p in self.parts.parameters()}
                if id(target.logit_scale) not in held:
                    self.logit_scale = target.logit_scale

            def forward(self, pairs, rows, inputs):
                return target.features(pairs, rows, inputs)

        if self.gather:
            for name, module in list(target.modules.items()):
                target.modules[name] = synchronize_batchnorm(module, world)
        model = Features()
        if not world.distributed:
            return model
        devices = [torch.device(device)] if device.startswith("cuda") else None
        return nn.parallel.DistributedDataParallel(model, device_ids=devices)

    # -- checkpoints --

    def save(self, step: int, finished: bool = False, promote: bool = False) -> None:
        """Write the state after ``step`` steps as the pending checkpoint (every rank calls this).

        It becomes *the* checkpoint (:meth:`promote`) once the next step's loss has come out finite, so a
        checkpoint is never a state that leads straight to a NaN; ``promote`` does that at once. Under
        ``torchrun`` each rank's band trackers and random state are kept, so a resume continues every
        rank where it was.
        """
        import torch

        from sdetool.runtime.distributed import on_main

        mine = {"method_state": self.state.state(), "rng": torch.get_rng_state()}
        ranks = self._gather(mine)
        on_main(self.world, lambda: self._write(step, finished, ranks))
        self.pending = step
        if promote:
            self.promote()

    def _gather(self, value) -> list:
        if not self.world.distributed:
            return [value]
        import torch.distributed as dist

        values: list = [None] * self.world.size
        dist.all_gather_object(values, value)
        return values

    def _write(self, step: int, finished: bool, ranks: list[dict]) -> None:
        from sdetool.finetune.runfolder import flatten_optimizer, save_tensors

        tensors, optimizer = flatten_optimizer(self.optimizer)
        tensors.update({f"target.{k}": v for k, v in self.target.state().items()})
        tensors.update({f"rng.torch.{rank}": state["rng"] for rank, state in enumerate(ranks)})
        metadata = {"step": step, "finished": finished, "optimizer": optimizer, "world_size": self.world.size,
                    "method_states": [state["method_state"] for state in ranks], "scaler": self.scaler.state_dict(),
                    "training": self.options.training_config()}
        save_tensors(self.folder.file(PENDING), tensors, metadata)

    def promote(self) -> None:
        """The pending checkpoint has proved good: make it the checkpoint."""
        if self.pending is None:
            return
        if self.world.is_main:
            os.replace(self.folder.file(PENDING), self.folder.file(CHECKPOINT))
        self.last_saved, self.pending = self.pending, None

    def _discard_pending(self) -> None:
        if self.world.is_main and self.pending is not None and os.path.exists(self.folder.file(PENDING)):
            os.remove(self.folder.file(PENDING))
        self.pending = None

    def restore(self) -> int:
        import torch

        from sdetool.finetune.runfolder import load_tensors, read_metadata, unflatten_optimizer

        path = self.folder.file(CHECKPOINT)
        metadata, tensors = read_metadata(path), load_tensors(path)
        self._check(metadata, path)
        self.target.load_state({k[len("target."):]: v for k, v in tensors.items() if k.startswith("target.")})
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, metadata["optimizer"]))
        self.state.load(metadata["method_states"][self.world.rank])
        if metadata.get("scaler"):
            self.scaler.load_state_dict(metadata["scaler"])
        torch.set_rng_state(tensors[f"rng.torch.{self.world.rank}"])
        self.last_saved = int(metadata["step"])
        if self.world.is_main:
            self.folder.truncate_metrics(self.last_saved)
        return self.last_saved

    def _check(self, metadata: dict, path: str) -> None:
        """Refuse a checkpoint made by another configuration or another number of ranks."""
        from sdetool.finetune.runfolder import RESUME_MAY_CHANGE, config_difference, with_added_options

        saved = {k: v for k, v in with_added_options(metadata.get("training", {})).items() if k not in RESUME_MAY_CHANGE}
        wanted = {k: v for k, v in self.options.training_config().items() if k not in RESUME_MAY_CHANGE}
        difference = config_difference(saved, wanted)
        if metadata.get("world_size", 1) != self.world.size:
            difference.insert(0, f"ranks: {metadata.get('world_size', 1)} -> {self.world.size}")
        if difference or "method_states" not in metadata:
            raise BadInputError(f"--resume: {path} was written by another configuration: "
                                + ("; ".join(difference[:6]) or "an older checkpoint format"))

    # -- one step --

    def global_rows(self, step: int) -> np.ndarray:
        return batch_rows(step, len(self.data.train), self.options.batch_size, self.options.seed)

    def rows(self, step: int) -> np.ndarray:
        """This rank's share of the global batch of ``step``: a contiguous slice, so rank order is row order."""
        from sdetool.runtime.distributed import rank_slices

        rows = self.global_rows(step)
        return rows[rank_slices(len(rows), self.world.size)[self.world.rank]]

    def inputs(self, step: int):
        """The decoded inputs of ``step``, prepared by a background thread while the previous step ran."""
        from concurrent.futures import ThreadPoolExecutor

        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(max_workers=1)
        pending, self._next = self._next, None
        inputs = pending[1].result() if pending is not None and pending[0] == step else \
            self.target.load_inputs(self.data.train, self.rows(step))
        if step + 1 < self.options.steps:
            self._next = (step + 1, self._prefetcher.submit(self.target.load_inputs, self.data.train, self.rows(step + 1)))
        return inputs

    def step(self, step: int) -> dict:
        import torch

        options = self.options
        rows = self.rows(step)
        inputs = self.inputs(step)
        for group in self.optimizer.param_groups:
            group["lr"] = options.learning_rate * learning_rate_factor(step, options.steps, options.lr_warmup)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        dtype = getattr(torch, PRECISIONS[options.precision])
        with torch.autocast(device_type, dtype=dtype, enabled=options.precision != "fp32"):
            image, text = self.model(self.data.train, rows, inputs)
        if self.gather:  # the whole global batch, in its order, on every rank
            from sdetool.runtime.distributed import gather_rows, rank_slices

            rows = self.global_rows(step)
            counts = [part.stop - part.start for part in rank_slices(len(rows), self.world.size)]
            image, text = gather_rows(image, counts, self.world), gather_rows(text, counts, self.world)
        loss, terms = sde_loss(image, text, self.groups[rows], self.target.logit_scale, step / options.steps,
                               self.method, self.state)
        if not self._all_finite(math.isfinite(terms["loss"])):  # every rank stops on any rank's NaN
            self._fail(step, terms["loss"])
        self.promote()  # the state this step started from gave a finite loss
        if "image_shares" not in terms and self.logging(step):
            terms.update(observe_bands(image, text, self.state))
        if not self.logging(step):
            terms.pop("bands", None)  # bands.jsonl holds the logging steps, as metrics.jsonl does
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # DDP averages the gradients over ranks (an fp16 inf step: skipped everywhere)
        self.scaler.unscale_(self.optimizer)
        if options.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.target.parameters(), options.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.target.logit_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap on the inverse temperature
        terms["lr"] = self.optimizer.param_groups[0]["lr"]
        terms["logit_scale"] = float(self.target.logit_scale.detach())
        return terms

    def logging(self, step: int) -> bool:
        return step % self.options.log_every == 0 or step == self.options.steps - 1

    def _fail(self, step: int, value: float) -> None:
        self._discard_pending()
        where = (f"the last good checkpoint (step {self.last_saved}) is in {self.folder.file(CHECKPOINT)}: add --resume "
                 "with a lower --learning-rate to continue from it" if self.last_saved is not None else
                 "the starting model itself gives it, so there is no good checkpoint")
        raise TrainingError(f"the loss became {value} at step {step} (or, under torchrun, on another rank); "
                            f"training stopped; {where}")

    def _all_finite(self, finite: bool) -> bool:
        """Whether the loss was finite on every rank (one small all-reduce under torchrun)."""
        if not self.world.distributed:
            return finite
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0.0 if finite else 1.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() == 0)

    def _stop_requested(self, stop: list) -> bool:
        """Whether any rank was interrupted: every rank must stop after the same step."""
        if not self.world.distributed:
            return bool(stop)
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    # -- the loop --

    def run(self, start: int, progress) -> float:
        """Train from step ``start`` to the end; returns the mean seconds per step.

        Ctrl-C is deferred to the end of the current step (a second one stops at once), so the
        checkpoint it saves is the exact state after a whole number of steps.
        """
        import signal
        import threading

        from sdetool.runtime.distributed import on_main

        options = self.options
        self.target.train(True)
        pending: list[dict] = []
        stop: list[bool] = []
        previous = None
        if threading.current_thread() is threading.main_thread():
            def request_stop(signum, frame) -> None:
                stop.append(True)
                signal.signal(signal.SIGINT, previous)

            previous = signal.signal(signal.SIGINT, request_stop)
        resumed = f" (resumed at step {start} of {options.steps})" if start else ""
        progress.start(f"{options.loss} fine-tuning{resumed}", options.steps - start)
        began = time.perf_counter()
        try:
            for step in range(start, options.steps):
                terms = self.step(step)
                if self.logging(step):
                    pending.append({"step": step, "seconds": round(time.perf_counter() - began, 3), **terms})
                stopping = self._stop_requested(stop) and step + 1 < options.steps
                if stopping or ((step + 1) % options.checkpoint_every == 0 and step + 1 < options.steps):
                    on_main(self.world, lambda: self.folder.append_metrics(pending))
                    self.save(step + 1, promote=stopping)
                    pending = []
                if stopping:
                    raise TrainingInterrupted(f"interrupted after step {step + 1} of {options.steps}; a checkpoint was "
                                              f"saved in {self.folder.path}: run the same command with --resume to continue")
                progress.advance(1, f"loss {terms['loss']:.4f}")
        finally:
            progress.finish()
            if self._prefetcher is not None:
                self._prefetcher.shutdown(wait=True, cancel_futures=True)
                self._prefetcher, self._next = None, None
            if previous is not None and not stop:
                signal.signal(signal.SIGINT, previous)
        on_main(self.world, lambda: self.folder.append_metrics(pending))
        ran = options.steps - start
        return (time.perf_counter() - began) / ran if ran else 0.0
