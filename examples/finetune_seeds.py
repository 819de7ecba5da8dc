"""SDE against the InfoNCE baseline on the built-in model and data, several seeds each (CPU).

    python examples/finetune_seeds.py --out runs/seeds                 # 3 seeds x {sde, infonce}
    python examples/finetune_seeds.py --out runs/seeds --steps 100 --seeds 0   # a quick look
    python examples/finetune_seeds.py --out runs/random --baseline runs/seeds --set perturbation=random

Each run is a ``sdetool finetune`` run folder (``runs/seeds/<loss>-seed<k>/``); runs already finished
are reused. The script prints, and writes to ``<out>/summary.json`` and ``<out>/summary.md``, the
mean and standard deviation over seeds of the held-out image embeddings' band energy shares
(measured by ``analyze``), zero-shot accuracy and recalls, before and after fine-tuning.
``--set NAME=VALUE`` passes an SDE option (a field of ``sdetool.finetune.sde.SDEConfig``) to the SDE runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from sdetool.finetune.run import FinetuneOptions, finetune
from sdetool.finetune.sde import SDEConfig
from sdetool.results.tables import seed_summary, write_seed_summary

METRICS = (("zero-shot accuracy", ("zero_shot_accuracy",)),
           ("image->text R@1", ("recall", "image_to_text_R@1")),
           ("text->image R@5", ("recall", "text_to_image_R@5")),
           ("image strong share", ("bands", "image", "strong", "energy_share")),
           ("image weak share", ("bands", "image", "weak", "energy_share")),
           ("image noise share", ("bands", "image", "noise", "energy_share")),
           ("image effective rank", ("bands", "image", "effective_rank")))


def parse_overrides(pairs: list[str]) -> dict:
    fields = SDEConfig.__dataclass_fields__
    overrides = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields or name == "partition":
            raise SystemExit(f"--set {pair}: unknown SDE option; choose from {', '.join(f for f in fields if f != 'partition')}")
        kind = type(getattr(SDEConfig(), name))
        overrides[name] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return overrides


def run_all(out: str, seeds: list[int], steps: int, overrides: dict, eval_limit: int | None,
            baseline: str | None = None) -> dict:
    """Every (loss, seed) run; the InfoNCE runs live in ``baseline`` when given (shared by SDE variants)."""
    results: dict[str, list[dict]] = {}
    for loss in ("sde", "infonce"):
        for seed in seeds:
            folder = os.path.join(baseline if loss == "infonce" and baseline else out, f"{loss}-seed{seed}")
            options = FinetuneOptions(loss=loss, steps=steps, seed=seed, eval_limit=eval_limit,
                                      sde=SDEConfig(**overrides), resume=os.path.isdir(folder))
            print(f"{loss} seed {seed} -> {folder}", file=sys.stderr)
            results.setdefault(loss, []).append(finetune(folder, options).evaluation)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--baseline", default=None, metavar="FOLDER",
                        help="Where the InfoNCE runs are (or go): share them between SDE variants.")
    args = parser.parse_args()
    results = run_all(args.out, args.seeds, args.steps, parse_overrides(args.set), args.eval_limit, args.baseline)
    summary = seed_summary(results, METRICS)
    table = write_seed_summary(args.out, {"steps": args.steps, "overrides": args.set}, summary, args.seeds)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
