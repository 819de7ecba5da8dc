"""``open_clip:`` models (optional): ``open_clip:ARCH`` with ``@TAG_OR_FILE`` for the weights.

open_clip needs torchvision, which breaks next to some torch builds; when it does not import, the
backend reports itself unavailable and the spec is refused with the reason.
"""

from __future__ import annotations

import os

from sdetool.errors import UnknownModelError
from sdetool.extract.models.base import Encoder, ImageOutput, folder_fingerprint


def import_open_clip():
    """The ``open_clip`` module, or :class:`UnknownModelError` saying why it is unavailable."""
    try:
        import open_clip
    except (ImportError, RuntimeError, OSError, AttributeError) as error:  # torchvision may fail to register its ops
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnknownModelError(f"the open_clip backend is unavailable here: {reason} "
                                "(pip install open_clip_torch with a matching torchvision)") from None
    return open_clip


class OpenCLIPEncoder(Encoder):
    """An open_clip model: ``encode_image`` / ``encode_text`` and its own preprocessing."""

    def __init__(self, spec: str, architecture: str, pretrained: str | None = None) -> None:
        open_clip = import_open_clip()
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(architecture, pretrained=pretrained)
        except (RuntimeError, OSError, ValueError) as error:
            raise UnknownModelError(f"{spec}: open_clip cannot build {architecture!r} with weights {pretrained!r}: "
                                    f"{str(error).splitlines()[0]}") from None
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.device = "cpu"
        revision = folder_fingerprint(os.path.dirname(pretrained)) if pretrained and os.path.isfile(pretrained) else pretrained or ""
        dim = int(self.model.text_projection.shape[-1]) if getattr(self.model, "text_projection", None) is not None \
            else int(getattr(self.model.visual, "output_dim"))
        super().__init__(spec=spec, backend="open_clip", dim=dim, modalities=("image", "text"),
                         provenance={"architecture": architecture, "revision": str(revision),
                                     "pooling": "the model's own (encode_image / encode_text)"})

    def to(self, device) -> "OpenCLIPEncoder":
        self.model.to(device)
        self.device = device
        return self

    def image_transform(self):
        return self.preprocess

    def encode_images(self, pixels, tokens: bool = False) -> ImageOutput:
        if tokens:
            raise UnknownModelError(f"{self.spec}: --tokens is not supported for open_clip models")
        return ImageOutput(embeddings=self.model.encode_image(pixels))

    def encode_texts(self, texts: list[str]):
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
