"""A band monitor for any training loop: ``monitor.update(step, image=..., text=...)``.

Every ``every`` steps it partitions each batch's embeddings with the same code as ``sdetool finetune``'s
batch spectrum (:func:`sdetool.spectral.batchspectrum.label_batch`: the same null, the same EMA-smoothed
edge and threshold across steps) and appends one JSON line to ``path``::

    {"step": 120, "image": {"strong": {"count": 9, "energy_share": 0.93}, "weak": {...}, "noise": {...},
                            "effective_rank": 31.2}, "text": {...}}

Adapters, each importable only where its framework is installed (attributes of this module, resolved on first
use): :class:`HFCallback` (a ``transformers.TrainerCallback``), :class:`LightningCallback` (a PyTorch Lightning
``Callback``) and :class:`TensorBoardWriter` (the same numbers as TensorBoard scalars)::

    from sdetool.monitor import BandMonitor
    monitor = BandMonitor("run/bands.jsonl", every=10)
    for step, batch in enumerate(loader):
        image, text = model(batch)
        monitor.update(step, image=image, text=text)     # no gradient kept
"""

from __future__ import annotations

import json
import os

import numpy as np

from sdetool.errors import BadInputError
from sdetool.spectral import nulls, spectrum
from sdetool.spectral.batchspectrum import BandTracker, SpectrumError, band_entry, batch_spectrum, label_batch

BANDS = spectrum.BANDS


def _features(batch, name: str):
    """A batch as a detached float32 torch tensor (n, d); one sentence naming the argument otherwise."""
    import torch

    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
    elif not isinstance(batch, torch.Tensor):
        raise BadInputError(f"{name}: expected a tensor or array of batch embeddings, got {type(batch).__name__}")
    features = batch.detach().float()
    if features.ndim != 2:
        raise BadInputError(f"{name}: is {features.ndim}-D with shape {tuple(features.shape)}; expected (batch, d)")
    if not bool(torch.isfinite(features).all()):
        raise BadInputError(f"{name}: holds non-finite values (NaN or Inf)")
    return features


def batch_bands(features, tracker: BandTracker, generator: np.random.Generator) -> dict | None:
    """Counts, energy shares and effective rank of one batch's bands (None for a batch with no spectrum)."""
    try:
        spec = batch_spectrum(features)
    except SpectrumError:
        return None
    return band_entry(spec, label_batch(tracker, spec, generator))


class BandMonitor:
    """Partitions batch embeddings every ``every`` steps and appends the bands to a JSON Lines file.

    Parameters
    ----------
    path : str
        The ``.jsonl`` file (appended to; its folder is created).
    every : int
        Steps between records (``update`` at other steps does nothing and costs nothing).
    null, strong_rule : str
        As ``analyze --null`` / ``--strong-rule``.
    momentum : float
        EMA weight of the previous edge and threshold (finetune's default, 0.9).
    seed : int
        Seed of the null's random draws (``permutation``).
    """

    def __init__(self, path: str = "bands.jsonl", every: int = 10, null: str = "ddpa", strong_rule: str = "iqr",
                 momentum: float = 0.9, seed: int = 0) -> None:
        if every < 1:
            raise BadInputError(f"every: {every}; expected a positive number of steps")
        self.path, self.every = path, int(every)
        if null not in nulls.NULLS:
            raise BadInputError(f"null: {null!r}; expected one of {', '.join(nulls.NULLS)}")
        if strong_rule not in spectrum.STRONG_RULES:
            raise BadInputError(f"strong_rule: {strong_rule!r}; expected one of {', '.join(spectrum.STRONG_RULES)}")
        self.options = spectrum.PartitionOptions(null=null, strong_rule=strong_rule)
        self.momentum = momentum
        self.generator = np.random.default_rng(seed)
        self.trackers: dict[str, BandTracker] = {}
        self.widths: dict[str, int] = {}
        self.writers: list = []  # objects with add(record): TensorBoardWriter, or your own

    def due(self, step: int) -> bool:
        return int(step) % self.every == 0

    def update(self, step: int, **batches) -> dict | None:
        """Record the bands of each named batch at ``step`` when it is due; returns the record (or None)."""
        if not self.due(step):
            return None
        if not batches:
            raise BadInputError("update: give at least one batch, e.g. update(step, image=..., text=...)")
        record: dict = {"step": int(step)}
        import torch

        with torch.no_grad():
            for name, batch in batches.items():
                features = _features(batch, name)
                width = int(features.shape[1])
                if self.widths.setdefault(name, width) != width:
                    raise BadInputError(f"{name}: batch embeddings of width {width} at step {step}, but "
                                        f"{self.widths[name]} before; a monitored set keeps its width")
                tracker = self.trackers.setdefault(name, BandTracker(self.options, self.momentum))
                record[name] = batch_bands(features, tracker, self.generator)
        self.write([record])
        return record

    def write(self, records: list[dict]) -> None:
        """Append finished records (``{"step": .., name: entry}``) to the file and hand them to the writers.

        ``sdetool finetune`` writes its ``bands.jsonl`` through this, with entries from the labels its loss
        already computed (:func:`sdetool.spectral.batchspectrum.band_entry`)."""
        if not records:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with open(self.path, "a") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
        for record in records:
            for writer in self.writers:
                writer.add(record)


def scalars(record: dict) -> dict[str, float]:
    """A monitor record as scalar names: ``image/noise/energy_share``, ``image/effective_rank``..."""
    values = {}
    for name, entry in record.items():
        if name == "step" or not isinstance(entry, dict):
            continue
        for band in BANDS:
            for field_name in ("count", "energy_share"):
                values[f"{name}/{band}/{field_name}"] = float(entry[band][field_name])
        values[f"{name}/effective_rank"] = float(entry["effective_rank"])
    return values


def _tensorboard_writer():
    from torch.utils.tensorboard import SummaryWriter

    class TensorBoardWriter:
        """Records as TensorBoard scalars at their ``step``: ``monitor.writers.append(TensorBoardWriter(log_dir))``.
        ``to_scalars`` turns a record into named numbers (the monitor's by default; finetune passes its own)."""

        def __init__(self, log_dir: str, to_scalars=None, prefix: str = "bands/") -> None:
            self.writer = SummaryWriter(log_dir=log_dir)
            self.to_scalars, self.prefix = to_scalars or scalars, prefix

        def add(self, record: dict) -> None:
            for name, value in self.to_scalars(record).items():
                self.writer.add_scalar(f"{self.prefix}{name}", value, int(record["step"]))
            self.writer.flush()

        def __call__(self, records: list[dict]) -> None:
            for record in records:
                self.add(record)

    return TensorBoardWriter


def _outputs(output, names: tuple) -> dict:
    """The named embeddings of a model output (an object with attributes, or a mapping)."""
    found = {}
    for name in names:
        value = output.get(name) if isinstance(output, dict) else getattr(output, name, None)
        if value is not None:
            found[name] = value
    return found


def _hf_callback():
    from transformers import TrainerCallback

    class HFCallback(TrainerCallback):
        """For ``transformers.Trainer``: a forward hook keeps the model's last output embeddings (by default
        CLIP's ``image_embeds`` and ``text_embeds``), and every optimizer step goes to the monitor."""

        def __init__(self, monitor: BandMonitor, outputs=("image_embeds", "text_embeds"), names=("image", "text")):
            self.monitor, self.outputs, self.names = monitor, tuple(outputs), tuple(names)
            self._latest: dict = {}
            self._hook = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None and self._hook is None:
                def keep(module, inputs, output):
                    self._latest = {name: value.detach() for name, value in _outputs(output, self.outputs).items()}

                self._hook = model.register_forward_hook(keep)

        def on_step_end(self, args, state, control, **kwargs):
            if self._latest:
                self.monitor.update(state.global_step, **{new: self._latest[old] for old, new in
                                                          zip(self.outputs, self.names) if old in self._latest})

        def on_train_end(self, args, state, control, **kwargs):
            if self._hook is not None:
                self._hook.remove()
                self._hook = None

    return HFCallback


def _lightning_callback():
    try:
        from lightning.pytorch import Callback
    except ImportError:
        from pytorch_lightning import Callback

    class LightningCallback(Callback):
        """For PyTorch Lightning: ``training_step`` returns a dict holding the batch embeddings (by default under
        ``image_embeds`` and ``text_embeds``); every batch end goes to the monitor at the global step."""

        def __init__(self, monitor: BandMonitor, outputs=("image_embeds", "text_embeds"), names=("image", "text")):
            self.monitor, self.outputs, self.names = monitor, tuple(outputs), tuple(names)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            found = _outputs(outputs or {}, self.outputs)
            if found:
                self.monitor.update(trainer.global_step, **{new: found[old] for old, new in zip(self.outputs, self.names)
                                                            if old in found})

    return LightningCallback


_ADAPTERS = {"TensorBoardWriter": _tensorboard_writer, "HFCallback": _hf_callback, "LightningCallback": _lightning_callback}


def __getattr__(name):
    """The adapters, built on first use: each needs only its own framework."""
    if name in _ADAPTERS:
        value = _ADAPTERS[name]()
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdetool.monitor' has no attribute {name!r}")
