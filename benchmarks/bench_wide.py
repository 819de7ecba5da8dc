#!/usr/bin/env python
"""Wide matrices (n < d): ``sdetool analyze`` in the row space against numpy and scipy, time and peak memory.

One run, side by side, every peer in a fresh process (so that each peak RSS is its own), on the same
``n x d`` float32 ``.npy`` of spiked noise:

- ``scipy.linalg.svdvals`` and ``numpy.linalg.svd(compute_uv=False)`` of the centred float64 matrix (the
  matrix loaded and centred first; its load is not timed);
- the ``d x d`` Gram path sdetool took before issue 18 (``X^T X`` by BLAS and ``eigvalsh``), for ``d`` whose
  Gram fits;
- ``sdetool.api.analyze`` on the array (the default null, ddpa): the whole analysis, spectrum, partition,
  metrics and report, timed from the array in memory after one warm-up call (imports are paid once per
  process: about 1.5 s for the CLI, not counted here).

Ratios are to ``scipy.linalg.svdvals``. The target (issue 18) is at most 1.5x for n < d up to 5000 x 50000.
The singular values of each peer are checked against scipy's (relative to s_1).

    python benchmarks/bench_wide.py                               # 1000x10000, 2000x12000, 2000x30000
    python benchmarks/bench_wide.py --shapes 5000x50000 --no-gram  # the largest (about 8 GB, minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from provenance import provenance

CENTRED = "x = np.load(path).astype(np.float64); x -= x.mean(axis=0)\n"
PEERS = {
    "scipy svdvals": CENTRED + """
import scipy.linalg
started = time.perf_counter(); values = scipy.linalg.svdvals(x); seconds = time.perf_counter() - started
""",
    "numpy svd": CENTRED + """
started = time.perf_counter(); values = np.linalg.svd(x, compute_uv=False); seconds = time.perf_counter() - started
""",
    "d x d Gram (before)": CENTRED + """
started = time.perf_counter(); gram = x.T @ x
values = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1][:min(x.shape)], 0, None)); seconds = time.perf_counter() - started
""",
    "sdetool analyze": """
from sdetool.api import analyze
raw = np.load(path)
analyze(raw[:8, :16])  # imports and first-call set-up, once per process: not the computation's
started = time.perf_counter(); report = analyze(raw); seconds = time.perf_counter() - started
values = np.array(report["embeddings"].to_dict()["singular_values"])
""",
}

RUNNER = """
import json, resource, sys, time
import numpy as np
path, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
{body}
json.dump({{"seconds": seconds, "values": np.asarray(values, dtype=np.float64)[:count].tolist(),
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}, open(out, "w"))
"""


def spiked(n: int, d: int, spikes: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, d), dtype=np.float32)
    directions = rng.standard_normal((spikes, d), dtype=np.float32) / np.sqrt(d)
    strengths = np.geomspace(8.0, 1.5, spikes).astype(np.float32) * np.sqrt(d)
    return noise + (rng.standard_normal((n, spikes), dtype=np.float32) * strengths) @ directions


def run(peer: str, path: str, count: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        code = RUNNER.format(body=PEERS[peer])
        subprocess.run([sys.executable, "-c", code, path, out.name, str(count)], check=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        with open(out.name) as handle:
            return json.load(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1000x10000,2000x12000,2000x30000")
    parser.add_argument("--no-gram", action="store_true", help="leave out the d x d Gram peer")
    args = parser.parse_args()
    print(json.dumps(provenance()))
    for shape in args.shapes.split(","):
        n, d = map(int, shape.split("x"))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "wide.npy")
            np.save(path, spiked(n, d))
            peers = [p for p in PEERS if not (p.startswith("d x d") and (args.no_gram or d * d * 8 * 2 > 12e9))]
            results = {peer: run(peer, path, min(n, d) - 1) for peer in peers}
        reference = results["scipy svdvals"]
        top = reference["values"][0]
        print(f"\n{n} x {d} float32 (d x d Gram: {d * d * 8 / 1e9:.1f} GB)")
        print(f"{'peer':22s} {'seconds':>8s} {'x scipy':>8s} {'peak GB':>8s} {'max |ds|/s1':>12s}")
        for peer, result in results.items():
            error = max(abs(a - b) for a, b in zip(result["values"], reference["values"])) / top
            print(f"{peer:22s} {result['seconds']:8.2f} {result['seconds'] / reference['seconds']:8.2f} "
                  f"{result['peak_rss'] / 1e9:8.2f} {error:12.1e}")


if __name__ == "__main__":
    main()
