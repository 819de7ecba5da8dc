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

from sdetool.analysis.analyze import AnalysisOptions, AnalysisReport, CrossAnalysis, Progress, SetAnalysis, analyze
from sdetool.analysis.checks import check_paths
from sdetool.analysis.checks import evaluate as evaluate_checks
from sdetool.analysis.checks import parse_check
from sdetool.analysis.report import report_paths
from sdetool.extract.data.items import ItemSource, open_source
from sdetool.extract.extraction import ExtractOptions, ExtractResult, extract
from sdetool.extract.models import backend_status, load_model
from sdetool.finetune.run import FinetuneOptions, FinetuneResult, finetune
from sdetool.finetune.sde import SDEConfig
from sdetool.io.checkpoint import incomplete_message
from sdetool.io.export import ExportResult, export
from sdetool.results.compare import Comparison, compare, compare_paths, compare_states
from sdetool.results.figures import PlotOptions, plot
from sdetool.results.reproduce import ReproduceOptions, ReproduceResult, reproduce
from sdetool.results.tables import (check_output_path, render_analysis, render_checks, render_compare, render_extract,
                                    render_finetune, render_models, write_csv, write_json, write_npz)
from sdetool.runtime.distributed import current_world
from sdetool.spectral.bands import band_energies, band_weights, split_bands, svd_band_reconstructions
from sdetool.spectral.spectrum import PartitionOptions

__all__ = [
    "AnalysisOptions",
    "AnalysisReport",
    "Comparison",
    "CrossAnalysis",
    "ExtractOptions",
    "ExportResult",
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
    "export",
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

def __getattr__(name):
    """``SpectralBands`` (the scikit-learn transformer) loads scikit-learn, an optional extra: on first use."""
    if name == "SpectralBands":
        from sdetool.analysis.estimator import SpectralBands

        return SpectralBands
    raise AttributeError(f"module 'sdetool.api' has no attribute {name!r}")


# What the command line (sdetool.cli) reaches beyond the public names: option objects, the JSON paths that
# --fail-if may name, the renderers and writers of its output. Stable enough for front ends; not in __all__.
FRONT_END = (
    "PartitionOptions", "SDEConfig", "backend_status", "check_output_path", "check_paths", "compare_paths",
    "current_world", "incomplete_message", "render_analysis", "render_checks", "render_compare", "render_extract",
    "render_finetune", "render_models", "report_paths", "write_csv", "write_json", "write_npz",
)
