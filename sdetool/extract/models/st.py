"""``st:`` text encoders: sentence-transformers folders (or any transformers encoder) with pooling.

Loads through plain ``transformers`` (``AutoTokenizer`` + ``AutoModel``), reading the
sentence-transformers metadata when the folder has it: the pooling mode (``1_Pooling/config.json``),
whether a ``Normalize`` module follows (``modules.json``) and the maximum sequence length
(``sentence_bert_config.json``). Without it: mean pooling over the attention mask, no normalization.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

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
                    modes = [mode for mode in POOLINGS if settings.get(f"pooling_mode_{mode}_tokens")]
                    pooling = modes[0] if modes else "mean"
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
        import torch

        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length,
                               return_tensors="pt")
        batch = {name: value.to(self.device) for name, value in batch.items()}
        states = self.model(**batch).last_hidden_state  # (B, T, c)
        pooled = pool(states, batch["attention_mask"], self.config.pooling)
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return pooled
