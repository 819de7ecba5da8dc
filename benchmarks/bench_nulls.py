#!/usr/bin/env python
"""What the noise nulls, ``--scale``, ``--bootstrap`` and the row fingerprints cost ``analyze``.

On the stores of ``bench_analyze.py`` (seeded float32, d = 768, 10 spikes, n = 10^6 and 10^5; written
once under ``bench-data/`` by the same code, so the numbers sit beside that benchmark's), one run times
side by side, in interleaved rounds, each variant as ``sdetool.analysis.analyze.analyze(path, ["embeddings"],
options)`` in a fresh subprocess (imports not timed; the page cache warm):

- the floor of ``bench_analyze.py`` (h5py read, widen, float64 syrk, eigvalsh; nothing else);
- ``before``: the sdetool of the commit before the nulls (``--previous``, default 6729411; extracted
  with ``git archive``), whose only null was ``mp`` and which counted no distinct rows;
- ``mp without fingerprints``: ``--null mp`` with the row fingerprints switched off (``RowFingerprints.add`` made a no-op in the
  child): the cost of counting distinct rows is the difference to ``--null mp``;
- ``--null mp``, ``dpa``, ``ddpa`` (the default), ``permutation`` (10 permutations of a 10,000-row sample);
- ``ddpa --scale 256,1024,4096 --repeats 10`` and ``ddpa --bootstrap 20``.

Ratios are of medians, and the median of the per-round ratios ("paired"). Because the pass over the
rows is the same for every null, the run also times the partition alone (what a null adds after the
pass) on one state, several times: that number does not depend on how busy the machine is while
streaming. Each timed run reports the cores that other processes used meanwhile (``/proc/stat``).

Run from the repository root::

    python benchmarks/bench_nulls.py                     # n = 10^6 (2 rounds) and 10^5 (3 rounds)
    python benchmarks/bench_nulls.py --sizes 100000 --rounds 3
    python benchmarks/bench_nulls.py --profile "ddpa (default)"   # cProfile of one variant's analyze call
    python benchmarks/bench_nulls.py --parts             # the pieces behind the fingerprints' and permutation's costs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_analyze as base  # noqa: E402  (the store writer, floor pass, load meter and environment)
from provenance import provenance  # noqa: E402

KEY = base.KEY
D = 768

VARIANTS = {  # name -> (AnalysisOptions keywords, fingerprints on, sdetool root: "current" or "previous")
    "floor": None,
    "before (6729411)": ({}, True, "previous"),  # renamed after --previous
    "mp without fingerprints": ({"null": "mp"}, False, "current"),
    "mp": ({"null": "mp"}, True, "current"),
    "dpa": ({"null": "dpa"}, True, "current"),
    "ddpa (default)": ({"null": "ddpa"}, True, "current"),
    "permutation": ({"null": "permutation"}, True, "current"),
    "ddpa --scale 256,1024,4096 --repeats 10": ({"null": "ddpa", "scale": (256, 1024, 4096), "repeats": 10}, True,
                                                "current"),
    "ddpa --bootstrap 20": ({"null": "ddpa", "bootstrap": 20}, True, "current"),
}

_CHILD = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
if spec["root"]:
    sys.path.insert(0, spec["root"])
import numpy as np
from sdetool.analysis.analyze import AnalysisOptions, analyze
if not spec["fingerprints"]:
    from sdetool.spectral import rowsets
    rowsets.RowFingerprints.add = lambda self, rows, squares: None
options = AnalysisOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["options"].items()})
if spec["profile"]:
    import cProfile, pstats
    profiler = cProfile.Profile()
    profiler.enable()
start = time.perf_counter()
result = analyze(spec["path"], [spec["key"]], options)[spec["key"]]
seconds = time.perf_counter() - start
if spec["profile"]:
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
part = result.partition
out = {"seconds": seconds, "counts": part.counts, "edge": float(part.edge), "top": float(part.singular_values[0]),
       "distinct": getattr(result, "distinct_rows", None), "module": __import__("sdetool").__file__}
print(json.dumps(out))
"""

_FLOOR = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import bench_analyze as base
parts = base.floor_pass(sys.argv[2], base.engine_block_rows(sys.argv[2]))
print(json.dumps({"seconds": parts["total"], "syrk": parts["syrk"]}))
"""


def previous_tree(commit: str, scratch: str) -> str:
    """The sdetool package of ``commit``, extracted under ``scratch`` (git archive); returns the folder to import from."""
    target = os.path.join(scratch, f"sdetool-{commit}")
    os.makedirs(target, exist_ok=True)
    archive = subprocess.run(["git", "-C", REPO, "archive", commit, "sdetool"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    return target


def run_variant(name: str, path: str, trees: dict, profile: bool = False) -> dict:
    """Time one variant in a fresh subprocess; ``trees`` maps "previous" / "commit:<sha>" to extracted packages."""
    meter = base.LoadMeter()
    if VARIANTS[name] is None:
        out = subprocess.run([sys.executable, "-c", _FLOOR, HERE, path], check=True, capture_output=True, text=True)
    else:
        options, fingerprints, root = VARIANTS[name]
        spec = {"root": REPO if root == "current" else trees[root], "path": path, "key": KEY, "options": options,
                "fingerprints": fingerprints, "profile": profile}
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], check=True, capture_output=True,
                             text=True, cwd=tempfile.gettempdir())
        if profile:
            print(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["other_cores"] = meter.foreign_cores()
    return result


def partition_costs(path: str, reps: int) -> dict:
    """Seconds of the partition alone (spectrum, null, metrics) per null, on one streamed state; median of ``reps``."""
    from sdetool.analysis.analyze import AnalysisOptions, stream_state
    from sdetool.io.sources import open_inputs
    from sdetool.spectral.summary import summarize

    shards = open_inputs([path], [KEY])[KEY]
    costs = {}
    start = time.perf_counter()
    state, _ = stream_state(shards, AnalysisOptions(null="permutation"))  # keeps the row sample the permutation needs
    costs["stream (one pass, for reference)"] = time.perf_counter() - start
    for null in ("mp", "dpa", "ddpa", "permutation"):
        options = AnalysisOptions(null=null)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            summarize(state, options, label=path)
            times.append(time.perf_counter() - start)
        costs[null] = statistics.median(times)
    return costs


def timed_parts() -> list[tuple[str, float]]:
    """Seconds of the pieces behind the fingerprints' and the permutation null's costs (one thread of work each)."""
    import numpy as np

    from sdetool.spectral.rowsets import RowFingerprints

    def clock(function) -> float:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    rng = np.random.default_rng(0)
    block = rng.standard_normal((256, D))
    direction = rng.standard_normal(D)
    slices = 1_000_000 // 256
    parts = [("fingerprint projection, row-by-row einsum, 10^6 rows x 768",
              clock(lambda: [np.einsum("ij,j->i", block, direction) for _ in range(slices)]))]
    for count in (1_000_000, 8_000_000):
        keys = rng.integers(0, 2**63, count, dtype=np.int64).astype(np.uint64)
        parts.append((f"np.unique of {count:,} uint64 fingerprints", clock(lambda: np.unique(keys))))
        parts.append((f"np.sort of the same {count:,}", clock(lambda: np.sort(keys))))
    fingerprints = RowFingerprints(4)
    batches = [rng.integers(0, 2**63, 65536, dtype=np.int64).astype(np.uint64) for _ in range(10_000_000 // 65536)]
    parts.append(("RowFingerprints: 10^7 fingerprints added and deduplicated",
                  clock(lambda: ([fingerprints.add_keys(batch) for batch in batches], fingerprints.unique()))))
    sample = rng.standard_normal((10_000, D))
    generator = np.random.default_rng(1)
    parts.append(("one column permutation of a 10,000 x 768 sample: argsort of keys + take_along_axis",
                  clock(lambda: np.take_along_axis(sample, np.argsort(generator.random(sample.shape), axis=0), axis=0))))
    parts.append(("the same with numpy.random.Generator.permuted(sample, axis=0)",
                  clock(lambda: generator.permuted(sample, axis=0))))
    return parts


def table(rows: list[tuple], heads: tuple) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def size_section(n: int, rounds: int, trees: dict, reps: int, names: list[str]) -> dict:
    path = os.path.join(REPO, "bench-data", f"bench_n{n}_d{D}.h5")
    written, seconds = base.ensure_store(path, n, D, rebuild=False)
    base.log(f"\n--- n = {n:,}, d = {D} ({'written in %.0f s' % seconds if written else 'reused'}) ---")
    base.read_pass(path, evict=False)
    base.read_pass(path, evict=False)
    runs = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names:
            result = run_variant(name, path, trees)
            runs[name].append(result)
            base.log(f"round {round_index + 1} {name:42s} {result['seconds']:7.2f} s  other cores "
                     f"{base.fmt_load(result['other_cores'])}  {result.get('counts', '')}")
    medians = {name: statistics.median(r["seconds"] for r in results) for name, results in runs.items()}
    rows = []
    before = next((name for name in names if name.startswith("before")), None)
    for name, results in runs.items():
        paired_mp = statistics.median(r["seconds"] / m["seconds"] for r, m in zip(results, runs["mp"]))
        paired_before = "" if before is None else "%.3f" % statistics.median(
            r["seconds"] / m["seconds"] for r, m in zip(results, runs[before]))
        rows.append((name, f"{medians[name]:.2f}", f"{medians[name] / medians['mp']:.3f}", f"{paired_mp:.3f}",
                     paired_before, " / ".join(base.fmt_load(r["other_cores"]) for r in results)))
    costs = {}
    if reps:
        base.log(f"partition alone, median of {reps} ...")
        costs = partition_costs(path, reps)
    return {"n": n, "rounds": rounds, "runs": runs, "medians": medians, "rows": rows, "partition": costs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,100000", help="row counts (default 1000000,100000)")
    parser.add_argument("--rounds", default="2,3", help="interleaved rounds per size (default 2,3)")
    parser.add_argument("--previous", default="6729411", help="commit of the sdetool before the nulls")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the partition-alone timing (0: skip it)")
    parser.add_argument("--profile", default=None, help="cProfile one variant (a name of VARIANTS) on the first size and stop")
    parser.add_argument("--variants", default=None,
                        help="comma-separated names of the variants to time (default all; 'mp' is always timed)")
    parser.add_argument("--also-commit", default=None,
                        help="also time analyze at this commit (e.g. 6cf0f88, the one docs/benchmarks.md recorded)")
    parser.add_argument("--parts", action="store_true",
                        help="only time the pieces behind the fingerprints' and the permutation's costs, and stop")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.parts:
        for name, seconds in timed_parts():
            print(f"{name:90s} {seconds:7.3f} s")
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds = [int(r) for r in args.rounds.split(",")]
    rounds += [rounds[-1]] * (len(sizes) - len(rounds))
    env = base.environment()
    base.log(f"CPU {env['cpu_model']}, {env['cpu_count']} CPUs, RAM {env['ram_gib']} GiB; Python {env['python']}, "
             f"numpy {env['numpy']}, scipy {env['scipy']}, h5py {env['h5py']}")
    base.log(f"other processes used {base.fmt_load(base.foreign_load(2.0))} cores before timing "
             f"(load average {open('/proc/loadavg').read().split()[0]})")
    results = {"environment": env, "sizes": [], "code_at_start": provenance()}
    base.log(f"code: {results['code_at_start']}")
    VARIANTS[f"before ({args.previous})"] = VARIANTS.pop("before (6729411)")
    if args.also_commit:
        VARIANTS[f"at {args.also_commit}"] = ({}, True, f"commit:{args.also_commit}")
    names = list(VARIANTS)
    if args.variants:
        wanted = set(args.variants.split(",")) | {"mp"}
        names = [name for name in names if name in wanted]
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"previous": previous_tree(args.previous, scratch)}
        if args.also_commit:
            trees[f"commit:{args.also_commit}"] = previous_tree(args.also_commit, scratch)
        if args.profile:
            path = os.path.join(REPO, "bench-data", f"bench_n{sizes[0]}_d{D}.h5")
            base.ensure_store(path, sizes[0], D, rebuild=False)
            run_variant(args.profile, path, trees, profile=True)
            return 0
        for n, count in zip(sizes, rounds):
            results["sizes"].append(size_section(n, count, trees, args.reps, names))
    for section in results["sizes"]:
        print(f"\n### analyze, n = {section['n']:,}, d = {D}, float32 HDF5, warm page cache "
              f"({section['rounds']} interleaved rounds)\n")
        print(table(section["rows"], ("variant", "median s", "/ mp", "paired / mp", "paired / before",
                                      "other cores per round")))
        costs = section["partition"]
        if costs:
            print(f"\nPartition alone (spectrum, null, metrics) on one streamed state, median of {args.reps}: "
                  + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in costs.items()))
    results["code_at_end"] = provenance()
    if results["code_at_end"] != results["code_at_start"]:
        print(f"\nWARNING: the library changed during the run: {results['code_at_start']} -> {results['code_at_end']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
