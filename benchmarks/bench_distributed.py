"""Data-parallel `sdetool analyze` under torchrun: wall time against the number of ranks.

Writes S float32 shards of an sdetool store (seeded, with planted spikes), warms the page cache, then
runs in one go, on the same shards:

- `python -m sdetool analyze SHARDS... --json` (one process, all cores to BLAS), and
- `python -m torch.distributed.run --nproc_per_node R -m sdetool analyze SHARDS... --json` for each R
  (each rank streams its own shards, BLAS threads = cores / R; Grams all-reduced over gloo),

checks that every run reports the same spectrum and bands, and prints wall times and speed-ups.
Wall time includes interpreter start-up, imports and the process-group set-up of each run.

    python benchmarks/bench_distributed.py --shards 8 --rows 375000 --dim 768 --ranks 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_shard(args: tuple[str, int, int, int]) -> str:
    path, rows, dim, seed = args
    sys.path.insert(0, str(ROOT))
    from sdetool.io import store

    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, 16)))[0]  # shared by all shards
    strengths = np.geomspace(8.0, 1.0, 16).astype(np.float32)
    with store.StoreWriter(path, mode="w") as writer:
        target = writer.create_set("image", dim, with_ids=False, attrs={"modality": "image", "model": "bench"})
        for start in range(0, rows, 65536):
            block = min(65536, rows - start)
            scores = rng.standard_normal((block, 16), dtype=np.float32) * strengths
            noise = rng.standard_normal((block, dim), dtype=np.float32)
            target.append(noise + scores @ directions.T.astype(np.float32))
    return path


def ensure_shards(folder: Path, shards: int, rows: int, dim: int, workers: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"shard-{i:03d}-{rows}x{dim}.h5") for i in range(shards)]
    missing = [(p, rows, dim, 1000 + i) for i, p in enumerate(paths) if not os.path.exists(p)]
    if missing:
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(write_shard, missing))
        print(f"wrote {len(missing)} shards in {time.perf_counter() - started:.1f} s", flush=True)
    return paths


def read_all(paths: list[str]) -> float:
    """Read every byte of the files once (plain reads); returns seconds."""
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    return time.perf_counter() - started


def h5_read_all(paths: list[str], block_rows: int) -> float:
    """Read every row block of every shard with h5py in one thread (what one rank does); seconds."""
    import h5py

    started = time.perf_counter()
    for path in paths:
        with h5py.File(path, "r") as handle:
            data = handle["image/embeddings"]
            for start in range(0, data.shape[0], block_rows):
                data[start : start + block_rows]
    return time.perf_counter() - started


def import_seconds(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - started


def run(paths: list[str], ranks: int, out: Path, cores: int, device: str = "cpu") -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    threads = str(max(1, cores // ranks))
    env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    target = out / f"report-{ranks}-{device.replace(':', '')}.json"
    tail = [*paths, "--json", str(target), "-q", "--device", device]
    if ranks == 1:
        command = [sys.executable, "-m", "sdetool", "analyze", *tail]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                   "--master_port", str(29600 + ranks), "-m", "sdetool", "analyze", *tail]
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"ranks={ranks} failed:\n{completed.stderr[-3000:]}")
    return elapsed, json.loads(target.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rows", type=int, default=375_000, help="rows per shard")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--ranks", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--devices", default="", help="also time one process with --device X for each X (e.g. cuda)")
    parser.add_argument("--data-dir", default=str(ROOT / "bench-data" / "distributed"))
    parser.add_argument("--out", default=None, help="folder for the JSON reports (default: the data folder)")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; python {sys.version.split()[0]}; numpy {np.__version__}", flush=True)
    try:
        import torch

        print(f"torch {torch.__version__}", flush=True)
    except ImportError:
        raise SystemExit("torch is needed for torchrun")
    paths = ensure_shards(Path(args.data_dir), args.shards, args.rows, args.dim, workers=min(cores, args.shards))
    gigabytes = sum(os.path.getsize(p) for p in paths) / 1e9
    print(f"{args.shards} shards x {args.rows:,} rows x {args.dim} float32 = {gigabytes:.2f} GB", flush=True)
    first, second = read_all(paths), read_all(paths)
    h5 = h5_read_all(paths, block_rows=(32 << 20) // (8 * args.dim))
    print(f"plain read of all shards: {gigabytes / first:.2f} GB/s first, {gigabytes / second:.2f} GB/s again; "
          f"h5py block reads, one thread: {gigabytes / h5:.2f} GB/s", flush=True)
    print(f"interpreter start + import: numpy {import_seconds('numpy'):.2f} s, torch {import_seconds('torch'):.2f} s, "
          f"sdetool.analysis.analyze {import_seconds('sdetool.analysis.analyze'):.2f} s", flush=True)
    out = Path(args.out or args.data_dir)
    out.mkdir(parents=True, exist_ok=True)

    results = {}
    reference = None
    for ranks in [int(r) for r in args.ranks.split(",")]:
        times = []
        for _ in range(args.repeats):
            elapsed, document = run(paths, ranks, out, cores, "cpu")
            times.append(elapsed)
        values = np.array(document["singular_values"])
        if reference is None:
            reference = document
        ref_values = np.array(reference["singular_values"])
        difference = float(np.max(np.abs(values[:50] - ref_values[:50]) / ref_values[:50]))
        same_bands = all(document["bands"][b]["count"] == reference["bands"][b]["count"] for b in document["bands"])
        results[ranks] = (statistics.median(times), times, difference, same_bands)
        print(f"ranks={ranks}: {', '.join(f'{t:.2f}' for t in times)} s; top-50 max rel diff {difference:.1e}; "
              f"bands equal: {same_bands}", flush=True)

    for device in [d for d in args.devices.split(",") if d]:
        times = []
        for _ in range(args.repeats):
            elapsed, document = run(paths, 1, out, cores, device)
            times.append(elapsed)
        values, ref_values = np.array(document["singular_values"]), np.array(reference["singular_values"])
        difference = float(np.max(np.abs(values[:50] - ref_values[:50]) / ref_values[:50]))
        same_bands = all(document["bands"][b]["count"] == reference["bands"][b]["count"] for b in document["bands"])
        results[f"1 ({document['device']})"] = (statistics.median(times), times, difference, same_bands)
        print(f"device={document['device']}: {', '.join(f'{t:.2f}' for t in times)} s; top-50 max rel diff "
              f"{difference:.1e}; bands equal: {same_bands}", flush=True)

    base = next(iter(results.values()))[0]
    print()
    print(f"{'ranks':>5}  {'BLAS threads/rank':>17}  {'median s':>9}  {'speed-up':>8}  {'GB/s':>6}  {'max rel diff':>12}  bands")
    for ranks, (median, _, difference, same) in results.items():
        threads = max(1, cores // ranks) if isinstance(ranks, int) else "-"
        print(f"{ranks!s:>5}  {threads!s:>17}  {median:>9.2f}  {base / median:>8.2f}  "
              f"{gigabytes / median:>6.2f}  {difference:>12.1e}  {'equal' if same else 'DIFFER'}")
    n = reference["n_samples"]
    print(f"\nn = {n:,}, d = {reference['dim']}; bands: "
          + ", ".join(f"{k} {v['count']}" for k, v in reference["bands"].items()))


if __name__ == "__main__":
    main()
