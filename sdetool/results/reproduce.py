"""``sdetool reproduce``: the SDE experiment end to end, offline, into one results folder.

Two experiments, each a chain of the commands a user would run:

1. **The built-in model** (``builtin:lit-fmnist``): extract the held-out Fashion-MNIST pairs ->
   analyze -> fine-tune with SDE and with InfoNCE (same data order, seed and steps) -> extract with
   each fine-tuned model (``run:FOLDER``) -> analyze -> compare -> plot.
2. **A model with a noise band**: the same "before" embeddings with isotropic Gaussian noise carrying
   ``noise_share`` of the image energy (a degraded image encoder), and a linear head per modality
   trained on them with SDE and with InfoNCE (``finetune --target head``) -> compare -> plot.

Everything lands in ``out`` (see :data:`LAYOUT`), with ``README.md`` (tables and the figures beside
it) and ``summary.json`` (schema ``sdetool.reproduce/1``). :mod:`sdetool.results.reproduce_report` writes
the README from the numbers; nothing in it is typed by hand.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from sdetool.errors import BadInputError
from sdetool.finetune.runfolder import exported_store
from sdetool.io import versions
from sdetool.io.atomic import atomic_path
from sdetool.io.locks import writing
from sdetool.results.redistribution import redistribution

MODEL = "builtin:lit-fmnist"
LOSSES = ("sde", "infonce")
BATCH_ROWS, BATCH_REPEATS = 256, 10  # the shares of training-batch-sized subsets, beside the held-out ones
LAYOUT = {
    "embeddings": "stores written by extract (before, and after each fine-tuning)",
    "analysis": "analyze --json reports of those stores",
    "runs": "fine-tuning run folders (config, checkpoints, metrics.jsonl, eval.json)",
    "compare": "compare --json results",
}
FIGURES = ("bands.png", "spectrum.png", "energy.png", "training.png", "noisy_bands.png", "noisy_spectrum.png")
SCHEMA = versions.schema("reproduce")


@dataclass(frozen=True)
class ReproduceOptions:
    """Settings of the reproduction; ``quick`` changes only the defaults of the step counts.

    ``steps`` / ``head_steps``: optimizer steps of the built-in model's and the heads' runs (default
    500 / 500, quick 100 / 200). ``noise_share``: share of the image energy the added noise carries
    in experiment 2 (0 leaves it out). ``seeds``: fine-tuning runs per loss, seeds ``seed``,
    ``seed + 1``, ... (the first through ``extract --model run:``, the others through their exported
    embeddings). ``null``: the noise null of every analysis, each also analysed under ``mp`` (the
    paper's reading); ``bootstrap``: jackknife blocks of their intervals.
    """

    quick: bool = False
    steps: int | None = None
    head_steps: int | None = None
    seed: int = 0
    noise_share: float = 0.5
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    seeds: int = 1
    null: str = "ddpa"
    bootstrap: int = 20

    @property
    def model_steps(self) -> int:
        return self.steps or (100 if self.quick else 500)

    @property
    def noisy_steps(self) -> int:
        return self.head_steps or (200 if self.quick else 500)

    def validate(self) -> None:
        for name, value in (("--steps", self.steps), ("--head-steps", self.head_steps)):
            if value is not None and value < 1:
                raise BadInputError(f"{name} must be at least 1, got {value}")
        if not 0.0 <= self.noise_share < 1.0:
            raise BadInputError(f"--noise-share must be in [0, 1), got {self.noise_share}")
        if self.seeds < 1:
            raise BadInputError(f"--seeds must be at least 1, got {self.seeds}")
        if self.bootstrap < 2:
            raise BadInputError(f"--bootstrap must be at least 2 (jackknife blocks), got {self.bootstrap}")
        from sdetool.spectral.nulls import NULLS

        if self.null not in NULLS:
            raise BadInputError(f"--null must be one of {', '.join(NULLS)}, got {self.null!r}")
        if self.resume and self.overwrite:
            raise BadInputError("--resume and --overwrite: choose one")
        from sdetool.extract.extraction import resolve_torch_device

        resolve_torch_device(self.device)  # an unusable --device is refused before anything is deleted


class Reporter:
    """Receives the pipeline's stages and makes progress objects for long steps; the default is silent."""

    def stage(self, number: int, total: int, text: str) -> None: ...

    def progress(self, unit: str):
        return None


# --- the folder ----------------------------------------------------------------------------------


MARKER = ".sdetool-reproduce"  # written first: only a folder holding it may be resumed or overwritten
OURS = set(LAYOUT) | set(FIGURES) | {"README.md", "summary.json", MARKER}


def prepare_folder(out: str, options: ReproduceOptions) -> None:
    """Create ``out`` (or take up a reproduction in it); refuse anything else before touching a file.

    A folder may be continued (``resume``) or replaced (``overwrite``) only when it holds the marker
    file this function writes, and nothing sdetool did not write there; ``overwrite`` deletes only
    the names of :data:`OURS`.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise BadInputError(f"--out {out}: is a file, expected a folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise BadInputError(f"--out {out}: folder {parent} does not exist")
    entries = set(os.listdir(out)) if os.path.isdir(out) else set()
    if entries and MARKER not in entries:
        raise BadInputError(f"--out {out}: is not empty and holds no reproduction ({sorted(entries)[0]}...); choose an "
                            f"empty or new folder")
    foreign = sorted(entries - OURS)
    if foreign:
        raise BadInputError(f"--out {out}: holds files sdetool reproduce did not write ({', '.join(foreign[:3])}); "
                            f"move them away first")
    if entries and not (options.resume or options.overwrite):
        raise BadInputError(f"--out {out}: holds a reproduction already; --resume continues it, --overwrite "
                            f"starts again")
    if options.overwrite:
        for name in sorted(entries - {MARKER}):
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    os.makedirs(out, exist_ok=True)
    if MARKER not in entries:
        from sdetool.results.tables import write_json

        write_json({"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, os.path.join(out, MARKER))
    for name in LAYOUT:
        os.makedirs(os.path.join(out, name), exist_ok=True)


# --- data ----------------------------------------------------------------------------------------


def held_out_source():
    """The pairs every evaluation uses: Fashion-MNIST's test split (``finetune`` trains on the train split)."""
    from sdetool.extract.data.items import builtin_data

    return builtin_data("fashion-mnist:test")


def add_isotropic_noise(matrix: np.ndarray, noise_share: float, seed: int) -> tuple[np.ndarray, float]:
    """``matrix`` plus Gaussian noise that carries ``noise_share`` of the centred energy of the sum (pure).

    Returns the noisy matrix (float64) and the noise standard deviation per entry.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    centred_energy = float(((matrix - matrix.mean(axis=0)) ** 2).sum())
    # noise / (signal + noise) = noise_share, the noise spread evenly over all entries
    sigma = float(np.sqrt(noise_share / (1.0 - noise_share) * centred_energy / matrix.size))
    return matrix + np.random.default_rng(seed).normal(0.0, sigma, matrix.shape), sigma


def noisy_store(clean: str, path: str, noise_share: float, seed: int = 1234) -> float:
    """Write ``clean``'s image set plus noise and its text set unchanged to ``path``; returns sigma."""
    from sdetool.io import store

    matrices = store.open_matrices(clean)
    arrays = {}
    for key in ("image", "text"):
        with matrices[key].reader() as read:
            arrays[key] = read(0, matrices[key].shape[0])
    noisy, sigma = add_isotropic_noise(arrays["image"], noise_share, seed)
    ids = store.read_ids(clean, "image")
    with atomic_path(path) as temporary:
        store.write_set(temporary, "image", noisy.astype(np.float32), ids=ids, mode="w",
                        attrs={"modality": "image", "noise_sigma": sigma, "noise_share": noise_share, "source": clean})
        store.write_set(temporary, "text", np.asarray(arrays["text"], dtype=np.float32), ids=ids,
                        attrs={"modality": "text", "source": clean})
    return sigma


# --- the pipeline --------------------------------------------------------------------------------


class Pipeline:
    """The reproduction's steps in order; each is skipped under --resume when its output is there."""

    def __init__(self, out: str, options: ReproduceOptions, reporter: Reporter) -> None:
        self.out, self.options, self.reporter = out, options, reporter
        self.seconds: dict[str, float] = {}
        self.notes: list[str] = []
        self.analyses: dict[str, object] = {}  # name -> AnalysisReport
        self.evaluations: dict[str, dict] = {}  # run -> eval.json
        self.comparisons: dict[str, dict] = {}
        self._step = 0
        extra = 4 * (options.seeds - 1)  # per extra seed: two fine-tuning runs and their two analyses
        self.total = 12 + extra + (8 + extra if options.noise_share > 0 else 0)

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def timed(self, name: str, text: str, work):
        self._step += 1
        self.reporter.stage(self._step, self.total, text)
        started = time.perf_counter()
        result = work()
        self.seconds[name] = round(time.perf_counter() - started, 2)
        return result

    def extract(self, name: str, model: str) -> None:
        from sdetool.extract.extraction import ExtractOptions, extract

        store = self.path("embeddings", f"{name}.h5")

        def work():
            source = held_out_source()
            self.notes.extend(source.notes)
            current = _current(store, model)
            if self.options.resume and current:
                return  # extract renames a store into place only once it is complete
            extract(model, source, store, ExtractOptions(device=self.options.device, overwrite=current is False),
                    progress=self.reporter.progress("items"))

        self.timed(f"extract {name}", f"extract {model} -> embeddings/{name}.h5", work)

    def analyze(self, name: str, store: str) -> None:
        """Analyze a store under the null of the options (``analysis/<name>.json``) and under ``mp``
        (``analysis/<name>-mp.json``), each with jackknife intervals and the band shares of 256-row subsets."""
        from sdetool.analysis.analyze import AnalysisOptions, analyze
        from sdetool.results.tables import write_json

        def work():
            for suffix, null in (("", self.options.null), ("-mp", "mp")):
                options = AnalysisOptions(null=null, bootstrap=self.options.bootstrap, scale=(BATCH_ROWS,),
                                          repeats=BATCH_REPEATS)
                report = analyze(store, options=options, local=True, vectors=1 << 30,
                                 progress=self.reporter.progress("rows"))
                write_json(report.to_dict(), self.path("analysis", f"{name}{suffix}.json"))
                self.analyses[name + suffix] = report

        self.timed(f"analyze {name}", f"analyze {os.path.relpath(store, self.out)} -> analysis/{name}.json "
                                      f"(--null {self.options.null}, and mp)", work)

    def finetune(self, run: str, options, embeddings: str | None = None) -> None:
        from sdetool.finetune.run import finetune

        folder = self.path("runs", run)

        def work():
            resume = os.path.isfile(os.path.join(folder, "config.json"))
            result = finetune(folder, replace(options, resume=resume), model=None if embeddings else MODEL,
                              embeddings=embeddings, progress=self.reporter.progress("steps"))
            self.evaluations[run] = result.evaluation
            self.notes.extend(result.notes)

        self.timed(f"finetune {run}", f"finetune --loss {options.loss} ({options.steps} steps) -> runs/{run}", work)

    def compare(self, name: str, before, after) -> None:
        from sdetool.results.compare import compare_states
        from sdetool.results.tables import write_json

        def work():
            document = compare_states(before, after).to_dict()
            write_json(document, self.path("compare", f"{name}.json"))
            self.comparisons[name] = document

        self.timed(f"compare {name}", f"compare {before.label} -> {after.label}: compare/{name}.json", work)

    def state(self, name: str, label: str, evaluation: dict | None):
        from sdetool.results.compare import state_from_report

        return replace(state_from_report(self.analyses[name], label, self.path("analysis", f"{name}.json")),
                       evaluation=evaluation)


def _current(store: str, model: str) -> bool | None:
    """Whether a finished store holds ``model``'s embeddings: None when there is none, False when a
    ``run:`` model's weights changed since it was written (the run was trained again)."""
    if not os.path.isfile(store):
        return None
    if not model.startswith("run:"):
        return True
    from sdetool.extract.models.base import file_fingerprint
    from sdetool.io import store as stores

    weights = os.path.join(model[len("run:"):], "model.safetensors")
    recorded = stores.open_matrices(store)["image"].attrs.get("finetune_weights")
    return os.path.isfile(weights) and recorded == file_fingerprint(weights)


def _finetune_options(options: ReproduceOptions, loss: str, target: str, offset: int = 0):
    """The options of a run: seed ``options.seed + offset``; runs after the first seed export their embeddings."""
    from sdetool.finetune.run import FinetuneOptions
    from sdetool.finetune.sde import SDEConfig
    from sdetool.spectral.spectrum import PartitionOptions

    method = SDEConfig(partition=PartitionOptions(null=options.null))
    common = {"loss": loss, "seed": options.seed + offset, "device": options.device, "sde": method}
    if target == "model":
        return FinetuneOptions(steps=options.model_steps, export_embeddings=offset > 0, **common)
    return FinetuneOptions(target="head", steps=options.noisy_steps, learning_rate=1e-3, export_embeddings=True,
                           **common)


def seed_runs(pipeline: "Pipeline", prefix: str, target: str, embeddings: str | None = None) -> None:
    """The runs of the seeds after the first, and their held-out embeddings' analyses (``<prefix><loss>-seed<k>``)."""
    for offset in range(1, pipeline.options.seeds):
        for loss in LOSSES:
            run = f"{prefix}{loss}-seed{pipeline.options.seed + offset}"
            pipeline.finetune(run, _finetune_options(pipeline.options, loss, target, offset), embeddings=embeddings)
            pipeline.analyze(run, pipeline.path("runs", run, exported_store("after")))


def run_model_experiment(pipeline: Pipeline) -> None:
    """Experiment 1: the built-in model before and after SDE and InfoNCE fine-tuning."""
    from sdetool.results.compare import evaluation_summary

    pipeline.extract("before", MODEL)
    pipeline.analyze("before", pipeline.path("embeddings", "before.h5"))
    for loss in LOSSES:
        pipeline.finetune(loss, _finetune_options(pipeline.options, loss, "model"))
    for loss in LOSSES:
        pipeline.extract(loss, f"run:{pipeline.path('runs', loss)}")
        pipeline.analyze(loss, pipeline.path("embeddings", f"{loss}.h5"))
    before = pipeline.state("before", "before", evaluation_summary(pipeline.evaluations["sde"]["before"]))
    after = {loss: pipeline.state(loss, {"sde": "SDE", "infonce": "InfoNCE"}[loss],
                                  evaluation_summary(pipeline.evaluations[loss]["after"])) for loss in LOSSES}
    pipeline.compare("sde", before, after["sde"])
    pipeline.compare("infonce", before, after["infonce"])
    pipeline.compare("sde-vs-infonce", after["infonce"], after["sde"])
    seed_runs(pipeline, "", "model")


def run_noisy_experiment(pipeline: Pipeline) -> None:
    """Experiment 2: linear heads on the "before" embeddings plus noise, SDE against InfoNCE."""
    from sdetool.results.compare import evaluation_summary

    store = pipeline.path("embeddings", "noisy.h5")
    share = pipeline.options.noise_share

    def work():
        sigma = noisy_store(pipeline.path("embeddings", "before.h5"), store, share)
        pipeline.notes.append(f"noisy embeddings: Gaussian noise of sigma {sigma:.4g} per entry, {100 * share:g}% of "
                              f"the image energy")

    pipeline.timed("noise", f"add noise ({100 * share:g}% of the image energy) -> embeddings/noisy.h5", work)
    for loss in LOSSES:
        pipeline.finetune(f"noisy-{loss}", _finetune_options(pipeline.options, loss, "head"), embeddings=store)
    # the heads start as the identity: both runs' "before" embeddings are the same held-out rows
    pipeline.analyze("noisy-before", pipeline.path("runs", "noisy-sde", exported_store("before")))
    for loss in LOSSES:
        pipeline.analyze(f"noisy-{loss}", pipeline.path("runs", f"noisy-{loss}", exported_store("after")))
    evaluations = pipeline.evaluations
    before = pipeline.state("noisy-before", "noisy before", evaluation_summary(evaluations["noisy-sde"]["before"]))
    for loss, label in (("sde", "SDE head"), ("infonce", "InfoNCE head")):
        after = pipeline.state(f"noisy-{loss}", label, evaluation_summary(evaluations[f"noisy-{loss}"]["after"]))
        pipeline.compare(f"noisy-{loss}", before, after)
    seed_runs(pipeline, "noisy-", "head", embeddings=store)


@dataclass(frozen=True)
class ReproduceResult:
    """Where the reproduction is, what it found (the comparisons) and how long each step took."""

    out: str
    options: dict
    seconds: dict
    comparisons: dict
    notes: list
    redistribution: dict

    def to_dict(self) -> dict:
        from sdetool import __version__

        total = round(sum(self.seconds.values()), 1)
        return {"schema": SCHEMA, **asdict(self), "total_seconds": total, "sdetool_version": __version__}


def reproduce(out: str, options: ReproduceOptions = ReproduceOptions(), reporter: Reporter | None = None) -> ReproduceResult:
    """Run the reproduction into ``out`` and write its README, figures and summary.

    Raises
    ------
    BadInputError
        Bad options, or an ``out`` that holds other files or a reproduction (without resume/overwrite).
    TrainingError
        A fine-tuning run's loss became NaN or infinite.
    """
    options.validate()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise BadInputError("reproduce runs as one process: start it without torchrun (its steps use the machine's "
                            "devices themselves)")
    with writing(out):  # one reproduction writes out at a time (a missing parent folder: prepare_folder refuses)
        return _reproduce_locked(out, options, reporter)


def _reproduce_locked(out: str, options: ReproduceOptions, reporter: Reporter | None) -> ReproduceResult:
    from sdetool.results import reproduce_report
    from sdetool.results.tables import write_json

    prepare_folder(out, options)
    pipeline = Pipeline(out, options, reporter or Reporter())
    run_model_experiment(pipeline)
    if options.noise_share > 0:
        run_noisy_experiment(pipeline)
    pipeline.timed("figures", "plot the figures", lambda: reproduce_report.draw_figures(pipeline))
    documents = {name: report.to_dict() for name, report in pipeline.analyses.items()}
    seeds = [options.seed + offset for offset in range(options.seeds)]
    result = ReproduceResult(out, {**asdict(options), "model_steps": options.model_steps,
                                   "noisy_steps": options.noisy_steps}, dict(pipeline.seconds), pipeline.comparisons,
                             list(dict.fromkeys(pipeline.notes)), redistribution(documents, options.null, seeds))
    reproduce_report.write_readme(pipeline, result)
    write_json(result.to_dict(), os.path.join(out, "summary.json"))
    return result
