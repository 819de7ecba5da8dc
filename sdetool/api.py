"""The Python API that the command line mirrors.

>>> from sdetool.api import analyze, AnalysisOptions
>>> report = analyze("emb.h5", keys=["image", "text"], options=AnalysisOptions(strong_rule="gd"))  # doctest: +SKIP
>>> report["image"].to_dict()["bands"]["noise"]["energy_share"]                                      # doctest: +SKIP
"""

from sdetool.analysis import AnalysisOptions, AnalysisReport, CrossAnalysis, Progress, SetAnalysis, analyze
from sdetool.checks import evaluate as evaluate_checks
from sdetool.checks import parse_check

__all__ = [
    "AnalysisOptions",
    "AnalysisReport",
    "CrossAnalysis",
    "Progress",
    "SetAnalysis",
    "analyze",
    "evaluate_checks",
    "parse_check",
]
