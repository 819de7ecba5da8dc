#!/usr/bin/env python
"""Benchmark of ``sdetool analyze``: the streaming Gram engine against its floor and in-memory peers.

One run measures, on this machine and in this order:

1. Data: seeded float32 sdetool stores with ``n`` rows of dimension ``d`` (a few spikes, a mean
   offset and Gaussian noise), written block by block with :class:`sdetool.io.store.StoreWriter`: a big
   one (default n = 10^6) and a small one (n = 10^5), plus a ``.npy`` copy of the small one. Files
   that already exist with the same specification are reused (``--rebuild`` rewrites them).
2. Streaming (big file, warm page cache): the bare *floor* (h5py reads of the same row blocks in one
   thread, ``np.copyto`` into a preallocated float64 buffer, ``G += b.T @ b``, ``scipy.linalg.eigvalsh``),
   ``sdetool.analysis.analyze.analyze`` as a library call, and the CLI ``sdetool analyze FILE --json OUT -q`` as
   a subprocess. Rounds are interleaved (floor, library, CLI; repeated) and medians reported, with the
   per-round analyze/floor ratio.
3. In memory (small matrix): ``analyze`` on the memory-mapped ``.npy`` and on the ``.h5`` against
   ``numpy.linalg.svd``, ``scipy.linalg.svdvals``, ``sklearn PCA(svd_solver="full")`` (all on the
   centred float64 matrix already in memory) and a naive per-row ``np.outer`` loop (timed on a subset,
   extrapolated). The top singular values of every method are checked against ``analyze``.
4. Peak memory: ``analyze`` (library and CLI) in a fresh subprocess on both files (sizes a factor 10
   apart); peak RSS as the child's own ``VmHWM`` (library) and ``getrusage(RUSAGE_CHILDREN)`` of a
   small wrapper process (CLI).

Timings on a shared machine are only as good as its idleness: every timed section reports how many
cores *other* processes used meanwhile (from ``/proc/stat``), and ``--wait-quiet SECONDS`` waits for
an idle machine before each timed round. Sections 2 and 3 also run with BLAS limited to one thread
(``threadpoolctl``), which is far less sensitive to contention than the default thread pool.

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
from sdetool.analysis.analyze import AnalysisOptions, analyze
from sdetool.io.store import StoreWriter

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


# --- other load on the machine -------------------------------------------------------------------


def _busy_seconds() -> float | None:
    """CPU seconds all processes spent busy since boot (from /proc/stat; None where unavailable)."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return None
    values = [int(x) for x in fields]
    busy = sum(values[:8]) - values[3] - values[4]  # user..steal, less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMeter:
    """CPU used by *other* processes while a section runs (cores on average): contention check."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._wall, self._busy, self._own = time.perf_counter(), _busy_seconds(), _own_seconds()

    def foreign_cores(self) -> float | None:
        busy = _busy_seconds()
        if busy is None or self._busy is None:
            return None
        wall = time.perf_counter() - self._wall
        return max(0.0, (busy - self._busy) - (_own_seconds() - self._own)) / max(wall, 1e-9)


def foreign_load(seconds: float = 2.0) -> float | None:
    """Cores used by other processes over a short idle window of this process."""
    meter = LoadMeter()
    time.sleep(seconds)
    return meter.foreign_cores()


class QuietWaiter:
    """Before a timed step, wait (within a total budget) until other processes use < 0.1 core."""

    def __init__(self, budget_s: float) -> None:
        self.left = budget_s
        self.waited = 0.0

    def __call__(self) -> None:
        while self.left > 0:
            load = foreign_load(1.0)
            self.left -= 1.0
            self.waited += 1.0
            if load is None or load < 0.1:
                return


def fmt_load(cores: float | None) -> str:
    return "n/a" if cores is None else f"{cores:.2f}"


# --- what is timed -------------------------------------------------------------------------------


def engine_block_rows(path: str) -> int:
    """The row block ``analyze`` streams with by default (about 32 MiB of float64, HDF5-chunk aligned)."""
    with h5py.File(path, "r") as handle:
        data = handle[f"/{KEY}/embeddings"]
        d, chunk_rows = data.shape[1], (data.chunks[0] if data.chunks else None)
    try:  # the engine's own rule, so the floor reads exactly the same blocks
        from sdetool.analysis.analyze import _block_rows
        from sdetool.io.sources import _aligned

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

from sdetool.analysis.analyze import AnalysisOptions, analyze
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
    def owner(filepath: str) -> str:
        for package in ("numpy", "scipy", "scikit_learn", "torch"):
            if f"{package}.libs" in filepath or f"/{package}/" in filepath:
                return package.replace("scikit_learn", "scikit-learn")
        return os.path.basename(filepath)

    blas = [
        {**{key: info.get(key) for key in ("user_api", "internal_api", "prefix", "version", "architecture",
                                           "threading_layer", "num_threads")},
         "loaded_by": owner(info.get("filepath", ""))}
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


def streaming_section(args, big_path: str, n_big: int, d: int, scratch: str, summary: list, wait_quiet) -> dict:
    from threadpoolctl import threadpool_limits

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
    log("all timed variants below run on this warm page cache; rounds interleave floor, library, CLI")
    rounds = []
    lib_values = cli_values = None
    meter = LoadMeter()
    for index in range(args.rounds):
        wait_quiet()
        meter.reset()
        rate = syrk_rate(block_rows, d)
        floor = floor_pass(big_path, block_rows)
        lib_s, lib_values = library_pass(big_path)
        cli_s, cli_values = cli_pass(big_path, os.path.join(scratch, "big.json"))
        other = meter.foreign_cores()
        rounds.append({"syrk_gflops": rate, "floor": floor, "library": lib_s, "cli": cli_s, "other_cores": other})
        log(f"round {index + 1} (default BLAS threads): syrk now {rate:5.1f} GFLOP/s | floor {floor['total']:.2f} s "
            f"(read {floor['read']:.2f}, widen {floor['widen']:.2f}, syrk {floor['syrk']:.2f}, eigvalsh {floor['eigvalsh']:.2f}) "
            f"| library {lib_s:.2f} s ({lib_s / floor['total']:.2f}x) | CLI {cli_s:.2f} s ({cli_s / floor['total']:.2f}x) "
            f"| other processes {fmt_load(other)} cores")
    single = []
    with threadpool_limits(1):
        for index in range(args.rounds_1t):
            wait_quiet()
            meter.reset()
            rate = syrk_rate(block_rows, d)
            floor = floor_pass(big_path, block_rows)
            lib_s, _ = library_pass(big_path)
            other = meter.foreign_cores()
            single.append({"syrk_gflops": rate, "floor": floor, "library": lib_s, "other_cores": other})
            log(f"round {index + 1} (1 BLAS thread): syrk now {rate:5.1f} GFLOP/s | floor {floor['total']:.2f} s "
                f"(read {floor['read']:.2f}, widen {floor['widen']:.2f}, syrk {floor['syrk']:.2f}, eigvalsh {floor['eigvalsh']:.2f}) "
                f"| library {lib_s:.2f} s ({lib_s / floor['total']:.2f}x) | other processes {fmt_load(other)} cores")

    def med(items, get):
        return statistics.median(get(r) for r in items)

    floor_med = med(rounds, lambda r: r["floor"]["total"])
    lib_med = med(rounds, lambda r: r["library"])
    cli_med = med(rounds, lambda r: r["cli"])
    paired = med(rounds, lambda r: r["library"] / r["floor"]["total"])
    paired_cli = med(rounds, lambda r: r["cli"] / r["floor"]["total"])
    parts = {k: med(rounds, lambda r: r["floor"][k]) for k in ("read", "widen", "syrk", "eigvalsh")}
    agree = rel_diff(cli_values, lib_values)
    rows = [
        ("floor: h5py read + np.copyto + b.T@b + eigvalsh", f"{floor_med:.2f}", "1.00", "1.00"),
        ("  of which h5py read (one thread)", f"{parts['read']:.2f}", f"{parts['read'] / floor_med:.2f}", ""),
        ("  of which widen (np.copyto)", f"{parts['widen']:.2f}", f"{parts['widen'] / floor_med:.2f}", ""),
        ("  of which syrk (G += b.T @ b)", f"{parts['syrk']:.2f}", f"{parts['syrk'] / floor_med:.2f}", ""),
        ("  of which eigvalsh", f"{parts['eigvalsh']:.3f}", f"{parts['eigvalsh'] / floor_med:.3f}", ""),
        ("sdetool.analysis.analyze.analyze (library)", f"{lib_med:.2f}", f"{lib_med / floor_med:.2f}", f"{paired:.2f}"),
        ("sdetool analyze --json -q (CLI subprocess)", f"{cli_med:.2f}", f"{cli_med / floor_med:.2f}", f"{paired_cli:.2f}"),
    ]
    out = {"block_rows": block_rows, "cold_read_s": cold_s, "cold_gbps": cold_rate, "warm_read_s": warm_s,
           "warm_gbps": warm_rate, "rounds": rounds, "rounds_1_thread": single, "floor_median": floor_med,
           "library_median": lib_med, "cli_median": cli_med, "ratio_library_floor": lib_med / floor_med,
           "ratio_cli_floor": cli_med / floor_med, "ratio_library_floor_paired_median": paired,
           "ratio_cli_floor_paired_median": paired_cli, "floor_parts_median": parts,
           "cli_vs_library_top50_rel_diff": agree}
    if single:
        floor_1 = med(single, lambda r: r["floor"]["total"])
        lib_1 = med(single, lambda r: r["library"])
        paired_1 = med(single, lambda r: r["library"] / r["floor"]["total"])
        rows += [
            ("floor, 1 BLAS thread (threadpoolctl)", f"{floor_1:.2f}", f"{floor_1 / floor_med:.2f}", ""),
            ("analyze (library), 1 BLAS thread", f"{lib_1:.2f}", f"{lib_1 / floor_med:.2f}", f"{paired_1:.2f} vs 1-thread floor"),
        ]
        out.update({"floor_1_thread_median": floor_1, "library_1_thread_median": lib_1,
                    "ratio_library_floor_1_thread": paired_1})
    log("")
    log(table(rows, (f"n={n_big:,}, d={d}, warm cache", f"median s (of {args.rounds})", "/ floor", "paired median")))
    log(f"CLI vs library singular values (top {TOP}): max relative difference {agree:.1e}")
    ratio = lib_med / floor_med
    verdict = "MET" if ratio <= 1.25 else "NOT MET"
    log(f"target analyze within 1.25x of the floor: {verdict} ({ratio:.2f}x of medians, paired per round {paired:.2f}x)")
    summary.append(("analyze <= 1.25x floor (big file, default threads)", f"{ratio:.2f}x", verdict))
    if single:
        verdict_1 = "MET" if paired_1 <= 1.25 else "NOT MET"
        summary.append(("analyze <= 1.25x floor (big file, 1 BLAS thread)", f"{paired_1:.2f}x", verdict_1))
    return out


def in_memory_section(args, matrix: np.ndarray, small_path: str, npy_path: str, n_small: int, d: int,
                      summary: list, wait_quiet) -> dict:
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    log(f"\n--- in memory: n={n_small:,}, d={d} ---")
    read_pass(npy_path, evict=False)
    read_pass(small_path, evict=False)
    start = time.perf_counter()
    x64 = matrix.astype(np.float64)
    widen_s = time.perf_counter() - start
    log(f"peers get the float64 matrix already in memory (float32 -> float64 took {widen_s:.2f} s, not counted); "
        f"analyze reads the files (warm page cache)")

    def np_svd():
        return np.linalg.svd(x64 - x64.mean(axis=0), compute_uv=False)

    def sp_svdvals():
        return scipy.linalg.svdvals(x64 - x64.mean(axis=0))

    def pca():
        return PCA(svd_solver="full").fit(x64).singular_values_

    peers = (("numpy.linalg.svd(Xc64, compute_uv=False)", np_svd),
             ("scipy.linalg.svdvals(Xc64)", sp_svdvals),
             ('sklearn PCA(svd_solver="full").fit(X64)', pca))

    m = min(args.naive_rows, n_small)
    subset = x64[:m]

    def naive():
        gram = np.zeros((d, d))
        total = np.zeros(d)
        for row in subset:
            gram += np.outer(row, row)
            total += row
        return gram, total

    def one_setting(label: str, reps_peers: int) -> tuple[list, np.ndarray]:
        wait_quiet()
        meter = LoadMeter()
        methods = []
        med, times, values = repeat(lambda: library_pass(npy_path), args.reps)
        reference = values
        methods.append(("analyze (.npy, memory-mapped)", med, times, values, None))
        med, times, values = repeat(lambda: library_pass(small_path), args.reps)
        methods.append(("analyze (.h5)", med, times, values, None))
        for name, function in peers:
            med, times, values = repeat(timed(function), reps_peers)
            methods.append((name, med, times, np.asarray(values), None))
        start = time.perf_counter()
        gram, total = naive()
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        naive_values = np.sqrt(np.clip(scipy.linalg.eigvalsh(gram - np.outer(total, total) / m)[::-1], 0, None))
        eig_s = time.perf_counter() - start
        estimate = loop_s * n_small / m + eig_s
        check = rel_diff(naive_values[: min(m - 1, d)], scipy.linalg.svdvals(subset - subset.mean(axis=0)))
        methods.append((f"naive np.outer row loop (EXTRAPOLATED from {m:,} rows)", estimate, [estimate], None,
                        f"vs svdvals on the same {m:,} rows: {check:.1e}"))
        for name, med, times, *_ in methods:
            log(f"[{label}] {name}: " + ", ".join(f"{t:.2f}" for t in times) + " s")
        other = meter.foreign_cores()
        loads[label] = other
        log(f"[{label}] other processes used {fmt_load(other)} cores on average meanwhile")
        return methods, reference

    def report(label: str, methods: list, reference: np.ndarray, reps_peers: int) -> dict:
        analyze_med = methods[0][1]
        rows = []
        for name, med, times, values, note in methods:
            agreement = note or ("(reference)" if values is reference else f"{rel_diff(values, reference):.1e}")
            reps = len(times)
            rows.append((name, f"{med:.2f}", str(reps) if "EXTRAPOLATED" not in name else "1 (subset)",
                         f"{med / analyze_med:.1f}", agreement))
        log("")
        log(table(rows, (f"{label}: n={n_small:,}, d={d}", "median s", "runs", "/ analyze .npy",
                         f"top-{TOP} max rel diff vs analyze")))
        peer_times = [med for name, med, *_ in methods[2:]]
        slower_analyze = max(methods[0][1], methods[1][1])
        fastest = min(peer_times)
        verdict = "MET" if slower_analyze < fastest else (
            "MET for one input" if min(methods[0][1], methods[1][1]) < fastest else "NOT MET")
        log(f"[{label}] target analyze faster than every in-memory peer: {verdict} (fastest peer {fastest:.2f} s = "
            f"{fastest / slower_analyze:.1f}x the slower analyze input)")
        summary.append((f"analyze faster than every in-memory peer ({label})", f"{fastest / slower_analyze:.1f}x margin", verdict))
        return {"methods": [{"name": name, "median_s": med, "times": times, "agreement": row[4]}
                            for (name, med, times, _, _), row in zip(methods, rows)], "verdict": verdict}

    loads: dict = {}
    out = {"widen_s": widen_s, "other_cores": loads}
    methods, reference = one_setting("default threads", args.reps)
    out["default_threads"] = report("default threads", methods, reference, args.reps)
    if args.peer_reps_1t > 0:
        with threadpool_limits(1):
            methods, reference = one_setting("1 BLAS thread", args.peer_reps_1t)
        out["one_thread"] = report("1 BLAS thread", methods, reference, args.peer_reps_1t)
    return out


# --- the run -------------------------------------------------------------------------------------


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
    parser.add_argument("--rounds-1t", type=int, default=1, help="extra rounds (floor, library) with BLAS limited to 1 thread; 0: none")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each in-memory method (median)")
    parser.add_argument("--peer-reps-1t", type=int, default=1,
                        help="repetitions of each in-memory peer with BLAS limited to 1 thread (analyze: --reps); 0: skip that setting")
    parser.add_argument("--naive-rows", type=int, default=2000, help="rows the naive loop really runs (then extrapolated)")
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="before each timed round, wait until other processes use < 0.1 core (total budget in seconds, default 120; 0: never wait)")
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

    import sklearn.decomposition  # noqa: F401  (loaded before threadpool_info so its OpenMP pool shows)

    env = environment()
    results["environment"] = env
    log("=== sdetool analyze benchmark ===")
    log(f"CPU: {env['cpu_model']}, {env['cpu_count']} logical CPUs ({env['usable_cpus']} usable), RAM {env['ram_gib']} GiB")
    log(f"Python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, h5py {env['h5py']} (HDF5 {env['hdf5']}), "
        f"scikit-learn {env['sklearn']}, sdetool {env['sdetool']}; {env['platform']}")
    for info in env["blas"]:
        log(f"threadpool ({info['loaded_by']}): {info['user_api']}/{info['internal_api']} {info['prefix']} "
            f"{info['version'] or ''} kernel={info['architecture'] or '-'} threads={info['num_threads']}")
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
    wait_quiet = QuietWaiter(args.wait_quiet)
    other = foreign_load(2.0)
    results["other_cores_before"] = other
    log(f"\nother processes used {fmt_load(other)} cores in a 2 s window before timing "
        f"(load average {open('/proc/loadavg').read().split()[0] if os.path.exists('/proc/loadavg') else 'n/a'})")
    if other is not None and other >= 0.1:
        log("WARNING: the machine is not idle: timings below are contended (BLAS threads oversubscribed). "
            "Each timed section reports the other processes' CPU use; --wait-quiet waits for idle.")

    # 2. streaming on the big file
    if not args.skip_big:
        results["big"] = streaming_section(args, big_path, n_big, d, scratch, summary, wait_quiet)

    # 3. in memory
    results["in_memory"] = in_memory_section(args, matrix, small_path, npy_path, n_small, d, summary, wait_quiet)

    # 4. peak memory
    log("\n--- peak memory (fresh subprocess per run: library child's own VmHWM; CLI via RUSAGE_CHILDREN of a small wrapper) ---")
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
        log(f"{name:62s} {value:>36s}  {verdict}")
    loads = [r.get("other_cores") for r in results.get("big", {}).get("rounds", []) + results.get("big", {}).get("rounds_1_thread", [])]
    loads += list(results["in_memory"].get("other_cores", {}).values())
    loads = [x for x in loads if x is not None]
    if loads:
        worst = max(loads)
        log(f"other processes' CPU use during the timed sections: max {worst:.2f} cores"
            + ("  -> CONTENDED: rerun on an idle machine for clean numbers" if worst >= 0.1 else " (idle)"))
        results["other_cores_max"] = worst
    if wait_quiet.waited:
        log(f"waited {wait_quiet.waited:.0f} s in total for the machine to go idle")
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
