"""``hf:`` Hugging Face transformers dual encoders (CLIP, SigLIP, and any model with image/text features).

Features are what the model itself defines: ``get_image_features`` and ``get_text_features``
(projection included). transformers 5.x returns output objects from both (the embedding is their
``pooler_output``); 4.x returns tensors; both are handled. The patch-token grid is the vision tower's
``last_hidden_state`` without its prefix (CLS) tokens, reshaped to ``(h, w, c)``.
"""

from __future__ import annotations

import inspect
import json

from sdetool.errors import UnknownModelError
from sdetool.extract.models.base import Encoder, ImageOutput, check_loading_info, load_pretrained, model_revision

_MAX_LENGTH_PADDING = {"siglip": 64, "siglip2": 64}  # SigLIP was trained on max-length padded text


class ProcessorTransform:
    """``PIL.Image -> Tensor (3, H, W)`` through the model's own image processor (picklable)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def _load_image_processor(name: str, revision: str | None):
    from transformers import AutoImageProcessor

    try:  # transformers 5.x: the PIL backend (the default one needs torchvision, which we keep out)
        return AutoImageProcessor.from_pretrained(name, revision=revision, backend="pil")
    except TypeError:
        return AutoImageProcessor.from_pretrained(name, revision=revision, use_fast=False)


def _features(output):
    """The embedding tensor of a ``get_*_features`` result (tensor in 4.x, output object in 5.x)."""
    if hasattr(output, "pooler_output") and output.pooler_output is not None:
        return output.pooler_output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


class HFDualEncoder(Encoder):
    """A transformers model exposing ``get_image_features`` and/or ``get_text_features``."""

    def __init__(self, spec: str, name: str, revision: str | None = None, allow_missing_weights: bool = False) -> None:
        from transformers import AutoModel, AutoTokenizer

        name, local, (self.model, info) = load_pretrained(
            spec, name, lambda folder: AutoModel.from_pretrained(folder, revision=revision, output_loading_info=True))
        self.model.eval()
        unloaded = check_loading_info(spec, info, allow_missing_weights)
        modalities = tuple(m for m, method in (("image", "get_image_features"), ("text", "get_text_features"))
                           if hasattr(self.model, method))
        if not modalities:
            raise UnknownModelError(f"{spec}: {type(self.model).__name__} has neither get_image_features nor "
                                    "get_text_features; for a plain text encoder use st:")
        self.processor = _load_image_processor(name, revision) if "image" in modalities else None
        self.tokenizer = AutoTokenizer.from_pretrained(name, revision=revision) if "text" in modalities else None
        self.device = "cpu"
        self._text_arguments = set(inspect.signature(self.model.get_text_features).parameters) if self.tokenizer else set()
        config = self.model.config
        provenance = {
            "architecture": type(self.model).__name__,
            "revision": model_revision(name, local, config, revision),
            "pooling": "the model's own (get_image_features / get_text_features, projection included)",
        }
        if self.processor is not None:
            provenance["image_preprocessing"] = json.dumps(_processor_settings(self.processor), sort_keys=True)
        if self.tokenizer is not None:
            provenance["tokenizer"] = type(self.tokenizer).__name__
        if unloaded:  # --allow-missing-weights: say in the store which weights were not the checkpoint's
            provenance["weights_not_loaded"] = json.dumps(unloaded, sort_keys=True)
        dim = int(getattr(config, "projection_dim", 0) or _probe_dim(self.model, modalities))
        super().__init__(spec=spec, backend="hf", dim=dim, modalities=modalities, provenance=provenance)

    def to(self, device) -> "HFDualEncoder":
        self.model.to(device)
        self.device = device
        return self

    def image_transform(self) -> ProcessorTransform:
        if self.processor is None:
            return super().image_transform()
        return ProcessorTransform(self.processor)

    @property
    def has_tokens(self) -> bool:
        return "image" in self.modalities and hasattr(self.model, "vision_model")

    def encode_images(self, pixels, tokens: bool = False) -> ImageOutput:
        if "image" not in self.modalities:
            return super().encode_images(pixels, tokens)
        captured: dict = {}
        hook = None
        if tokens:
            def keep_states(module, inputs, output) -> None:  # returns None: the output is left as it is
                captured["states"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

            hook = self.model.vision_model.register_forward_hook(keep_states)
        try:
            embeddings = _features(self.model.get_image_features(pixel_values=pixels))
        finally:
            if hook is not None:
                hook.remove()
        grid = self._grid(captured["states"]) if tokens else None
        return ImageOutput(embeddings=embeddings, tokens=grid)

    def _grid(self, states):
        """Token states (B, T, c) -> the patch grid (B, h, w, c), prefix tokens dropped."""
        vision = getattr(self.model.config, "vision_config", self.model.config)
        side = int(vision.image_size) // int(vision.patch_size)
        prefix = states.shape[1] - side * side
        if prefix < 0:
            raise UnknownModelError(f"{self.spec}: {states.shape[1]} vision tokens do not hold a {side}x{side} patch grid")
        return states[:, prefix:].reshape(states.shape[0], side, side, states.shape[-1])

    def layer_names(self, modality: str) -> list[str]:
        if modality not in self.modalities:
            raise UnknownModelError(f"--layers: {self.spec} has no {modality} tower")
        return HFLayers(self).names(modality)

    def layer_pooling(self, modality: str) -> str:
        return HFLayers(self).pooling(modality)

    def encode_images_layers(self, pixels, layers: list[int], tokens: bool = False) -> ImageOutput:
        final, hidden, output = HFLayers(self).run("image", layers, pixel_values=pixels)
        grid = self._grid(output.last_hidden_state) if tokens else None  # the same call's last states
        return ImageOutput(embeddings=_features(final), tokens=grid, layers=hidden)

    def encode_texts_layers(self, texts: list[str], layers: list[int]):
        final, hidden, _ = HFLayers(self).run("text", layers, **self._text_batch(texts))
        return _features(final), hidden

    def encode_texts(self, texts: list[str]):
        return _features(self.model.get_text_features(**self._text_batch(texts)))

    def _text_batch(self, texts: list[str]) -> dict:
        if self.tokenizer is None:
            raise UnknownModelError(f"{self.spec}: this model has no text tower")
        model_type = getattr(self.model.config, "model_type", "")
        if model_type in _MAX_LENGTH_PADDING:
            batch = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                   max_length=_MAX_LENGTH_PADDING[model_type], return_tensors="pt")
        else:
            text_config = getattr(self.model.config, "text_config", self.model.config)
            limit = min(int(self.tokenizer.model_max_length or 77), int(getattr(text_config, "max_position_embeddings", 77)))
            batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in self._text_arguments}


class HFLayers:
    """Per-layer pooled hidden states of CLIP- and SigLIP-like towers (``extract --layers``), one forward pass.

    Each layer's states are pooled as the tower pools its last one, without the final projection: the
    tower's final norm (``post_layernorm`` / ``final_layer_norm``), then its own head where it has one
    (SigLIP), else the token the tower pools (found from the tower itself: the position whose normed last
    state is its ``pooler_output``; CLS for CLIP's vision tower, the EOS token for its text tower).
    """

    TOWERS = {"image": ("vision_model", "post_layernorm", "visual_projection"),
              "text": ("text_model", "final_layer_norm", "text_projection")}

    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def tower(self, modality: str):
        name, norm, _ = self.TOWERS[modality]
        tower = getattr(self.encoder.model, name, None)
        layers = getattr(getattr(tower, "encoder", None), "layers", None)
        if tower is None or layers is None or getattr(tower, norm, None) is None:
            raise UnknownModelError(f"--layers: {self.encoder.spec} ({type(self.encoder.model).__name__}) has no "
                                    f"{name} with encoder.layers and {norm}; the hf backend gives layers of CLIP- and "
                                    "SigLIP-like towers")
        return tower, getattr(tower, norm), len(layers)

    def names(self, modality: str) -> list[str]:
        name = self.TOWERS[modality][0]
        return [f"{name}.embeddings"] + [f"{name}.encoder.layers.{i}" for i in range(self.tower(modality)[2])]

    def pooling(self, modality: str) -> str:
        tower, _, _ = self.tower(modality)
        how = "its head" if getattr(tower, "head", None) is not None else "the pooled token"
        return f"the tower's final norm, then {how}, as its last layer (no projection)"

    def run(self, modality: str, layers: list[int], **inputs):
        """``(final embedding, {i: pooled layer i}, the tower's output)`` from one call of the tower."""
        tower, norm, _ = self.tower(modality)
        output = tower(**inputs, output_hidden_states=True)
        if getattr(output, "pooler_output", None) is None:
            raise UnknownModelError(f"--layers: the {self.TOWERS[modality][0]} of {self.encoder.spec} gives no pooled "
                                    "output to pool its layers like")
        head = getattr(tower, "head", None)
        if head is not None:
            pool = (lambda states: head(norm(states))) if modality == "image" else (lambda states: head(norm(states)[:, -1]))
        else:
            position = self._position(norm(output.hidden_states[-1]), output.pooler_output, self.encoder.spec)
            rows = position.new_tensor(range(position.shape[0]))
            pool = (lambda states: norm(states)[rows, position])
        hidden = {i: pool(output.hidden_states[i]) for i in layers}
        projection = getattr(self.encoder.model, self.TOWERS[modality][2], None)
        final = output.pooler_output if projection is None else projection(output.pooler_output)
        return final, hidden, output

    @staticmethod
    def _position(normed, pooled, spec: str):
        """The token whose normed last state is the pooled output, per row; refused when no token is it (a tower
        that pools otherwise: its layers would be pooled wrongly)."""
        distance = (normed - pooled[:, None, :]).abs().amax(dim=-1)  # (B, T)
        closest, position = distance.min(dim=1)
        tolerance = 1e-4 * (1.0 + pooled.abs().amax(dim=-1))
        if bool((closest > tolerance).any()):
            raise UnknownModelError(f"--layers: {spec} pools its last layer otherwise than by one token of its normed "
                                    "states (no token matches its pooled output); its layers cannot be pooled alike")
        return position


def _processor_settings(processor) -> dict:
    settings = processor.to_dict()
    keep = ("image_processor_type", "size", "crop_size", "do_resize", "do_center_crop", "do_normalize",
            "image_mean", "image_std", "resample", "do_rescale", "rescale_factor")
    return {name: settings[name] for name in keep if name in settings}


def _probe_dim(model, modalities) -> int:
    """Embedding size of a model whose config has no ``projection_dim``: run one tiny input."""
    import torch

    config = model.config
    with torch.no_grad():
        if "text" in modalities:
            ids = torch.zeros((1, 2), dtype=torch.long)
            return int(_features(model.get_text_features(input_ids=ids)).shape[-1])
        vision = getattr(config, "vision_config", config)
        size = int(vision.image_size)
        pixels = torch.zeros((1, int(getattr(vision, "num_channels", 3)), size, size))
        return int(_features(model.get_image_features(pixel_values=pixels)).shape[-1])
