#!/usr/bin/env python
"""How long the command line takes to start, against the interpreter alone and the imports it avoids.

Side by side, in interleaved rounds, each in a fresh process (wall clock of the whole process):

- ``python -c pass``: the floor (the interpreter starting);
- ``sdetool --help`` and ``sdetool analyze --help``: what a user waits for (target: under 0.3 s);
- ``import sdetool.cli``: the command line's own modules (typer, rich, the help formatter);
- ``import sdetool.api``: the library behind it (numpy, scipy), which ``--help`` must not load;
- ``import numpy, scipy.linalg``, ``import torch``: the peers, for scale.

Ratios are of medians, to the floor and to ``sdetool --help``.

Run from the repository root::

    python benchmarks/bench_cli_start.py            # 7 rounds
    python benchmarks/bench_cli_start.py --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "sdetool --help": [sys.executable, "-m", "sdetool", "--help"],
    "sdetool analyze --help": [sys.executable, "-m", "sdetool", "analyze", "--help"],
    "import sdetool.cli": [sys.executable, "-c", "import sdetool.cli"],
    "import sdetool.api": [sys.executable, "-c", "import sdetool.api"],
    "import numpy, scipy.linalg": [sys.executable, "-c", "import numpy, scipy.linalg"],
    "import torch": [sys.executable, "-c", "import torch"],
}


def _time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for command in CASES.values():  # warm the page cache once
        _time(command)
    times = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, command in CASES.items():
            times[name].append(_time(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    floor, help_time = medians["python -c pass (floor)"], medians["sdetool --help"]
    print(f"{'case':<30} {'median s':>9} {'min s':>7} {'/ floor':>8} {'/ --help':>9}")
    for name, values in times.items():
        print(f"{name:<30} {medians[name]:>9.3f} {min(values):>7.3f} {medians[name] / floor:>8.2f} "
              f"{medians[name] / help_time:>9.2f}")
    verdict = "meets" if help_time < 0.3 else "MISSES"
    print(f"sdetool --help: {help_time:.3f} s median over {args.rounds} rounds ({verdict} the 0.3 s target)")


if __name__ == "__main__":
    main()
