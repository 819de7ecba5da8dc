"""The protocol every model backend follows, and the helpers they share.

An :class:`Encoder` turns images (already preprocessed into a tensor by its picklable
``image_transform``, which runs in DataLoader workers) and texts into embeddings. It knows its
output dimension, which modalities it has, and how to describe itself for provenance.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from sdetool.errors import UnknownModelError

# Files larger than this are fingerprinted by size and their first and last MiB, not read whole.
_FULL_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20


@dataclass(frozen=True)
class ImageOutput:
    """Embeddings of one batch of images: ``embeddings`` (B, d) and, on request, ``tokens`` (B, h, w, c)."""

    embeddings: "object"
    tokens: "object | None" = None
    layers: "dict | None" = None  # layer index -> pooled hidden state (B, c_i), from the same forward pass


@dataclass
class Encoder(ABC):
    """Base class of the model backends.

    Attributes
    ----------
    spec : str
        The model spec the user gave (``hf:...``, ``st:...``, ``builtin:...``).
    backend : str
        The backend's name.
    dim : int
        Embedding dimension (both modalities share it).
    modalities : tuple of str
        ``("image", "text")`` for a dual encoder, ``("text",)`` for a text encoder.
    provenance : dict
        Flat attributes recorded on every set written with this model (revision or folder hash,
        pooling, preprocessing settings...).
    """

    spec: str
    backend: str
    dim: int
    modalities: tuple[str, ...]
    provenance: dict = field(default_factory=dict)

    @abstractmethod
    def to(self, device) -> "Encoder":
        """Move the model to ``device``; returns itself."""

    def image_transform(self):
        """A picklable callable ``PIL.Image -> Tensor (C, H, W)`` (the model's own preprocessing)."""
        raise UnknownModelError(f"{self.spec}: this {self.backend} model has no image tower (text only)")

    def encode_images(self, pixels, tokens: bool = False) -> ImageOutput:
        """Embed a batch of preprocessed images, shape (B, C, H, W), already on the model's device."""
        raise UnknownModelError(f"{self.spec}: this {self.backend} model has no image tower (text only)")

    @abstractmethod
    def encode_texts(self, texts: list[str]):
        """Embed a list of strings; returns a tensor (B, d) on the model's device."""

    @property
    def has_tokens(self) -> bool:
        """Whether ``encode_images(..., tokens=True)`` can return a patch-token grid."""
        return False

    # -- per-layer hidden states (``extract --layers``) --

    def layer_names(self, modality: str) -> list[str]:
        """The names, in the model, of the layers ``--layers`` indexes (0 at the input side)."""
        raise UnknownModelError(f"--layers: the {self.backend} backend cannot give hidden states ({self.spec})")

    def layer_pooling(self, modality: str) -> str:
        """How a layer's hidden states become one vector per item (recorded on the set)."""
        return ""

    def encode_images_layers(self, pixels, layers: list[int], tokens: bool = False) -> ImageOutput:
        """As :meth:`encode_images`, with ``layers`` (indices) pooled from the same forward pass."""
        self.layer_names("image")
        raise UnknownModelError(f"--layers: {self.spec} gives no image hidden states")

    def encode_texts_layers(self, texts: list[str], layers: list[int]):
        """As :meth:`encode_texts`, with ``layers`` pooled from the same forward pass: ``(final, {i: (B, c_i)})``."""
        self.layer_names("text")
        raise UnknownModelError(f"--layers: {self.spec} gives no text hidden states")


def folder_fingerprint(folder: str) -> str:
    """A SHA-256 over a model folder: every file's relative path, size and content.

    Files over 64 MiB contribute their size and their first and last MiB (hashing multi-GB weights
    in full would cost more than the extraction); the docs say so.
    """
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            digest.update(f"{os.path.relpath(path, folder)}\0{os.path.getsize(path)}\0".encode())
            _hash_content(digest, path)
    return "sha256:" + digest.hexdigest()


def file_fingerprint(path: str) -> str:
    """A SHA-256 of one file's content (over 64 MiB: its size and first and last MiB, as above)."""
    digest = hashlib.sha256(f"{os.path.getsize(path)}\0".encode())
    _hash_content(digest, path)
    return "sha256:" + digest.hexdigest()


def _hash_content(digest, path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if size <= _FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(_EDGE_BYTES))
            handle.seek(size - _EDGE_BYTES)
            digest.update(handle.read(_EDGE_BYTES))


FOLDER_PREFIXES = ("/", "./", "../", "~")  # a name starting so is a folder, never a hub id


def load_pretrained(spec: str, name: str, load):
    """Run ``load(name)`` on a local folder or a hub id; returns ``(name, local, loaded)``.

    A missing folder, a folder that is not a model, and a hub id that cannot be fetched (typically:
    offline) each raise :class:`UnknownModelError` with what to do.
    """
    name = os.path.expanduser(name)
    local = os.path.isdir(name)
    if not local and name.startswith(FOLDER_PREFIXES):
        raise UnknownModelError(f"{spec}: folder {name} does not exist")
    try:
        return name, local, load(name)
    except (OSError, ValueError) as error:
        if local:
            raise UnknownModelError(f"{spec}: {name} is not a transformers model folder: {error}") from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        backend = spec.partition(":")[0]
        raise UnknownModelError(
            f"{spec}: {name!r} is not a local folder and could not be loaded from the Hugging Face hub "
            f"(offline or unknown id: {reason[:160]}); download it where there is a network and pass the "
            f"local folder, e.g. --model {backend}:/path/to/folder"
        ) from None


LOADING_PROBLEMS = (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "mismatched"))


def check_loading_info(spec: str, info: dict, allow: bool) -> dict:
    """transformers' ``output_loading_info``: refuse weights the checkpoint lacks (which transformers fills with
    random values), weights it holds that the model has no place for, and weights of another shape.

    Returns ``{kind: [names]}`` of what was not loaded (empty when all was); raises :class:`UnknownModelError`
    naming them unless ``allow`` (``--allow-missing-weights``).
    """
    problems = {}
    for key, kind in LOADING_PROBLEMS:
        names = sorted(str(name if isinstance(name, str) else name[0]) for name in (info or {}).get(key) or [])
        if names:
            problems[kind] = names
    if problems and not allow:
        parts = [f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for kind, names in problems.items()]
        raise UnknownModelError(f"{spec}: the checkpoint does not match the model: {'; '.join(parts)} weights; "
                                "transformers would fill missing ones with random values. Pass "
                                "--allow-missing-weights to go on anyway (the store records them)")
    return problems


def model_revision(name: str, local: bool, config, revision: str | None) -> str:
    """A local folder's fingerprint, or the hub commit the model was loaded at."""
    if local:
        return folder_fingerprint(name)
    return str(getattr(config, "_commit_hash", "") or revision or "")
