"""``sdetool finetune``: SDE fine-tuning (or the plain InfoNCE baseline), evaluated before and after.

The loop reads top to bottom in :func:`_train`: batch indices from a seeded order, features from the
target (:mod:`sdetool.finetune_targets`), the loss of :mod:`sdetool.sde`, an AdamW step with linear
warm-up and cosine decay. ``--loss infonce`` changes only the loss: same data order, seed and steps.
Under ``torchrun`` each rank takes its share of every global batch and gradients are averaged by an
all-reduce after the backward pass (DDP semantics); rank 0 evaluates and writes the run folder.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from sdetool import __version__
from sdetool.errors import BadInputError, TrainingError, TrainingInterrupted
from sdetool.finetune_data import POSITIVES, PairData, PairSet
from sdetool.runfolder import CHECKPOINT, EVAL, PENDING, SCHEMA, WEIGHTS, RunFolder
from sdetool.sde import SDEConfig, SDEState, sde_loss

LOSSES = ("sde", "infonce")
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class FinetuneOptions:
    """How to train. ``training_config()`` holds what a resume must match; the rest may change."""

    loss: str = "sde"
    target: str = "model"
    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    lr_warmup: float = 0.05
    clip_grad: float = 1.0
    seed: int = 0
    precision: str = "fp32"
    positives: str = "auto"
    eval_fraction: float = 0.1
    eval_limit: int | None = None
    train_blocks: int = 2
    freeze_text: bool = True
    head: str = "linear"
    head_dim: int | None = None
    temperature: float = 0.07
    sde: SDEConfig = field(default_factory=SDEConfig)
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 100
    export_embeddings: bool = False
    resume: bool = False
    overwrite: bool = False

    def validate(self) -> None:
        from sdetool.finetune_targets import TARGETS

        checks = [(self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
                  (self.target in TARGETS, f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}"),
                  (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
                  (self.positives in POSITIVES, f"--positives must be one of {', '.join(POSITIVES)}"),
                  (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
                  (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
                  (self.learning_rate > 0 and math.isfinite(self.learning_rate), "--learning-rate must be > 0"),
                  (0 <= self.lr_warmup < 1, "--lr-warmup must be in [0, 1)"),
                  (self.temperature > 0, "--temperature must be > 0"),
                  (self.train_blocks >= 0, "--train-blocks must be >= 0"),
                  (self.eval_limit is None or self.eval_limit >= 2, "--eval-limit must be >= 2"),
                  (self.log_every >= 1 and self.checkpoint_every >= 1, "--log-every and --checkpoint-every must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise BadInputError(message)

    @property
    def method(self) -> SDEConfig:
        return self.sde if self.loss == "sde" else SDEConfig.baseline()

    def training_config(self) -> dict:
        values = asdict(self)
        for name in ("device", "log_every", "checkpoint_every", "export_embeddings", "resume", "overwrite", "sde"):
            values.pop(name)
        values["method"] = self.method.to_dict()
        return values


@dataclass
class FinetuneResult:
    """What a run did: where it lives, its evaluation and its timing."""

    out: str
    status: str
    steps: int
    resumed_from: int
    evaluation: dict
    seconds: float
    seconds_per_step: float
    device: str
    notes: list[str]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}


class Progress:
    """Receives training progress; the default does nothing."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, count: int, status: str = "") -> None: ...
    def finish(self) -> None: ...


# --- data order and schedules (pure) -------------------------------------------------------------


def batch_rows(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Training rows of global step ``step``: epoch ``e`` walks a permutation seeded by ``(seed, e)``.

    A function of the step alone, so a resumed run sees the batches an uninterrupted one would.
    """
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[position * batch_size:(position + 1) * batch_size]


def learning_rate_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warm-up over ``warmup * steps`` steps, then cosine decay to 0 at ``steps``."""
    warm = max(1, int(round(warmup * steps)))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))


# --- setup ---------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    from sdetool.extract import resolve_torch_device

    return resolve_torch_device(device, int(os.environ.get("LOCAL_RANK", "0") or 0))


def load_data(model: str | None, source, embeddings: str | None, options: FinetuneOptions) -> PairData:
    from sdetool import finetune_data

    if options.target == "head":
        if not embeddings:
            raise BadInputError("--target head trains on cached pairs: give --embeddings STORE.h5 (from sdetool extract)")
        data = finetune_data.from_store(embeddings, options.eval_fraction)
    else:
        if embeddings:
            raise BadInputError("--embeddings holds cached pairs for --target head; --target model needs images and texts")
        if source is None or source.location.startswith("builtin:fashion-mnist"):
            name = source.location[len("builtin:"):] if source is not None else "fashion-mnist"
            data = finetune_data.builtin_pairs("fashion-mnist" if name == "fashion-mnist:test" else name,
                                               options.eval_fraction)
        else:
            data = finetune_data.from_source(source, options.eval_fraction)
    if options.eval_limit and len(data.held_out) > options.eval_limit:
        data.held_out = _first(data.held_out, options.eval_limit)
    return data


def _first(pairs: PairSet, count: int) -> PairSet:
    """The first ``count`` pairs (distinct texts renumbered)."""
    from sdetool.finetune_data import _distinct

    texts_used, text_rows = _distinct(list(pairs.text_rows[:count]))
    return PairSet(ids=pairs.ids[:count], rows=pairs.rows[:count], text_rows=text_rows,
                   texts=[pairs.texts[i] for i in texts_used] if pairs.texts is not None else None,
                   labels=pairs.labels[:count] if pairs.labels is not None else None,
                   image=pairs.image[:count] if pairs.image is not None else None,
                   text=pairs.text[:count] if pairs.text is not None else None)


def build_target(model: str | None, data: PairData, options: FinetuneOptions, device: str):
    from sdetool.finetune_targets import EncoderTarget, HeadTarget

    if options.target == "head":
        return HeadTarget(data, options.head, options.head_dim, options.temperature, options.seed, device)
    from sdetool.models import DEFAULT_MODEL, load_model

    return EncoderTarget(load_model(model or DEFAULT_MODEL), data, options.train_blocks, options.freeze_text, device)


def run_config(model: str | None, embeddings: str | None, data: PairData, options: FinetuneOptions) -> dict:
    return {"schema": SCHEMA, "sdetool_version": __version__,
            "training": {**options.training_config(), "model": None if options.target == "head" else (model or _default_model()),
                         "embeddings": os.path.abspath(embeddings) if embeddings else None,
                         "data": data.description, "data_fingerprint": data.fingerprint},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _default_model() -> str:
    from sdetool.models import DEFAULT_MODEL

    return DEFAULT_MODEL


# --- evaluation ----------------------------------------------------------------------------------


def evaluate(target, data: PairData, export: str | None, label: str) -> dict:
    """Recalls, zero-shot accuracy and the band shares ``analyze`` reports for the held-out embeddings.

    The embeddings are written to an HDF5 store (``export``, or a temporary file) and analysed from
    there, so the numbers are exactly those of ``sdetool analyze`` on that store.
    """
    from sdetool import evaluation

    image, text = target.embed(data.held_out)
    distinct = np.zeros((int(data.held_out.text_rows.max()) + 1, text.shape[1]), dtype=np.float32)
    distinct[data.held_out.text_rows] = text
    result = {"pairs": len(data.held_out), "distinct_texts": int(distinct.shape[0]),
              "recall": evaluation.retrieval_recalls(image, distinct, data.held_out.text_rows)}
    prototypes = target.class_prototypes(data)
    if prototypes is not None:
        result["zero_shot_accuracy"] = evaluation.zero_shot_accuracy(image, prototypes, data.held_out.labels)
    with tempfile.TemporaryDirectory() as scratch:
        path = export or os.path.join(scratch, "held_out.h5")
        write_embeddings(path, image, text, data.held_out.ids, {"finetune_stage": label, "model": getattr(
            getattr(target, "encoder", None), "spec", target.description)})
        result["bands"] = _bands(path)
    return result


def write_embeddings(path: str, image: np.ndarray, text: np.ndarray, ids: list[str], attrs: dict) -> None:
    from sdetool import store

    with store.StoreWriter(path, mode="w") as writer:
        for key, values in (("image", image), ("text", text)):
            target = writer.create_set(key, values.shape[1], dtype="float32", with_ids=True,
                                       attrs=dict(attrs, modality=key, normalized=False), expected_rows=len(values))
            target.append(values.astype(np.float32, copy=False), ids)


def _bands(path: str) -> dict:
    from sdetool.analysis import analyze

    report = analyze(path, local=True)  # evaluation runs on rank 0 alone
    result = {}
    for key, analysed in report.sets.items():
        summary = analysed.to_dict()
        result[key] = {band: {"count": values["count"], "energy_share": values["energy_share"]}
                       for band, values in summary["bands"].items()}
        result[key]["effective_rank"] = summary["metrics"]["effective_rank"]
    return result


# --- the run -------------------------------------------------------------------------------------


def finetune(out: str, options: FinetuneOptions, *, model: str | None = None, source=None, embeddings: str | None = None,
             progress: Progress | None = None) -> FinetuneResult:
    """Fine-tune, evaluate before and after, and write the run folder ``out``.

    Parameters
    ----------
    out : str
        The run folder (see :mod:`sdetool.runfolder`).
    options : FinetuneOptions
    model : str, optional
        Model spec for ``target="model"`` (default ``builtin:lit-fmnist``).
    source : ItemSource, optional
        Pairs for ``target="model"`` (default ``builtin:fashion-mnist``: train split, test held out).
    embeddings : str, optional
        A store with ``image`` and ``text`` sets for ``target="head"``.
    progress : Progress, optional

    Raises
    ------
    BadInputError
        Bad options or data, an existing run without resume/overwrite, a resume of another configuration.
    TrainingError
        The loss became NaN or infinite (the last good checkpoint is kept).
    TrainingInterrupted
        Ctrl-C; a resumable checkpoint was saved first.
    """
    import torch

    from sdetool.distributed import current_world, on_main

    options.validate()
    started = time.perf_counter()
    world = current_world()
    device = resolve_device(options.device)
    data = load_data(model, source, embeddings, options)
    if options.batch_size // world.size < 2:
        raise BadInputError(f"--batch-size {options.batch_size} leaves fewer than 2 pairs per rank on {world.size} ranks")
    torch.manual_seed(options.seed)
    target = build_target(model, data, options, device)
    config = run_config(model, embeddings, data, options)
    folder = RunFolder(out)
    saved = on_main(world, lambda: folder.prepare(config, options.resume, options.overwrite))
    if saved is not None and saved.get("finished"):
        return FinetuneResult(out, "already complete", options.steps, options.steps, folder.read_json(EVAL), 0.0, 0.0,
                              device, data.notes + ["nothing to do: the run is complete"])
    try:
        before = _before(folder, target, data, options, world, saved)
        loop = TrainingLoop(folder, target, data, options, world, device)
        if saved is not None:
            start = loop.restore()
        else:  # a first checkpoint, so that there always is a last good one
            start = 0
            on_main(world, lambda: loop.save(0))
        seconds_per_step = loop.run(start, progress or Progress())
        on_main(world, lambda: loop.save(options.steps, promote=True))  # an interrupted final evaluation resumes here
        after = on_main(world, lambda: evaluate(target, data, folder.file("embeddings_after.h5") if options.export_embeddings
                                                else None, "after"))
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted outside a training step; {out} holds the run: run the same command "
                                  "with --resume to continue") from None
    evaluation_result = {"before": before, "after": after}

    def finish() -> None:
        from sdetool.runfolder import save_tensors, write_json

        write_json(folder.file(EVAL), evaluation_result)
        save_tensors(folder.file(WEIGHTS), target.state(), {"config": config["training"]})
        loop.save(options.steps, finished=True, promote=True)

    on_main(world, finish)
    return FinetuneResult(out, "trained", options.steps, start, evaluation_result, time.perf_counter() - started,
                          seconds_per_step, device, data.notes)


def _before(folder: RunFolder, target, data: PairData, options: FinetuneOptions, world, saved) -> dict:
    """The evaluation before training: computed once, kept in the run folder for resumes."""
    from sdetool.distributed import on_main
    from sdetool.runfolder import write_json

    path = folder.file("before.json")
    if saved is not None and os.path.isfile(path):
        return folder.read_json("before.json")

    def run() -> dict:
        result = evaluate(target, data, folder.file("embeddings_before.h5") if options.export_embeddings else None, "before")
        write_json(path, result)
        return result

    return on_main(world, run)


class TrainingLoop:
    """The optimizer, the method's state, checkpoints, and the loop itself."""

    def __init__(self, folder: RunFolder, target, data: PairData, options: FinetuneOptions, world, device: str) -> None:
        import torch

        self.folder, self.target, self.data, self.options, self.world = folder, target, data, options, world
        self.device = device
        self.method = options.method
        self.groups = torch.from_numpy(data.train.groups(options.positives)).to(device)
        self.optimizer = torch.optim.AdamW(target.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
        self.state = SDEState.create(self.method, options.seed)
        self.scaler = torch.amp.GradScaler(enabled=options.precision == "fp16" and device.startswith("cuda"))
        self.last_saved: int | None = None
        self.pending: int | None = None
        self._prefetcher = None
        self._next = None

    # -- checkpoints --

    def save(self, step: int, finished: bool = False, promote: bool = False) -> None:
        """Write the state after ``step`` steps as the pending checkpoint.

        It becomes *the* checkpoint (:meth:`promote`) once the next step's loss has come out finite, so a
        checkpoint is never a state that leads straight to a NaN; ``promote`` does that at once.
        """
        import torch

        from sdetool.runfolder import flatten_optimizer, save_tensors

        tensors, optimizer = flatten_optimizer(self.optimizer)
        tensors.update({f"target.{k}": v for k, v in self.target.state().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        metadata = {"step": step, "finished": finished, "optimizer": optimizer, "method_state": self.state.state(),
                    "scaler": self.scaler.state_dict(), "training": self.options.training_config()}
        save_tensors(self.folder.file(PENDING), tensors, metadata)
        self.pending = step
        if promote:
            self.promote()

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

        from sdetool.runfolder import load_tensors, read_metadata, unflatten_optimizer

        path = self.folder.file(CHECKPOINT)
        metadata, tensors = read_metadata(path), load_tensors(path)
        self.target.load_state({k[len("target."):]: v for k, v in tensors.items() if k.startswith("target.")})
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, metadata["optimizer"]))
        self.state.load(metadata["method_state"])
        if metadata.get("scaler"):
            self.scaler.load_state_dict(metadata["scaler"])
        torch.set_rng_state(tensors["rng.torch"])
        self.last_saved = int(metadata["step"])
        self.folder.truncate_metrics(self.last_saved)
        return self.last_saved

    # -- one step --

    def rows(self, step: int) -> np.ndarray:
        """This rank's share of the global batch of ``step``."""
        rows = batch_rows(step, len(self.data.train), self.options.batch_size, self.options.seed)
        return rows[self.world.rank::self.world.size]

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
            image, text = self.target.features(self.data.train, rows, inputs)
        loss, terms = sde_loss(image, text, self.groups[rows], self.target.logit_scale, step / options.steps,
                               self.method, self.state)
        if not math.isfinite(terms["loss"]) and not self.world.distributed:
            self._fail(step, terms["loss"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if not self._average_gradients():  # a rank's NaN loss reaches every rank through the gradients
            self._fail(step, terms["loss"])
        self.promote()  # the state this step started from gave a finite loss
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

    def _fail(self, step: int, value: float) -> None:
        self._discard_pending()
        where = (f"the last good checkpoint (step {self.last_saved}) is in {self.folder.file(CHECKPOINT)}: add --resume "
                 "with a lower --learning-rate to continue from it" if self.last_saved is not None else
                 "the starting model itself gives it, so there is no good checkpoint")
        raise TrainingError(f"the loss became {value} at step {step} (or, under torchrun, on another rank); "
                            f"training stopped; {where}")

    def _average_gradients(self) -> bool:
        """All-reduce the gradients (mean over ranks); False when they are not finite on some rank."""
        if not self.world.distributed:
            return True
        import torch
        import torch.distributed as dist

        params = [p for p in self.target.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.detach().reshape(-1).float().cpu() for p in params])
        dist.all_reduce(flat)
        if not bool(torch.isfinite(flat).all()):
            return False
        flat /= self.world.size
        offset = 0
        for p in params:
            count = p.grad.numel()
            p.grad.copy_(flat[offset:offset + count].reshape(p.grad.shape).to(p.grad.device, p.grad.dtype))
            offset += count
        return True

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

    def run(self, start: int, progress: Progress) -> float:
        """Train from step ``start`` to the end; returns the mean seconds per step.

        Ctrl-C is deferred to the end of the current step (a second one stops at once), so the
        checkpoint it saves is the exact state after a whole number of steps.
        """
        import signal
        import threading

        from sdetool.distributed import on_main

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
        progress.start(f"{options.loss} fine-tuning", options.steps - start)
        began = time.perf_counter()
        try:
            for step in range(start, options.steps):
                terms = self.step(step)
                if step % options.log_every == 0 or step == options.steps - 1:
                    pending.append({"step": step, "seconds": round(time.perf_counter() - began, 3), **terms})
                stopping = self._stop_requested(stop) and step + 1 < options.steps
                if stopping or ((step + 1) % options.checkpoint_every == 0 and step + 1 < options.steps):
                    on_main(self.world, lambda: (self.folder.append_metrics(pending), self.save(step + 1, promote=stopping)))
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
