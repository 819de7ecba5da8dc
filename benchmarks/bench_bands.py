#!/usr/bin/env python
"""Benchmark of the band views: spatial-band energies of token grids, and SVD band reconstructions.

One run measures, on the same seeded data, side by side:

Spatial bands (``analyze --spatial-bands``), per-grid energy of K = 4 radial bands of ``m`` token grids:

- ``sdetool``: :func:`sdetool.spectral.bands.band_energies`: one batched ``scipy.fft.rfft2`` (real input: half
  the spectrum, bins weighted by their multiplicity) and one matrix product with the band weights;
- ``scipy-fft2``: ``scipy.fft.fft2`` of the whole chunk in the input's precision, full spectrum (no
  rfft halving), the same matrix product;
- ``numpy-batched``: ``numpy.fft.fft2`` of the whole chunk (numpy computes in complex128), full spectrum;
- ``naive``: a Python loop over grids: ``numpy.fft.fft2`` per grid, power summed over channels,
  one boolean mask sum per band (what a notebook does).

Workloads: ``lit`` (7 x 7 x 128, the built-in model's conv map), ``vit-b`` (14 x 14 x 768, a ViT-B/16 at
224 px), ``pixels`` (28 x 28 x 1). Every variant's energies are checked against ``sdetool``'s (max
relative difference printed).

SVD band reconstructions (:func:`sdetool.spectral.bands.svd_band_reconstructions`, K = 4) of an n x d matrix:
``sdetool`` (one LAPACK SVD, one product per band) against ``naive`` (sum of rank-one outer products per
component, the textbook formula) on a small size, and the end-to-end ``analyze --bands 4`` overhead
over plain ``analyze`` on a 10^5 x 512 ``.npy``.

With ``--store`` (a store written by ``extract --tokens``): end to end ``analyze --key image
--spatial-bands 4`` (default ``channel`` centring: two passes over the tokens; ``none``: one) against a
bare read of ``/image/tokens`` in the same blocks. Run from the repository root::

    python benchmarks/bench_bands.py             # about 20 s on 2 cores
    python benchmarks/bench_bands.py --store tok.h5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from sdetool.spectral import bands

WORKLOADS = {"lit": (4096, 7, 7, 128), "vit-b": (256, 14, 14, 768), "pixels": (10000, 28, 28, 1)}


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def scipy_fft2(grids: np.ndarray, masks: np.ndarray) -> np.ndarray:
    from scipy import fft

    spectrum = fft.fft2(grids, axes=(1, 2), norm="ortho", workers=-1)
    power = (spectrum.real**2 + spectrum.imag**2).sum(axis=3).reshape(len(grids), -1).astype(np.float64)
    return power @ (masks**2).reshape(len(masks), -1).T


def numpy_batched(grids: np.ndarray, masks: np.ndarray) -> np.ndarray:
    spectrum = np.fft.fft2(grids, axes=(1, 2), norm="ortho")
    power = (np.abs(spectrum) ** 2).sum(axis=3).reshape(len(grids), -1)
    return power @ (masks**2).reshape(len(masks), -1).T


def naive(grids: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = np.zeros((len(grids), len(masks)))
    selections = masks.astype(bool)
    for i, grid in enumerate(grids):
        power = (np.abs(np.fft.fft2(grid, axes=(0, 1), norm="ortho")) ** 2).sum(axis=2)
        for k, selection in enumerate(selections):
            out[i, k] = power[selection].sum()
    return out


def spatial(repeats: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for name, (m, h, w, c) in WORKLOADS.items():
        grids = rng.standard_normal((m, h, w, c)).astype(np.float32)
        weights = bands.band_weights(h, w, 4)
        masks = bands.band_masks(bands.radial_frequency(h, w), 4)
        reference_time, reference = timed(lambda: bands.band_energies(grids, weights), repeats)
        row = {"workload": name, "grids": m, "grid": [h, w, c], "sdetool_s": reference_time,
               "sdetool_grids_per_s": m / reference_time}
        for peer, function in (("scipy-fft2", lambda: scipy_fft2(grids, masks)),
                               ("numpy-batched", lambda: numpy_batched(grids, masks)),
                               ("naive", lambda: naive(grids, masks))):
            seconds, energies = timed(function, repeats if peer != "naive" else 1)
            row[f"{peer}_s"] = seconds
            row[f"{peer}_ratio"] = seconds / reference_time
            row[f"{peer}_max_rel_diff"] = float(np.max(np.abs(energies - reference) / reference.sum(axis=1, keepdims=True)))
        rows.append(row)
    return rows


def naive_reconstructions(matrix: np.ndarray, edges: np.ndarray) -> np.ndarray:
    left, values, right = np.linalg.svd(matrix, full_matrices=False)
    out = np.zeros((len(edges) - 1, *matrix.shape))
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        for i in range(a, b):
            out[k] += values[i] * np.outer(left[:, i], right[i])
    return out


def svd_rows(repeats: int) -> list[dict]:
    from sdetool.analysis.analyze import AnalysisOptions, analyze

    rng = np.random.default_rng(1)
    rows = []
    matrix = rng.standard_normal((2000, 256))
    edges = bands.band_edges(256, 4)
    ours, result = timed(lambda: bands.svd_band_reconstructions(matrix, 4), repeats)
    theirs, expected = timed(lambda: naive_reconstructions(matrix, edges), repeats)
    rows.append({"what": "reconstructions 2000 x 256, K=4", "sdetool_s": ours, "naive_s": theirs,
                 "naive_ratio": theirs / ours, "max_abs_diff": float(np.abs(result - expected).max())})
    embeddings = rng.standard_normal((100_000, 512)).astype(np.float32)
    embeddings[:, :16] *= 10
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "sdetool-bench-bands.npy")
    np.save(path, embeddings)
    try:
        plain, _ = timed(lambda: analyze(path, options=AnalysisOptions(device="cpu")), repeats)
        banded, _ = timed(lambda: analyze(path, options=AnalysisOptions(device="cpu", bands=4)), repeats)
    finally:
        os.remove(path)
    rows.append({"what": "analyze 100000 x 512 .npy, --bands 4 vs none", "sdetool_s": banded, "plain_s": plain,
                 "overhead": banded / plain - 1.0})
    return rows


def store_rows(path: str, repeats: int) -> list[dict]:
    from sdetool.analysis.analyze import AnalysisOptions, analyze
    from sdetool.analysis.spatial import _BLOCK_BYTES
    from sdetool.io.store import open_tokens

    tokens = open_tokens(path, "image")
    n, h, w, c = tokens.shape
    block = max(1, _BLOCK_BYTES // (4 * h * w * c))

    def bare_read() -> None:
        with tokens.reader() as read:
            for start in range(0, n, block):
                read(start, min(start + block, n)).astype(np.float32)

    read_s, _ = timed(bare_read, repeats)
    rows = [{"what": f"bare read of /image/tokens {n} x {h}x{w}x{c} float16", "seconds": read_s}]
    for center in ("channel", "none"):
        options = AnalysisOptions(spatial_bands=4, spatial_center=center, device="cpu")
        seconds, _ = timed(lambda: analyze(path, ["image"], options), repeats)
        rows.append({"what": f"analyze --key image --spatial-bands 4 --spatial-center {center}", "seconds": seconds,
                     "ratio_to_read": seconds / read_s})
    plain, _ = timed(lambda: analyze(path, ["image"], AnalysisOptions(device="cpu")), repeats)
    rows.append({"what": "analyze --key image (embeddings only, for reference)", "seconds": plain})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--store", default=None, help="a store with /image/tokens (extract --tokens)")
    args = parser.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"
    print(f"machine: {machine}")
    spatial_rows = spatial(args.repeats)
    print("\nspatial band energies (K = 4): seconds, and each peer's time / sdetool's")
    for row in spatial_rows:
        print(f"  {row['workload']:7s} {row['grids']:6d} x {'x'.join(map(str, row['grid'])):10s}  sdetool "
              f"{row['sdetool_s']:.4f} s ({row['sdetool_grids_per_s']:,.0f} grids/s)  scipy-fft2 "
              f"{row['scipy-fft2_ratio']:.2f}x  numpy-batched {row['numpy-batched_ratio']:.2f}x  naive "
              f"{row['naive_ratio']:.1f}x  (max rel diff {max(row['numpy-batched_max_rel_diff'], row['naive_max_rel_diff']):.1e})")
    svd = svd_rows(args.repeats)
    print("\nSVD bands")
    for row in svd:
        print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    stored = store_rows(args.store, args.repeats) if args.store else []
    if stored:
        print("\nend to end on a token store")
        for row in stored:
            print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "spatial": spatial_rows, "svd": svd, "store": stored}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
