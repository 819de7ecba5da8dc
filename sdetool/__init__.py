"""sdetool: spectral structure of embeddings (strong / weak / noise subspaces) as a CLI and a library.

What a notebook reaches for first is here, loaded on first use so that ``import sdetool`` and ``sdetool --help``
stay fast::

    import sdetool
    report = sdetool.analyze(X)                         # an array or tensor (n, d); or {"image": X, "text": Y}
    report.to_dict()["bands"]["noise"]["energy_share"]
    sdetool.compare(X_before, X_after).to_dict()        # the band table with deltas
    sdetool.plot("spectrum", X)                         # a matplotlib Figure (shown inline in Jupyter)

The full public API is :mod:`sdetool.api`.
"""

__version__ = "0.1.0"

# The names of sdetool.api a notebook uses first; every other public name is in sdetool.api (``extract`` and
# ``finetune`` too: at the root those names are the stage packages sdetool.extract and sdetool.finetune).
NOTEBOOK = ("analyze", "compare", "plot", "export", "AnalysisOptions", "PlotOptions", "load_model", "open_source",
            "SpectralBands")

__all__ = ["__version__", *NOTEBOOK]


def __getattr__(name):
    if name in NOTEBOOK:
        from sdetool import api  # SpectralBands too: api loads it (and scikit-learn) on first use

        return getattr(api, name)
    raise AttributeError(f"module 'sdetool' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(NOTEBOOK))
