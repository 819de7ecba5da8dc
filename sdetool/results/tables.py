"""Results -> rich tables, JSON and CSV. Files are written atomically (temporary file, then rename)."""

from __future__ import annotations

import json
import os
import statistics

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sdetool.errors import BadInputError
from sdetool.io.atomic import atomic_path, write_text

BAND_STYLES = {"strong": "bold #0072B2", "weak": "#E69F00", "noise": "#999999"}  # Okabe-Ito


def check_output_path(path: str | None, option: str) -> None:
    """Refuse an output path whose folder does not exist, before any work is done."""
    if path is None or path == "-":
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BadInputError(f"{option} {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise BadInputError(f"{option} {path}: is a folder, expected a file path")


def write_json(document: dict, path: str) -> None:
    """Strict JSON (no NaN: values are already cleaned to null), indented."""
    write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def write_csv(frame, path: str) -> None:
    """A pandas frame as CSV without its index."""
    write_text(path, frame.to_csv(index=False, float_format="%.10g"))


def write_npz(arrays: dict, path: str) -> None:
    """Named arrays as an uncompressed ``.npz`` (any names, even ``file``), atomically."""
    import zipfile

    import numpy as np

    with atomic_path(path) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _set_tables(entry: dict) -> list:
    noise, rule = entry["noise"], entry["strong_rule"]
    rule_text = f"{rule['name']}" + (f", k={rule['iqr_k']}" if rule.get("iqr_k") is not None else "")
    title = (
        f"[bold]{entry['key']}[/]  {entry['n_samples']:,} x {entry['dim']} {entry['dtype']}"
        f"{' centred' if entry['centered'] else ''}{' l2' if entry['normalized'] else ''}"
    )
    edge_ci = _ci(noise.get("edge_ci"), lambda v: _fmt(v))
    caption = (
        f"noise edge {_fmt(noise['edge'])}{edge_ci} ({noise.get('null', 'mp')} null, level {noise['edge_level']}); "
        f"single-sigma fit: sigma {_fmt(noise['sigma'])} ({noise['estimator']}), bulk KS "
        f"{_fmt((noise.get('mp_fit') or {}).get('ks'), 3)}; strong threshold {_fmt(rule['threshold'])} ({rule_text})"
    )
    bands = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    bands.add_column("band")
    bands.add_column("components", justify="right")
    bands.add_column("first", justify="right")
    bands.add_column(f"energy share ({entry['energy']})", justify="right")
    bands.add_column("", min_width=20)
    for name, band in entry["bands"].items():
        share = band["energy_share"]
        bar = "█" * int(round((share or 0.0) * 20))
        shown = _fmt(share) if share is None else f"{share:.2%}" + _ci(band.get("energy_share_ci"), lambda v: f"{v:.2%}")
        bands.add_row(f"[{BAND_STYLES[name]}]{name}[/]", str(band["count"]), _fmt(band["first_index"]),
                      shown, f"[{BAND_STYLES[name]}]{bar}[/]")
    scores = entry["metrics"]
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="dim")
    table.add_column(justify="right")
    table.add_row("effective rank", f"{_fmt(scores['effective_rank'])}{_ci(scores.get('effective_rank_ci'), _fmt)} "
                                    f"({scores['effective_rank_on']})")
    table.add_row("stable rank", _fmt(scores["stable_rank"]))
    table.add_row("participation ratio", _fmt(scores["participation_ratio"]))
    window = scores["power_law_window"]
    span = f" (i={window[0]}..{window[1]})" if window else " (too few components)"
    table.add_row(f"power-law alpha{span}",
                  f"{_fmt(scores['power_law_alpha'])} (R2 {_fmt(scores['power_law_r2'], 3)})")
    table.add_row("mean cosine", _fmt(scores["mean_cosine"]))
    if entry.get("dropped_nonfinite"):
        table.add_row("dropped non-finite rows", str(entry["dropped_nonfinite"]))
    texts = entry.get("notes", []) + ([noise["note"]] if noise.get("note") else [])
    notes = [f"[yellow]note:[/] {escape(text)}" for text in dict.fromkeys(texts)]  # each once, in order
    views = [view for view in (_scale_table(entry), _svd_band_table(entry), _spatial_band_table(entry))
             if view is not None]
    return [bands, table, *notes, *views]


def _ci(bounds, show) -> str:
    """`` [lo, hi]`` of an interval, or nothing without one."""
    if not bounds or None in bounds:
        return ""
    return f" [{show(bounds[0])}, {show(bounds[1])}]"


def _scale_table(entry: dict) -> Table | None:
    """Band shares of the row subsets of ``--scale`` (mean ± sd over the repeats), and the whole set."""
    rows = entry.get("scale")
    if not rows:
        return None
    table = Table(title=f"[bold]{entry['key']}[/] band shares against n ({rows[0]['repeats']} subsets per n)",
                  title_justify="left")
    for column in ("n", "strong", "weak", "noise"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['n']:,}", *(_mean_sd(row["bands"][name]["energy_share"]) for name in ("strong", "weak",
                                                                                                  "noise")))
    table.add_row(f"{entry['n_samples']:,} (all)", *(_percent(entry["bands"][name]["energy_share"])
                                                     for name in ("strong", "weak", "noise")))
    return table


def _mean_sd(value: dict) -> str:
    if value["mean"] is None:
        return "-"
    return f"{100 * value['mean']:.2f} ± {100 * (value['sd'] or 0.0):.2f}%"


def _share_bar(share) -> str:
    return "█" * int(round((share or 0.0) * 10))


def _svd_band_table(entry: dict) -> Table | None:
    view = entry.get("svd_bands")
    if not view:
        return None
    table = Table(title=f"[bold]{entry['key']}[/] SVD bands (FITMM, {view['rule']})", title_justify="left")
    for name in ("band", "components", f"energy ({view['energy']})", "", "effective rank"):
        table.add_column(name, justify="left" if name in ("band", "") else "right", min_width=10 if name == "" else None)
    for band in view["bands"]:
        table.add_row(str(band["band"]), f"{band['first_index']}-{band['last_index']}", _percent(band["energy_share"]),
                      _share_bar(band["energy_share"]), _fmt(band["effective_rank"]))
    return table


def _spatial_band_table(entry: dict) -> Table | None:
    view = entry.get("spatial_bands")
    if not view:
        return None
    grid = "x".join(str(x) for x in view["grid"])
    title = (f"[bold]{entry['key']}[/] spatial bands (Prism): {view['n_images']:,} grids {grid}x{view['channels']}, "
             f"{'smooth' if view['smooth'] else 'hard'}, centre {view['center']}")
    caption = (f"zero frequency alone: {_percent(view['dc_share'])} of a grid's energy on average; white noise: the "
               f"shares of a spatially white grid")
    if view["empty_images"]:
        caption += f"; {view['empty_images']} grids without energy left out"
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for name in ("band", "frequency", "energy (mean)", "", "std", "white noise"):
        table.add_column(name, justify="left" if name in ("band", "") else "right", min_width=10 if name == "" else None)
    for band in view["bands"]:
        table.add_row(str(band["band"]), f"{band['low']:.3g}-{band['high']:.3g}", _percent(band["energy_share"]),
                      _share_bar(band["energy_share"]), _percent(band["energy_share_std"]),
                      _percent(band["white_noise_share"]))
    return table


def _cross_band_table(name: str, rows: list) -> Table:
    table = Table(title=f"[bold]{name}[/] per SVD band", title_justify="left")
    for column in ("band", "directions", "subspace overlap", "hellinger"):
        table.add_column(column, justify="left" if column == "band" else "right")
    for row in rows:
        table.add_row(str(row["band"]), str(row["dimensions"]), _fmt(row["subspace_overlap"]), _fmt(row["hellinger"]))
    return table


def _cross_table(cross: dict) -> Table:
    table = Table(title="[bold]cross-modal[/]", title_justify="left")
    for name in ("pair", "hellinger", "subspace overlap", "modality gap", "note"):
        table.add_column(name, justify="left" if name in ("pair", "note") else "right")
    for name, entry in cross.items():
        overlap = _fmt(entry["subspace_overlap"])
        if entry["top_k"]:
            overlap = f"{overlap} (top {entry['top_k']})"
        table.add_row(name, _fmt(entry["hellinger"]), overlap, _fmt(entry["modality_gap"]), entry["note"] or "")
    return table


def render_analysis(document: dict, console: Console) -> None:
    """Print the tables of an ``sdetool.analysis/1`` document (one set or several)."""
    entries = document["sets"].values() if "sets" in document else [document]
    for entry in entries:
        for table in _set_tables(entry):
            console.print(table)
        console.print()
    if document.get("cross"):
        console.print(_cross_table(document["cross"]))
        for name, entry in document["cross"].items():
            if entry.get("svd_bands"):
                console.print(_cross_band_table(name, entry["svd_bands"]))


def render_checks(results, console: Console) -> None:
    """One line per ``--fail-if`` result that failed."""
    for result in results:
        if result.failed:
            why = " (could not be computed: the report's notes say why)" if result.actual is None else ""
            detail = escape(f"--fail-if {result.check.text!r}: {result.describe()}{why}")
            console.print(f"[red]FAILED[/] {detail}", highlight=False, soft_wrap=True)


def render_extract(document: dict, console: Console) -> None:
    """Summary of an extraction: per set rows, dimension, failures; throughput; notes."""
    table = Table(title=f"sdetool extract -> {escape(document['path'])} ({document['status']})", title_justify="left")
    for column in ("set", "rows", "dim", "failed"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for key, rows in document["rows"].items():
        table.add_row(key, f"{rows:,}", str(document["dims"].get(key, "")), f"{document['failed'].get(key, 0):,}")
    console.print(table)
    line = f"{document['items']:,} items from {escape(document['data'])} with {escape(document['model'])} on {document['device']}"
    if document["seconds"]:
        line += f" in {document['seconds']:.1f} s ({document['items_per_second']:,.1f} items/s)"
    if document["resumed_items"] and document["status"] == "written":
        line += f"; resumed with {document['resumed_items']:,} items already done"
    console.print(line)
    for key, records in (document.get("failures") or {}).items():
        count = document["failed"].get(key, len(records))
        console.print(f"[red]failed {count:,} {escape(key)} item{'s' if count != 1 else ''}[/]"
                      + (f" (the first {len(records)})" if count > len(records) else "") + ":")
        for record in records:
            console.print(f"  {escape(record['id'])}: {escape(record['reason'])}")
        console.print(f"  all {count:,} (id, reason) records: {escape(document['failures_in'][key])}")
    for note in document.get("notes", []):
        console.print(f"[dim]note: {escape(note)}[/]")


def render_models(rows: list[dict], console: Console) -> None:
    """The backends and built-in models, and whether each can load here."""
    table = Table(title="sdetool models", title_justify="left")
    for column in ("name", "available", "description"):
        table.add_column(column, no_wrap=column == "name")
    for row in rows:
        available = "[green]yes[/]" if row["available"] else "[red]no[/]"
        description = escape(row["description"]) + (f"\n[red]unavailable: {escape(row['reason'])}[/]" if row["reason"] else "")
        table.add_row(escape(row["name"]), available, description)
    console.print(table)


def finetune_rows(evaluation: dict) -> list[tuple[str, float | None, float | None]]:
    """``(metric, before, after)`` rows of a run's evaluation, in display order (pure)."""
    before, after = evaluation.get("before", {}), evaluation.get("after", {})
    from sdetool.finetune.evaluation import recall_order

    rows: list[tuple[str, float | None, float | None]] = []
    if "zero_shot_accuracy" in before or "zero_shot_accuracy" in after:
        rows.append(("zero-shot accuracy", before.get("zero_shot_accuracy"), after.get("zero_shot_accuracy")))
    for name in sorted(before.get("recall", {}), key=recall_order):
        rows.append((name.replace("_", " "), before["recall"][name], after.get("recall", {}).get(name)))
    for key in before.get("bands", {}):
        for band in ("strong", "weak", "noise"):
            rows.append((f"{key} {band} energy share", before["bands"][key][band]["energy_share"],
                         after.get("bands", {}).get(key, {}).get(band, {}).get("energy_share")))
        rows.append((f"{key} effective rank", before["bands"][key]["effective_rank"],
                     after.get("bands", {}).get(key, {}).get("effective_rank")))
    return rows


def render_finetune(document: dict, console: Console) -> None:
    """Before/after table of a fine-tuning run, with the change; timing; notes."""
    table = Table(title=f"sdetool finetune -> {escape(document['out'])} ({document['status']})", title_justify="left")
    for column in ("held-out metric", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "held-out metric" else "right")
    for name, before, after in finetune_rows(document["evaluation"]):
        percent = "share" in name or "accuracy" in name or "R@" in name
        shown = [f"{100 * v:.2f}%" if percent else f"{v:.2f}" if v is not None else "" for v in (before, after)]
        change = "" if before is None or after is None else (f"{100 * (after - before):+.2f} pt" if percent else f"{after - before:+.2f}")
        table.add_row(escape(name), *shown, change)
    console.print(table)
    if document["seconds"]:
        line = f"{document['steps']} steps on {document['device']} in {document['seconds']:.1f} s ({1e3 * document['seconds_per_step']:.0f} ms/step)"
        if document["resumed_from"]:
            line += f"; resumed from step {document['resumed_from']}"
        console.print(line)
    for note in document.get("notes", []):
        console.print(f"[dim]note: {escape(note)}[/]")


def _lookup(document: dict, path: tuple) -> float:
    for name in path:
        document = document[name]
    return float(document)


def seed_summary(runs: dict[str, list[dict]], metrics) -> dict:
    """Mean and standard deviation over seeds of fine-tuning evaluations (pure).

    Parameters
    ----------
    runs : dict
        ``{loss: [evaluation, ...]}``, one ``{"before", "after"}`` evaluation (``eval.json``) per seed.
    metrics : sequence of (label, path)
        The metrics, each a path of keys into an evaluation (``("bands", "image", "noise", "energy_share")``).

    Returns
    -------
    dict
        ``{label: {"before": (mean, sd), loss: (mean, sd), ...}}``; "before" pools every run.
    """
    import numpy as np

    summary = {}
    for label, path in metrics:
        before = [_lookup(run["before"], path) for evaluations in runs.values() for run in evaluations]
        row = {"before": (float(np.mean(before)), float(np.std(before)))}
        for loss, evaluations in runs.items():
            values = [_lookup(run["after"], path) for run in evaluations]
            row[loss] = (float(np.mean(values)), float(np.std(values)))
        summary[label] = row
    return summary


def seed_table(summary: dict, seeds: int) -> str:
    """A Markdown table of :func:`seed_summary`: shares and accuracies in %, ranks as they are."""
    losses = [name for name in next(iter(summary.values())) if name != "before"]
    header = (f"held-out metric ({seeds} seeds, mean ± sd)", "before", *(f"after {loss}" for loss in losses))
    rows = []
    for label, row in summary.items():
        scale = 1 if "rank" in label else 100
        cells = [f"{scale * mean:.3f} ± {scale * sd:.3f}" for mean, sd in [row["before"]] + [row[loss] for loss in losses]]
        rows.append((f"{label}{'' if scale == 1 else ' (%)'}", *cells))
    return markdown_table(header, rows)


# --- compare -------------------------------------------------------------------------------------


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _points(value) -> str:
    return "" if value is None else f"{100 * value:+.2f} pt"


def _signed(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:+.{digits}g}"


def compare_band_rows(entry: dict) -> list[tuple[str, ...]]:
    """``(band, count before, after, change, share before, after, change)`` rows of one compared set (pure)."""
    rows = []
    for band, values in entry["bands"].items():
        count, share = values["count"], values["energy_share"]
        counts = ["" if count[side] is None else f"{count[side]:.0f}" for side in ("before", "after")]
        rows.append((band, *counts, "" if count["delta"] is None else f"{count['delta']:+.0f}",
                     _percent(share["before"]), _percent(share["after"]), _points(share["delta"])))
    return rows


def compare_metric_rows(entry: dict) -> list[tuple[str, str, str, str]]:
    """``(metric, before, after, change)`` rows of one compared set's spectral metrics (pure)."""
    return [(metric.replace("_", " "), _fmt(v["before"]), _fmt(v["after"]), _signed(v["delta"]))
            for metric, v in entry["metrics"].items() if v["before"] is not None or v["after"] is not None]


def compare_view_rows(changes: list, title: str) -> list[tuple[str, str, str, str]]:
    """``(band, share before, after, change)`` rows of an SVD or spatial band view (pure)."""
    return [(f"{title} {row['band']}", _percent(row["energy_share"]["before"]), _percent(row["energy_share"]["after"]),
             _points(row["energy_share"]["delta"])) for row in changes]


def compare_evaluation_rows(document: dict) -> list[tuple[str, str, str, str]]:
    """``(metric, before, after, change)`` rows of the runs' held-out accuracy and recalls, in % (pure)."""
    evaluation = document.get("evaluation") or {}
    named = ([("zero-shot accuracy", evaluation["zero_shot_accuracy"])] if "zero_shot_accuracy" in evaluation else [])
    named += [(metric.replace("_", " "), v) for metric, v in evaluation.get("recall", {}).items()]
    return [(metric, _percent(v["before"]), _percent(v["after"]), _points(v["delta"])) for metric, v in named]


def subspace_line(entry: dict) -> str | None:
    """One line on the principal angles between the strong subspaces, or None."""
    strong = entry.get("strong_subspace")
    if not strong or not strong["principal_angles_deg"]:
        return None
    angles = strong["principal_angles_deg"]
    return (f"strong subspaces ({strong['k_before']} -> {strong['k_after']} dims): principal angles "
            f"{angles[0]:.1f} to {angles[-1]:.1f} deg (median {statistics.median(angles):.1f}), "
            f"overlap {strong['overlap']:.3f}")


def _print_rows(console: Console, rows: list) -> None:
    table = Table(show_header=True, box=None, padding=(0, 2))
    for column in ("metric", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


BAND_COLUMNS = ("band", "count before", "after", "change", "energy before", "after", "change")


def render_compare(document: dict, console: Console) -> None:
    """Per compared set: the energy-redistribution table, metrics and evaluation, principal angles."""
    before, after = document["before"]["label"], document["after"]["label"]
    for name, entry in document["sets"].items():
        table = Table(title=f"{escape(name)}: {escape(before)} -> {escape(after)}", title_justify="left")
        for column in BAND_COLUMNS:
            table.add_column(column, justify="left" if column == "band" else "right")
        for row in compare_band_rows(entry):
            table.add_row(*row)
        console.print(table)
        _print_rows(console, compare_metric_rows(entry))
        for view, title in (("svd_bands", "SVD band"), ("spatial_bands", "spatial band")):
            if entry.get(view):
                _print_rows(console, compare_view_rows(entry[view], title))
        line = subspace_line(entry)
        if line:
            console.print(line)
    for pair, values in (document.get("cross") or {}).items():
        shown = ", ".join(f"{metric} {_fmt(v['before'])} -> {_fmt(v['after'])}" for metric, v in values.items()
                          if v["before"] is not None or v["after"] is not None)
        console.print(f"{escape(pair)}: {escape(shown)}")
    rows = compare_evaluation_rows(document)
    if rows:
        console.print("held-out evaluation of the runs")
        _print_rows(console, rows)
    for note in document.get("notes", []):
        console.print(f"[dim]note: {escape(note)}[/]")


def markdown_table(header: tuple, rows: list) -> str:
    """A GitHub Markdown table (pure)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_seed_summary(out: str, meta: dict, summary: dict, seeds: list[int]) -> str:
    """Write ``summary.json`` (``meta`` plus the summary) and ``summary.md`` (the table) into ``out``; return the table."""
    table = seed_table(summary, len(seeds))
    write_json({**meta, "seeds": list(seeds), "summary": summary}, os.path.join(out, "summary.json"))
    write_text(os.path.join(out, "summary.md"), table)
    return table
