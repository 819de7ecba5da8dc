"""The run folder of ``finetune``: its config, checkpoint, metrics log and evaluation, written safely.

    OUT/config.json              everything needed to re-run (and what a resume must match)
    OUT/checkpoint.safetensors   the latest good training state (model part, optimizer, RNG, step)
    OUT/model.safetensors        the trained weights at the end (trainable part only)
    OUT/metrics.jsonl            one JSON object per logging step
    OUT/bands.jsonl              the batch bands of each logging step, in sdetool.monitor.BandMonitor's format
    OUT/eval.json                {"before": {...}, "after": {...}}
    OUT/embeddings_before.h5, OUT/embeddings_after.h5   with --export-embeddings

Every file is written to a temporary name and renamed: a process killed at any instant leaves the
previous checkpoint whole. Tensors go to safetensors; everything else to its JSON metadata.
"""

from __future__ import annotations

import json
import os
import shutil

from sdetool.errors import BadInputError
from sdetool.io import versions
from sdetool.io.atomic import atomic_path, write_text

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
PENDING = "checkpoint.next.safetensors"  # written, not yet proven good (see TrainingLoop.save)
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
BANDS_LOG = "bands.jsonl"
EVAL = "eval.json"
STAGES = ("before", "after")


def exported_store(stage: str) -> str:
    """The file name of a stage's held-out embeddings written with ``--export-embeddings``."""
    return f"embeddings_{stage}.h5"


SCHEMA = versions.schema("finetune")
# Options a resume may change (after a NaN, say); config.json records each change and its step.
# What a resume may change: the learning rate, and where the cached pairs are (a store moved with its
# run folder: its path and the description naming it); the pairs themselves are pinned by
# data_fingerprint, which must not change.
RESUME_MAY_CHANGE = ("learning_rate", "embeddings", "data")
# Options added after runs were made, with the value those runs had: an older run's config lacks them.
ADDED_OPTIONS = {"gather_features": True}


def with_added_options(training: dict) -> dict:
    """A saved training configuration with the options it predates, at the values it ran with."""
    return {**ADDED_OPTIONS, **training}


def write_json(path: str, value) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def config_difference(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``name: saved -> wanted`` for every leaf that differs (pure)."""
    lines = []
    for name in sorted(set(saved) | set(wanted)):
        old, new = saved.get(name, "<absent>"), wanted.get(name, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            lines += config_difference(old, new, f"{prefix}{name}.")
        elif old != new:
            lines.append(f"{prefix}{name}: {old!r} -> {new!r}")
    return lines


class RunFolder:
    """Paths and safe writes of one run."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reporters: list = []  # callables taking the records: where the metrics go besides metrics.jsonl

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def prepare(self, config: dict, resume: bool, overwrite: bool) -> dict | None:
        """Create the folder, or check it for a resume; returns the saved checkpoint's metadata or None.

        Raises
        ------
        BadInputError
            An existing run without ``--resume``/``--overwrite``, a resume of another configuration
            (the message lists the differences), or a resume with nothing to resume.
        """
        exists = os.path.isfile(self.file(CONFIG))
        if exists and overwrite and not resume:
            shutil.rmtree(self.path)
            exists = False
        if exists and not resume:
            raise BadInputError(f"--out {self.path}: holds a run already; pass --resume to continue it or "
                                "--overwrite to start again")
        if not exists and resume:
            raise BadInputError(f"--resume: {self.path} holds no run to resume (no {CONFIG})")
        if not exists:
            if os.path.exists(self.path) and (not os.path.isdir(self.path) or os.listdir(self.path)):
                raise BadInputError(f"--out {self.path}: exists and is not an empty folder or a run folder")
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as error:
                raise BadInputError(f"--out {self.path}: cannot create the run folder ({error.strerror})") from None
            write_json(self.file(CONFIG), config)
            return None
        saved = self.read_json(CONFIG)
        training = with_added_options(dict(saved.get("training", {})))
        changed = {name: (training.get(name), config["training"][name]) for name in RESUME_MAY_CHANGE
                   if training.get(name) != config["training"][name]}
        training.update({name: new for name, (_, new) in changed.items()})
        difference = config_difference(training, config["training"])
        if difference:
            raise BadInputError(f"--resume: {self.path} was made with another configuration: " + "; ".join(difference[:6])
                                + (f" (and {len(difference) - 6} more)" if len(difference) > 6 else ""))
        metadata = read_metadata(self.file(CHECKPOINT)) if os.path.isfile(self.file(CHECKPOINT)) else None
        if changed and not (metadata or {}).get("finished"):
            step = metadata["step"] if metadata else 0
            saved["training"] = training
            saved.setdefault("changes", []).append({"from_step": step, **{k: list(v) for k, v in changed.items()}})
            write_json(self.file(CONFIG), saved)
        return metadata

    def read_json(self, name: str) -> dict:
        """A JSON file of the run (a newer sdetool's schema refused)."""
        document = self._read_json(name)
        if isinstance(document, dict):
            versions.check_schema(document, self.file(name))
        return document

    def _read_json(self, name: str) -> dict:
        try:
            with open(self.file(name)) as handle:
                return json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise BadInputError(f"{self.file(name)}: unreadable ({error})") from None

    def append_metrics(self, records: list[dict]) -> None:
        """Append logged records: the batch bands (``bands``) to bands.jsonl through the band monitor, the rest to
        metrics.jsonl and the reporters."""
        from sdetool.monitor import BandMonitor

        bands = [{"step": record["step"], **record.pop("bands")} for record in records if record.get("bands")]
        with open(self.file(METRICS), "a") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
        BandMonitor(self.file(BANDS_LOG)).write(bands)
        for report in self.reporters:  # --report-to: the same records elsewhere (TensorBoard)
            report(records)

    def truncate_metrics(self, last_step: int) -> None:
        """Drop logged records of steps ``last_step`` and later (a resume from checkpoint ``last_step`` replays them)."""
        for name in (METRICS, BANDS_LOG):
            path = self.file(name)
            if not os.path.isfile(path):
                continue
            kept = []
            with open(path) as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a kill: the step is replayed anyway
                        continue
                    if record.get("step", 0) < last_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
            write_text(path, "".join(kept))


def save_tensors(path: str, tensors: dict, metadata: dict) -> None:
    """safetensors with JSON metadata, atomically."""
    from safetensors.torch import save_file

    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(contiguous, temporary, metadata={k: json.dumps(v) for k, v in metadata.items()})


def read_metadata(path: str) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path}: unreadable checkpoint ({str(error).splitlines()[0]}); remove it or use --overwrite") from None


def load_tensors(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def flatten_optimizer(optimizer) -> tuple[dict, dict]:
    """An optimizer's state as ``{"optim.<param>.<name>": tensor}`` plus JSON-able scalars and groups."""
    import torch

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict, saved: dict) -> dict:
    """The inverse of :func:`flatten_optimizer`: an optimizer ``state_dict``."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in saved["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": saved["param_groups"]}
