#!/usr/bin/env python
"""Benchmark of ``sdetool analyze``: the streaming Gram engine against its floor and in-memory peers.

One run measures, on this machine and in this order:

1. Data: seeded float32 sdetool stores with ``n`` rows of dimension ``d`` (a few spikes, a mean
   offset and Gaussian noise), written block by block with :class:`sdetool.store.StoreWriter`: a big
   one (default n = 10^6) and a small one (n = 10^5), plus a ``.npy`` copy of the small one. Files
   that already exist with the same specification are reused (``--rebuild`` rewrites them).
2. Streaming (big file, warm page cache): the bare *floor* (h5py reads of the same row blocks in one
   thread, ``np.copyto`` into a preallocated float64 buffer, ``G += b.T @ b``, ``scipy.linalg.eigvalsh``),
   ``sdetool.analysis.analyze`` as a library call, and the CLI ``sdetool analyze FILE --json OUT -q`` as
   a subprocess. Rounds are interleaved (floor, library, CLI; repeated) and medians reported, with the
   per-round analyze/floor ratio.
3. In memory (small matrix): ``analyze`` on the memory-mapped ``.npy`` and on the ``.h5`` against
   ``numpy.linalg.svd``, ``scipy.linalg.svdvals``, ``sklearn PCA(svd_solver="full")`` (all on the
   centred float64 matrix already in memory) and a naive per-row ``np.outer`` loop (timed on a subset,
   extrapolated). The top singular values of every method are checked against ``analyze``.
4. Peak memory: ``analyze`` (library and CLI) in a fresh subprocess on both files (sizes a factor 10
   apart); peak RSS from ``getrusage``.

Run from the repository root::

    python benchmarks/bench_analyze.py            # full run (n = 1e6 and 1e5, d = 768)
    python benchmarks/bench_analyze.py --quick    # smoke run (n = 2e5 and 2e4)

The data folder (default ``bench-data/``) is git-ignored; ``--clean`` deletes the files at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import scipy
import scipy.linalg

import sdetool
from sdetool.analysis import AnalysisOptions, analyze
from sdetool.store import StoreWriter

KEY = "embeddings"
SEED = 20240611
SPIKES = (10.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.35)  # signal std per spike, noise std = 1
MEAN_NORM = 3.0
WRITE_BLOCK = 20_000
TOP = 50  # singular values compared across methods
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(text: str = "") -> None:
    print(text, flush=True)


# --- data ----------------------------------------------------------------------------------------


def spec_of(n: int, d: int) -> dict:
    return {"generator": "bench_analyze/1", "n": n, "d": d, "seed": SEED, "spikes": list(SPIKES),
            "mean_norm": MEAN_NORM, "block": WRITE_BLOCK}


def _structure(d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([SEED, d])
    basis, _ = np.linalg.qr(rng.standard_normal((d, len(SPIKES))))
    directions = (basis.T * np.asarray(SPIKES)[:, None]).astype(np.float32)  # (k, d), scaled
    mean = rng.standard_normal(d)
    mean = (MEAN_NORM * mean / np.linalg.norm(mean)).astype(np.float32)
    return directions, mean


def make_block(start: int, rows: int, d: int) -> np.ndarray:
    """Rows ``start:start+rows`` of the benchmark matrix (deterministic, whatever the block size)."""
    directions, mean = _structure(d)
    rng = np.random.default_rng([SEED, d, start])
    block = rng.standard_normal((rows, d), dtype=np.float32)
    block += rng.standard_normal((rows, directions.shape[0]), dtype=np.float32) @ directions
    block += mean
    return block


def store_matches(path: str, spec: dict) -> bool:
    if not os.path.exists(path):
        return False
    try:
        with h5py.File(path, "r") as handle:
            data = handle[f"/{KEY}/embeddings"]
            return (data.shape == (spec["n"], spec["d"]) and data.dtype == np.float32
                    and handle[KEY].attrs.get("bench_spec") == json.dumps(spec, sort_keys=True))
    except (OSError, KeyError):
        return False


def ensure_store(path: str, n: int, d: int, rebuild: bool) -> tuple[bool, float]:
    """Write the store unless a matching one exists; returns (written, seconds)."""
    spec = spec_of(n, d)
    if not rebuild and store_matches(path, spec):
        return False, 0.0
    start = time.perf_counter()
    attrs = {"modality": "synthetic", "model": "bench_analyze", "bench_spec": json.dumps(spec, sort_keys=True)}
    with StoreWriter(path, mode="w") as writer:
        target = writer.create_set(KEY, d, dtype="float32", with_ids=False, attrs=attrs)
        for first in range(0, n, WRITE_BLOCK):
            target.append(make_block(first, min(WRITE_BLOCK, n - first), d))
    return True, time.perf_counter() - start


def ensure_npy(h5_path: str, npy_path: str, rebuilt: bool) -> tuple[np.ndarray, bool]:
    """The small matrix in memory (float32), and its ``.npy`` copy on disk."""
    with h5py.File(h5_path, "r") as handle:
        matrix = handle[f"/{KEY}/embeddings"][...]
    written = False
    if rebuilt or not os.path.exists(npy_path) or np.load(npy_path, mmap_mode="r").shape != matrix.shape:
        np.save(npy_path, matrix)
        written = True
    return matrix, written


def read_pass(path: str, evict: bool) -> tuple[float, float]:
    """Read the whole file once (fills the page cache); returns (seconds, GB/s).

    With ``evict``, first ask the kernel to drop the file's cached pages (``posix_fadvise
    DONTNEED``; unprivileged, best effort), so that the pass reads from the disk.
    """
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as handle:
        if evict and hasattr(os, "posix_fadvise"):
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        buffer = bytearray(64 << 20)
        view = memoryview(buffer)
        start = time.perf_counter()
        while handle.readinto(view):
            pass
        seconds = time.perf_counter() - start
    return seconds, size / seconds / 1e9


# --- what is timed -------------------------------------------------------------------------------


def engine_block_rows(path: str) -> int:
    """The row block ``analyze`` streams with by default (about 32 MiB of float64, HDF5-chunk aligned)."""
    with h5py.File(path, "r") as handle:
        data = handle[f"/{KEY}/embeddings"]
        d, chunk_rows = data.shape[1], (data.chunks[0] if data.chunks else None)
    try:  # the engine's own rule, so the floor reads exactly the same blocks
        from sdetool.analysis import _block_rows
        from sdetool.sources import _aligned

        return _aligned(_block_rows(AnalysisOptions(), d), chunk_rows)
    except ImportError:  # pragma: no cover - private helpers renamed; same rule restated
        rows = max(64, (32 << 20) // (8 * d))
        return rows if not chunk_rows or chunk_rows >= rows else (rows // chunk_rows) * chunk_rows


def floor_pass(path: str, block_rows: int) -> dict:
    """The bare floor: read blocks (one thread), widen with np.copyto, float64 syrk, eigvalsh."""
    parts = {"read": 0.0, "widen": 0.0, "syrk": 0.0, "eigvalsh": 0.0}
    start = time.perf_counter()
    with h5py.File(path, "r") as handle:
        data = handle[f"/{KEY}/embeddings"]
        n, d = data.shape
        buffer = np.empty((block_rows, d), dtype=np.float64)
        gram = np.zeros((d, d), dtype=np.float64)
        for first in range(0, n, block_rows):
            t0 = time.perf_counter()
            chunk = data[first:first + block_rows]
            t1 = time.perf_counter()
            block = buffer[: chunk.shape[0]]
            np.copyto(block, chunk, casting="unsafe")
            t2 = time.perf_counter()
            gram += block.T @ block
            t3 = time.perf_counter()
            parts["read"] += t1 - t0
            parts["widen"] += t2 - t1
            parts["syrk"] += t3 - t2
    t4 = time.perf_counter()
    eigenvalues = scipy.linalg.eigvalsh(gram, check_finite=False)
    parts["eigvalsh"] = time.perf_counter() - t4
    parts["total"] = time.perf_counter() - start
    parts["check"] = float(eigenvalues[-1])
    return parts


def library_pass(path: str) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    report = analyze(path, [KEY], AnalysisOptions())
    seconds = time.perf_counter() - start
    return seconds, np.asarray(report[KEY].singular_values)


def cli_command() -> list[str]:
    exe = shutil.which("sdetool")
    return [exe] if exe else [sys.executable, "-m", "sdetool"]


def cli_pass(path: str, json_path: str) -> tuple[float, np.ndarray]:
    command = cli_command() + ["analyze", path, "--key", KEY, "--json", json_path, "-q"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    with open(json_path) as handle:
        values = np.asarray(json.load(handle)["singular_values"], dtype=np.float64)
    return seconds, values


def syrk_rate(rows: int, d: int, reps: int = 3) -> float:
    """GFLOP/s of ``b.T @ b`` (float64, counting rows * d^2) right now: the machine's BLAS state."""
    block = np.random.default_rng(0).standard_normal((rows, d))
    block.T @ block
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        block.T @ block
        best = min(best, time.perf_counter() - start)
    return rows * d * d / best / 1e9


def rel_diff(values: np.ndarray, reference: np.ndarray, top: int = TOP) -> float:
    k = min(top, values.size, reference.size)
    return float(np.max(np.abs(values[:k] - reference[:k]) / np.abs(reference[:k])))


def repeat(function, reps: int) -> tuple[float, list[float], object]:
    """Median seconds of ``reps`` calls of ``function() -> (seconds, value)``; last value."""
    times, value = [], None
    for _ in range(reps):
        seconds, value = function()
        times.append(seconds)
    return statistics.median(times), times, value


def timed(function):
    def run():
        start = time.perf_counter()
        value = function()
        return time.perf_counter() - start, value
    return run


# --- peak memory ---------------------------------------------------------------------------------

# A child's ru_maxrss (RUSAGE_SELF) on Linux starts from the parent's high-water mark when it was
# forked (the exec'ing process inherits it), and this parent holds the in-memory matrices. So the
# library child reads its own VmHWM (a fresh address space after exec), and the CLI runs under a
# small wrapper process whose RUSAGE_CHILDREN then covers the CLI alone.

_LIBRARY_CHILD = r"""
import json, resource, sys, time

def hwm_kib():
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

from sdetool.analysis import AnalysisOptions, analyze
base = hwm_kib()
start = time.perf_counter()
analyze(sys.argv[1], ["embeddings"], AnalysisOptions())
seconds = time.perf_counter() - start
print(json.dumps({"base_kib": base, "peak_kib": hwm_kib(), "seconds": seconds}))
"""

_CLI_WRAPPER = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True)
seconds = time.perf_counter() - start
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "seconds": seconds}))
"""


def library_peak(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _LIBRARY_CHILD, path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli_peak(path: str, json_path: str) -> dict:
    command = cli_command() + ["analyze", path, "--key", KEY, "--json", json_path, "-q"]
    out = subprocess.run([sys.executable, "-c", _CLI_WRAPPER, *command], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- environment ---------------------------------------------------------------------------------


def environment() -> dict:
    import sklearn
    import threadpoolctl

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        ram_gib = psutil.virtual_memory().total / 2**30
    except ImportError:
        ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    blas = [
        {key: info.get(key) for key in ("user_api", "internal_api", "prefix", "version", "architecture",
                                         "threading_layer", "num_threads")}
        for info in threadpoolctl.threadpool_info()
    ]
    env_names = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS", "GOTO_NUM_THREADS")
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(ram_gib, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "sklearn": sklearn.__version__,
        "sdetool": sdetool.__version__,
        "blas": blas,
        "env": {name: os.environ[name] for name in env_names if name in os.environ},
    }


# --- the run -------------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds:8.2f} s"


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
                       for i, cell in enumerate(row)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.path.join(REPO, "bench-data"), help="where the stores live (default: bench-data/ at the repo root)")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the data files even when matching ones exist")
    parser.add_argument("--quick", action="store_true", help="smoke run: n = 2e5 and 2e4")
    parser.add_argument("--skip-big", action="store_true", help="skip the big-file streaming section (and its peak-memory run)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--n-big", type=int, default=None, help="rows of the big file (default 1e6; --quick 2e5)")
    parser.add_argument("--n-small", type=int, default=None, help="rows of the small file (default 1e5; --quick 2e4)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (floor, library, CLI) on the big file")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each in-memory method (median)")
    parser.add_argument("--naive-rows", type=int, default=2000, help="rows the naive loop really runs (then extrapolated)")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    parser.add_argument("--clean", action="store_true", help="delete the data files at the end")
    args = parser.parse_args(argv)

    d = args.dim
    n_big = args.n_big or (200_000 if args.quick else 1_000_000)
    n_small = args.n_small or (20_000 if args.quick else 100_000)
    os.makedirs(args.data_dir, exist_ok=True)
    big_path = os.path.join(args.data_dir, f"bench_n{n_big}_d{d}.h5")
    small_path = os.path.join(args.data_dir, f"bench_n{n_small}_d{d}.h5")
    npy_path = os.path.join(args.data_dir, f"bench_n{n_small}_d{d}.npy")
    scratch = tempfile.mkdtemp(prefix="bench-analyze-")
    results: dict = {"args": vars(args), "n_big": n_big, "n_small": n_small, "d": d}
    run_start = time.perf_counter()

    from sklearn.decomposition import PCA  # imported before threadpool_info so its OpenMP shows

    env = environment()
    results["environment"] = env
    log("=== sdetool analyze benchmark ===")
    log(f"CPU: {env['cpu_model']}, {env['cpu_count']} logical CPUs ({env['usable_cpus']} usable), RAM {env['ram_gib']} GiB")
    log(f"Python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, h5py {env['h5py']} (HDF5 {env['hdf5']}), "
        f"scikit-learn {env['sklearn']}, sdetool {env['sdetool']}; {env['platform']}")
    for info in env["blas"]:
        log(f"threadpool: {info['user_api']}/{info['internal_api']} {info['prefix']} {info['version'] or ''} "
            f"arch={info['architecture'] or '-'} threads={info['num_threads']}")
    if env["env"]:
        log("BLAS/thread environment variables set: " + ", ".join(f"{k}={v}" for k, v in env["env"].items()))
    else:
        log("BLAS/thread environment variables: none set (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE, *_NUM_THREADS unset)")
    log(f"sizes: big n={n_big:,}, small n={n_small:,}, d={d}, float32; data folder {args.data_dir}")

    # 1. data
    log("\n--- data ---")
    paths = [(small_path, n_small)] + ([] if args.skip_big else [(big_path, n_big)])
    rebuilt_small = False
    for path, n in paths:
        written, seconds = ensure_store(path, n, d, args.rebuild)
        size_gb = os.path.getsize(path) / 1e9
        if path == small_path:
            rebuilt_small = written
        log(f"{os.path.basename(path)}: {'written in ' + format(seconds, '.1f') + ' s' if written else 'reused'} ({size_gb:.2f} GB)")
        results.setdefault("data", {})[os.path.basename(path)] = {"written": written, "seconds": seconds, "gb": size_gb}
    matrix, npy_written = ensure_npy(small_path, npy_path, rebuilt_small)
    log(f"{os.path.basename(npy_path)}: {'written' if npy_written else 'reused'}")

    summary: list[tuple] = []

    # 2. streaming on the big file
    if not args.skip_big:
        log("\n--- streaming: big file ---")
        block_rows = engine_block_rows(big_path)
        size_gb = os.path.getsize(big_path) / 1e9
        try:
            import psutil

            available = psutil.virtual_memory().available / 1e9
            if available < 1.5 * size_gb:
                log(f"WARNING: {available:.1f} GB available for a {size_gb:.1f} GB file: the page cache may not hold it")
        except ImportError:
            pass
        cold_s, cold_rate = read_pass(big_path, evict=True)
        warm_s, warm_rate = read_pass(big_path, evict=False)
        log(f"block = {block_rows} rows (the engine's default: ~32 MiB float64, HDF5-chunk aligned)")
        log(f"first read pass after posix_fadvise(DONTNEED) (cold-ish, best effort): {cold_s:.2f} s = {cold_rate:.2f} GB/s")
        log(f"warm-up read pass (untimed for the variants; page cache now warm): {warm_s:.2f} s = {warm_rate:.2f} GB/s")
        log("all timed variants below run on this warm page cache")
        rounds = []
        for index in range(args.rounds):
            rate = syrk_rate(block_rows, d)
            floor = floor_pass(big_path, block_rows)
            lib_s, lib_values = library_pass(big_path)
            cli_s, cli_values = cli_pass(big_path, os.path.join(scratch, "big.json"))
            rounds.append({"syrk_gflops": rate, "floor": floor, "library": lib_s, "cli": cli_s})
            log(f"round {index + 1}: BLAS syrk now {rate:5.1f} GFLOP/s | floor {floor['total']:.2f} s "
                f"(read {floor['read']:.2f}, widen {floor['widen']:.2f}, syrk {floor['syrk']:.2f}, eigvalsh {floor['eigvalsh']:.2f}) "
                f"| library {lib_s:.2f} s ({lib_s / floor['total']:.2f}x) | CLI {cli_s:.2f} s ({cli_s / floor['total']:.2f}x)")
        floor_med = statistics.median(r["floor"]["total"] for r in rounds)
        lib_med = statistics.median(r["library"] for r in rounds)
        cli_med = statistics.median(r["cli"] for r in rounds)
        paired = statistics.median(r["library"] / r["floor"]["total"] for r in rounds)
        paired_cli = statistics.median(r["cli"] / r["floor"]["total"] for r in rounds)
        parts = {k: statistics.median(r["floor"][k] for r in rounds) for k in ("read", "widen", "syrk", "eigvalsh")}
        agree = rel_diff(cli_values, lib_values)
        results["big"] = {"block_rows": block_rows, "cold_read_s": cold_s, "cold_gbps": cold_rate,
                          "warm_read_s": warm_s, "warm_gbps": warm_rate, "rounds": rounds,
                          "floor_median": floor_med, "library_median": lib_med, "cli_median": cli_med,
                          "ratio_library_floor": lib_med / floor_med, "ratio_cli_floor": cli_med / floor_med,
                          "ratio_library_floor_paired_median": paired, "ratio_cli_floor_paired_median": paired_cli,
                          "floor_parts_median": parts, "cli_vs_library_top50_rel_diff": agree}
        log("")
        log(table([
            ("floor: h5py read + np.copyto + b.T@b + eigvalsh", f"{floor_med:.2f}", "1.00", "1.00"),
            ("  of which read", f"{parts['read']:.2f}", f"{parts['read'] / floor_med:.2f}", ""),
            ("  of which widen (np.copyto)", f"{parts['widen']:.2f}", f"{parts['widen'] / floor_med:.2f}", ""),
            ("  of which syrk (b.T @ b)", f"{parts['syrk']:.2f}", f"{parts['syrk'] / floor_med:.2f}", ""),
            ("  of which eigvalsh", f"{parts['eigvalsh']:.3f}", f"{parts['eigvalsh'] / floor_med:.3f}", ""),
            ("sdetool.analysis.analyze (library)", f"{lib_med:.2f}", f"{lib_med / floor_med:.2f}", f"{paired:.2f}"),
            ("sdetool analyze --json -q (CLI subprocess)", f"{cli_med:.2f}", f"{cli_med / floor_med:.2f}", f"{paired_cli:.2f}"),
        ], ("n=%s, d=%d, warm cache" % (f"{n_big:,}", d), "median s", "/ floor", "paired median")))
        log(f"CLI vs library singular values (top {TOP}): max relative difference {agree:.1e}")
        verdict = "MET" if lib_med / floor_med <= 1.25 else "NOT MET"
        log(f"target analyze within 1.25x of the floor: {verdict} ({lib_med / floor_med:.2f}x, paired {paired:.2f}x)")
        summary.append(("analyze <= 1.25x floor (big file)", f"{lib_med / floor_med:.2f}x", verdict))

    # 3. in memory
    log(f"\n--- in memory: n={n_small:,}, d={d} ---")
    read_pass(npy_path, evict=False)
    read_pass(small_path, evict=False)
    start = time.perf_counter()
    x64 = matrix.astype(np.float64)
    widen_s = time.perf_counter() - start
    log(f"peers get the float64 matrix already in memory (float32 -> float64 took {widen_s:.2f} s, not counted); "
        f"analyze reads the files (warm page cache)")
    reps = args.reps
    methods: list[tuple[str, float, list, np.ndarray | None, str]] = []

    med, times, values = repeat(lambda: library_pass(npy_path), reps)
    reference = values
    methods.append((f"analyze (.npy, memory-mapped)", med, times, values, ""))
    log(f"analyze .npy: {times}")
    med, times, values = repeat(lambda: library_pass(small_path), reps)
    methods.append((f"analyze (.h5)", med, times, values, ""))
    log(f"analyze .h5: {times}")

    def np_svd():
        return np.linalg.svd(x64 - x64.mean(axis=0), compute_uv=False)

    def sp_svdvals():
        return scipy.linalg.svdvals(x64 - x64.mean(axis=0))

    def pca():
        return PCA(svd_solver="full").fit(x64).singular_values_

    for name, function in (("numpy.linalg.svd(Xc64, compute_uv=False)", np_svd),
                           ("scipy.linalg.svdvals(Xc64)", sp_svdvals),
                           ('sklearn PCA(svd_solver="full").fit(X64)', pca)):
        med, times, values = repeat(timed(function), reps)
        methods.append((name, med, times, np.asarray(values), ""))
        log(f"{name}: {[round(t, 2) for t in times]}")

    m = min(args.naive_rows, n_small)
    subset = x64[:m]

    def naive():
        gram = np.zeros((d, d))
        total = np.zeros(d)
        for row in subset:
            gram += np.outer(row, row)
            total += row
        return gram, total

    start = time.perf_counter()
    gram, total = naive()
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    naive_values = np.sqrt(np.clip(scipy.linalg.eigvalsh(gram - np.outer(total, total) / m)[::-1], 0, None))
    eig_s = time.perf_counter() - start
    naive_est = loop_s * n_small / m + eig_s
    naive_check = rel_diff(naive_values[: min(m - 1, d)], scipy.linalg.svdvals(subset - subset.mean(axis=0)))
    methods.append((f"naive np.outer row loop (EXTRAPOLATED from {m:,} rows)", naive_est, [naive_est], None,
                    f"vs svdvals on the same {m:,} rows: {naive_check:.1e}"))
    log(f"naive loop: {m:,} rows in {loop_s:.2f} s + eigvalsh {eig_s:.2f} s -> extrapolated {naive_est:.1f} s for {n_small:,} rows")

    analyze_med = methods[0][1]
    rows = []
    for name, med, times, values, note in methods:
        agreement = note or ("(reference)" if values is reference else f"{rel_diff(values, reference):.1e}")
        rows.append((name, f"{med:.2f}", f"{med / analyze_med:.1f}", agreement))
    log("")
    log(table(rows, ("method (n=%s, d=%d)" % (f"{n_small:,}", d), f"median s (of {reps})", "/ analyze .npy", f"top-{TOP} max rel diff vs analyze")))
    peers = [med for name, med, *_ in methods[2:]]
    best_analyze = min(methods[0][1], methods[1][1])
    worst_analyze = max(methods[0][1], methods[1][1])
    verdict = "MET" if worst_analyze < min(peers) else ("MET for one input" if best_analyze < min(peers) else "NOT MET")
    log(f"target analyze faster than every in-memory peer: {verdict} (fastest peer {min(peers):.2f} s, "
        f"{min(peers) / worst_analyze:.1f}x the slower analyze input)")
    summary.append(("analyze faster than every in-memory peer", f"{min(peers) / worst_analyze:.1f}x margin", verdict))
    results["in_memory"] = {"widen_s": widen_s, "methods": [
        {"name": name, "median_s": med, "times": times, "agreement": row[3]} for (name, med, times, _, _), row in zip(methods, rows)]}

    # 4. peak memory
    log("\n--- peak memory (fresh subprocess per run; ru_maxrss) ---")
    memory_rows, peaks = [], {}
    for path, n in [(small_path, n_small)] + ([] if args.skip_big else [(big_path, n_big)]):
        lib = library_peak(path)
        cli = cli_peak(path, os.path.join(scratch, "peak.json"))
        peaks[n] = (lib, cli)
        memory_rows.append((f"n={n:,}", f"{lib['peak_kib'] / 1024:.0f}", f"{(lib['peak_kib'] - lib['base_kib']) / 1024:.0f}",
                            f"{cli['peak_kib'] / 1024:.0f}", f"{lib['seconds']:.2f}"))
    log(table(memory_rows, (f"file (d={d})", "library peak MiB", "library above imports MiB", "CLI peak MiB", "library s")))
    results["peak_memory"] = {str(n): {"library": lib, "cli": cli} for n, (lib, cli) in peaks.items()}
    if len(peaks) == 2:
        (lib_s, cli_s), (lib_b, cli_b) = peaks[n_small], peaks[n_big]
        ratio = lib_b["peak_kib"] / lib_s["peak_kib"]
        ratio_cli = cli_b["peak_kib"] / cli_s["peak_kib"]
        verdict = "MET" if max(ratio, ratio_cli) < 1.2 else "NOT MET"
        log(f"n grows {n_big / n_small:.0f}x; peak grows {ratio:.2f}x (library), {ratio_cli:.2f}x (CLI): "
            f"independent of n: {verdict}")
        summary.append(("peak memory independent of n", f"{ratio:.2f}x lib / {ratio_cli:.2f}x CLI for {n_big / n_small:.0f}x rows", verdict))

    log("\n--- summary ---")
    for name, value, verdict in summary:
        log(f"{name:45s} {value:>32s}  {verdict}")
    total_s = time.perf_counter() - run_start
    log(f"total benchmark time {total_s:.0f} s")
    results["summary"] = summary
    results["total_s"] = total_s
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=float)
    shutil.rmtree(scratch, ignore_errors=True)
    if args.clean:
        for path in (big_path, small_path, npy_path):
            if os.path.exists(path):
                os.unlink(path)
        log(f"deleted the data files in {args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
