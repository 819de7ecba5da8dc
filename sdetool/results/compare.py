"""Before/after comparison: the energy-redistribution table, metrics, and strong-subspace angles.

A *state* is what one side of a comparison holds: per embedding set, the band counts and energy
shares, the spectral metrics and (when the vectors are at hand) the strong subspace's basis; the
cross-modal numbers; and a fine-tuning run's held-out accuracy and recalls. States come from

- an analysis report (``sdetool analyze --json``, schema ``sdetool.analysis/1``),
- a fine-tuning run (its folder, or its ``eval.json``): two states, before and after. Where the run
  exported its held-out embeddings (``embeddings_before.h5`` / ``embeddings_after.h5``) they are
  analysed, which adds every metric and the strong subspaces,
- any input ``analyze`` reads (a store, ``.npy`` ...), analysed here.

:func:`compare_states` is pure; :func:`compare` opens the inputs. ``Comparison.to_dict()`` is the
``sdetool.compare/1`` JSON contract (``docs/json-schema.md``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace

import numpy as np

from sdetool import __version__
from sdetool.errors import BadInputError
from sdetool.finetune.evaluation import recall_order
from sdetool.finetune.runfolder import STAGES, exported_store
from sdetool.io import versions
from sdetool.io.versions import check_schema
from sdetool.spectral import metrics
from sdetool.spectral.spectrum import BANDS

SCHEMA = versions.schema("compare")
SET_METRICS = ("effective_rank", "stable_rank", "participation_ratio", "power_law_alpha", "mean_cosine")
CROSS_METRICS = ("hellinger", "subspace_overlap", "modality_gap")
RUN_STAGES = STAGES
# analysis options that change where the band boundaries fall or what a share measures
PARTITION_OPTIONS = ("center", "l2", "null", "noise_estimator", "edge_level", "strong_rule", "iqr_k", "energy")
N_TOLERANCE = 0.1  # two sides whose n differ by more than this fraction have band shares that are not comparable
BAND_VIEWS = ("svd_bands", "spatial_bands")  # the FITMM and Prism views, when the analyses have them


@dataclass(frozen=True)
class SetState:
    """One embedding set on one side: band counts/shares, metrics, the strong basis when known."""

    bands: dict  # band -> {"count": int | None, "energy_share": float | None}
    metrics: dict  # name -> float | None
    dim: int | None = None
    strong_basis: np.ndarray | None = None  # (d, k_strong), orthonormal
    partition: dict | None = None  # the analysis options that shape the bands (PARTITION_OPTIONS), when known
    views: dict = field(default_factory=dict)  # "svd_bands" / "spatial_bands" -> ((share of band 0, 1, ...), signature)
    n: int | None = None  # the rows the bands were computed on
    notes: tuple = ()  # a degenerate set's analysis notes: why its null values are null


@dataclass(frozen=True)
class State:
    """One side of a comparison."""

    label: str
    source: str
    sets: dict  # key -> SetState
    cross: dict = field(default_factory=dict)  # "a~b" -> {name: float | None}
    evaluation: dict | None = None  # {"zero_shot_accuracy": x, "recall": {name: x}}


def _number(value):
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def change(before, after) -> dict:
    """``{"before", "after", "delta"}``; the delta is null when either side is. Integers stay integers."""
    integers = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (before, after))
    before, after = _number(before), _number(after)
    delta = None if before is None or after is None else after - before
    if integers:
        return {"before": int(before), "after": int(after), "delta": int(delta)}
    return {"before": before, "after": after, "delta": delta}


# --- states from documents and analyses ------------------------------------------------------------


def _require(entry, path: tuple, source: str):
    node = entry
    for name in path:
        if not isinstance(node, dict) or name not in node:
            raise BadInputError(f"{source}: not a complete analysis report (no {'.'.join(path)}); write it again with "
                                f"sdetool analyze --json")
        node = node[name]
    return node


def analysis_sets(document: dict, source: str, fields: tuple = (("bands",),)) -> dict:
    """``{key: set object}`` of an ``sdetool.analysis/1`` document, each checked to hold ``fields`` (paths)."""
    entries = document.get("sets") if "sets" in document else {document.get("key") or "embeddings": document}
    if not isinstance(entries, dict) or not entries:
        raise BadInputError(f"{source}: an analysis report without embedding sets")
    for entry in entries.values():
        for path in fields:
            _require(entry, path, source)
        for band in BANDS if ("bands",) in fields else ():
            _require(entry, ("bands", band, "energy_share"), source)
            _require(entry, ("bands", band, "count"), source)
    return entries


def state_from_analysis(document: dict, label: str, source: str) -> State:
    """A state from an ``sdetool.analysis/1`` document (one set, or ``{"sets", "cross"}``)."""
    sets = {}
    for key, entry in analysis_sets(document, source).items():
        bands = {name: {"count": entry["bands"][name]["count"], "energy_share": entry["bands"][name]["energy_share"]}
                 for name in BANDS}
        metrics_found = entry.get("metrics") or {}
        options = entry.get("options") or {}
        partition = {name: options[name] for name in PARTITION_OPTIONS if name in options} or None
        if partition is not None and "null" not in partition:
            partition["null"] = "mp"  # a report from before the nulls: the single-sigma law
        sets[key] = SetState(bands, {name: metrics_found.get(name) for name in SET_METRICS}, entry.get("dim"),
                             partition=partition, views=_views(entry), notes=_degenerate_notes(entry),
                             n=entry.get("n", entry.get("n_samples")))
    cross = {name: {metric: pair.get(metric) for metric in CROSS_METRICS}
             for name, pair in (document.get("cross") or {}).items()}
    return State(label, source, sets, cross)


def _degenerate_notes(entry: dict) -> tuple:
    """The notes of a set whose spectrum could not be partitioned (null noise level): why its values are null."""
    noise = entry.get("noise")
    if not isinstance(noise, dict) or noise.get("sigma") is not None:
        return ()
    return tuple(entry.get("notes") or ([noise["note"]] if noise.get("note") else []))


def _views(entry: dict) -> dict:
    """The band shares of an analysis' FITMM / Prism views (the mean over images for spatial bands), each with
    the options that define its bands: ``{view: (shares, signature)}``."""
    views = {}
    for view in BAND_VIEWS:
        found = entry.get(view)
        if isinstance(found, dict) and isinstance(found.get("bands"), list):
            shares = tuple(band.get("energy_share") for band in found["bands"])
            views[view] = (shares, _signature(view, found))
    return views


def _signature(view: str, found: dict) -> dict:
    """What must agree for two sides' bands to be the same bands (equal-count SVD bands of different p are)."""
    if view == "spatial_bands":
        return {"k": found.get("k"), "smooth": found.get("smooth"), "center": found.get("center")}
    signature = {"k": found.get("k"), "rule": found.get("rule"), "energy": found.get("energy")}
    if found.get("rule") != "equal-count":
        signature["starts"] = found.get("starts")
    return signature


def view_changes(first: SetState, second: SetState, view: str) -> list | None:
    """``[{"band", "energy_share": {before, after, delta}}]`` when both sides have the view with the same bands."""
    if view_mismatch(first, second, view) is not None or view not in first.views or view not in second.views:
        return None
    (before, _), (after, _) = first.views[view], second.views[view]
    return [{"band": k, "energy_share": change(a, b)} for k, (a, b) in enumerate(zip(before, after))]


def view_mismatch(first: SetState, second: SetState, view: str) -> str | None:
    """Why a view cannot be compared (None when it can, or when neither side has it)."""
    sides = [first.views.get(view), second.views.get(view)]
    if sides == [None, None]:
        return None
    if None in sides:
        return f"{view} only on the {'after' if sides[0] is None else 'before'} side, not compared"
    (_, before), (_, after) = sides
    if before != after:
        differing = ", ".join(f"{name} {before.get(name)} vs {after.get(name)}" for name in sorted(set(before) | set(after))
                              if before.get(name) != after.get(name))
        return f"{view} not compared: the two sides' bands differ ({differing}); analyze both alike"
    return None


def state_from_report(report, label: str, source: str) -> State:
    """A state from an in-memory :class:`~sdetool.analysis.report.AnalysisReport` (with the strong bases)."""
    state = state_from_analysis(report.to_dict(), label, source)
    sets = {}  # the same, with the strong bases
    for key, analysed in report.sets.items():
        strong = int(np.sum(analysed.partition.labels == 0))
        basis = None
        if analysed.top_vectors is not None and analysed.top_vectors.shape[1] >= strong:
            basis = analysed.top_vectors[:, :strong]
        sets[key] = replace(state.sets[key], dim=analysed.dim, strong_basis=basis)
    return replace(state, sets=sets)


def state_from_evaluation(stage: dict, label: str, source: str) -> State:
    """A state from one stage (``before`` or ``after``) of a fine-tuning run's ``eval.json``."""
    sets = {}
    for key, entry in stage.get("bands", {}).items():
        bands = {name: {"count": entry[name]["count"], "energy_share": entry[name]["energy_share"]} for name in BANDS}
        sets[key] = SetState(bands, {"effective_rank": entry.get("effective_rank")}, n=stage.get("pairs"))
    return State(label, source, sets, {}, evaluation_summary(stage))


def evaluation_summary(stage: dict) -> dict:
    """The accuracy and recalls of one stage of a run's ``eval.json`` (what ``compare`` reports of a run)."""
    result = {"recall": dict(stage.get("recall", {}))}
    if "zero_shot_accuracy" in stage:
        result["zero_shot_accuracy"] = stage["zero_shot_accuracy"]
    return result


# --- the comparison ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Per set: band counts and shares before/after/delta, metrics, strong-subspace angles."""

    before: State
    after: State
    pairs: tuple  # ((name, before key, after key), ...)
    notes: tuple = ()

    def _set(self, before_key: str, after_key: str) -> dict:
        first, second = self.before.sets[before_key], self.after.sets[after_key]
        bands = {band: {quantity: change(first.bands[band][quantity], second.bands[band][quantity])
                        for quantity in ("count", "energy_share")} for band in BANDS}
        return {
            "before_key": before_key,
            "after_key": after_key,
            "n": change(first.n, second.n),
            "n_mismatch": n_mismatch(first.n, second.n),
            "bands": bands,
            "metrics": {m: change(first.metrics.get(m), second.metrics.get(m)) for m in SET_METRICS},
            "strong_subspace": strong_subspace(first, second),
            **{view: view_changes(first, second, view) for view in BAND_VIEWS},
        }

    def to_dict(self) -> dict:
        cross = {}
        for name in sorted(set(self.before.cross) & set(self.after.cross)):
            cross[name] = {m: change(self.before.cross[name].get(m), self.after.cross[name].get(m)) for m in CROSS_METRICS}
        evaluation = None
        if self.before.evaluation is not None and self.after.evaluation is not None:
            evaluation = {"recall": {}}
            shared = set(self.before.evaluation["recall"]) & set(self.after.evaluation["recall"])
            for metric in sorted(shared, key=recall_order):
                evaluation["recall"][metric] = change(self.before.evaluation["recall"][metric],
                                                      self.after.evaluation["recall"][metric])
            if "zero_shot_accuracy" in self.before.evaluation and "zero_shot_accuracy" in self.after.evaluation:
                evaluation["zero_shot_accuracy"] = change(self.before.evaluation["zero_shot_accuracy"],
                                                          self.after.evaluation["zero_shot_accuracy"])
        sets = {name: self._set(a, b) for name, a, b in self.pairs}
        return {
            "schema": SCHEMA,
            "before": {"label": self.before.label, "source": self.before.source},
            "after": {"label": self.after.label, "source": self.after.source},
            "n_mismatch": any(entry["n_mismatch"] for entry in sets.values()),
            "sets": sets,
            "cross": cross,
            "evaluation": evaluation,
            "notes": list(self.notes),
            "sdetool_version": __version__,
        }


def n_mismatch(before: int | None, after: int | None) -> bool | None:
    """Whether two row counts differ by more than :data:`N_TOLERANCE` of the larger (None when one is unknown)."""
    if not before or not after:
        return None
    return abs(before - after) > N_TOLERANCE * max(before, after)


def strong_subspace(first: SetState, second: SetState) -> dict | None:
    """Principal angles between the two strong subspaces; None without both bases of one dimension."""
    if first.strong_basis is None or second.strong_basis is None or first.dim != second.dim:
        return None
    k_before, k_after = first.strong_basis.shape[1], second.strong_basis.shape[1]
    if min(k_before, k_after) == 0:
        return {"k_before": k_before, "k_after": k_after, "principal_angles_deg": [], "overlap": None}
    angles = metrics.principal_angles(first.strong_basis, second.strong_basis)
    return {
        "k_before": k_before,
        "k_after": k_after,
        "principal_angles_deg": [float(a) for a in np.degrees(angles)],
        "overlap": float(np.mean(np.cos(angles) ** 2)),  # 1: the smaller subspace lies inside the larger
    }


def match_sets(before: State, after: State, keys: list[str] | None = None) -> tuple[tuple, tuple]:
    """Pairs ``(name, before key, after key)`` of sets to compare, and notes on what was left out."""
    if keys:
        for side in (before, after):
            missing = [key for key in keys if key not in side.sets]
            if missing:
                raise BadInputError(f"--key {missing[0]}: {side.source} has no such set; it has "
                                    f"{', '.join(side.sets) or 'none'}")
        return tuple((key, key, key) for key in keys), ()
    common = [key for key in before.sets if key in after.sets]
    if common:
        left = sorted((set(before.sets) | set(after.sets)) - set(common))
        notes = (f"only on one side, not compared: {', '.join(left)}",) if left else ()
        return tuple((key, key, key) for key in common), notes
    if len(before.sets) == 1 and len(after.sets) == 1:
        first, second = next(iter(before.sets)), next(iter(after.sets))
        return ((f"{first}:{second}", first, second),), ()  # no ">" or "=": --fail-if paths can name it
    raise BadInputError(f"{before.source} and {after.source} share no embedding set ({', '.join(before.sets)} against "
                        f"{', '.join(after.sets)}); choose them with --key")


def compare_states(before: State, after: State, keys: list[str] | None = None) -> Comparison:
    """Compare two states (pure)."""
    pairs, notes = match_sets(before, after, keys)
    extra = []
    for name, a, b in pairs:
        first, second = before.sets[a], after.sets[b]
        if first.strong_basis is None or second.strong_basis is None:
            extra.append(f"{name}: no principal angles (they need the embeddings: compare stores or runs exported "
                         f"with --export-embeddings, not JSON reports)")
        elif first.dim != second.dim:
            extra.append(f"{name}: no principal angles (dimensions differ: {first.dim} vs {second.dim})")
        if first.partition and second.partition and first.partition != second.partition:
            differing = [f"{option} {first.partition.get(option)} vs {second.partition.get(option)}"
                         for option in PARTITION_OPTIONS if first.partition.get(option) != second.partition.get(option)]
            extra.append(f"{name}: the two sides were analysed with different options ({', '.join(differing)}): the "
                         f"bands are not comparable; analyze both alike")
        extra += [f"{name}: {why}" for why in (view_mismatch(first, second, view) for view in BAND_VIEWS) if why]
        if n_mismatch(first.n, second.n):
            extra.append(f"{name}: the two sides have n = {first.n:,} and n = {second.n:,} rows: band shares depend on "
                         f"n (the noise edge falls like 1 / sqrt(n)), so they are not comparable; compare stores at "
                         f"equal n (the default when compare analyses them) or analyze both with --sample")
        extra += [f"{name} ({side.label}): {note}" for side, state in ((before, first), (after, second))
                  for note in state.notes]
    return Comparison(before, after, pairs, notes + tuple(extra))


# --- opening inputs ---------------------------------------------------------------------------------


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path}: not a readable JSON file ({str(error).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise BadInputError(f"{path}: expected a JSON object (an analysis report or a run's eval.json)")
    check_schema(document, path)
    return document


def _is_evaluation(document: dict) -> bool:
    return all(isinstance(document.get(stage), dict) and "bands" in document[stage] for stage in RUN_STAGES)


def _run_states(folder: str, evaluation: dict, analyze_options, progress, keys=None) -> list[State]:
    """A fine-tuning run's before and after states; analysed from its exported embeddings when present."""
    states = []
    for stage in RUN_STAGES:
        store = os.path.join(folder, exported_store(stage))
        label = f"{os.path.basename(os.path.abspath(folder))} {stage}"
        if os.path.isfile(store):
            state = analyze_state(store, label, analyze_options, progress, keys)
            state = replace(state, source=f"{folder} ({stage})", evaluation=evaluation_summary(evaluation[stage]))
        else:
            state = state_from_evaluation(evaluation[stage], label, f"{folder} ({stage})")
        states.append(state)
    return states


def analyze_state(path: str, label: str, options=None, progress=None, keys=None) -> State:
    """Analyze an input (its sets ``keys``, default all; every right singular vector kept) into a state."""
    from sdetool.analysis.analyze import analyze
    from sdetool.io.arrays import is_array_input

    report = analyze(path, keys=keys or None, options=options, progress=progress, local=True, vectors=1 << 30)
    return state_from_report(report, label, f"array ({label})" if is_array_input(path) else path)


def open_states(path, analyze_options=None, progress=None, keys=None, label: str | None = None) -> list[State]:
    """The states an input holds: one for a report or embeddings, two (before, after) for a run.

    ``keys`` limits what is analysed here (reports keep every set; the comparison picks). An array, a tensor or
    a mapping of them (``label`` names it) is analysed here like a file of it.
    """
    from sdetool.io.arrays import is_array_input

    if is_array_input(path):
        return [analyze_state(path, label or "array", analyze_options, progress, keys)]
    label = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    if os.path.isdir(path):
        evaluation = os.path.join(path, "eval.json")
        if not os.path.isfile(evaluation):
            raise BadInputError(f"{path}: a folder without eval.json; expected a finished fine-tuning run folder")
        return _run_states(path, read_json(evaluation), analyze_options, progress, keys)
    if path.lower().endswith(".json"):
        if not os.path.isfile(path):
            raise BadInputError(f"{path}: no such file")
        document = read_json(path)
        if _is_evaluation(document):
            return _run_states(os.path.dirname(path) or ".", document, analyze_options, progress, keys)
        if document.get("schema") == "sdetool.finetune/1" and _is_evaluation(document.get("evaluation") or {}):
            folder = document.get("out") if os.path.isdir(document.get("out") or "") else os.path.dirname(path) or "."
            return _run_states(folder, document["evaluation"], analyze_options, progress, keys)
        if str(document.get("schema", "")).startswith("sdetool.analysis/"):
            return [state_from_analysis(document, label, path)]
        raise BadInputError(f"{path}: expected an analysis report (sdetool analyze --json) or a fine-tuning run's "
                            f"eval.json; found schema {document.get('schema')!r}")
    return [analyze_state(path, label, analyze_options, progress, keys)]


def rows_analysed_here(path: str, keys=None) -> int | None:
    """The rows ``compare`` would analyse of an input (the fewest of its sets), or None for a report."""
    from sdetool.io.arrays import array_inputs, is_array_input
    from sdetool.io.sources import open_inputs

    if is_array_input(path):
        opened = array_inputs(path, keys)
        return min(shards[0].shape[0] for shards in opened.values())
    if os.path.isdir(path):
        store = os.path.join(path, exported_store("after"))
        return rows_analysed_here(store, keys) if os.path.isfile(store) else None
    if path.lower().endswith(".json"):
        return None
    opened = open_inputs([path], keys)
    return min(sum(shard.shape[0] for shard in shards) for shards in opened.values())


def equal_n_options(inputs: list[str], keys, options) -> list:
    """Per input, the analysis options that analyse both sides at the same n: a seeded subsample of the larger."""
    from sdetool.analysis.analyze import AnalysisOptions

    options = options or AnalysisOptions()
    rows = [rows_analysed_here(path, keys) for path in inputs]
    if len(rows) != 2 or None in rows or rows[0] == rows[1]:
        return [options] * len(inputs)
    target = min(min(rows), options.sample or min(rows))
    return [replace(options, sample=target) if count > target else options for count in rows]


def compare(inputs: list, keys: list[str] | None = None, analyze_options=None, progress=None,
            equal_n: bool = True) -> Comparison:
    """Compare two inputs (before, after), or the two stages of one fine-tuning run.

    Inputs are paths (reports, stores, runs) or in-memory arrays, tensors or ``{name: array}`` mappings;
    ``compare(before_array, after_array)`` works as ``compare([before_array, after_array])``.

    A run given as one of two inputs stands for its state *after* training (to compare two runs). Two
    inputs both analysed here (stores, arrays, runs with exported embeddings) are analysed at the same
    n, a seeded subsample of the larger, unless ``equal_n`` is False: band shares depend on n.
    """
    from sdetool.io.arrays import is_array_input

    if is_array_input(inputs):  # compare(before_array, after_array): the arrays as two positional inputs
        inputs, keys = ([inputs, keys], None) if is_array_input(keys) else ([inputs], keys)
    if len(inputs) not in (1, 2):
        raise BadInputError(f"compare takes two inputs (before, after) or one fine-tuning run, got {len(inputs)}")
    arrays = [is_array_input(item) for item in inputs]
    if len(inputs) == 1 and (arrays[0] or not (os.path.isdir(inputs[0]) or inputs[0].lower().endswith(".json"))):
        raise BadInputError(f"{'inputs[0]' if arrays[0] else inputs[0]}: one input must be a fine-tuning run (its folder or eval.json); give "
                            f"two inputs to compare reports or stores")
    per_input = equal_n_options(inputs, keys, analyze_options) if equal_n else [analyze_options] * len(inputs)
    labels = [("before", "after")[index] if array else None for index, array in enumerate(arrays)]
    states = [open_states(path, options, progress, keys, label)
              for path, options, label in zip(inputs, per_input, labels)]
    if len(inputs) == 1:
        if len(states[0]) != 2:
            raise BadInputError(f"{'inputs[0]' if arrays[0] else inputs[0]}: one input must be a fine-tuning run (its folder or eval.json); give "
                                f"two inputs to compare reports or stores")
        before, after = states[0]
    else:
        before, after = states[0][-1], states[1][-1]
    return compare_states(before, after, keys)


def compare_paths() -> dict:
    """The skeleton of every path a comparison can have, for checking ``--fail-if`` before a run."""
    from sdetool.analysis.checks import ANY, INDEX

    delta = dict.fromkeys(["before", "after", "delta"])
    one = {
        "before_key": None, "after_key": None, "n": delta, "n_mismatch": None,
        "bands": {band: {"count": delta, "energy_share": delta} for band in BANDS},
        "metrics": {name: delta for name in SET_METRICS},
        "strong_subspace": dict.fromkeys(["k_before", "k_after", "principal_angles_deg", "overlap"]),
        **{view: {INDEX: {"band": None, "energy_share": delta}} for view in BAND_VIEWS},
    }
    return {
        **one,
        "schema": None, "before": dict.fromkeys(["label", "source"]), "after": dict.fromkeys(["label", "source"]),
        "n_mismatch": None,
        "sets": {ANY: one},
        "cross": {ANY: {name: delta for name in CROSS_METRICS}},
        "evaluation": {"zero_shot_accuracy": delta, "recall": {ANY: delta}},
        "notes": None, "sdetool_version": None,
    }
