"""Spatial-frequency bands of stored patch-token grids (the Prism view; METHOD.md section 6).

Streams ``/<key>/tokens`` (n, h, w, c) of sdetool stores in blocks of images through the pure functions
of :mod:`sdetool.spectral.bands`: per image, the energy of each radial band of its 2-D spectrum (power summed
over channels), then the band shares averaged over images with their spread. Memory stays
O(block x h x w x c) whatever ``n`` is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdetool.errors import BadInputError
from sdetool.io.sources import prefetch
from sdetool.spectral import bands

CENTERS = ("channel", "image", "none")
_BLOCK_BYTES = 32 << 20  # float32 bytes of token grids per streamed block
REEXTRACT = "re-extract it with sdetool extract --tokens (it stores /<key>/tokens)"


@dataclass(frozen=True)
class SpatialOptions:
    """Choices of the spatial-band analysis.

    Attributes
    ----------
    bands : int
        ``K`` radial bands of equal width over the normalised frequency [0, 1].
    smooth : bool
        Raised-cosine masks (squares sum to one) instead of hard 0/1 masks.
    center : {"channel", "image", "none"}
        Subtract before the FFT: each channel's mean over all images and positions (``channel``: a
        constant offset such as a ReLU's mean would otherwise sit in the zero frequency of every
        image), each image's own channel means (``image``: no zero-frequency energy left), or nothing.
    split_image : int or None
        0-based image whose iterative band split is returned as arrays.
    block_images : int or None
        Images per streamed block (default: about 32 MiB of float32).
    drop_nonfinite : bool
        Leave out grids holding NaN or Inf instead of refusing the input.
    """

    bands: int
    smooth: bool = False
    center: str = "channel"
    split_image: int | None = None
    block_images: int | None = None
    drop_nonfinite: bool = False

    def __post_init__(self) -> None:
        if self.bands < 1:
            raise BadInputError(f"--spatial-bands {self.bands}: the number of bands must be >= 1")
        if self.center not in CENTERS:
            raise BadInputError(f"--spatial-center {self.center!r}: expected one of {', '.join(CENTERS)}")
        if self.split_image is not None and self.split_image < 0:
            raise BadInputError(f"--split-image {self.split_image}: an image index must be >= 0")

    def to_dict(self) -> dict:
        return {"bands": self.bands, "smooth": self.smooth, "center": self.center, "split_image": self.split_image}


@dataclass(frozen=True)
class SpatialBands:
    """Band energy of one set's token grids.

    Attributes
    ----------
    grid : (int, int)
        ``(h, w)``.
    shares : dict
        ``mean``, ``std``, ``min``, ``max`` over images of each band's share of the image's energy,
        and ``pooled`` (each band's share of all images' energy together); arrays of shape (K,).
    dc_share : float
        Mean share of the zero frequency alone (what a global average pool reads).
    white_shares : ndarray of shape (K,)
        The shares of a spatially white grid (the bands' fractions of the frequency bins): the reference
        a share is read against, since equal-width radial bands hold unequal numbers of bins.
    split : ndarray of shape (K, h, w, c), or None
        The iterative band split of ``options.split_image``'s centred grid.
    split_offset : ndarray of shape (c,), or None
        What the centring subtracted from that grid: ``split.sum(axis=0) + split_offset`` is the stored grid.
    """

    options: SpatialOptions
    sources: tuple
    grid: tuple
    channels: int
    n_images: int
    empty_images: int
    shares: dict
    dc_share: float
    white_shares: np.ndarray
    channel_mean_norm: float | None = None
    split: np.ndarray | None = None
    split_offset: np.ndarray | None = None
    dropped_nonfinite: int = 0

    def edges(self) -> list[float]:
        return [k / self.options.bands for k in range(self.options.bands + 1)]

    def to_dict(self) -> dict:
        from sdetool.analysis.report import _clean

        edges = self.edges()
        per_band = [
            {"band": k, "low": edges[k], "high": edges[k + 1],
             **{("energy_share" if name == "mean" else f"energy_share_{name}"): _clean(values[k])
                for name, values in self.shares.items()},
             "white_noise_share": _clean(self.white_shares[k])}
            for k in range(self.options.bands)
        ]
        split = None
        if self.split is not None:
            energy = (self.split**2).sum(axis=(1, 2, 3))
            split = {"image": self.options.split_image, "component_energy": [_clean(e) for e in energy]}
        return {
            "bands": per_band,
            "k": self.options.bands,
            "smooth": self.options.smooth,
            "center": self.options.center,
            "frequency": "radial, cycles per token, normalised so that the grid's highest frequency is 1",
            "grid": list(self.grid),
            "channels": self.channels,
            "n_images": self.n_images,
            "empty_images": self.empty_images,
            "dropped_nonfinite": self.dropped_nonfinite,
            "dc_share": _clean(self.dc_share),
            "channel_mean_norm": _clean(self.channel_mean_norm),
            "source": self.sources[0] if len(self.sources) == 1 else list(self.sources),
            "split": split,
        }


def token_sources(shards, key: str) -> list | None:
    """The token datasets of a set's shards, or None when the set has none (raises when only some do).

    A store's set ``/<group>/embeddings`` (named by its key, or as ``file.h5:/<group>/embeddings``) has
    its grids at ``/<group>/tokens``.
    """
    from sdetool.io.store import EMBEDDINGS, H5Matrix, open_tokens

    found = []
    for shard in shards:
        suffix = "/" + EMBEDDINGS
        in_store = isinstance(shard, H5Matrix) and shard.dataset.endswith(suffix)
        tokens = open_tokens(shard.path, shard.dataset[: -len(suffix)].strip("/")) if in_store else None
        if tokens is not None and tokens.shape[0] != shard.shape[0]:
            raise BadInputError(f"{tokens.label} has {tokens.shape[0]} grids for {shard.shape[0]} embeddings; "
                                f"{REEXTRACT}")
        found.append(tokens)
    if all(t is None for t in found):
        return None
    missing = [s.label for s, t in zip(shards, found) if t is None]
    if missing:
        raise BadInputError(f"--spatial-bands: {missing[0]} has no token grids; {REEXTRACT}")
    grids = {tuple(t.shape[1:]) for t in found}
    if len(grids) > 1:
        raise BadInputError(f"--spatial-bands: the shards' token grids differ in shape: {sorted(grids)}")
    return found


def check_sources(sources, options: SpatialOptions, label: str) -> None:
    """Refuse, before any work, a K the grid does not allow (naming the limit) or a split image out of range."""
    n_images = sum(s.shape[0] for s in sources)
    height, width = sources[0].shape[1:3]
    limit = bands.max_spatial_bands(height, width)
    if options.bands > limit:
        raise BadInputError(f"--spatial-bands {options.bands}: a {height} x {width} token grid allows at most {limit} "
                            f"equal-width radial bands (more would leave a band without any frequency)")
    if options.split_image is not None and options.split_image >= n_images:
        raise BadInputError(f"--split-image {options.split_image}: {label} has {n_images} images (0-based index)")


def _blocks(sources, block_images: int):
    """Yield ``(first image index, grids)`` blocks of every source in order."""
    offset = 0
    for source in sources:
        with source.reader() as read:
            for start in range(0, source.shape[0], block_images):
                stop = min(start + block_images, source.shape[0])
                yield offset + start, read(start, stop)
        offset += source.shape[0]


def _widen(grids: np.ndarray, first: int, label: str, drop: bool) -> tuple[np.ndarray, np.ndarray]:
    """Float32 (float64 stays) grids, without the non-finite ones when ``drop``; and the mask of those kept."""
    grids = grids if grids.dtype == np.float64 else grids.astype(np.float32)
    finite = np.isfinite(grids).all(axis=(1, 2, 3))
    if finite.all():
        return grids, finite
    if not drop:
        raise BadInputError(f"{label}: the token grid of 0-based image {first + int(np.argmin(finite))} holds NaN or "
                            f"Inf; --drop-nonfinite leaves such grids out")
    return grids[finite], finite


def _channel_mean(sources, block_images: int, options: SpatialOptions, progress, label: str) -> np.ndarray:
    total, count = 0.0, 0
    progress.start(f"{label} (channel means)", sum(s.shape[0] for s in sources))
    try:
        for first, grids in prefetch(_blocks(sources, block_images)):
            scanned = grids.shape[0]
            grids, _ = _widen(grids, first, label, options.drop_nonfinite)
            total = total + grids.sum(axis=(0, 1, 2), dtype=np.float64)
            count += grids.shape[0] * grids.shape[1] * grids.shape[2]
            progress.advance(scanned)
    finally:
        progress.finish()
    return total / max(count, 1)


def _split(stored: np.ndarray, centred: np.ndarray, kept: np.ndarray, first: int, options: SpatialOptions, label: str):
    """``(components, offset)`` of ``options.split_image`` when it falls in this block (None otherwise).

    The components split the centred grid; the offset (c,) is what the centring subtracted from the stored one.
    """
    index = options.split_image
    if index is None or not first <= index < first + kept.size:
        return None
    if not kept[index - first]:
        raise BadInputError(f"--split-image {index}: the token grid of that image in {label} holds NaN or Inf")
    row = int(kept[: index - first].sum())
    grid = centred[row]
    offset = (stored[row].astype(np.float64) - grid.astype(np.float64)).mean(axis=(0, 1))
    return bands.split_bands(grid, options.bands, options.smooth), offset


def spatial_bands(sources, options: SpatialOptions, progress, label: str) -> SpatialBands:
    """Stream the token grids of one set (its shards in order) into :class:`SpatialBands`.

    Raises
    ------
    BadInputError
        ``K`` larger than the grid allows (the message gives the limit), ``split_image`` out of range,
        non-finite grids (unless ``options.drop_nonfinite``).
    """
    check_sources(sources, options, label)
    n_images = sum(s.shape[0] for s in sources)
    height, width, channels = sources[0].shape[1:]
    block = options.block_images or max(1, _BLOCK_BYTES // (4 * height * width * channels))
    mean = _channel_mean(sources, block, options, progress, label) if options.center == "channel" else None
    weights = bands.band_weights(height, width, options.bands, options.smooth)
    statistics = bands.ShareStatistics(options.bands)
    dc_total, split, dropped = 0.0, (None, None), 0
    progress.start(label, n_images)
    try:
        for first, raw in prefetch(_blocks(sources, block)):
            stored, kept = _widen(raw, first, label, options.drop_nonfinite)
            dropped += int(kept.size - kept.sum())
            grids = _centred(stored, options.center, mean)
            energies = bands.band_energies(grids, weights)
            statistics.update(energies)
            dc = np.square(grids.sum(axis=(1, 2), dtype=np.float64)).sum(axis=1) / (height * width)
            totals = energies.sum(axis=1)
            dc_total += float(np.sum(dc[totals > 0] / totals[totals > 0]))
            split = _split(stored, grids, kept, first, options, label) or split
            progress.advance(raw.shape[0])
    finally:
        progress.finish()
    return SpatialBands(
        options=options, sources=tuple(s.path for s in sources), grid=(height, width), channels=channels,
        n_images=n_images - dropped, empty_images=statistics.empty, shares=statistics.summary(),
        dc_share=dc_total / statistics.count if statistics.count else float("nan"),
        white_shares=weights.sum(axis=1) / (height * width),
        channel_mean_norm=None if mean is None else float(np.linalg.norm(mean)), split=split[0], split_offset=split[1],
        dropped_nonfinite=dropped,
    )


def _centred(grids: np.ndarray, center: str, mean: np.ndarray | None) -> np.ndarray:
    if center == "channel":
        return grids - mean.astype(grids.dtype)
    if center == "image":
        return grids - grids.mean(axis=(1, 2), keepdims=True)
    return grids
