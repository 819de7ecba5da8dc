"""The Python API that the command line mirrors.

>>> from sdetool.api import extract, ExtractOptions, open_source
>>> result = extract("builtin:lit-fmnist", open_source(), "demo.h5", ExtractOptions(batch_size=256))  # doctest: +SKIP
>>> from sdetool.api import analyze, AnalysisOptions
>>> report = analyze("emb.h5", keys=["image", "text"], options=AnalysisOptions(strong_rule="gd"))  # doctest: +SKIP
>>> report["image"].to_dict()["bands"]["noise"]["energy_share"]                                      # doctest: +SKIP
"""

from sdetool.analysis import AnalysisOptions, AnalysisReport, CrossAnalysis, Progress, SetAnalysis, analyze
from sdetool.checks import evaluate as evaluate_checks
from sdetool.checks import parse_check
from sdetool.data.items import ItemSource, open_source
from sdetool.extract import ExtractOptions, ExtractResult, extract
from sdetool.models import load_model

__all__ = [
    "AnalysisOptions",
    "AnalysisReport",
    "CrossAnalysis",
    "ExtractOptions",
    "ExtractResult",
    "ItemSource",
    "Progress",
    "SetAnalysis",
    "analyze",
    "evaluate_checks",
    "extract",
    "load_model",
    "open_source",
    "parse_check",
]
