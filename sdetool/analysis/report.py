"""Result objects of an analysis: one set, a cross-modal pair, the whole report.

Frozen dataclasses; ``to_dict()`` gives the ``sdetool.analysis/1`` JSON contract
(``docs/json-schema.md``) and ``to_frame()`` a pandas table of the components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sdetool import __version__
from sdetool.io import versions
from sdetool.spectral import spectrum

SCHEMA = versions.schema("analysis")


def _clean(value):
    """JSON-safe: NaN/Inf -> None, numpy scalars -> Python."""
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _clean_list(values) -> list:
    return [_clean(v) for v in np.asarray(values).tolist()]


@dataclass(frozen=True)
class SetAnalysis:
    """The analysis of one embedding set (all its shards as one matrix)."""

    key: str
    sources: tuple[str, ...]
    n_rows: int
    n_samples: int
    dim: int
    dtype: str
    centered: bool
    normalized: bool
    partition: spectrum.SpectralPartition
    metrics: dict
    unit_mean: np.ndarray
    options: object  # AnalysisOptions
    input_attrs: dict = field(default_factory=dict)
    dropped_nonfinite: int = 0
    zero_rows: int = 0
    top_vectors: np.ndarray | None = None
    device: str = "cpu"
    svd_bands: tuple | None = None  # of bands.SvdBand (--bands / --band-starts)
    spatial_bands: object | None = None  # spatial.SpatialBands (--spatial-bands)
    distinct_rows: int | None = None  # rows that are not repeats of another
    intervals: dict | None = None  # statistic -> jackknife.Interval (--bootstrap)
    scale: list | None = None  # band shares of row subsets (--scale)

    @property
    def singular_values(self) -> np.ndarray:
        return self.partition.singular_values

    @property
    def notes(self) -> list[str]:
        """Why the set is degenerate and why each null value of its report could not be computed."""
        return [*_input_notes(self), *_quantized_notes(self), *_sample_notes(self), *([self.partition.note] if self.partition.note else []),
                *_fit_notes(self.partition), *_metric_notes(self), *_view_notes(self)]

    def _interval(self, name: str):
        """``[lo, hi]`` of a statistic's jackknife interval, or None without ``--bootstrap``."""
        found = (self.intervals or {}).get(name)
        return None if found is None else found.bounds()

    def to_dict(self) -> dict:
        """The ``sdetool.analysis/1`` object of this set (see ``docs/json-schema.md``)."""
        part = self.partition
        options = part.options
        bands = {}
        for index, name in enumerate(spectrum.BANDS):
            members = part.labels == index
            bands[name] = {
                "count": int(members.sum()),
                "energy_share": _clean(part.shares[index]),
                "first_index": int(np.argmax(members)) + 1 if members.any() else None,
                "energy_share_ci": self._interval(f"{name}.energy_share"),
                "count_ci": self._interval(f"{name}.count"),
            }
        return {
            "schema": SCHEMA,
            "source": self.sources[0] if len(self.sources) == 1 else list(self.sources),
            "shards": list(self.sources),
            "key": self.key,
            "n": self.n_samples,
            "n_samples": self.n_samples,
            "n_rows": self.n_rows,
            "distinct_rows": self.distinct_rows,
            "dim": self.dim,
            "dtype": self.dtype,
            "centered": self.centered,
            "normalized": self.normalized,
            "input_normalized": _clean(self.input_attrs.get("normalized")),
            "modality": self.input_attrs.get("modality"),
            "model": self.input_attrs.get("model"),
            "sample": self.options.sample,
            "dropped_nonfinite": self.dropped_nonfinite,
            "zero_rows": self.zero_rows,
            "n_effective": part.n,
            "beta": _clean(_beta(part)),
            "singular_values": _clean_list(part.singular_values),
            "noise": {
                "null": options.null,
                "estimator": options.noise_estimator,
                "sigma": _clean(part.sigma),
                "edge": _clean(part.edge),
                "edge_ci": self._interval("edge"),
                "edge_level": options.edge_level,
                "mp_edge": _clean(part.mp_edge),
                "mp_fit": _mp_fit(part),
                "signal_rank": part.signal_rank,
                "numerical_rank": part.numerical_rank,
                "repetition": _clean(part.repetition),
                "null_repeats": self.options.null_repeats if options.null == "permutation" else None,
                "null_rows": self.options.null_rows if options.null == "permutation" else None,
                "note": part.note or (None if part.numerical_rank == part.singular_values.size else (
                    f"rank-deficient at working precision: {part.singular_values.size - part.numerical_rank} "
                    f"components are numerically zero; the noise level was estimated in the "
                    f"{part.numerical_rank}-dimensional column space (a matrix without noise there has no "
                    f"noise band to find)")),
            },
            "strong_rule": {
                "name": options.strong_rule,
                "threshold": _clean(part.threshold),
                "iqr_k": options.iqr_k if options.strong_rule == "iqr" else None,
            },
            "energy": options.energy,
            "bands": bands,
            "components": {
                "band": part.band_names(),
                "energy_share": _clean_list(part.component_shares),
                "snr": _clean_list(part.snr),
            },
            "metrics": {**{name: _clean(value) for name, value in self.metrics.items()},
                        "effective_rank_ci": self._interval("effective_rank")},
            "uncertainty": None if not self.intervals else {
                "method": "delete-a-block jackknife", "blocks": self.options.bootstrap,
                "ci_level": self.options.ci_level},
            "scale": self.scale,
            "svd_bands": self._svd_bands(),
            "spatial_bands": None if self.spatial_bands is None else self.spatial_bands.to_dict(),
            "notes": self.notes,
            "device": self.device,
            "options": self.options.to_dict(),
            "sdetool_version": __version__,
        }

    def _svd_bands(self) -> dict | None:
        if self.svd_bands is None:
            return None
        return {
            "k": len(self.svd_bands),
            "starts": [band.first for band in self.svd_bands],
            "rule": "equal-count" if self.options.band_starts is None else "given starts",
            "energy": self.partition.options.energy,
            "bands": [{name: _clean(value) for name, value in band.to_dict().items()} for band in self.svd_bands],
        }

    def to_frame(self):
        """Per-component table: index (1-based), singular_value, band, energy_share, snr."""
        import pandas as pd

        part = self.partition
        return pd.DataFrame(
            {
                "key": self.key,
                "index": np.arange(1, part.singular_values.size + 1),
                "singular_value": part.singular_values,
                "band": part.band_names(),
                "energy_share": part.component_shares,
                "snr": part.snr,
            }
        )


def _beta(part: spectrum.SpectralPartition) -> float:
    """``p / q`` of the noise model the partition used: ``n x m`` when the matrix is rank-deficient (rank m)."""
    columns = part.d
    if part.numerical_rank is not None and 2 <= part.numerical_rank < min(part.n, part.d):
        columns = part.numerical_rank
    if part.n < 1:
        return float("nan")
    return min(part.n, columns) / max(part.n, columns)


def _mp_fit(part: spectrum.SpectralPartition) -> dict:
    """How well the bulk follows the single-sigma Marchenko-Pastur law (Kolmogorov-Smirnov distance)."""
    ks = _clean(part.mp_ks)
    notes = _fit_notes(part)
    return {"ks": ks, "fits": None if ks is None else ks <= part.mp_ks_limit, "limit": part.mp_ks_limit,
            "note": notes[0] if notes else None}


def _fit_notes(part: spectrum.SpectralPartition) -> list[str]:
    """A note when the bulk is farther than its limit (:func:`sdetool.spectral.nulls.ks_fit_limit`) from the single-sigma law."""
    ks = _clean(part.mp_ks)
    if ks is None or ks <= part.mp_ks_limit:
        return []
    return [f"the noise bulk does not follow one Marchenko-Pastur law (Kolmogorov-Smirnov distance {ks:.3f} > "
            f"{part.mp_ks_limit:.3g}): the columns' variances differ or the noise is not white, which the "
            f"single-sigma mp null reads as signal"]


def _quantized_notes(result: SetAnalysis) -> list[str]:
    """Integer (quantized) embeddings are analyzed as their integer values, widened exactly to float64."""
    if not str(result.dtype).startswith(("int", "uint")):
        return []
    return [f"quantized embeddings ({result.dtype}): analyzed as their integer values, widened exactly to float64; "
            "rounding to integer steps adds noise of about 0.29 step per entry (1/sqrt(12)), part of the noise band"]


def _sample_notes(result: SetAnalysis) -> list[str]:
    """Repeated rows: what the partition took as the sample."""
    distinct, n = result.distinct_rows, result.n_samples
    if distinct is None or distinct >= n or n < 2:
        return []
    return [f"repeated rows: {n:,} rows but only {distinct:,} distinct; the partition treats the distinct rows as the "
            f"sample (n = {result.partition.n:,}), since a repeated row adds no direction"]


def _input_notes(result: SetAnalysis) -> list[str]:
    """What makes a set degenerate, in terms of its rows (before the partition's own note)."""
    n, rank, components = result.n_samples, result.partition.numerical_rank, result.singular_values.size
    if n == 0:
        return [f"no usable rows: all {result.dropped_nonfinite} held NaN or Inf and were dropped"]
    if n == 1 and result.centered:
        return ["one row: centring leaves no degree of freedom (n - 1 = 0), so there are no singular components"]
    notes = []
    if n == 2 and result.centered:
        notes.append("two rows: centring leaves one degree of freedom (n - 1 = 1), so there is one singular component")
    if rank == 0 and (result.zero_rows == n or not result.centered):
        notes.append("every row is zero: the set spans no direction (effective rank 0)")
    elif rank == 0:
        notes.append("every row is the same vector: the centred matrix is zero, the set has collapsed to one point "
                     "(effective rank 0)")
    elif rank == 1 and components > 1:
        where = "the centred rows" if result.centered else "the rows"
        notes.append(f"{where} span a single direction: the set has collapsed to a line")
    return notes


def _metric_notes(result: SetAnalysis) -> list[str]:
    """Why each null metric could not be computed."""
    metrics, notes = result.metrics, []
    undefined = [name for name in ("stable_rank", "participation_ratio") if _clean(metrics.get(name)) is None]
    if undefined:
        notes.append(f"{' and '.join(undefined)} null: the spectrum has no energy (no nonzero singular value)")
    window, components = metrics.get("power_law_window"), result.singular_values.size
    if window is None:
        notes.append(f"power_law_alpha and power_law_r2 null: the spectrum has {components} "
                     f"component{'' if components == 1 else 's'}, fewer than the first index of the fit window "
                     f"({result.options.alpha_window[0]})")
    elif _clean(metrics.get("power_law_alpha")) is None:
        notes.append(f"power_law_alpha and power_law_r2 null: the fit needs at least 3 positive eigenvalues in its "
                     f"window i={window[0]}..{window[1]}")
    elif _clean(metrics.get("power_law_r2")) is None:
        notes.append("power_law_r2 null: the eigenvalues in the fit window are all equal (nothing to explain)")
    if _clean(metrics.get("mean_cosine")) is None:
        nonzero = result.n_samples - result.zero_rows
        notes.append(f"mean_cosine null: it needs at least 2 nonzero rows, the set has {nonzero}")
    return notes


def _view_notes(result: SetAnalysis) -> list[str]:
    """Why a band view asked for is null, or holds null shares."""
    options, notes = result.options, []
    if (options.bands is not None or options.band_starts is not None) and result.svd_bands is None:
        notes.append("svd_bands null: there are no singular components to split (p = 0)")
    elif result.svd_bands is not None and all(math.isnan(band.energy_share) for band in result.svd_bands):
        notes.append("svd_bands energy shares and effective ranks null: the spectrum has no energy")
    view = result.spatial_bands
    if view is not None and np.isnan(view.shares["mean"]).all():
        why = ("no token grid is left (every one held NaN or Inf)" if view.n_images == 0 else
               f"every token grid is zero after centring ({view.options.center})")
        notes.append(f"spatial_bands shares and dc_share null: {why}")
    return notes


@dataclass(frozen=True)
class CrossAnalysis:
    """Cross-modal comparison of two sets (rows paired when ``paired``)."""

    a: str
    b: str
    paired: bool
    hellinger: float
    top_k: int | None = None
    subspace_overlap: float | None = None
    principal_angles: np.ndarray | None = None
    modality_gap: float | None = None
    note: str | None = None
    svd_bands: tuple | None = None  # of bands.BandAlignment

    @property
    def name(self) -> str:
        return f"{self.a}~{self.b}"

    def to_dict(self) -> dict:
        angles = None if self.principal_angles is None else _clean_list(np.degrees(self.principal_angles))
        return {
            "a": self.a,
            "b": self.b,
            "paired": self.paired,
            "hellinger": _clean(self.hellinger),
            "top_k": self.top_k,
            "subspace_overlap": _clean(self.subspace_overlap),
            "subspace_distance": None if self.subspace_overlap is None else _clean(1.0 - self.subspace_overlap),
            "principal_angles_deg": angles,
            "modality_gap": _clean(self.modality_gap),
            "note": self.note,
            "svd_bands": None if self.svd_bands is None else [
                {name: _clean(value) for name, value in band.to_dict().items()} for band in self.svd_bands],
        }


@dataclass(frozen=True)
class AnalysisReport:
    """All analysed sets, in the order asked for, and every pairwise cross-modal comparison."""

    sets: dict
    cross: tuple = ()

    def __getitem__(self, key: str) -> SetAnalysis:
        return self.sets[key]

    def to_dict(self) -> dict:
        """One set: the set object itself. Several: ``{"schema", "sets": {key: ...}, "cross": {...}}``."""
        if len(self.sets) == 1 and not self.cross:
            return next(iter(self.sets.values())).to_dict()
        return {
            "schema": SCHEMA,
            "sets": {key: result.to_dict() for key, result in self.sets.items()},
            "cross": {pair.name: pair.to_dict() for pair in self.cross},
            "sdetool_version": __version__,
        }

    def split_arrays(self) -> dict:
        """``--split-image``: per set with token grids, ``<key>`` (K, h, w, c) components and ``<key>_offset`` (c,)
        what the centring subtracted (components summed plus the offset give the stored grid)."""
        arrays = {}
        for key, result in self.sets.items():
            view = result.spatial_bands
            if view is not None and view.split is not None:
                arrays[key] = view.split
                arrays[f"{key}_offset"] = view.split_offset
        return arrays

    def to_frame(self):
        """The per-component tables of every set, stacked."""
        import pandas as pd

        return pd.concat([result.to_frame() for result in self.sets.values()], ignore_index=True)


def report_paths() -> dict:
    """The skeleton of every path a report can have, for checking ``--fail-if`` before a run."""
    from sdetool.analysis.checks import ANY, INDEX

    band = dict.fromkeys(["count", "energy_share", "first_index", "energy_share_ci", "count_ci"])
    shares = {name: {"energy_share": dict.fromkeys(["mean", "sd"]), "count": dict.fromkeys(["mean", "sd"])}
              for name in spectrum.BANDS}
    one = {
        "schema": None, "source": None, "shards": None, "key": None, "n_samples": None, "n_rows": None,
        "n": None, "distinct_rows": None,
        "uncertainty": dict.fromkeys(["method", "blocks", "ci_level"]),
        "scale": {INDEX: {"n": None, "repeats": None, "bands": shares}},
        "dim": None, "dtype": None, "centered": None, "normalized": None, "input_normalized": None,
        "modality": None, "model": None, "sample": None, "dropped_nonfinite": None, "zero_rows": None,
        "n_effective": None, "beta": None, "singular_values": None, "device": None, "energy": None,
        "noise": {**dict.fromkeys(["null", "estimator", "sigma", "edge", "edge_ci", "edge_level", "mp_edge",
                                   "signal_rank", "numerical_rank", "repetition", "null_repeats", "null_rows", "note"]),
                  "mp_fit": dict.fromkeys(["ks", "fits", "limit", "note"])},
        "strong_rule": dict.fromkeys(["name", "threshold", "iqr_k"]),
        "bands": {name: band for name in spectrum.BANDS},
        "components": dict.fromkeys(["band", "energy_share", "snr"]),
        "metrics": dict.fromkeys(["effective_rank", "effective_rank_on", "stable_rank", "participation_ratio",
                                  "power_law_alpha", "power_law_r2", "power_law_window", "mean_cosine",
                                  "effective_rank_ci"]),
        "svd_bands": {"k": None, "starts": None, "rule": None, "energy": None, "bands": {INDEX: dict.fromkeys(
            ["band", "first_index", "last_index", "count", "energy_share", "effective_rank", "singular_value_max",
             "singular_value_min"])}},
        "spatial_bands": {
            "bands": {INDEX: dict.fromkeys(["band", "low", "high", "energy_share", "energy_share_std",
                                          "energy_share_min", "energy_share_max", "energy_share_pooled",
                                          "white_noise_share"])},
            **dict.fromkeys(["k", "smooth", "center", "frequency", "grid", "channels", "n_images", "empty_images",
                             "dc_share", "channel_mean_norm", "source", "dropped_nonfinite"]),
            "split": {"image": None, "component_energy": None},
        },
        "notes": None,
        "options": {ANY: None},
        "sdetool_version": None,
    }
    pair = dict.fromkeys(["a", "b", "paired", "hellinger", "top_k", "subspace_overlap", "subspace_distance",
                          "principal_angles_deg", "modality_gap", "note"])
    pair["svd_bands"] = {INDEX: dict.fromkeys(["band", "dimensions", "subspace_overlap", "subspace_distance",
                                             "hellinger"])}
    return {**one, "sets": {ANY: one}, "cross": {ANY: pair}}
