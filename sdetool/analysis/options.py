"""Every choice of an analysis (METHOD.md sections 1-6), validated up front and recorded in the output."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sdetool.errors import BadInputError
from sdetool.runtime.devices import check_device
from sdetool.spectral import spectrum


@dataclass(frozen=True)
class AnalysisOptions:
    """Every choice of an analysis (METHOD.md sections 1-6); recorded in the output.

    Attributes
    ----------
    null : {"ddpa", "dpa", "mp", "permutation"}
        The noise null that places the noise edge (:mod:`sdetool.spectral.nulls`); ``ddpa`` by default.
    null_repeats : int
        ``permutation``: column permutations of the row sample.
    null_rows : int
        ``permutation``: rows of that seeded sample (all rows when there are fewer).
    scale : tuple of int or None
        Also partition ``repeats`` seeded random subsets of each of these row counts (band shares against n).
    repeats : int
        Subsets per size of ``scale``.
    bootstrap : int or None
        Intervals by the delete-a-block jackknife over this many blocks of rows (:mod:`sdetool.spectral.jackknife`).
    ci_level : float
        Coverage of those intervals.
    center : bool
        Subtract the column mean (MP theory is for zero-mean noise).
    l2 : bool
        Scale rows to unit norm first.
    noise_estimator : {"median", "median-gd", "mppca", "iqr"}
    edge_level : float
        Probability that pure noise crosses the noise edge; 0 for the bare MP edge.
    strong_rule : {"iqr", "gd"}
    iqr_k : float
        Tukey fence multiplier of the ``iqr`` strong rule.
    energy : {"power", "amplitude"}
    top_k : int
        Leading directions compared across sets (subspace overlap, principal angles).
    sample : int or None
        Analyze a seeded uniform random subset of this many rows.
    seed : int
        Seed of ``sample`` and of the entry sample of the ``iqr`` estimator.
    drop_nonfinite : bool
        Leave out rows holding NaN or Inf instead of refusing the input.
    alpha_window : (int, int)
        1-based index window of the power-law fit.
    block_rows : int or None
        Rows per streamed block (default: about 32 MiB of float64).
    iqr_entries : int
        Entries sampled for the ``iqr`` noise estimator.
    device : str
        Where the Gram is accumulated: ``auto`` (CUDA for large inputs when a GPU is present),
        ``cpu`` (numpy/BLAS), ``cuda`` or ``cuda:N`` (float64 on the GPU through torch).
    bands : int or None
        FITMM SVD bands: split the components into this many contiguous equal-count bands.
    band_starts : tuple of int or None
        Instead of ``bands``: the 0-based component index where each band after the first starts.
    spatial_bands : int or None
        Prism spatial-frequency bands of the sets' stored token grids (``extract --tokens``).
    spatial_smooth, spatial_center, split_image :
        See :class:`sdetool.analysis.spatial.SpatialOptions`.
    """

    center: bool = True
    l2: bool = False
    noise_estimator: str = "median"
    edge_level: float = 0.01
    strong_rule: str = "iqr"
    iqr_k: float = 1.5
    energy: str = "power"
    top_k: int = 10
    sample: int | None = None
    seed: int = 0
    drop_nonfinite: bool = False
    alpha_window: tuple[int, int] = (10, 100)
    block_rows: int | None = None
    iqr_entries: int = 1 << 20
    device: str = "auto"
    bands: int | None = None
    band_starts: tuple | None = None
    spatial_bands: int | None = None
    spatial_smooth: bool = False
    spatial_center: str = "channel"
    split_image: int | None = None
    null: str = "ddpa"
    null_repeats: int = 10
    null_rows: int = 10000
    scale: tuple | None = None
    repeats: int = 10
    bootstrap: int | None = None
    ci_level: float = 0.9

    def __post_init__(self) -> None:
        try:
            self.partition_options()
        except ValueError as error:
            raise BadInputError(str(error)) from None
        check_device(self.device)
        checks = [
            (self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (self.sample is None or self.sample >= 2, f"sample must be >= 2 rows, got {self.sample}"),
            (self.block_rows is None or self.block_rows >= 1, f"block_rows must be >= 1, got {self.block_rows}"),
            (1 <= self.alpha_window[0] <= self.alpha_window[1],
             f"alpha_window must be 1 <= first <= last, got {tuple(self.alpha_window)}"),
            (self.iqr_entries >= 4, f"iqr_entries must be >= 4, got {self.iqr_entries}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.edge_level == 0 or self.edge_level >= 1e-10,
             f"edge_level must be 0 or at least 1e-10, got {self.edge_level}"),
            (self.bands is None or self.bands >= 1, f"--bands {self.bands}: the number of bands must be >= 1"),
            (self.bands is None or self.band_starts is None, "--bands and --band-starts: give one of them"),
            (self.split_image is None or self.spatial_bands is not None, "--split-image needs --spatial-bands"),
            (self.spatial_bands is not None or (not self.spatial_smooth and self.spatial_center == "channel"),
             "--smooth and --spatial-center shape the spatial bands: they need --spatial-bands"),
            (self.spatial_bands is None or self.sample is None,
             "--spatial-bands with --sample: the spatial view reads every image's grid, so it would not describe the "
             "sampled rows; analyze the token grids without --sample"),
            (self.band_starts is None or all(b > a for a, b in zip((0, *self.band_starts), self.band_starts)),
             f"--band-starts {','.join(map(str, self.band_starts or ()))}: the starts must be positive and strictly "
             f"increasing (0-based; the first band always starts at 0)"),
            (self.null_repeats >= 1, f"--null-repeats {self.null_repeats}: must be >= 1"),
            (self.null_rows >= 2, f"--null-rows {self.null_rows}: must be >= 2"),
            (self.scale is None or (len(self.scale) > 0 and all(size >= 2 for size in self.scale)),
             f"--scale {','.join(map(str, self.scale or ()))}: every size must be at least 2 rows"),
            (self.repeats >= 1, f"--repeats {self.repeats}: must be >= 1"),
            (self.bootstrap is None or self.bootstrap >= 2,
             f"--bootstrap {self.bootstrap}: the jackknife needs at least 2 blocks"),
            (0.0 < self.ci_level < 1.0, f"--ci-level {self.ci_level}: must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInputError(message)
        self.spatial_options()

    def spatial_options(self):
        """The :class:`~sdetool.analysis.spatial.SpatialOptions` of ``--spatial-bands``, or None."""
        if self.spatial_bands is None:
            return None
        from sdetool.analysis.spatial import SpatialOptions

        return SpatialOptions(self.spatial_bands, self.spatial_smooth, self.spatial_center, self.split_image,
                              drop_nonfinite=self.drop_nonfinite)

    def partition_options(self) -> spectrum.PartitionOptions:
        return spectrum.PartitionOptions(
            noise_estimator=self.noise_estimator,
            edge_level=self.edge_level,
            strong_rule=self.strong_rule,
            iqr_k=self.iqr_k,
            energy=self.energy,
            null=self.null,
        )

    def sample_rows(self, dim: int) -> int:
        """Rows of the uniform row sample the analysis keeps: the iqr estimator's entries, the permutation null's rows."""
        rows = math.ceil(self.iqr_entries / dim) if self.noise_estimator == "iqr" else 0
        return max(rows, self.null_rows if self.null == "permutation" else 0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["alpha_window"] = list(self.alpha_window)
        for name in ("band_starts", "scale"):
            out[name] = None if out[name] is None else list(out[name])
        return out
