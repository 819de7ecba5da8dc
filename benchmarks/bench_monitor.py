#!/usr/bin/env python
"""What ``BandMonitor.update`` costs a training loop, against the training step it watches.

One run, side by side: a CLIP training step (transformers ``CLIPModel``, forward + contrastive loss + backward +
AdamW) at a CPU-sized shape, and ``monitor.update`` on that step's image and text embeddings (the batch
spectrum and partition of both, one JSON line). With ``every=10`` the monitor runs on one step in ten: the
overhead is ``update / (10 x step)``. The target (issue 17) is at most 5 % of a ViT-B/32 CLIP step at B = 256.

    python benchmarks/bench_monitor.py                       # B = 64, a 4-layer 256-wide CLIP, 5 rounds
    python benchmarks/bench_monitor.py --batch 256 --width 512 --layers 12   # ViT-B/32-shaped (slow on a CPU)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embed", type=int, default=512, help="projection dim (ViT-B/32: 512)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    import transformers

    from sdetool.monitor import BandMonitor

    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={"hidden_size": args.width, "intermediate_size": 4 * args.width, "num_hidden_layers": args.layers,
                     "num_attention_heads": max(1, args.width // 64), "max_position_embeddings": 77},
        vision_config={"hidden_size": args.width, "intermediate_size": 4 * args.width, "num_hidden_layers": args.layers,
                       "num_attention_heads": max(1, args.width // 64), "image_size": 224, "patch_size": 32},
        projection_dim=args.embed)
    model = transformers.CLIPModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 1000, (args.batch, 32))
    pixels = torch.randn(args.batch, 3, 224, 224)
    steps, updates = [], []
    with tempfile.TemporaryDirectory() as folder:
        monitor = BandMonitor(f"{folder}/bands.jsonl", every=1)
        for round_ in range(args.rounds + 1):
            started = time.perf_counter()
            output = model(input_ids=ids, pixel_values=pixels, return_loss=True)
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step = time.perf_counter() - started
            started = time.perf_counter()
            monitor.update(round_, image=output.image_embeds, text=output.text_embeds)
            update = time.perf_counter() - started
            if round_:  # the first round warms up
                steps.append(step)
                updates.append(update)
    step, update = statistics.median(steps), statistics.median(updates)
    print(f"CLIP step (B={args.batch}, width {args.width}, {args.layers} layers, embed {args.embed}): {step * 1e3:.1f} ms")
    print(f"monitor.update (image and text, d={args.embed}): {update * 1e3:.2f} ms = {100 * update / step:.2f}% of a step")
    print(f"with every={args.every}: {100 * update / (args.every * step):.3f}% overhead per step")


if __name__ == "__main__":
    main()
