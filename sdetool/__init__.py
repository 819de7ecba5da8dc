"""sdetool: spectral structure of embeddings (strong / weak / noise subspaces) as a CLI and a library.

The public Python API lives in :mod:`sdetool.api`; it is imported lazily so that ``import sdetool``
and ``sdetool --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "analyze", "AnalysisOptions"]


def __getattr__(name):
    if name in ("analyze", "AnalysisOptions"):
        from sdetool import api

        return getattr(api, name)
    raise AttributeError(f"module 'sdetool' has no attribute {name!r}")
