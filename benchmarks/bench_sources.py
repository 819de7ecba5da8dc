#!/usr/bin/env python
"""Extraction rate by source: an image folder, the same images in webdataset tar shards, a Hugging Face
``save_to_disk`` dataset, and a Parquet manifest of ``{"bytes", "path"}`` structs.

One run, side by side, in interleaved rounds: ``sdetool.api.extract`` of the built-in model (small CNN, so that
reading and decoding dominate) over N seeded 64x64 PNGs held each way, ``--num-workers 0`` so that the
sources' own reading is what differs. Prints items/s (median) and the ratio to the folder.

    python benchmarks/bench_sources.py                 # 2000 images, 3 rounds
    python benchmarks/bench_sources.py --items 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time

import numpy as np


def _write(root: str, count: int) -> dict:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = os.path.join(root, "images")
    os.makedirs(folder)
    names, captions = [], []
    for index in range(count):
        name = f"img{index:06d}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(os.path.join(folder, name))
        names.append(name)
        captions.append(f"a photo number {index}.")
    with open(os.path.join(folder, "captions.jsonl"), "w") as handle:
        for name, caption in zip(names, captions):
            handle.write(f'{{"file": "{name}", "caption": "{caption}"}}\n')
    shards = os.path.join(root, "shards")
    os.makedirs(shards)
    per_shard = max(1, count // 4)
    for shard, start in enumerate(range(0, count, per_shard)):
        with tarfile.open(os.path.join(shards, f"{shard:05d}.tar"), "w") as archive:
            for name, caption in zip(names[start:start + per_shard], captions[start:start + per_shard]):
                key = name[:-4]
                for member, data in ((f"{key}.png", open(os.path.join(folder, name), "rb").read()),
                                     (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    import datasets

    table = {"id": [n[:-4] for n in names], "image": [os.path.join(folder, n) for n in names], "caption": captions}
    dataset = datasets.Dataset.from_dict(table).cast_column("image", datasets.Image())
    dataset = dataset.map(lambda row: row)  # embed the bytes (not only paths) in the arrow files
    dataset.save_to_disk(os.path.join(root, "hf"))
    dataset.to_parquet(os.path.join(root, "structs.parquet"))
    last = (count - 1) // per_shard
    return {"image folder": {"images": folder},
            "webdataset shards": {"webdataset": [os.path.join(shards, "{00000..%05d}.tar" % last)]},
            "HF save_to_disk": {"hf_dataset_path": os.path.join(root, "hf")},
            "Parquet structs": {"manifest_path": os.path.join(root, "structs.parquet")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from sdetool.api import ExtractOptions, extract, open_source

    with tempfile.TemporaryDirectory() as root:
        sources = _write(root, args.items)
        times = {name: [] for name in sources}
        for round_ in range(args.rounds):
            for name, spec in sources.items():
                out = os.path.join(root, f"out-{round_}-{len(times[name])}-{abs(hash(name))}.h5")
                started = time.perf_counter()
                extract("builtin:lit-fmnist", open_source(**spec), out, ExtractOptions(num_workers=0, batch_size=256))
                times[name].append(time.perf_counter() - started)
                os.remove(out)
    folder = statistics.median(times["image folder"])
    print(f"{'source':<20} {'median s':>9} {'items/s':>9} {'/ folder':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:>9.2f} {args.items / median:>9.0f} {median / folder:>9.2f}")


if __name__ == "__main__":
    main()
