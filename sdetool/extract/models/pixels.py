"""``builtin:pixels-fmnist`` and ``builtin:patches-fmnist``: raw pixels as a pixel-level "encoder".

The baseline of the Prism comparison (a semantic encoder's token grid against a pixel-level one). Both
see exactly what the built-in model's image tower sees (28x28 grayscale, standardised with the
Fashion-MNIST train statistics) and embed an image as its 784 standardised pixels. Their token grids:

- ``pixels-fmnist``: the image itself as a 28x28 grid of 1-channel tokens;
- ``patches-fmnist``: 4x4 patches as a 7x7 grid of 16-channel tokens (what a ViT's patch embedding
  reads, on the same 7x7 grid as ``lit-fmnist``'s conv feature map).

No text tower: they embed images only.
"""

from __future__ import annotations

from sdetool.extract.models.base import Encoder, ImageOutput
from sdetool.extract.models.lit import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD, GrayscaleImages

PATCHES = {"pixels-fmnist": 1, "patches-fmnist": 4}


class PixelEncoder(GrayscaleImages, Encoder):
    """Standardised pixels as embeddings (784-d) and as a token grid of ``patch x patch`` patches."""

    def __init__(self, spec: str, name: str) -> None:
        self.patch = PATCHES[name]
        grid = IMAGE_SIZE // self.patch
        provenance = {
            "revision": f"pixels/patch={self.patch}",
            "image_preprocessing": f'{{"size": {IMAGE_SIZE}, "mode": "L", "mean": {PIXEL_MEAN}, "std": {PIXEL_STD}}}',
            "tokens": f"{grid}x{grid} grid of {self.patch}x{self.patch} pixel patches ({self.patch ** 2} channels)",
        }
        super().__init__(spec=spec, backend="builtin", dim=IMAGE_SIZE * IMAGE_SIZE, modalities=("image",),
                         provenance=provenance)

    def to(self, device) -> "PixelEncoder":
        return self

    def encode_images(self, pixels, tokens: bool = False) -> ImageOutput:
        batch = pixels.shape[0]  # pixels: (B, 1, 28, 28)
        grid = None
        if tokens:
            side, patch = IMAGE_SIZE // self.patch, self.patch
            grid = pixels.reshape(batch, side, patch, side, patch).permute(0, 1, 3, 2, 4).reshape(
                batch, side, side, patch * patch)  # (B, side, side, patch^2): row-major pixels of each patch
        return ImageOutput(embeddings=pixels.reshape(batch, -1), tokens=grid)

    def encode_texts(self, texts: list[str]):
        from sdetool.errors import UnknownModelError

        raise UnknownModelError(f"{self.spec}: a pixel baseline has no text tower (images only)")
