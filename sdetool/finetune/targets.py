"""What ``finetune`` trains: a dual encoder (``--target model``) or two heads on cached pairs (``--target head``).

A target turns a batch of pair indices into projected features ``(image (B, d), text (B, d))``, names
its trainable parameters, and saves or loads their state. It also embeds the held-out pairs, with
the same code, for evaluation and export.

- ``builtin:lit-fmnist``: the CNN image tower, both projections and the temperature train; the MiniLM
  text tower stays frozen (its features of each distinct text are computed once) unless
  ``freeze_text`` is off.
- ``hf:`` CLIP-like models: both projections, the temperature and the last ``train_blocks``
  transformer blocks of the vision tower (and of the text tower unless ``freeze_text``).
- heads: a linear map (identity at start) or a residual MLP (zero last layer, so identity at start) per
  modality, so "before" is exactly the cached embeddings.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from sdetool.errors import BadInputError, UnknownModelError
from sdetool.extract.models.parts import copy_state
from sdetool.finetune.pairs import PairData, PairSet

HEADS = ("linear", "mlp")
TARGETS = ("model", "head")


class Target(ABC):
    """Common part: the trainable modules, the temperature and the state kept in checkpoints."""

    def __init__(self, modules: dict, logit_scale, device: str) -> None:
        self.modules = modules  # name -> torch Module holding trainable parameters
        self.logit_scale = logit_scale
        self.device = device

    def parameters(self) -> list:
        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        params += [self.logit_scale] if self.logit_scale.requires_grad else []
        return list({id(p): p for p in params}.values())  # the temperature may belong to a module too

    def state(self) -> dict:
        """Trainable parameters and all buffers (batch-norm statistics), on the CPU."""
        state = {"logit_scale": self.logit_scale.detach().cpu().clone()}
        for name, module in self.modules.items():
            for key, value in module.named_parameters():
                if value.requires_grad:
                    state[f"{name}.{key}"] = value.detach().cpu().clone()
            for key, value in module.named_buffers():
                state[f"{name}.{key}"] = value.detach().cpu().clone()
        return state

    def load_state(self, state: dict) -> None:
        unused = copy_state(self.modules, self.logit_scale, state)
        if unused:  # a checkpoint of another model: resuming would leave these tensors untrained
            raise BadInputError(f"the checkpoint does not fit this model: {len(unused)} tensors match no parameter "
                                f"(e.g. {unused[0]}); use --overwrite to start again")

    def train(self, mode: bool = True) -> None:
        for module in self.modules.values():
            module.train(mode)

    def load_inputs(self, pairs: PairSet, batch: np.ndarray):
        """CPU work of a batch (decoding images) that may run ahead, in a thread; None when there is none."""
        return None

    @abstractmethod
    def features(self, pairs: PairSet, batch: np.ndarray, inputs=None):
        """Projected features ``(image (B, d), text (B, d))`` of pairs ``batch`` (``inputs``: from :meth:`load_inputs`)."""

    @abstractmethod
    def embed(self, pairs: PairSet, batch_size: int = 512, on_batch=None) -> tuple[np.ndarray, np.ndarray]:
        """Held-out embeddings ``(image (n, d), text (n, d))`` in evaluation mode, float32.

        ``on_batch(count)``, when given, is called after each batch of ``count`` pairs (progress).
        """

    def class_prototypes(self, data: PairData):
        """Zero-shot classifier (K, d) of the classes, or None when it cannot be built."""
        return None


# --- heads ---------------------------------------------------------------------------------------


def build_head(kind: str, dim_in: int, dim_out: int, seed: int):
    """A linear head or a residual MLP (last layer zero) that both start as the identity ``eye(out, in)``:
    the input itself, zero-padded or cut to ``dim_out`` coordinates."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if kind == "linear":
        head = nn.Linear(dim_in, dim_out)
        with torch.no_grad():
            head.bias.zero_()
            head.weight.copy_(torch.eye(dim_out, dim_in))  # the identity, padded or truncated
        return head

    class ResidualMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.skip = nn.Identity() if dim_in == dim_out else nn.Linear(dim_in, dim_out, bias=False)
            if dim_in != dim_out:
                with torch.no_grad():
                    self.skip.weight.copy_(torch.eye(dim_out, dim_in))
            self.hidden = nn.Linear(dim_in, 2 * dim_out)
            self.out = nn.Linear(2 * dim_out, dim_out)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

        def forward(self, x):
            return self.skip(x) + self.out(nn.functional.gelu(self.hidden(x)))

    return ResidualMLP()


class HeadTarget(Target):
    """Two heads over cached embeddings."""

    def __init__(self, data: PairData, kind: str, dim: int | None, temperature: float, seed: int, device: str) -> None:
        import torch

        if kind not in HEADS:
            raise BadInputError(f"--head {kind!r}: expected one of {', '.join(HEADS)}")
        dims = data.train.image.shape[1], data.train.text.shape[1]
        out = dim or max(dims)
        modules = {"image_head": build_head(kind, dims[0], out, seed).to(device),
                   "text_head": build_head(kind, dims[1], out, seed + 1).to(device)}
        scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / temperature), device=device))
        super().__init__(modules, scale, device)
        self.dim = out
        self.description = f"{kind} heads {dims[0]}/{dims[1]} -> {out}"

    def _apply(self, pairs: PairSet, rows):
        import torch

        image = torch.from_numpy(pairs.image[rows]).to(self.device)
        text = torch.from_numpy(pairs.text[rows]).to(self.device)
        return self.modules["image_head"](image), self.modules["text_head"](text)

    def features(self, pairs: PairSet, batch: np.ndarray, inputs=None):
        return self._apply(pairs, batch)

    def embed(self, pairs: PairSet, batch_size: int = 4096, on_batch=None):
        import torch

        self.train(False)
        images, texts = [], []
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                rows = np.arange(start, min(start + batch_size, len(pairs)))
                image, text = self._apply(pairs, rows)
                images.append(image.float().cpu().numpy())
                texts.append(text.float().cpu().numpy())
                if on_batch is not None:
                    on_batch(rows.size)
        return np.concatenate(images), np.concatenate(texts)


# --- dual encoders -------------------------------------------------------------------------------


def _freeze(module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def _last_blocks(tower, count: int) -> list:
    """The last ``count`` transformer blocks of an HF tower (``encoder.layers``), and its final norm."""
    layers = getattr(getattr(tower, "encoder", None), "layers", None)
    if layers is None:
        raise UnknownModelError(f"{type(tower).__name__} has no encoder.layers to fine-tune")
    if count > len(layers):
        raise BadInputError(f"--train-blocks {count}: the {type(tower).__name__} has {len(layers)} blocks")
    modules = list(layers)[len(layers) - count:] if count > 0 else []
    for name in ("post_layernorm", "final_layer_norm"):
        if hasattr(tower, name) and count > 0:
            modules.append(getattr(tower, name))
    return modules


class EncoderTarget(Target):
    """A dual encoder of :mod:`sdetool.extract.models` (built-in LiT or ``hf:``)."""

    def __init__(self, encoder, data: PairData, train_blocks: int, freeze_text: bool, device: str) -> None:
        if set(encoder.modalities) != {"image", "text"}:
            raise UnknownModelError(f"{encoder.spec}: fine-tuning needs an image-text dual encoder; this model "
                                    f"embeds {' and '.join(encoder.modalities)} only")
        self.encoder = encoder.to(device)
        self.data = data
        self.freeze_text = freeze_text
        self._text_cache: dict[str, object] = {}
        if encoder.backend == "builtin":
            modules, scale = self._lit(freeze_text)
        elif encoder.backend == "hf":
            modules, scale = self._hf(train_blocks, freeze_text)
        else:
            raise UnknownModelError(f"{encoder.spec}: fine-tuning supports builtin: and hf: models, "
                                    f"not {encoder.backend}:")
        super().__init__(modules, scale, device)
        self.dim = encoder.dim
        trainable = sum(p.numel() for p in self.parameters())
        self.description = f"{encoder.spec}: {trainable:,} trainable parameters"
        self.transform = encoder.image_transform()

    def _lit(self, freeze_text: bool):
        network = self.encoder.network
        modules = {"network": network}
        if not freeze_text:
            modules["text_tower"] = self.encoder.text_tower.model
        else:
            _freeze(self.encoder.text_tower.model)
            self.encoder.text_tower.model.eval()
        return modules, network.logit_scale

    def _hf(self, train_blocks: int, freeze_text: bool):
        model = self.encoder.model
        _freeze(model)
        chosen = [model.visual_projection, *_last_blocks(model.vision_model, train_blocks)]
        if hasattr(model, "text_projection"):
            chosen.append(model.text_projection)
        if not freeze_text:
            chosen += _last_blocks(model.text_model, train_blocks)
        for module in chosen:
            for parameter in module.parameters():
                parameter.requires_grad_(True)
        model.logit_scale.requires_grad_(True)
        return {"model": model}, model.logit_scale

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        if self.freeze_text and self.encoder.backend == "builtin":
            self.encoder.text_tower.model.eval()

    # -- inputs --

    def pixels(self, source, rows: np.ndarray):
        """Preprocessed images (B, ...) of source items ``rows``; in-memory 28x28 pixels in one step.

        Files are decoded by a small thread pool (PIL releases the GIL while decoding). An unreadable
        image stops training with its reason: a training set should be clean (``extract`` lists bad items).
        """
        import torch

        from sdetool.extract.data.items import ItemError
        from sdetool.extract.models.lit import GrayscaleTransform, standardize_pixels

        if source.pixels is not None and isinstance(self.transform, GrayscaleTransform) and source.pixels.shape[1:] == (28, 28):
            return torch.from_numpy(standardize_pixels(source.pixels[rows])).unsqueeze(1)
        draft = getattr(self.transform, "draft", None)

        def load(index) -> object:
            try:
                return self.transform(source.load_image(int(index), draft=draft))
            except ItemError as error:
                raise BadInputError(f"{source.location}: item {source.ids[int(index)]!r}: {error}") from None

        return torch.stack(list(self._decoders().map(load, rows)))

    def _decoders(self):
        from concurrent.futures import ThreadPoolExecutor

        from sdetool.extract.loading import available_cores

        if getattr(self, "_pool", None) is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, min(8, available_cores())))
        return self._pool

    def texts(self, texts: list[str]):
        """Projected text features (B, d); with a frozen LiT text tower its features are cached per text."""
        import torch

        if not (self.freeze_text and self.encoder.backend == "builtin"):
            return self.encoder.encode_texts(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            with torch.no_grad():
                for text, row in zip(missing, self.encoder.text_tower.encode_texts(missing).float()):
                    self._text_cache[text] = row
        return self.encoder.network.encode_text_features(torch.stack([self._text_cache[t] for t in texts]))

    def load_inputs(self, pairs: PairSet, batch: np.ndarray):
        source = self.data.source if pairs is self.data.train else self.data.eval_source
        return self.pixels(source, pairs.rows[batch])

    def features(self, pairs: PairSet, batch: np.ndarray, inputs=None):
        pixels = self.load_inputs(pairs, batch) if inputs is None else inputs
        image = self.encoder.encode_images(pixels.to(self.device, non_blocking=True)).embeddings
        text = self.texts([pairs.texts[r] for r in pairs.text_rows[batch]])
        return image, text

    def embed(self, pairs: PairSet, batch_size: int = 512, on_batch=None):
        import torch

        self.train(False)
        source = self.data.eval_source if pairs is self.data.held_out else self.data.source
        images = []
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                rows = pairs.rows[start:start + batch_size]
                images.append(self.encoder.encode_images(self.pixels(source, rows).to(self.device)).embeddings.float().cpu().numpy())
                if on_batch is not None:
                    on_batch(rows.size)
            distinct = [self.texts(pairs.texts[s:s + batch_size]).float().cpu().numpy()
                        for s in range(0, len(pairs.texts), batch_size)]
        return np.concatenate(images), np.concatenate(distinct)[pairs.text_rows]

    def class_prototypes(self, data: PairData):
        """Per class, the normalised mean of its normalised prompt embeddings (prompt ensemble)."""
        import torch
        import torch.nn.functional as F

        prompts = class_prompts(data)
        if prompts is None:
            return None
        self.train(False)
        with torch.no_grad():
            embedded = F.normalize(self.texts([p for group in prompts for p in group]).float(), dim=-1)
            per_class = embedded.reshape(len(prompts), len(prompts[0]), -1).mean(dim=1)
        return F.normalize(per_class, dim=-1).cpu().numpy()


def class_prompts(data: PairData) -> list[list[str]] | None:
    """Prompts per class: Fashion-MNIST's six caption templates, else ``"a photo of a {class}."``."""
    from sdetool.extract.data import fashion_mnist

    if not data.classes or data.held_out.labels is None:
        return None
    if data.classes == fashion_mnist.CLASSES:
        return [[t.format(p) for t in fashion_mnist.TEMPLATES] for p in fashion_mnist.PHRASES]
    return [[f"a photo of a {name}."] for name in data.classes]
