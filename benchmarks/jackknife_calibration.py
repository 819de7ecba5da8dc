#!/usr/bin/env python
"""Calibration of ``analyze --bootstrap K`` (the delete-a-block jackknife) in simulation.

For each setting, ``--draws`` independent seeded matrices are analysed with ``--bootstrap K`` (default
K = 20, ``--ci-level 0.9``) through the code ``analyze`` runs (:class:`sdetool.spectral.gram.GramAccumulator`
with ``blocks=K``, :func:`sdetool.spectral.summary.partition_state` and :func:`sdetool.spectral.summary.intervals`). For
every statistic that gets an interval (each band's energy share and count, the noise edge, the
effective rank) it reports:

- coverage: in how many draws the interval contains the mean of the full-data estimates over all
  draws (the target the issue sets: a 90 % interval covers it in 80-97 % of 40 draws);
- the width: the mean jackknife standard error over the true spread (the standard deviation of the
  estimates over the draws); 1 is exact, above 1 conservative.

Settings: ``n`` independent rows of a fixed population, ``d`` columns, with planted spikes at 1.5..10
times the BBP detection threshold (geometric), in unit Gaussian noise and in heteroscedastic noise
(independent columns of std 0.3..3), each under the default null (``ddpa``) and under ``mp``.

With ``--row-bootstrap R`` it also runs the peer the jackknife replaced (METHOD.md section 3c): the
percentile interval of ``R`` resamples of the rows with replacement, on the first setting, both as a
plain matrix (a repeated row counts as a row) and as ``analyze`` would partition a resample (its
repeated rows found by their fingerprints and the distinct rows taken as the sample).

Run from the repository root::

    nice python benchmarks/jackknife_calibration.py                        # 4 settings x 40 draws, K = 20
    nice python benchmarks/jackknife_calibration.py --row-bootstrap 200    # and the row bootstrap peer
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402  (benchmarks/provenance.py)
from sdetool.analysis.analyze import AnalysisOptions
from sdetool.spectral import metrics, rmt, spectrum
from sdetool.spectral.gram import GramAccumulator
from sdetool.spectral.summary import intervals, partition_state, resolved_values

SEED = 20261129
STATISTICS = ("strong.energy_share", "weak.energy_share", "noise.energy_share", "strong.count", "weak.count",
              "noise.count", "edge", "effective_rank")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def draw(n: int, d: int, spikes: int, heteroscedastic: bool, population: int, seed) -> np.ndarray:
    """``n`` independent rows of one fixed population: spikes plus unit or 0.3..3 column-std noise.

    The population (the spike directions, seeded by ``population``, and their strengths) is the same in
    every draw; only the rows are drawn anew, which is the variation an interval over rows is about.
    Row ``i`` is ``sum_k g_ik c_k v_k + noise`` with ``g_ik`` standard normal and ``c_k`` set so that the
    spike's expected strength is 1.5..10 times the BBP threshold (units of the rms noise level times
    ``sqrt(max(n, d))``, geometric).
    """
    stds = np.linspace(0.3, 3.0, d) if heteroscedastic else np.ones(d)
    rms = float(np.sqrt(np.mean(stds ** 2)))
    strengths = rmt.bbp_threshold(min(n - 1, d) / max(n - 1, d)) * np.geomspace(10.0, 1.5, spikes)
    right, _ = np.linalg.qr(np.random.default_rng([SEED, population]).standard_normal((d, spikes)))
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, spikes)) * (strengths * rms * math.sqrt(max(n, d) / n))
    return scores @ right.T + rng.standard_normal((n, d)) * stds


def state_of(matrix: np.ndarray, options: AnalysisOptions):
    n, d = matrix.shape
    accumulator = GramAccumulator(d, keep_rows=n <= d, sample_rows=options.sample_rows(d), seed=options.seed,
                                  blocks=options.bootstrap or 0)
    accumulator.update(matrix)
    return accumulator.finalize()


def statistics(part) -> dict:
    """As :func:`sdetool.spectral.summary._statistics`: the values that get intervals."""
    values = {f"{name}.energy_share": float(part.shares[i]) for i, name in enumerate(spectrum.BANDS)}
    values.update({f"{name}.count": float(np.sum(part.labels == i)) for i, name in enumerate(spectrum.BANDS)})
    values["edge"] = float(part.edge)
    values["effective_rank"] = metrics.effective_rank(resolved_values(part))
    return values


def run_setting(setting: dict, draws: int, blocks: int, level: float) -> dict:
    options = AnalysisOptions(null=setting["null"], bootstrap=blocks, ci_level=level)
    names = STATISTICS
    estimates = {name: [] for name in names}
    bounds = {name: [] for name in names}
    errors = {name: [] for name in names}
    start = time.perf_counter()
    for index in range(draws):
        matrix = draw(setting["n"], setting["d"], setting["spikes"], setting["heteroscedastic"], setting["id"],
                      [SEED, setting["id"], index])
        state = state_of(matrix, options)
        full = partition_state(state, options)
        found = intervals(state, full, options)
        for name in STATISTICS:
            interval = found[name]
            estimates[name].append(interval.estimate)
            bounds[name].append((interval.low, interval.high))
            errors[name].append(interval.standard_error)
    log(f"  {setting['label']}: {draws} draws in {time.perf_counter() - start:.0f} s")
    rows = {}
    for name in names:
        values = np.asarray(estimates[name])
        target = float(values.mean())
        covered = sum(low <= target <= high for low, high in bounds[name])
        spread = float(values.std(ddof=1))
        mean_se = float(np.mean(errors[name]))
        rows[name] = {"coverage": covered, "draws": draws, "mean": target, "sd": spread, "mean_se": mean_se,
                      "width_ratio": mean_se / spread if spread > 0 else None}
    return {"setting": setting, "statistics": rows}


def row_bootstrap(setting: dict, draws: int, replicates: int, level: float) -> dict:
    """Percentile intervals from resampling rows with replacement: plain and as analyze would partition a resample."""
    options = AnalysisOptions(null=setting["null"])
    names = ("noise.energy_share", "effective_rank", "edge")
    kinds = ("plain", "distinct")
    estimates = {name: [] for name in names}
    bounds = {kind: {name: [] for name in names} for kind in kinds}
    shift = {kind: {name: [] for name in names} for kind in kinds}
    start = time.perf_counter()
    for index in range(draws):
        matrix = draw(setting["n"], setting["d"], setting["spikes"], setting["heteroscedastic"], setting["id"],
                      [SEED, setting["id"], index])
        full = statistics(partition_state(state_of(matrix, options), options).partition)
        for name in names:
            estimates[name].append(full[name])
        rng = np.random.default_rng([SEED, 99, setting["id"], index])
        samples = {kind: {name: [] for name in names} for kind in kinds}
        for _ in range(replicates):
            state = state_of(matrix[rng.integers(0, matrix.shape[0], matrix.shape[0])], options)
            for kind in kinds:
                distinct = state.n if kind == "plain" else None
                values = statistics(partition_state(state, options, distinct=distinct).partition)
                for name in names:
                    samples[kind][name].append(values[name])
        tail = (1.0 - level) / 2.0
        for kind in kinds:
            for name in names:
                values = np.asarray(samples[kind][name])
                bounds[kind][name].append((float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))))
                shift[kind][name].append(float(values.mean()) - full[name])
    log(f"  row bootstrap, {setting['label']}: {draws} draws x {replicates} resamples in {time.perf_counter() - start:.0f} s")
    out = {}
    for kind in kinds:
        for name in names:
            values = np.asarray(estimates[name])
            target = float(values.mean())
            covered = sum(low <= target <= high for low, high in bounds[kind][name])
            out[f"{kind}:{name}"] = {"coverage": covered, "draws": draws, "sd": float(values.std(ddof=1)),
                                     "bias": float(np.mean(shift[kind][name]))}
    return out


def table(results: list[dict], level: float) -> str:
    heads = [result["setting"]["label"] for result in results]
    lines = [f"| statistic ({level:.0%} interval) | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for name in STATISTICS:
        cells = []
        for result in results:
            row = result["statistics"][name]
            ratio = "constant" if row["width_ratio"] is None else f"{row['width_ratio']:.2f}"
            cells.append(f"{row['coverage']}/{row['draws']} ({ratio})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(results: list[dict]) -> str:
    lines = ["| setting | statistic | mean estimate | sd over draws | mean jackknife se |", "|---|---|---:|---:|---:|"]
    for result in results:
        for name in STATISTICS:
            row = result["statistics"][name]
            lines.append(f"| {result['setting']['label']} | {name} | {row['mean']:.4g} | {row['sd']:.3g} | "
                         f"{row['mean_se']:.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--blocks", type=int, default=20, help="jackknife blocks K (--bootstrap K)")
    parser.add_argument("--level", type=float, default=0.9, help="--ci-level")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--spikes", type=int, default=6)
    parser.add_argument("--no-large", dest="large", action="store_false",
                        help="leave out the 5000 x 256 setting (10 spikes, heteroscedastic, ddpa)")
    parser.add_argument("--row-bootstrap", type=int, default=0, help="also the row-bootstrap peer with this many resamples")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    threadpool_limits(args.threads)
    start = time.perf_counter()
    code = provenance()
    log(f"code: {code}")
    shape = f"{args.n} x {args.d}, {args.spikes} spikes"
    settings = [
        {"id": 1, "label": f"{shape}, unit noise, `ddpa`", "heteroscedastic": False, "null": "ddpa"},
        {"id": 1, "label": f"{shape}, unit noise, `mp`", "heteroscedastic": False, "null": "mp"},
        {"id": 2, "label": f"{shape}, column std 0.3..3, `ddpa`", "heteroscedastic": True, "null": "ddpa"},
        {"id": 2, "label": f"{shape}, column std 0.3..3, `mp`", "heteroscedastic": True, "null": "mp"},
    ]
    for setting in settings:
        setting.update(n=args.n, d=args.d, spikes=args.spikes)
    if args.large:
        settings.append({"id": 3, "label": "5000 x 256, 10 spikes, column std 0.3..3, `ddpa`", "heteroscedastic": True,
                         "null": "ddpa", "n": 5000, "d": 256, "spikes": 10})
    log(f"jackknife calibration: {args.draws} draws per setting, K = {args.blocks}, level {args.level}")
    results = [run_setting(setting, args.draws, args.blocks, args.level) for setting in settings]
    print(f"\n### Coverage of the mean over draws (mean jackknife se / sd over draws), K = {args.blocks}\n")
    print(table(results, args.level))
    print("\n#### Details\n")
    print(detail_table(results))
    out = {"args": vars(args), "code": code, "jackknife": results}
    if args.row_bootstrap:
        peer = row_bootstrap(settings[0], args.draws, args.row_bootstrap, args.level)
        out["row_bootstrap"] = peer
        print(f"\n### Row bootstrap (percentile, {args.row_bootstrap} resamples), {settings[0]['label']}\n")
        print("| statistic | resample partitioned as | coverage | mean shift of the resamples | sd over draws |")
        print("|---|---|---:|---:|---:|")
        for key, row in peer.items():
            kind, name = key.split(":")
            how = "a plain matrix (repeats are rows)" if kind == "plain" else "analyze does (distinct rows)"
            print(f"| {name} | {how} | {row['coverage']}/{row['draws']} | {row['bias']:+.4g} | {row['sd']:.3g} |")
    log(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
