"""The public API: every name sdetool.api had before the package was split into stages is still there."""

import sdetool
from sdetool import api

# sdetool.api's public names as of the flat layout (0.1.0); a name leaves only with a deprecation.
PUBLIC = [
    "AnalysisOptions", "AnalysisReport", "Comparison", "CrossAnalysis", "ExtractOptions", "ExtractResult",
    "FinetuneOptions", "FinetuneResult", "ItemSource", "PlotOptions", "Progress", "ReproduceOptions",
    "ReproduceResult", "SetAnalysis", "analyze", "band_energies", "band_weights", "compare", "compare_states",
    "evaluate_checks", "extract", "finetune", "load_model", "open_source", "parse_check", "plot", "reproduce",
    "split_bands", "svd_band_reconstructions",
]


def test_every_public_name_is_still_exported():
    assert set(PUBLIC) <= set(api.__all__)
    missing = [name for name in PUBLIC if not hasattr(api, name)]
    assert not missing


def test_the_names_are_the_library_objects():
    from sdetool.analysis.analyze import analyze
    from sdetool.extract.extraction import extract
    from sdetool.finetune.run import finetune
    from sdetool.results.compare import compare

    assert (api.analyze, api.extract, api.finetune, api.compare) == (analyze, extract, finetune, compare)


def test_the_front_end_names_resolve():
    assert not set(api.FRONT_END) & set(api.__all__)
    assert all(callable(getattr(api, name)) for name in api.FRONT_END)


def test_the_package_root_gives_analyze_lazily():
    assert sdetool.analyze is api.analyze and sdetool.AnalysisOptions is api.AnalysisOptions
