"""Text encoders: ``st:`` models through sentence-transformers itself, and the built-in model's frozen tower.

- :class:`SentenceTransformerEncoder` (``st:FOLDER`` or ``st:ORG/NAME``): ``SentenceTransformer(folder)`` with
  every module the model declares (Transformer, Pooling of any mode, Dense, Normalize, ...), its default
  prompt and maximum length. The embeddings are what ``SentenceTransformer(folder).encode(texts)`` returns;
  the store's provenance records the modules, pooling, prompt and normalization it used.
- :class:`SentenceEncoder`: the built-in LiT model's text tower, a plain transformers module (fine-tuning
  trains it as one) with mean pooling and L2 normalization read from the MiniLM folder's metadata; tests
  check it against sentence-transformers on that folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from sdetool.errors import UnknownModelError
from sdetool.extract.models.base import Encoder, load_pretrained, model_revision

POOLINGS = ("mean", "cls", "max")


@dataclass(frozen=True)
class SentenceConfig:
    """How a folder's token states become a sentence embedding."""

    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 256


def read_sentence_config(folder: str) -> SentenceConfig:
    """The pooling, normalization and length a sentence-transformers folder declares (defaults otherwise)."""
    pooling, normalize, max_length = "mean", False, 256
    modules_file = os.path.join(folder, "modules.json")
    if os.path.exists(modules_file):
        with open(modules_file) as handle:
            modules = json.load(handle)
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        for module in modules:
            if str(module.get("type", "")).endswith("Pooling"):
                pooling_file = os.path.join(folder, module.get("path", ""), "config.json")
                if os.path.exists(pooling_file):
                    with open(pooling_file) as handle:
                        settings = json.load(handle)
                    # sentence-transformers 6: "pooling_mode": "cls"; before: pooling_mode_cls_token (singular),
                    # pooling_mode_mean_tokens, pooling_mode_max_tokens
                    named = settings.get("pooling_mode")
                    modes = [named] if isinstance(named, str) else [
                        mode for mode in POOLINGS
                        if settings.get(f"pooling_mode_{mode}_tokens") or settings.get(f"pooling_mode_{mode}_token")]
                    pooling = modes[0] if modes else "mean"
                    if pooling not in POOLINGS:
                        raise UnknownModelError(f"{folder}: pooling {pooling!r} is not one the built-in tower "
                                                f"implements ({', '.join(POOLINGS)}); load it as st:{folder}")
    settings_file = os.path.join(folder, "sentence_bert_config.json")
    if os.path.exists(settings_file):
        with open(settings_file) as handle:
            max_length = int(json.load(handle).get("max_seq_length", max_length))
    return SentenceConfig(pooling=pooling, normalize=normalize, max_length=max_length)


def pool(states, mask, mode: str):
    """Pool token states (B, T, c) under an attention mask (B, T) into (B, c)."""
    import torch

    if mode == "cls":
        return states[:, 0]
    weights = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    if mode == "max":
        return states.masked_fill(weights == 0, torch.finfo(states.dtype).min).amax(dim=1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder(Encoder):
    """A transformers text encoder with sentence-transformers pooling (text only)."""

    def __init__(self, spec: str, folder: str, config: SentenceConfig | None = None, revision: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        folder, local, (self.tokenizer, self.model) = load_pretrained(spec, folder, lambda name: (
            AutoTokenizer.from_pretrained(name, revision=revision), AutoModel.from_pretrained(name, revision=revision).eval()))
        self.config = config or (read_sentence_config(folder) if local else SentenceConfig())
        self.device = "cpu"
        dim = int(self.model.config.hidden_size)
        provenance = {
            "pooling": self.config.pooling,
            "model_normalizes": self.config.normalize,
            "max_length": self.config.max_length,
            "architecture": type(self.model).__name__,
            "revision": model_revision(folder, local, self.model.config, revision),
        }
        super().__init__(spec=spec, backend="st", dim=dim, modalities=("text",), provenance=provenance)

    def to(self, device) -> "SentenceEncoder":
        self.model.to(device)
        self.device = device
        return self

    def encode_texts(self, texts: list[str]):
        return self.encode_texts_layers(texts, [])[0]

    def layer_names(self, modality: str) -> list[str]:
        if modality != "text":
            return super().layer_names(modality)
        return ["embeddings"] + [f"encoder.layer.{i}" for i in range(int(self.model.config.num_hidden_layers))]

    def layer_pooling(self, modality: str) -> str:
        return f"{self.config.pooling} over the attention mask (the model's own pooling), not normalized"

    def encode_texts_layers(self, texts: list[str], layers: list[int]):
        import torch

        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                               return_tensors="pt")
        batch = {name: value.to(self.device) for name, value in batch.items()}
        output = self.model(**batch, output_hidden_states=bool(layers))
        pooled = pool(output.last_hidden_state, batch["attention_mask"], self.config.pooling)  # (B, c)
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        hidden = {i: pool(output.hidden_states[i], batch["attention_mask"], self.config.pooling) for i in layers}
        return pooled, hidden


def _pooling_mode(model) -> str:
    """The Pooling module's mode as sentence-transformers names it (``mean``, ``cls``, ``lasttoken``, ...)."""
    for module in model:
        if type(module).__name__ == "Pooling":
            mode = getattr(module, "pooling_mode", None)  # sentence-transformers 6
            if mode is None and hasattr(module, "get_pooling_mode_str"):  # 3 to 5
                mode = module.get_pooling_mode_str()
            return str(mode)
    return "none (the model has no Pooling module)"


class SentenceTransformerEncoder(Encoder):
    """An ``st:`` model loaded and run by sentence-transformers (text only)."""

    def __init__(self, spec: str, folder: str, revision: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        folder, local, self.model = load_pretrained(
            spec, folder, lambda name: SentenceTransformer(name, device="cpu", revision=revision,
                                                           local_files_only=os.path.isdir(name)))
        self.model.eval()
        self.device = "cpu"
        modules = [type(module).__name__ for module in self.model]
        prompt_name = getattr(self.model, "default_prompt_name", None)
        transformer = self.model[0] if len(modules) else None
        config = getattr(getattr(transformer, "auto_model", None), "config", None)
        provenance = {
            "library": "sentence-transformers",
            "modules": " -> ".join(modules),
            "pooling": _pooling_mode(self.model),
            "model_normalizes": "Normalize" in modules,
            "max_length": int(self.model.max_seq_length or 0),
            "prompt": f"{prompt_name}: {self.model.prompts.get(prompt_name, '')!r}" if prompt_name else "none",
            "truncate_dim": int(self.model.truncate_dim) if self.model.truncate_dim else "none",
            "revision": model_revision(folder, local, config, revision) if config is not None else str(revision or ""),
        }
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = int(dimension())
        super().__init__(spec=spec, backend="st", dim=dim, modalities=("text",), provenance=provenance)

    def to(self, device) -> "SentenceTransformerEncoder":
        self.model.to(device)
        self.device = device
        return self

    def encode_texts(self, texts: list[str]):
        """``SentenceTransformer.encode`` of the batch as a float tensor (the model's prompt, pooling and
        normalization; no normalization added)."""
        return self.model.encode(list(texts), batch_size=max(1, len(texts)), convert_to_tensor=True,
                                 show_progress_bar=False, device=str(self.device)).float()

    def _transformer(self):
        module = self.model[0] if len(self.model) else None
        model = getattr(module, "auto_model", None)
        if model is None:
            raise UnknownModelError(f"--layers: {self.spec} has no transformers model as its first module")
        return module, model

    def _pooling(self):
        for module in self.model:
            if type(module).__name__ == "Pooling":
                return module
        raise UnknownModelError(f"--layers: {self.spec} has no Pooling module to pool its layers with")

    def layer_names(self, modality: str) -> list[str]:
        if modality != "text":
            return super().layer_names(modality)
        _, model = self._transformer()
        self._pooling()  # refused before anything is written
        return ["embeddings"] + [f"layer.{i}" for i in range(int(model.config.num_hidden_layers))]

    def layer_pooling(self, modality: str) -> str:
        return f"the model's Pooling module ({_pooling_mode(self.model)}) on each layer, before Dense and Normalize"

    def encode_texts_layers(self, texts: list[str], layers: list[int]):
        """The final embedding as ``encode`` gives it, and each layer's token states through the model's own
        Pooling module, from one forward pass of the model's modules (its ``all_layer_embeddings``)."""
        import torch

        _, model = self._transformer()
        pooling = self._pooling()
        prompt = self.model.prompts.get(getattr(self.model, "default_prompt_name", None) or "", "") or None
        preprocess = getattr(self.model, "preprocess", None)
        if preprocess is not None:  # sentence-transformers 6: the prompt, and its length for Pooling(include_prompt)
            features = preprocess(list(texts), prompt=prompt)
        else:
            features = self.model.tokenize([(prompt or "") + text for text in texts])
            if prompt:
                features["prompt_length"] = int(self.model.tokenize([prompt])["input_ids"].shape[-1]) - 1
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        previous = model.config.output_hidden_states
        model.config.output_hidden_states = True  # the Transformer module then adds all_layer_embeddings
        try:
            with torch.inference_mode():
                output = self.model(features)
                hidden = {i: pooling(dict(output, token_embeddings=output["all_layer_embeddings"][i]))
                          ["sentence_embedding"].float() for i in layers}
        finally:
            model.config.output_hidden_states = previous
        final = output["sentence_embedding"].float()
        if self.model.truncate_dim:
            final = final[:, :int(self.model.truncate_dim)]
        return final, hidden
