#!/usr/bin/env python
"""What ``extract --layers all`` costs against the final-layer extract, side by side in one run.

On the built-in model and the built-in data (Fashion-MNIST's test split, 10,000 pairs), ``--rounds`` interleaved
rounds of ``sdetool.extract.extraction.extract`` with
and without ``layers="all"`` (same device, batch size and chunking; a fresh output each time), timed end to
end. Every layer comes from the same forward pass as the final embedding, so the extra cost is the pooling
and the writing of the extra sets. The target (issue 19) is at most 1.3x.

    python benchmarks/bench_layers.py                  # 10,000 pairs, 3 rounds
    python benchmarks/bench_layers.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from sdetool.extract.data.items import open_source
    from sdetool.extract.extraction import ExtractOptions, extract
    from sdetool.io import store

    print(json.dumps(provenance()))
    source = open_source(data="builtin:fashion-mnist")
    times: dict[str, list[float]] = {"final layer": [], "--layers all": []}
    sets = {}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds + 1):  # the first round warms up (imports, page cache)
            for name, layers in (("final layer", None), ("--layers all", "all")):
                out = os.path.join(folder, f"{round_}-{layers}.h5")
                started = time.perf_counter()
                extract("builtin:lit-fmnist", source, out, ExtractOptions(device=args.device, layers=layers))
                seconds = time.perf_counter() - started
                if round_:
                    times[name].append(seconds)
                sets[name] = {key: matrix.shape for key, matrix in store.open_matrices(out).items()}
                os.remove(out)
    base = statistics.median(times["final layer"])
    print(f"\n{len(source):,} pairs, builtin:lit-fmnist on {args.device}, {args.rounds} rounds (median seconds)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:14s} {median:8.2f} s  x{median / base:5.2f}  sets: {len(sets[name])} "
              f"({', '.join(f'{k} {v[1]}' for k, v in sets[name].items())})")


if __name__ == "__main__":
    main()
