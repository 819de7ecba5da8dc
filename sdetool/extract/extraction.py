"""The extraction loop: a model over items, in resumable chunks, into one HDF5 store.

Items are cut into chunks of ``chunk_items``; each chunk is embedded (images decoded and
preprocessed in DataLoader workers, texts deduplicated) and written as one file of the work folder
(:mod:`sdetool.io.checkpoint`). When every chunk is there, the store is written atomically from them
and the work folder removed. Re-running the same command resumes at the first missing chunk; under
``torchrun`` each rank takes every ``size``-th chunk and rank 0 assembles the store.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np

from sdetool import __version__
from sdetool.errors import BadInputError, NewerVersionError, SdetoolError
from sdetool.extract.assembly import assembled, failure_details
from sdetool.extract.data.items import ItemSource
from sdetool.extract.layers import base_modality, layer_key, layer_plan
from sdetool.extract.loading import ImageDataset, collate, plan_pipeline
from sdetool.io.checkpoint import Chunk, WorkFolder
from sdetool.io.locks import writing

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
STORE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractOptions:
    """How to run the model. Only ``normalize``, ``precision``, ``store_dtype``, ``tokens`` and
    ``chunk_items`` change the output; the rest only how fast it comes."""

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 64
    num_workers: int | None = None  # None: chosen from timings (sdetool.extract.loading.plan_pipeline)
    normalize: bool = False
    store_dtype: str = "float32"
    tokens: bool = False
    strict: bool = False
    overwrite: bool = False
    chunk_items: int = 2048
    allow_missing_weights: bool = False  # load a checkpoint that lacks weights of the model (recorded)
    layers: str | tuple | None = None  # "all", "0,6,12" or (0, 6, 12): each layer's pooled hidden state too

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise BadInputError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.store_dtype not in STORE_DTYPES:
            raise BadInputError(f"--store-dtype {self.store_dtype!r}: expected one of {', '.join(STORE_DTYPES)}")
        for name, value in (("--batch-size", self.batch_size), ("--chunk-items", self.chunk_items)):
            if value < 1:
                raise BadInputError(f"{name} {value}: expected a positive integer")
        if self.num_workers is not None and self.num_workers < 0:
            raise BadInputError(f"--num-workers {self.num_workers}: expected 0 or more")
        self.layer_indices()

    def layer_indices(self) -> list[int] | None:
        """``--layers`` as indices (None: all of them; [] when not asked for)."""
        if self.layers is None:
            return []
        if isinstance(self.layers, (list, tuple)):  # from Python: indices
            text = ",".join(str(i) for i in self.layers)
        else:
            text = str(self.layers).strip().lower()
        if text == "all":
            return None
        try:
            indices = sorted({int(part) for part in text.split(",") if part.strip()})
        except ValueError:
            raise BadInputError(f"--layers {self.layers!r}: expected 'all' or layer indices such as 0,6,12") from None
        if not indices or indices[0] < 0:
            raise BadInputError(f"--layers {self.layers!r}: expected 'all' or layer indices >= 0 such as 0,6,12")
        return indices


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction wrote: per set its rows and failures, plus timing."""

    path: str
    status: str  # "written" or "already complete"
    items: int
    rows: dict
    failed: dict
    dims: dict
    resumed_items: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    model: str = ""
    data: str = ""
    notes: list = field(default_factory=list)
    failures: dict = field(default_factory=dict)  # per set, the first FIRST_FAILURES {"id", "reason"} records
    failures_in: dict = field(default_factory=dict)  # per set with failures, where all of them are: "out.h5:/key/failed"

    @property
    def items_per_second(self) -> float:
        return (self.items - self.resumed_items) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        document = asdict(self)
        document["items_per_second"] = round(self.items_per_second, 2)
        document["seconds"] = round(self.seconds, 3)
        return document


class Progress:
    """Receives progress in items (the CLI shows a bar on a terminal, plain lines elsewhere); the default does nothing."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, count: int) -> None: ...
    def finish(self) -> None: ...


def resolve_torch_device(device: str, local_rank: int = 0) -> str:
    """``auto`` -> ``cuda:<local rank>`` when CUDA is available, else ``cpu``; others are checked."""
    import torch

    if device == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BadInputError(f"--device {device}: CUDA is not available here (torch {torch.__version__})")
        return f"cuda:{local_rank}" if device == "cuda" else device
    raise BadInputError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def run_config(encoder, source: ItemSource, keys: list[str], options: ExtractOptions) -> dict:
    """What the output depends on; a resume or a re-run must match it exactly."""
    return {
        "model": encoder.spec,
        "model_revision": str(encoder.provenance.get("revision", "")),
        "data": source.location,
        "data_fingerprint": source.fingerprint(),
        "items": len(source),
        "keys": keys,
        "normalize": options.normalize,
        "precision": options.precision,
        "store_dtype": options.store_dtype,
        "tokens": options.tokens,
        "chunk_items": options.chunk_items,
        **({"layers": "all" if options.layer_indices() is None else options.layer_indices()} if options.layers else {}),
    }


def _difference(old: dict, new: dict) -> str:
    changed = [name for name in new if old.get(name) != new[name]]
    return "; ".join(f"{name}: {old.get(name)!r} -> {new[name]!r}" for name in changed[:3]) or "unknown"


def _modalities(encoder, source: ItemSource, tokens: bool) -> tuple[list[str], list[str]]:
    keys = [m for m in source.modalities if m in encoder.modalities]
    notes = [f"the data has {m}s but {encoder.spec} has no {m} tower: {m}s skipped"
             for m in source.modalities if m not in encoder.modalities]
    if not keys:
        raise BadInputError(f"{source.describe()}: {encoder.spec} embeds only {', '.join(encoder.modalities)}")
    if tokens and ("image" not in keys or not encoder.has_tokens):
        raise BadInputError(f"--tokens: {encoder.spec} gives no patch-token grid for this data (needs images and a "
                            "vision tower with patch tokens)")
    return keys, notes


class _Embedder:
    """Runs the model on batches under autocast; remembers distinct texts."""

    def __init__(self, encoder, device: str, options: ExtractOptions, layers: dict | None = None) -> None:
        import torch

        self.encoder = encoder
        self.device = device
        self.options = options
        self.layers = {m: [i for i, _ in entries] for m, entries in (layers or {}).items()}
        dtype = getattr(torch, PRECISIONS[options.precision])
        device_type = "cuda" if device.startswith("cuda") else "cpu"
        self._autocast = (lambda: torch.autocast(device_type, dtype=dtype)) if options.precision != "fp32" else nullcontext

    def _finish(self, tensor) -> np.ndarray:
        values = tensor.float().cpu().numpy()
        if self.options.normalize:
            values = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
        return values.astype(np.float32, copy=False)

    def images(self, pixels) -> tuple[dict, np.ndarray | None]:
        """``({"image": (B, d), "image_L<i>": (B, c_i)...}, tokens)`` of a batch, from one forward pass."""
        import torch

        pixels = pixels.to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            if self.layers.get("image"):
                output = self.encoder.encode_images_layers(pixels, self.layers["image"], tokens=self.options.tokens)
            else:
                output = self.encoder.encode_images(pixels, tokens=self.options.tokens)
        tokens = output.tokens.float().cpu().numpy().astype(np.float16) if output.tokens is not None else None
        sets = {"image": self._finish(output.embeddings)}
        sets.update({layer_key("image", i): self._finish(v) for i, v in (output.layers or {}).items()})
        return sets, tokens

    def texts(self, texts: list[str]) -> dict:
        """``{"text": (B, d), "text_L<i>": (B, c_i)...}``: each distinct text embedded once (one forward pass for
        all its layers)."""
        import torch

        # Per call (one chunk), not across chunks: a resumed run then batches the same texts the same way.
        distinct = list(dict.fromkeys(texts))
        layers = self.layers.get("text") or []
        keys = ["text"] + [layer_key("text", i) for i in layers]
        embedded: dict[str, dict] = {key: {} for key in keys}
        for start in range(0, len(distinct), self.options.batch_size):
            batch = distinct[start:start + self.options.batch_size]
            with torch.inference_mode(), self._autocast():
                if layers:
                    final, hidden = self.encoder.encode_texts_layers(batch, layers)
                    outputs = {"text": final, **{layer_key("text", i): v for i, v in hidden.items()}}
                else:
                    outputs = {"text": self.encoder.encode_texts(batch)}
            for key, values in outputs.items():
                embedded[key].update(zip(batch, self._finish(values)))
        if not texts:
            return {key: np.zeros((0, self.encoder.dim if key == "text" else 0), np.float32) for key in keys}
        return {key: np.stack([embedded[key][t] for t in texts]) for key in keys}


def _plan(items: int, chunk_items: int) -> list[range]:
    return [range(start, min(start + chunk_items, items)) for start in range(0, items, chunk_items)]


def _embed_chunks(embedder: _Embedder, source: ItemSource, keys: list[str], chunks: list[tuple[int, range]],
                  folder: WorkFolder, world_size: int, progress: Progress) -> list[str]:
    """Embed the given chunks and write each one as soon as it is complete. Returns notes on how it ran."""
    options = embedder.options
    if "image" not in keys or not chunks:
        for index, items in chunks:
            _write_chunk(embedder, source, keys, folder, index, list(items), {}, [], None)
            progress.advance(len(items))
        return []
    import torch

    dataset = ImageDataset(source, embedder.encoder.image_transform())
    pipeline = plan_pipeline(options.num_workers, embedder.device, world_size, dataset, embedder.images)
    threads = torch.get_num_threads()
    if pipeline.threads:
        torch.set_num_threads(pipeline.threads)
    try:
        _embed_images(embedder, source, keys, chunks, folder, dataset, pipeline.workers, progress)
    finally:
        torch.set_num_threads(threads)
    return [pipeline.reason] if pipeline.reason else []


def _embed_images(embedder: _Embedder, source: ItemSource, keys: list[str], chunks: list[tuple[int, range]],
                  folder: WorkFolder, dataset: ImageDataset, workers: int, progress: Progress) -> None:
    from torch.utils.data import DataLoader

    options = embedder.options
    batches, owners = [], []
    for index, items in chunks:
        for start in range(items.start, items.stop, options.batch_size):
            batches.append(list(range(start, min(start + options.batch_size, items.stop))))
            owners.append(index)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                        pin_memory=embedder.device.startswith("cuda"))
    batches_in = iter(loader)
    try:
        _consume(embedder, source, keys, folder, batches, owners, batches_in, progress)
    finally:  # on an error too: stop the worker processes now, not whenever the iterator is collected
        shutdown = getattr(batches_in, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _consume(embedder: _Embedder, source: ItemSource, keys: list[str], folder: WorkFolder, batches: list,
             owners: list, batches_in, progress: Progress) -> None:
    """Embed the loader's batches, writing every chunk as soon as its last batch is done."""
    options = embedder.options
    pending: dict = {"rows": [], "embeddings": [], "tokens": [], "failed": []}
    for position, (rows, pixels, failed) in enumerate(batches_in):
        index = owners[position]
        if failed and options.strict:
            item, reason = failed[0]
            raise BadInputError(f"{source.ids[item]}: {reason} (--strict)")
        if pixels is not None:
            sets, tokens = embedder.images(pixels)
            pending["embeddings"].append(sets)
            if tokens is not None:
                pending["tokens"].append(tokens)
        pending["rows"].extend(rows)
        pending["failed"].extend(failed)
        progress.advance(len(batches[position]))
        if position + 1 == len(batches) or owners[position + 1] != index:
            image_keys = [key for key in keys if base_modality(key) == "image"]
            sets = {key: np.concatenate([batch[key] for batch in pending["embeddings"]]) if pending["embeddings"] else
                    np.zeros((0, embedder.encoder.dim if key == "image" else 0), np.float32) for key in image_keys}
            tokens = np.concatenate(pending["tokens"]) if pending["tokens"] else None
            _write_chunk(embedder, source, keys, folder, index, pending["rows"], sets, pending["failed"], tokens)
            pending = {"rows": [], "embeddings": [], "tokens": [], "failed": []}


def _write_chunk(embedder: _Embedder, source: ItemSource, keys: list[str], folder: WorkFolder, index: int,
                 rows: list[int], embeddings: dict, image_failures: list, tokens: np.ndarray | None) -> None:
    """Add the texts of the chunk's surviving items (a pair survives only whole) and write the chunk."""
    failed = [(item, "image", reason) for item, reason in image_failures]
    if "text" in keys:
        missing = [item for item in rows if source.texts[item] is None]
        if missing and embedder.options.strict:
            raise BadInputError(f"{source.ids[missing[0]]}: missing text (--strict)")
        failed += [(item, "text", "missing text") for item in missing]
        keep = np.array([source.texts[item] is not None for item in rows], dtype=bool)
        rows = [item for item, k in zip(rows, keep) if k]
        embeddings = {key: values[keep] for key, values in embeddings.items()}
        tokens = tokens[keep] if tokens is not None else None
        embeddings.update(embedder.texts([source.texts[item] for item in rows]))
    dtype = np.dtype(embedder.options.store_dtype)
    failed.sort()
    folder.write_chunk(index, Chunk(
        rows=np.asarray(rows, dtype=np.int64),
        embeddings={key: embeddings[key].astype(dtype) for key in keys},
        tokens=tokens,
        failed_index=np.array([f[0] for f in failed], dtype=np.int64),
        failed_key=[f[1] for f in failed],
        failed_reason=[f[2] for f in failed],
    ))


def _preflight(out: str, config: dict, options: ExtractOptions) -> tuple[str, int]:
    """Decide what to do with what is already there: ``("done", 0)``, ``("resume", n_done)`` or ``("fresh", 0)``.

    Refuses (unless ``overwrite``) when ``out`` or its work folder holds a different extraction.
    """
    from sdetool.io import store

    folder = WorkFolder(out)
    if os.path.isdir(out):
        raise BadInputError(f"--out {out}: is a folder, expected an .h5 file path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise BadInputError(f"--out {out}: folder {os.path.dirname(os.path.abspath(out))} does not exist")
    if os.path.exists(out) and not options.overwrite:
        try:
            previous = json.loads(store.read_root_attrs(out).get("extract_config", "null") or "null")
        except NewerVersionError:
            raise  # a newer sdetool's store: not "not written by sdetool extract"
        except (SdetoolError, json.JSONDecodeError):
            previous = None
        if previous is None:
            raise BadInputError(f"--out {out}: exists and was not written by sdetool extract; use --overwrite to replace it")
        if previous != config:
            raise BadInputError(f"--out {out}: holds a different extraction ({_difference(previous, config)}); "
                                "use --overwrite to replace it")
        return "done", 0
    if folder.exists():
        try:
            previous = folder.read_run().get("config")
        except BadInputError:
            if not options.overwrite:
                raise
            previous = None  # damaged: --overwrite starts again
        if previous == config:  # the same job: resume it, also when it was started with --overwrite
            return "resume", len(folder.done())
        if not options.overwrite:
            raise BadInputError(f"{folder.path}: an unfinished extraction of something else "
                                f"({_difference(previous or {}, config)}); use --overwrite to start again")
    return "fresh", 0


def _provenance(encoder, source: ItemSource, options: ExtractOptions, device: str) -> dict:
    attrs = {f"model_{name}" if name in ("revision",) else name: value for name, value in encoder.provenance.items()}
    attrs.update({
        "model": encoder.spec,
        "backend": encoder.backend,
        "normalized": bool(options.normalize),
        "normalization": "L2 by sdetool (--normalize)" if options.normalize else "none (the model's output as is)",
        "dtype_computed": PRECISIONS[options.precision],
        "precision": options.precision,
        "store_dtype": options.store_dtype,
        "prompt_template": source.template,
        "data_source": source.location,
        "data_kind": source.kind,
        "data_origin": source.origin or source.location,
        "data_fingerprint": source.fingerprint(),
        "items": len(source),
        "sdetool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device,
    })
    if source.classes:
        attrs["classes"] = json.dumps(list(source.classes))
    return {name: value for name, value in attrs.items() if value is not None}


def extract(model: str, source: ItemSource, out: str, options: ExtractOptions = ExtractOptions(),
            progress: Progress | None = None) -> ExtractResult:
    """Embed ``source`` with ``model`` into the store ``out``, resuming an interrupted run of the same job.

    Parameters
    ----------
    model : str
        A model spec (see :mod:`sdetool.extract.models`).
    source : ItemSource
        The items (see :mod:`sdetool.extract.data.items`).
    out : str
        The HDF5 store to write. Its work folder ``out.partial/`` holds finished chunks until the end.
    options : ExtractOptions
    progress : Progress, optional

    Returns
    -------
    ExtractResult

    Raises
    ------
    BadInputError
        Bad options, an existing different output (without ``overwrite``), ``strict`` with a bad item.
    UnknownModelError
        A model spec no backend can load.
    """
    from sdetool.runtime.distributed import current_world, on_main

    options.validate()
    progress = progress or Progress()
    started = time.perf_counter()
    world = current_world()
    with writing(out, through=lambda work: on_main(world, work)):  # one writer of out, refused before anything loads
        return _extract_locked(model, source, out, options, progress, world, started)


def _extract_locked(model: str, source: ItemSource, out: str, options: ExtractOptions, progress: Progress, world,
                    started: float) -> ExtractResult:
    from sdetool.extract.models import load_model
    from sdetool.runtime.distributed import on_every_rank, on_main

    device = resolve_torch_device(options.device, int(os.environ.get("LOCAL_RANK", "0") or 0))
    encoder = load_model(model, allow_missing_weights=options.allow_missing_weights)
    keys, notes = _modalities(encoder, source, options.tokens)
    layers = layer_plan(encoder, keys, options)
    keys = keys + [layer_key(modality, i) for modality, entries in layers.items() for i, _ in entries]
    config = run_config(encoder, source, keys, options)
    folder = WorkFolder(out)
    decision = on_main(world, lambda: _preflight(out, config, options))
    if decision[0] == "done":
        return _existing(out, source, keys, encoder, notes)
    plan = _plan(len(source), options.chunk_items)
    if decision[0] == "fresh":  # every rank waits until rank 0 has made the work folder
        on_main(world, lambda: folder.create({"config": config, "chunks": len(plan), "chunk_items": options.chunk_items,
                                              "items": len(source)}))
    done = folder.done()
    mine = [(index, items) for index, items in enumerate(plan) if index % world.size == world.rank and index not in done]
    resumed = sum(len(items) for index, items in enumerate(plan) if index in done)
    embedder = _Embedder(encoder.to(device), device, options, layers)
    resumed_note = f" (resumed: {resumed:,} of {len(source):,} items were done)" if resumed else ""
    progress.start(f"embedding {source.describe()}{resumed_note}", sum(len(items) for _, items in mine))
    ran: list[str] = []
    try:
        on_every_rank(world, lambda: ran.extend(_embed_chunks(embedder, source, keys, mine, folder, world.size, progress)))
    finally:
        progress.finish()
    rows, details = on_main(world, lambda: assembled(out, folder, source, keys, encoder, config,
                                                      _provenance(encoder, source, options, device), layers))
    return ExtractResult(path=out, status="written", items=len(source), rows=rows, **details,
                         dims=_dims(out, keys), resumed_items=resumed,
                         seconds=time.perf_counter() - started, device=device, model=encoder.spec,
                         data=source.location, notes=notes + source.notes + ran)


def _dims(out: str, keys: list[str]) -> dict:
    """Each set's width, as stored (layers have their own)."""
    from sdetool.io import store

    matrices = store.open_matrices(out)
    return {key: int(matrices[key].shape[1]) for key in keys if key in matrices}


def _existing(out: str, source: ItemSource, keys: list[str], encoder, notes: list[str]) -> ExtractResult:
    from sdetool.io import store

    matrices = store.open_matrices(out)
    rows = {key: matrices[key].shape[0] for key in keys}
    failures = {key: store.read_failed(out, key) for key in keys}
    return ExtractResult(path=out, status="already complete", items=len(source), rows=rows,
                         **failure_details(out, failures),
                         dims=_dims(out, keys), resumed_items=len(source), model=encoder.spec,
                         data=source.location, notes=notes + ["nothing to do: the output is complete"])
