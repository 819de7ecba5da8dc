"""SDE against InfoNCE where there *is* a noise band: heads on the built-in model's embeddings plus noise.

    python examples/noisy_head.py --out runs/noisy                      # 3 seeds x {sde, infonce}
    python examples/noisy_head.py --out runs/noisy --noise-share 0.3 --seeds 0

The built-in model's held-out image embeddings carry almost no energy in the noise band (see
docs/reproduction.md), so there is nothing for SDE to move. This example makes a case where there
is: it embeds the 10k Fashion-MNIST test pairs with ``builtin:lit-fmnist`` (``sdetool extract``),
adds seeded isotropic Gaussian noise to the *image* embeddings so that it carries ``--noise-share``
of their energy (a degraded image encoder; the texts stay as they are, so equal captions still mark
positives), writes that as a store, and trains a linear head per modality on it
(``sdetool finetune --target head``) with ``--loss sde`` and ``--loss infonce``, several seeds each.
It prints the held-out band shares (by ``analyze``) and recalls, before and after, as mean and
standard deviation over seeds, and writes them to ``<out>/summary.json`` and ``<out>/summary.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

from sdetool.extract.data.items import builtin_data
from sdetool.extract.extraction import ExtractOptions, extract
from sdetool.finetune.run import FinetuneOptions, finetune
from sdetool.results.reproduce import noisy_store
from sdetool.results.tables import seed_summary, write_seed_summary

METRICS = (("image->text R@1", ("recall", "image_to_text_R@1")),
           ("image->text R@5", ("recall", "image_to_text_R@5")),
           ("text->image R@5", ("recall", "text_to_image_R@5")),
           ("image strong share", ("bands", "image", "strong", "energy_share")),
           ("image weak share", ("bands", "image", "weak", "energy_share")),
           ("image noise share", ("bands", "image", "noise", "energy_share")),
           ("image effective rank", ("bands", "image", "effective_rank")))


def noisy_embeddings(out: str, noise_share: float, seed: int = 1234) -> str:
    """The built-in pairs' embeddings with Gaussian noise carrying ``noise_share`` of the image energy."""
    clean = os.path.join(out, "clean.h5")
    if not os.path.exists(clean):
        extract("builtin:lit-fmnist", builtin_data("fashion-mnist"), clean, ExtractOptions())
    path = os.path.join(out, f"noisy-{noise_share:g}.h5")
    if not os.path.exists(path):
        noisy_store(clean, path, noise_share, seed)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--noise-share", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = noisy_embeddings(args.out, args.noise_share)
    runs: dict[str, list[dict]] = {}
    for loss in ("sde", "infonce"):
        for seed in args.seeds:
            folder = os.path.join(args.out, f"{loss}-seed{seed}")
            options = FinetuneOptions(loss=loss, target="head", steps=args.steps, seed=seed, learning_rate=1e-3,
                                      resume=os.path.isdir(folder))
            print(f"{loss} seed {seed} -> {folder}", file=sys.stderr)
            runs.setdefault(loss, []).append(finetune(folder, options, embeddings=path).evaluation)
    summary = seed_summary(runs, METRICS)
    table = write_seed_summary(args.out, {"noise_share": args.noise_share, "steps": args.steps}, summary, args.seeds)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
