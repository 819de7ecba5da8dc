"""``sdetool plot``: open the inputs a figure needs, draw it (:mod:`sdetool.results.plots`), save it.

The inputs are what the other commands write: analysis reports (``analyze --json``), stores and
other ``analyze`` inputs (analysed here), fine-tuning runs (their folder, ``eval.json`` or
``metrics.jsonl``) and comparisons (``compare --json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from sdetool.errors import BadInputError
from sdetool.finetune.runfolder import STAGES, exported_store
from sdetool.results.compare import analysis_sets, read_json
from sdetool.spectral.spectrum import BANDS

KINDS = ("spectrum", "energy", "bands", "training", "tokens", "scale", "layers")


@dataclass(frozen=True)
class PlotOptions:
    """What to draw from the inputs, and how.

    ``keys`` selects embedding sets (default: every set); ``labels`` replaces the series labels, in
    order; ``analysis`` (an :class:`~sdetool.analysis.analyze.AnalysisOptions`) applies to inputs analysed here.
    """

    keys: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    loglog: bool = False
    title: str | None = None
    analysis: object = None
    dpi: int = 150


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


PLOTTED_FIELDS = (("bands",), ("singular_values",), ("noise", "sigma"), ("noise", "edge"), ("strong_rule", "threshold"),
                  ("components", "band"), ("components", "energy_share"), ("n_effective",), ("dim",))


def _set_documents(document: dict, keys: tuple[str, ...], source: str) -> dict:
    entries = analysis_sets(document, source, PLOTTED_FIELDS)
    missing = [key for key in keys if key not in entries]
    if missing:
        raise BadInputError(f"--key {missing[0]}: {source} has no such set; it has {', '.join(entries)}")
    return {key: entry for key, entry in entries.items() if not keys or key in keys}


def _run_stores(path: str) -> list[tuple[str, str]] | None:
    """A run's exported embeddings ``[(label, store)]``, or None when ``path`` is not a run."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) if os.path.basename(path) == "eval.json" else None
    if folder is None:
        return None
    stores = [(f"{_stem(folder)} {stage}", os.path.join(folder, exported_store(stage))) for stage in STAGES]
    if not all(os.path.isfile(store) for _, store in stores):
        raise BadInputError(f"{path}: this plot needs singular values, and the run holds only band shares; fine-tune "
                            f"with --export-embeddings, or give analysis reports or stores")
    return stores


def _analysis_report(path: str, written_by: str) -> dict:
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: no such file")
    document = read_json(path)
    if not str(document.get("schema", "")).startswith("sdetool.analysis/"):
        raise BadInputError(f"{path}: expected an analysis report ({written_by}); found schema "
                            f"{document.get('schema')!r}")
    return document


def analysis_series(paths: list[str], options: PlotOptions, progress=None) -> list[tuple[str, dict]]:
    """``(label, analysis set document)`` per set of every input, in order."""
    from sdetool.analysis.analyze import analyze
    from sdetool.io.arrays import is_array_input

    series = []
    for index, path in enumerate(paths):
        if is_array_input(path):  # an array, tensor or {name: array} (a notebook)
            sources = [(f"input {index + 1}", analyze(path, keys=list(options.keys) or None, options=options.analysis,
                                                      progress=progress, local=True).to_dict())]
            path = f"input {index + 1}"
        elif path.lower().endswith(".json") and os.path.basename(path) != "eval.json":
            sources = [(_stem(path), _analysis_report(path, "sdetool analyze --json"))]
        else:
            stores = _run_stores(path) or [(_stem(path), path)]
            sources = [(label, analyze(store, keys=list(options.keys) or None, options=options.analysis,
                                       progress=progress, local=True).to_dict()) for label, store in stores]
        for label, document in sources:
            entries = _set_documents(document, options.keys, path)
            for key, entry in entries.items():
                series.append((label if len(entries) == 1 else f"{label} {key}", entry))
    return series


def token_series(paths: list[str], options: PlotOptions, progress=None) -> list[tuple[str, dict]]:
    """``(label, spatial_bands object)`` per set with token bands of every input (reports or stores analysed here)."""
    from sdetool.analysis.analyze import AnalysisOptions, analyze

    analysis = options.analysis or AnalysisOptions(spatial_bands=4)
    series = []
    for path in paths:
        if path.lower().endswith(".json"):
            document = _analysis_report(path, "sdetool analyze --spatial-bands K --json")
        else:
            document = analyze(path, keys=list(options.keys) or None, options=analysis, progress=progress,
                               local=True).to_dict()
        entries = analysis_sets(document, path, ())
        found = {key: entry["spatial_bands"] for key, entry in entries.items()
                 if (not options.keys or key in options.keys) and isinstance(entry.get("spatial_bands"), dict)}
        if not found:
            raise BadInputError(f"{path}: no spatial bands; analyze a store written with extract --tokens with "
                                f"--spatial-bands K (or give the store here)")
        series += [(_stem(path) if len(found) == 1 else f"{_stem(path)} {key}", view) for key, view in found.items()]
    kinds = {(len(view["bands"]), view.get("smooth"), view.get("center")) for _, view in series}
    if len(kinds) > 1:
        shown = "; ".join(f"K {k}, {'smooth' if smooth else 'hard'}, centre {center}" for k, smooth, center in sorted(
            kinds, key=str))
        raise BadInputError(f"the inputs' spatial bands differ ({shown}); analyze them with the same --spatial-bands K, "
                            f"--smooth and --spatial-center")
    return series


def default_sizes(rows: int) -> tuple[int, ...]:
    """Subset sizes for a store analysed here without ``--scale``: 128, 256, ... below ``rows``."""
    sizes, size = [], 128
    while size < rows:
        sizes.append(size)
        size *= 2
    return tuple(sizes) or (max(rows // 2, 2),)


def scale_series(paths: list[str], options: PlotOptions, progress=None) -> list[tuple[str, dict]]:
    """``(label, analysis set document with a scale list)`` per set of every input.

    Reports must hold ``scale`` (``analyze --scale``); stores are analysed here with the options' ``--scale``
    sizes, or powers of two from 128 below their row count.
    """
    from dataclasses import replace

    from sdetool.analysis.analyze import AnalysisOptions, analyze
    from sdetool.results.compare import rows_analysed_here

    series = []
    for path in paths:
        if path.lower().endswith(".json"):
            document = _analysis_report(path, "sdetool analyze --scale N1,N2,.. --json")
        else:
            analysis = options.analysis or AnalysisOptions()
            if not analysis.scale:
                analysis = replace(analysis, scale=default_sizes(rows_analysed_here(path, list(options.keys) or None)))
            document = analyze(path, keys=list(options.keys) or None, options=analysis, progress=progress,
                               local=True).to_dict()
        entries = _set_documents(document, options.keys, path)
        without = [key for key, entry in entries.items() if not entry.get("scale")]
        if without:
            raise BadInputError(f"{path}: set {without[0]} has no band shares against n; analyze it with --scale "
                                f"N1,N2,.. (or give the store here)")
        series += [(_stem(path) if len(entries) == 1 else f"{_stem(path)} {key}", entry) for key, entry in entries.items()]
    return series


def layer_series(paths: list[str], options: PlotOptions, progress=None) -> list[tuple[str, dict]]:
    """``(label, {modality: [(depth, name, set document)]})`` per input: a store of ``extract --layers`` (analysed
    here, every set) or its analysis report."""
    from sdetool.analysis.analyze import AnalysisOptions, analyze
    from sdetool.results.compare import analysis_sets
    from sdetool.results.layerplots import LAYER_FIELDS, layer_table

    series = []
    for path in paths:
        if path.lower().endswith(".json"):
            document = _analysis_report(path, "sdetool analyze STORE --json")
        else:  # each set on its own: the cross-modal sections of every pair of layers are not drawn
            from sdetool.io.store import open_matrices

            keys = list(options.keys) or list(open_matrices(path))
            sets_found = {key: analyze(path, keys=[key], options=options.analysis or AnalysisOptions(),
                                       progress=progress, local=True).to_dict() for key in keys}
            document = {"sets": sets_found}
        sets = analysis_sets(document, path, LAYER_FIELDS)
        series.append((_stem(path), layer_table(path, sets)))
    return series


def band_states(paths: list[str], options: PlotOptions, progress=None) -> list[tuple[str, dict]]:
    """``(label, {key: {band: share}})`` per state: reports and stores give one, runs and comparisons two.

    Several runs or comparisons usually share their "before" state (the same base model and held-out
    pairs): a "before" equal to a state already drawn is drawn once.
    """
    from sdetool.io.arrays import is_array_input
    from sdetool.results.compare import open_states

    states: list[tuple[str, dict]] = []
    for index, path in enumerate(paths):
        array = is_array_input(path)
        document = read_json(path) if not array and path.lower().endswith(".json") and os.path.isfile(path) else {}
        if str(document.get("schema", "")).startswith("sdetool.compare/"):
            opened = comparison_states(document)
        else:
            opened = [(state.label, {key: {band: value.bands[band]["energy_share"] for band in BANDS}
                                     for key, value in state.sets.items()})
                      for state in open_states(path, options.analysis, progress,
                                               label=f"input {index + 1}" if array else None)]
        for position, (label, shares) in enumerate(opened):
            if len(opened) == 2 and position == 0 and any(shares == seen for _, seen in states):
                continue  # this "before" is already drawn
            states.append((label, shares))
    return [(label, _chosen(sets, options.keys, label)) for label, sets in states]


def _chosen(sets: dict, keys: tuple[str, ...], label: str) -> dict:
    missing = [key for key in keys if key not in sets]
    if missing:
        raise BadInputError(f"--key {missing[0]}: {label} has no such set; it has {', '.join(sets)}")
    return {key: value for key, value in sets.items() if not keys or key in keys}


def comparison_states(document: dict) -> list[tuple[str, dict]]:
    """The before and after ``(label, {key: {band: share}})`` of an ``sdetool.compare/1`` document."""
    states = []
    for side in ("before", "after"):
        shares = {name: {band: entry["bands"][band]["energy_share"][side] for band in BANDS}
                  for name, entry in document["sets"].items()}
        states.append((document[side]["label"], shares))
    return states


def training_runs(paths: list[str]) -> list[tuple[str, list[dict]]]:
    """``(run label, metrics.jsonl records)`` per run folder or ``metrics.jsonl`` file."""
    runs = []
    for path in paths:
        file = os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path
        if not file.endswith(".jsonl"):
            raise BadInputError(f"{path}: expected a run folder or its metrics.jsonl")
        label = _stem(os.path.dirname(os.path.abspath(file))) if os.path.basename(file) == "metrics.jsonl" else _stem(file)
        try:
            with open(file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as error:
            raise BadInputError(f"{path}: expected a run folder or its metrics.jsonl ({error.strerror})") from None
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # a run still writing: its last line may be partial
                    break
                raise BadInputError(f"{file}: line {number} is not JSON") from None
            if not isinstance(record, dict) or "step" not in record or "loss" not in record:
                raise BadInputError(f"{file}: line {number} has no step and loss; expected sdetool finetune's metrics.jsonl")
            records.append(record)
        if not records:
            raise BadInputError(f"{file}: no training records yet")
        runs.append((label, records))
    return runs


def _relabel(items: list, labels: tuple[str, ...]) -> list:
    if not labels:
        return items
    if len(labels) != len(items):
        raise BadInputError(f"--label given {len(labels)} times for {len(items)} series "
                            f"({', '.join(label for label, _ in items)})")
    return [(label, value) for label, (_, value) in zip(labels, items)]


def plot(kind: str, inputs: list, out: str | None = None, options: PlotOptions = PlotOptions(), progress=None):
    """Draw figure ``kind`` (one of :data:`KINDS`) from ``inputs`` into ``out`` (.png/.svg/.pdf).

    ``inputs``: paths (reports, stores, runs) or, for the spectrum, energy and bands figures, arrays, tensors
    or ``{name: array}`` mappings (one input may be given bare).

    Returns
    -------
    dict or matplotlib.figure.Figure
        ``{"kind", "out", "series": [labels]}``; with ``out=None`` the figure itself (Jupyter shows it inline).
    """
    from sdetool.io.arrays import is_array_input
    from sdetool.results import plots

    if kind not in KINDS:
        raise BadInputError(f"plot {kind!r}: expected one of {', '.join(KINDS)}")
    if isinstance(inputs, str) or is_array_input(inputs):
        inputs = [inputs]
    if out is not None:
        try:
            plots.figure_format(out)
        except ValueError as error:
            raise BadInputError(f"--out {error}") from None
        from sdetool.results.tables import check_output_path

        check_output_path(out, "--out")
    if not inputs:
        raise BadInputError(f"plot {kind}: give at least one input")
    if kind == "training":
        items = _relabel(training_runs(inputs), options.labels)
        figure = plots.training_figure(items, title=options.title)
    elif kind == "tokens":
        items = _relabel(token_series(inputs, options, progress), options.labels)
        figure = plots.tokens_figure(items, title=options.title)
    elif kind == "bands":
        items = _relabel(band_states(inputs, options, progress), options.labels)
        figure = plots.bands_figure(items, title=options.title)
    elif kind == "scale":
        items = _relabel(scale_series(inputs, options, progress), options.labels)
        figure = plots.scale_figure(items, title=options.title)
    elif kind == "layers":
        from sdetool.results.layerplots import layers_figure

        items = _relabel(layer_series(inputs, options, progress), options.labels)
        figure = layers_figure(items, title=options.title)
    else:
        items = _relabel(analysis_series(inputs, options, progress), options.labels)
        figure = (plots.spectrum_figure(items, loglog=options.loglog, title=options.title) if kind == "spectrum"
                  else plots.energy_figure(items, title=options.title))
    if out is None:
        return figure
    plots.save_figure(figure, out, dpi=options.dpi)
    return {"kind": kind, "out": out, "series": [label for label, _ in items]}
