"""``sdetool.SpectralBands``: the strong / weak / noise partition as a scikit-learn transformer.

``fit`` runs the same analysis as ``sdetool analyze`` on the matrix (the same null, rules and numbers:
``energy_shares_`` equals the report's band shares); ``transform`` projects onto the kept bands (by default
strong and weak: the noise band removed, embedding denoising as one pipeline step), ``inverse_transform``
maps back to the input space. scikit-learn is an optional extra (``pip install 'sdetool[sklearn]'``).

>>> from sklearn.pipeline import make_pipeline                                   # doctest: +SKIP
>>> denoise = make_pipeline(SpectralBands(), FunctionTransformer(...))           # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

try:
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as error:  # pragma: no cover - the extra is missing
    raise ImportError("sdetool.SpectralBands needs scikit-learn (pip install 'sdetool[sklearn]')") from error

from sdetool.spectral.spectrum import BANDS

DEFAULT_KEEP = ("strong", "weak")


class SpectralBands(TransformerMixin, BaseEstimator):
    """The spectral partition of ``X`` (n, d) into strong, weak and noise bands.

    Parameters
    ----------
    null : {"ddpa", "dpa", "mp", "permutation"}
        The noise null (``analyze --null``).
    strong_rule : {"iqr", "gd"}
        The strong threshold (``analyze --strong-rule``).
    center : bool
        Subtract the column means first (``analyze`` centres by default).
    keep : tuple of str
        The bands ``transform`` keeps by default.

    Attributes
    ----------
    n_components_ : dict
        Components per band.
    energy_shares_ : dict
        Energy share per band, as ``analyze`` reports it.
    noise_edge_ : float
        The singular-value noise edge of the null.
    singular_values_ : ndarray (p,)
        Descending.
    components_ : ndarray (p, d)
        The right singular vectors, row ``i`` for ``singular_values_[i]``.
    bands_ : ndarray of str (p,)
        The band of each component.
    mean_ : ndarray (d,)
        The column means subtracted (zeros when ``center`` is false).
    report_ : dict
        The full ``analyze`` report of the fitted matrix.
    """

    def __init__(self, null: str = "ddpa", strong_rule: str = "iqr", center: bool = True,
                 keep: tuple = DEFAULT_KEEP) -> None:
        self.null = null
        self.strong_rule = strong_rule
        self.center = center
        self.keep = keep

    def fit(self, X, y=None):
        from sdetool.analysis.analyze import analyze
        from sdetool.analysis.options import AnalysisOptions

        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        options = AnalysisOptions(null=self.null, strong_rule=self.strong_rule, center=bool(self.center))
        report = analyze(np.ascontiguousarray(X), options=options, local=True, vectors=1 << 30)
        entry = report["embeddings"]
        document = entry.to_dict()
        values = np.asarray(entry.partition.singular_values, dtype=np.float64)
        vectors = entry.top_vectors if entry.top_vectors is not None else np.zeros((X.shape[1], 0))
        count = min(values.size, vectors.shape[1])
        labels = np.asarray(entry.partition.labels)[:count] if len(entry.partition.labels) else np.full(count, 2)
        self.singular_values_ = values[:count]
        self.components_ = np.ascontiguousarray(vectors[:, :count].T, dtype=np.float64)
        self.bands_ = np.array([BANDS[int(label)] for label in labels], dtype=object)
        self.n_components_ = {band: int(document["bands"][band]["count"]) for band in BANDS}
        self.energy_shares_ = {band: document["bands"][band]["energy_share"] for band in BANDS}
        edge = document["noise"]["edge"]
        self.noise_edge_ = float(edge) if edge is not None else float("nan")
        self.mean_ = X.mean(axis=0).astype(np.float64) if self.center else np.zeros(X.shape[1])
        self.report_ = document
        return self

    def _kept(self, keep) -> np.ndarray:
        keep = tuple(self.keep if keep is None else ((keep,) if isinstance(keep, str) else keep))
        unknown = [band for band in keep if band not in BANDS]
        if unknown:
            raise ValueError(f"keep: {unknown[0]!r} is not a band; expected some of {', '.join(BANDS)}")
        return np.isin(self.bands_, keep)

    def transform(self, X, keep=None):
        """Coordinates of ``X`` on the kept bands' components, shape ``(n, kept components)``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        components = self.components_[self._kept(keep)]
        return ((X - self.mean_) @ components.T).astype(X.dtype, copy=False)

    def inverse_transform(self, Z, keep=None):
        """Back to the input space from :meth:`transform`'s coordinates (the kept bands' part of ``X``)."""
        check_is_fitted(self)
        components = self.components_[self._kept(keep)]
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim != 2 or Z.shape[1] != components.shape[0]:
            raise ValueError(f"Z: expected shape (n, {components.shape[0]}), got {Z.shape}")
        return Z @ components + self.mean_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
