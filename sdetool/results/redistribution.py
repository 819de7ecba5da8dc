"""The reproduction's energy redistribution: band shares before and after each loss, under two nulls.

The paper's numbers (strong 10.42 -> 17.32 %, weak 7.75 -> 12.17 %, noise 81.84 -> 70.51 %) depend on
what is called noise and on how many rows were analysed. This module puts the reproduction's image
shares side by side under the null of the run (``ddpa`` by default) and under ``mp`` (the paper's
single-sigma reading), at the held-out n (with jackknife intervals) and at n = 256 (a training batch;
mean over seeded subsets), over the seeds run. Pure: it reads analysis reports (dicts).
"""

from __future__ import annotations

import numpy as np

from sdetool.spectral.spectrum import BANDS

EXPERIMENTS = {
    "model": (("before", "before"), ("sde", "SDE"), ("infonce", "InfoNCE")),
    "noisy": (("noisy-before", "before"), ("noisy-sde", "SDE head"), ("noisy-infonce", "InfoNCE head")),
}
PAPER = {"strong": (10.42, 17.32), "weak": (7.75, 12.17), "noise": (81.84, 70.51)}


def _runs(name: str, seeds: list[int]) -> list[str]:
    """The analyses of one state over the seeds: the first seed's name, then ``<name>-seed<k>``."""
    if name.endswith("before"):
        return [name]  # the same embeddings whatever the seed
    return [name] + [f"{name}-seed{seed}" for seed in seeds[1:]]


def _band(entries: list[dict], band: str) -> dict:
    """Share over seeds (mean, sd), the first seed's jackknife interval, and the batch-size share (mean, sd)."""
    shares = [entry["bands"][band]["energy_share"] for entry in entries]
    batch = [entry["scale"][0]["bands"][band]["energy_share"]["mean"] for entry in entries if entry.get("scale")]
    batch_sd = [entry["scale"][0]["bands"][band]["energy_share"]["sd"] for entry in entries if entry.get("scale")]
    return {
        "share": _mean(shares), "sd": _sd(shares), "ci": entries[0]["bands"][band].get("energy_share_ci"),
        "batch_share": _mean(batch), "batch_sd": _mean(batch_sd),
    }


def _mean(values: list) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def _sd(values: list) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else None


def redistribution(documents: dict, null: str, seeds: list[int], key: str = "image") -> dict:
    """The image band shares of every state of both experiments under ``null`` and ``mp``.

    Parameters
    ----------
    documents : dict
        ``{analysis name: analysis report dict}`` (``analysis/<name>.json``; ``<name>-mp`` under mp).
    null : str
        The null of the run's own analyses.
    seeds : list of int
        The seeds run (the first's runs are named without a suffix).

    Returns
    -------
    dict
        ``{"nulls", "seeds", "batch_rows", "paper", "experiments": {experiment: {state: {"label", null:
        {band: {share, sd, ci, batch_share, batch_sd}}}}}}``.
    """
    nulls = list(dict.fromkeys([null, "mp"]))
    experiments = {}
    for experiment, states in EXPERIMENTS.items():
        if states[0][0] not in documents:
            continue
        rows = {}
        for name, label in states:
            row = {"label": label}
            for which in nulls:
                suffix = "" if which == null else "-mp"
                entries = [documents[run + suffix]["sets"][key] for run in _runs(name, seeds) if run + suffix in documents]
                row[which] = {band: _band(entries, band) for band in BANDS}
            rows[name] = row
        experiments[experiment] = rows
    batch = next((entry["scale"][0]["n"] for document in documents.values() for entry in document["sets"].values()
                  if entry.get("scale")), None)
    return {"nulls": nulls, "seeds": list(seeds), "batch_rows": batch, "paper": PAPER, "experiments": experiments}


def _cell(values: dict) -> str:
    """``share ± sd [lo, hi]`` in percent (what is known of it)."""
    if values["share"] is None:
        return "-"
    text = f"{100 * values['share']:.2f}"
    if values["sd"] is not None:
        text += f" ± {100 * values['sd']:.2f}"
    if values["ci"] and None not in values["ci"]:
        text += f" [{100 * values['ci'][0]:.2f}, {100 * values['ci'][1]:.2f}]"
    return text


def _batch_cell(values: dict) -> str:
    if values["batch_share"] is None:
        return "-"
    return f"{100 * values['batch_share']:.2f} ± {100 * (values['batch_sd'] or 0.0):.2f}"


def table_rows(summary: dict, experiment: str) -> list[tuple]:
    """``(state, null, strong, weak, noise, noise at batch size)`` rows of one experiment, for a Markdown table."""
    rows = []
    for row in summary["experiments"][experiment].values():
        for null in summary["nulls"]:
            bands = row[null]
            rows.append((row["label"], null, *(_cell(bands[band]) for band in BANDS), _batch_cell(bands["noise"])))
    return rows
