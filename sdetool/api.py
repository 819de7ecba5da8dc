"""The Python API that the command line mirrors.

>>> from sdetool.api import extract, ExtractOptions, open_source
>>> result = extract("builtin:lit-fmnist", open_source(), "demo.h5", ExtractOptions(batch_size=256))  # doctest: +SKIP
>>> from sdetool.api import analyze, AnalysisOptions
>>> report = analyze("emb.h5", keys=["image", "text"], options=AnalysisOptions(strong_rule="gd"))  # doctest: +SKIP
>>> report["image"].to_dict()["bands"]["noise"]["energy_share"]                                      # doctest: +SKIP
>>> from sdetool.api import finetune, FinetuneOptions, compare, plot, PlotOptions
>>> run = finetune("runs/sde", FinetuneOptions(steps=300))                                           # doctest: +SKIP
>>> compare(["runs/sde"]).to_dict()["sets"]["image"]["bands"]["noise"]["energy_share"]["delta"]     # doctest: +SKIP
>>> plot("bands", ["runs/sde"], "bands.png")                                                        # doctest: +SKIP
>>> from sdetool.api import reproduce, ReproduceOptions
>>> reproduce("results", ReproduceOptions(quick=True))                                               # doctest: +SKIP
>>> report = analyze("tok.h5", ["image"], AnalysisOptions(bands=4, spatial_bands=4))                 # doctest: +SKIP
>>> report["image"].to_dict()["spatial_bands"]["bands"][0]["energy_share"]                           # doctest: +SKIP
>>> from sdetool.api import svd_band_reconstructions, split_bands
>>> parts = svd_band_reconstructions(X, 4)   # (4, n, d); parts.sum(0) == X                           # doctest: +SKIP
"""

from sdetool.analysis import AnalysisOptions, AnalysisReport, CrossAnalysis, Progress, SetAnalysis, analyze
from sdetool.bands import band_energies, band_weights, split_bands, svd_band_reconstructions
from sdetool.checks import evaluate as evaluate_checks
from sdetool.checks import parse_check
from sdetool.compare import Comparison, compare, compare_states
from sdetool.data.items import ItemSource, open_source
from sdetool.extract import ExtractOptions, ExtractResult, extract
from sdetool.figures import PlotOptions, plot
from sdetool.finetune import FinetuneOptions, FinetuneResult, finetune
from sdetool.models import load_model
from sdetool.reproduce import ReproduceOptions, ReproduceResult, reproduce

__all__ = [
    "AnalysisOptions",
    "AnalysisReport",
    "Comparison",
    "CrossAnalysis",
    "ExtractOptions",
    "ExtractResult",
    "FinetuneOptions",
    "FinetuneResult",
    "ItemSource",
    "PlotOptions",
    "Progress",
    "ReproduceOptions",
    "ReproduceResult",
    "SetAnalysis",
    "analyze",
    "band_energies",
    "band_weights",
    "compare",
    "compare_states",
    "evaluate_checks",
    "extract",
    "finetune",
    "load_model",
    "open_source",
    "parse_check",
    "plot",
    "reproduce",
    "split_bands",
    "svd_band_reconstructions",
]
