#!/usr/bin/env python
"""Benchmark of ``sdetool finetune``: time per training step of SDE against plain InfoNCE, same model and batch.

One run measures, on this machine, for each workload:

- ``head``: linear heads (identity at start) on cached pairs, ``d = 512``, ``B = 256``. The pairs are
  seeded synthetic embeddings (a shared 32-dim latent mapped into each modality, plus noise).
- ``builtin``: ``builtin:lit-fmnist`` (CNN image tower + projections; frozen MiniLM text tower with its
  features cached) on the Fashion-MNIST test split, ``B = 256``.
- ``clip`` (``--clip``): a ViT-B/32-shaped CLIP with random weights loaded through ``hf:<folder>``,
  last 2 blocks of each tower trained, ``B = --clip-batch``.

Variants, each the real ``TrainingLoop.step`` (batch, forward, loss, backward, AdamW step):

- ``infonce``: the baseline (``--loss infonce``);
- ``sde``: the default method (adversarial strong-band signs);
- ``sde-random``: random signs (no extra gradient of the InfoNCE head);
- ``sde-svd``: the default method with the batch spectrum taken by one ``torch.linalg.svd`` (gradient
  through its singular values) instead of sdetool's eigendecomposition of the batch Gram matrix: the
  naive peer.

After ``--warmup`` steps of each, ``--rounds`` interleaved rounds of ``--steps`` steps; the median
time per step and the ratio to ``infonce`` are printed, with the share of an SDE step spent in
``sde_loss`` beyond InfoNCE. Run from the repository root::

    python benchmarks/bench_finetune.py                      # CPU, head + builtin (about 2 min on 2 cores)
    python benchmarks/bench_finetune.py --device cuda --clip # on a GPU, with the ViT-B/32-shaped CLIP
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from sdetool.finetune import sde
from sdetool.finetune.pairs import PairData, PairSet
from sdetool.finetune.run import FinetuneOptions, TrainingLoop, build_target, load_data
from sdetool.finetune.runfolder import RunFolder

VARIANTS = ("infonce", "sde", "sde-random", "sde-svd")


def synthetic_pairs(n: int, d: int, seed: int = 0) -> PairData:
    """Paired embeddings sharing a 32-dim latent, with noise; 20 classes of repeated texts."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 32)).astype(np.float32)
    image = latent @ rng.standard_normal((32, d)).astype(np.float32) + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    text = latent @ rng.standard_normal((32, d)).astype(np.float32) + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    ids = [f"row-{i}" for i in range(n)]
    pairs = PairSet(ids=ids, rows=np.arange(n), text_rows=np.arange(n), image=image, text=text)
    return PairData(pairs, pairs, f"synthetic {n} x {d}", "synthetic")


def spectrum_by_svd(features) -> sde.BatchSpectrum:
    """The naive peer of :func:`sdetool.finetune.sde.batch_spectrum`: one ``torch.linalg.svd`` of the centred batch,
    the gradient flowing through its singular values (the vectors are used detached)."""
    import torch

    with torch.autocast(features.device.type, enabled=False):
        centred = features.float() - features.float().mean(dim=0, keepdim=True)
        u, values, vh = torch.linalg.svd(centred, full_matrices=False)
    return sde.BatchSpectrum(centred, values, u.detach(), vh.T.detach())


def make_loop(workload: str, variant: str, device: str, args, folder: str) -> TrainingLoop:
    import torch

    method = sde.SDEConfig(perturbation="random" if variant == "sde-random" else "adversarial")
    options = FinetuneOptions(loss="infonce" if variant == "infonce" else "sde", target="head" if workload == "head" else "model",
                              steps=10**6, batch_size=args.clip_batch if workload == "clip" else 256, sde=method,
                              precision=args.precision, device=device, train_blocks=2,
                              log_every=10**9)  # no logging steps after step 0: the baseline observes no spectra
    torch.manual_seed(0)
    if workload == "head":
        data = synthetic_pairs(4096, 512)
        target = build_target(None, data, options, device)
    else:
        from sdetool.extract.data.items import builtin_data, image_folder

        source = builtin_data("fashion-mnist:test") if workload == "builtin" else image_folder(args.clip_images)
        data = load_data(None, source, None, options)
        target = build_target(None if workload == "builtin" else "hf:" + args.clip_folder, data, options, device)
    from sdetool.runtime.distributed import World

    if workload == "clip":  # model-only timing: one preprocessed batch, reused (decoding is the same for all variants)
        fixed = torch.randn(options.batch_size, 3, 224, 224)
        target.load_inputs = lambda pairs, rows: fixed[:len(rows)]
    return TrainingLoop(RunFolder(folder), target, data, options, World(), device)


def time_steps(loop: TrainingLoop, variant: str, start: int, count: int, device: str) -> float:
    import torch

    original = sde.batch_spectrum
    if variant == "sde-svd":
        sde.batch_spectrum = spectrum_by_svd
    try:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        for step in range(start, start + count):
            loop.step(step)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - began) / count
    finally:
        sde.batch_spectrum = original


def loss_share(loop: TrainingLoop, count: int = 20) -> dict:
    """Time of ``sde_loss`` (default method) and of ``info_nce`` alone on fixed features of one batch."""
    import torch

    rows = np.arange(min(loop.options.batch_size, len(loop.data.train)))
    with torch.no_grad():
        image, text = loop.target.features(loop.data.train, rows)
    image, text = image.detach().requires_grad_(True), text.detach().requires_grad_(True)
    groups = loop.groups[rows]
    timings = {}
    for name, config in (("sde_loss", sde.SDEConfig()), ("info_nce", sde.SDEConfig.baseline())):
        state = sde.SDEState.create(config, 0)
        began = time.perf_counter()
        for _ in range(count):
            loss, _ = sde.sde_loss(image, text, groups, loop.target.logit_scale, 0.6, config, state)
            loss.backward()
        if image.device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = (time.perf_counter() - began) / count
    return timings


def build_clip(folder: str, images: str, count: int) -> None:
    """A ViT-B/32-shaped CLIP with random weights, and ``count`` random 224 px JPEGs with captions."""
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    from sdetool.extract.models.lit import minilm_folder

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"vocab_size": 30522, "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
                                     "intermediate_size": 2048, "max_position_embeddings": 77},
                        vision_config={"image_size": 224, "patch_size": 32, "hidden_size": 768, "num_hidden_layers": 12,
                                       "num_attention_heads": 12, "intermediate_size": 3072}, projection_dim=512)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(folder)
    os.makedirs(images, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(images, "captions.jsonl"), "w") as captions:
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(os.path.join(images, f"{i:05d}.jpg"))
            captions.write(json.dumps({"file": f"{i:05d}.jpg", "caption": f"a photo of thing number {i % 50}"}) + "\n")


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--workloads", nargs="+", default=["head", "builtin"], choices=("head", "builtin", "clip"))
    parser.add_argument("--clip", action="store_true", help="Add the ViT-B/32-shaped CLIP workload.")
    parser.add_argument("--clip-batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    workloads = args.workloads + (["clip"] if args.clip and "clip" not in args.workloads else [])
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"device {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        if "clip" in workloads:
            args.clip_folder, args.clip_images = os.path.join(scratch, "clip"), os.path.join(scratch, "images")
            build_clip(args.clip_folder, args.clip_images, max(4 * args.clip_batch, 512))
        for workload in workloads:
            loops = {v: make_loop(workload, v, args.device, args, os.path.join(scratch, v)) for v in VARIANTS}
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for variant, loop in loops.items():
                time_steps(loop, variant, 0, args.warmup, args.device)
            for round_ in range(args.rounds):
                for variant, loop in loops.items():
                    start = args.warmup + round_ * args.steps
                    times[variant].append(time_steps(loop, variant, start, args.steps, args.device))
            medians = {v: statistics.median(t) for v, t in times.items()}
            shares = loss_share(loops["sde"])
            results[workload] = {"ms_per_step": {v: 1e3 * m for v, m in medians.items()},
                                 "ratio_to_infonce": {v: m / medians["infonce"] for v, m in medians.items()},
                                 "loss_ms": {k: 1e3 * v for k, v in shares.items()}}
            print(f"\n{workload}: median ms/step over {args.rounds} rounds of {args.steps} steps")
            for variant in VARIANTS:
                print(f"  {variant:<11} {1e3 * medians[variant]:9.2f} ms   x{medians[variant] / medians['infonce']:.3f}")
            print(f"  loss alone (forward+backward on fixed features): sde_loss {1e3 * shares['sde_loss']:.2f} ms, "
                  f"info_nce {1e3 * shares['info_nce']:.2f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
