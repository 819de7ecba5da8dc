"""``sdetool finetune``: SDE fine-tuning (or the plain InfoNCE baseline), evaluated before and after.

:func:`finetune` loads the data and the target (:mod:`sdetool.finetune.pairs`,
:mod:`sdetool.finetune.targets`), prepares the run folder (:mod:`sdetool.finetune.runfolder`), evaluates the
held-out pairs, trains (:mod:`sdetool.finetune.trainloop`) and evaluates again. ``--loss infonce`` changes
only the loss: same data order, seed and steps. Under ``torchrun`` rank 0 evaluates and writes the
run folder.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from sdetool import __version__
from sdetool.errors import BadInputError, TrainingInterrupted
from sdetool.finetune.pairs import POSITIVES, PairData
from sdetool.finetune.reporting import REPORT_TO, check_tensorboard, tensorboard_report
from sdetool.finetune.runfolder import EVAL, SCHEMA, WEIGHTS, RunFolder, exported_store
from sdetool.finetune.sde import SDEConfig
from sdetool.finetune.trainloop import PRECISIONS, TrainingLoop, batch_rows, learning_rate_factor
from sdetool.io.locks import writing

LOSSES = ("sde", "infonce")
__all__ = ["FinetuneOptions", "FinetuneResult", "Progress", "TrainingLoop", "finetune", "evaluate", "batch_rows",
           "learning_rate_factor", "PRECISIONS", "LOSSES"]


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
    report_to: str = "none"  # "tensorboard": the metrics.jsonl numbers also as TensorBoard scalars (OUT/tensorboard/)
    gather_features: bool = True  # under torchrun: the loss and batch spectrum see the whole global batch

    def validate(self) -> None:
        from sdetool.finetune.targets import TARGETS

        checks = [(self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
                  (self.target in TARGETS, f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}"),
                  (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
                  (self.positives in POSITIVES, f"--positives must be one of {', '.join(POSITIVES)}"),
                  (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
                  (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
                  (self.learning_rate > 0 and math.isfinite(self.learning_rate), "--learning-rate must be > 0"),
                  (0 <= self.lr_warmup < 1, "--lr-warmup must be in [0, 1)"),
                  (self.temperature > 0, "--temperature must be > 0"),
                  (self.weight_decay >= 0 and math.isfinite(self.weight_decay), "--weight-decay must be >= 0"),
                  (self.clip_grad >= 0, "--clip-grad must be >= 0 (0: no clipping)"),
                  (self.head_dim is None or self.head_dim >= 1, f"--head-dim must be >= 1, got {self.head_dim}"),
                  (self.train_blocks >= 0, "--train-blocks must be >= 0"),
                  (self.eval_limit is None or self.eval_limit >= 2, "--eval-limit must be >= 2"),
                  (self.log_every >= 1 and self.checkpoint_every >= 1, "--log-every and --checkpoint-every must be >= 1"),
                  (self.report_to in REPORT_TO, f"--report-to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")]
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
    """Receives the progress of a run, task by task; the default does nothing.

    The tasks are the evaluation before training (counted in held-out pairs: ``unit="pairs"``), the
    training (in steps, the display's own unit: ``unit`` None; ``status`` gives the loss) and the
    evaluation after it.
    """

    def start(self, label: str, total: int, unit: str | None = None) -> None: ...
    def advance(self, count: int, status: str = "") -> None: ...
    def finish(self) -> None: ...


# --- setup ---------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    from sdetool.extract.extraction import resolve_torch_device

    return resolve_torch_device(device, int(os.environ.get("LOCAL_RANK", "0") or 0))


def load_data(model: str | None, source, embeddings: str | None, options: FinetuneOptions) -> PairData:
    from sdetool.finetune import pairs as finetune_data

    if options.target == "head":
        if not embeddings:
            raise BadInputError("--target head trains on cached pairs: give --embeddings STORE.h5 (from sdetool extract)")
        data = finetune_data.from_store(embeddings, options.eval_fraction)
    else:
        if embeddings:
            raise BadInputError("--embeddings holds cached pairs for --target head; --target model needs images and texts")
        if source is None:  # the built-in data: its train split for training, the test split held out
            data = finetune_data.builtin_pairs("fashion-mnist", options.eval_fraction)
        else:
            data = finetune_data.from_source(source, options.eval_fraction)
    if options.eval_limit and len(data.held_out) > options.eval_limit:
        data.held_out = data.held_out.take(np.arange(options.eval_limit))
    return data


def build_target(model: str | None, data: PairData, options: FinetuneOptions, device: str):
    from sdetool.finetune.targets import EncoderTarget, HeadTarget

    if options.target == "head":
        return HeadTarget(data, options.head, options.head_dim, options.temperature, options.seed, device)
    from sdetool.extract.models import DEFAULT_MODEL, load_model

    return EncoderTarget(load_model(model or DEFAULT_MODEL), data, options.train_blocks, options.freeze_text, device)


def run_config(model: str | None, embeddings: str | None, data: PairData, options: FinetuneOptions, ranks: int = 1) -> dict:
    return {"schema": SCHEMA, "sdetool_version": __version__,
            "training": {**options.training_config(), "ranks": ranks,
                         "model": None if options.target == "head" else (model or _default_model()),
                         "embeddings": os.path.abspath(embeddings) if embeddings else None,
                         "data": data.description, "data_fingerprint": data.fingerprint},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _default_model() -> str:
    from sdetool.extract.models import DEFAULT_MODEL

    return DEFAULT_MODEL


# --- evaluation ----------------------------------------------------------------------------------


def evaluate(target, data: PairData, export: str | None, label: str, on_batch=None) -> dict:
    """Recalls, zero-shot accuracy and the band shares ``analyze`` reports for the held-out embeddings.

    The embeddings are written to an HDF5 store (``export``, or a temporary file) and analysed from
    there, so the numbers are exactly those of ``sdetool analyze`` on that store.
    """
    from sdetool.finetune import evaluation

    image, text = target.embed(data.held_out, on_batch=on_batch)
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


def _evaluation(progress: Progress, label: str, pairs: int, work) -> dict:
    """``work(advance)``, the evaluation ``label`` (before or after) of ``pairs`` held-out pairs, as one task of
    ``progress``; ``advance(count)`` is called as batches of pairs are embedded."""
    progress.start(f"evaluation {label} training", pairs, unit="pairs")
    try:
        return work(progress.advance)
    finally:
        progress.finish()


def write_embeddings(path: str, image: np.ndarray, text: np.ndarray, ids: list[str], attrs: dict) -> None:
    from sdetool.io import store

    with store.StoreWriter(path, mode="w") as writer:
        for key, values in (("image", image), ("text", text)):
            target = writer.create_set(key, values.shape[1], dtype="float32", with_ids=True,
                                       attrs=dict(attrs, modality=key, normalized=False), expected_rows=len(values))
            target.append(values.astype(np.float32, copy=False), ids)


def _bands(path: str) -> dict:
    from sdetool.analysis.analyze import analyze

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
        The run folder (see :mod:`sdetool.finetune.runfolder`).
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
    from sdetool.runtime.distributed import current_world, on_main

    options.validate()
    started = time.perf_counter()
    world = current_world()
    with writing(out, create_folder=True, through=lambda work: on_main(world, work)):  # one writer of the run folder
        return _finetune_locked(out, options, model, source, embeddings, progress, world, started)


def _finetune_locked(out: str, options: FinetuneOptions, model, source, embeddings, progress, world,
                     started: float) -> FinetuneResult:
    import torch

    from sdetool.runtime.distributed import on_main

    device = resolve_device(options.device)
    data = load_data(model, source, embeddings, options)
    if min(options.batch_size, len(data.train)) // world.size < (1 if options.gather_features else 2):
        raise BadInputError(f"--batch-size {options.batch_size} leaves too few pairs per rank on {world.size} ranks "
                            f"(at least {1 if options.gather_features else 2} each)")
    torch.manual_seed(options.seed)
    target = build_target(model, data, options, device)
    data.train.groups(options.positives)  # refuse an impossible --positives before anything is written
    config = run_config(model, embeddings, data, options, world.size)
    folder = RunFolder(out)
    if options.report_to == "tensorboard":
        check_tensorboard()  # before anything is written
    saved = on_main(world, lambda: folder.prepare(config, options.resume, options.overwrite))
    if options.report_to == "tensorboard" and world.is_main:
        folder.reporters.append(tensorboard_report(folder.path))
    if saved is not None and saved.get("finished"):
        return FinetuneResult(out, "already complete", options.steps, options.steps, folder.read_json(EVAL), 0.0, 0.0,
                              device, data.notes + ["nothing to do: the run is complete"])
    try:
        progress = progress or Progress()
        before = _before(folder, target, data, options, world, saved, progress)
        loop = TrainingLoop(folder, target, data, options, world, device)
        if saved is not None:
            start = loop.restore()
        else:  # a first checkpoint, so that there always is a last good one
            start = 0
            loop.save(0)
        seconds_per_step = loop.run(start, progress)
        loop.save(options.steps, promote=True)  # an interrupted final evaluation resumes from here
        export = folder.file(exported_store("after")) if options.export_embeddings else None
        after = on_main(world, lambda: _evaluation(progress, "after", len(data.held_out),
                                                   lambda advance: evaluate(target, data, export, "after", advance)))
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted; {out} holds the run: run the same command with --resume to "
                                  "continue") from None
    evaluation_result = {"before": before, "after": after}

    def finish() -> None:
        from sdetool.finetune.runfolder import save_tensors, write_json

        write_json(folder.file(EVAL), evaluation_result)
        save_tensors(folder.file(WEIGHTS), target.state(), {"config": config["training"]})

    on_main(world, finish)
    loop.save(options.steps, finished=True, promote=True)
    return FinetuneResult(out, "trained", options.steps, start, evaluation_result, time.perf_counter() - started,
                          seconds_per_step, device, data.notes)


def _before(folder: RunFolder, target, data: PairData, options: FinetuneOptions, world, saved, progress: Progress) -> dict:
    """The evaluation before training: computed once, kept in the run folder for resumes."""
    from sdetool.finetune.runfolder import write_json
    from sdetool.runtime.distributed import on_main

    path = folder.file("before.json")
    export = folder.file(exported_store("before")) if options.export_embeddings else None
    if saved is not None and os.path.isfile(path) and (export is None or os.path.isfile(export)):
        return folder.read_json("before.json")

    def run() -> dict:
        result = _evaluation(progress, "before", len(data.held_out),
                             lambda advance: evaluate(target, data, export, "before", advance))
        write_json(path, result)
        return result

    return on_main(world, run)
