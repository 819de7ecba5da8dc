"""The FITMM and Prism band views on the built-in model: which bands hold the energy, which hold the class.

    python examples/band_views.py --out runs/bands                       # the 10k test images (~2 min)
    python examples/band_views.py --out runs/bands --limit 1000 --bands 4

1. Embeds the Fashion-MNIST test images with ``--tokens`` three ways (``sdetool extract``): the built-in
   model ``builtin:lit-fmnist`` (token grid: its last conv feature map, 7x7x128), and two pixel-level
   baselines that see the same standardised 28x28 pixels, ``builtin:patches-fmnist`` (4x4 pixel patches,
   7x7x16: the same grid as the conv map) and ``builtin:pixels-fmnist`` (the image, 28x28x1).
2. Prism view: ``analyze --spatial-bands K`` of each token grid, and the figure ``plot tokens``.
3. Which band carries the class? The iterative split of every grid into its K band components (hard
   masks, channel-centred as ``analyze``); per band, a linear probe (PCA to 64 whitened dimensions, then a
   ridge classifier, trained on the first 80% of the images, scored on the rest). For reference, the same probe
   on the zero frequency alone (what the model's global average pool reads) and on the whole grid.
4. FITMM view: ``analyze --bands K`` of the model's image and text embeddings, with the per-band
   cross-modal alignment.

Writes ``<out>/summary.md`` (tables), ``<out>/summary.json``, ``<out>/tokens.png`` and the stores and reports.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from sdetool.analysis.analyze import AnalysisOptions, analyze
from sdetool.extract.data.items import builtin_data
from sdetool.extract.extraction import ExtractOptions, extract
from sdetool.io.store import open_tokens
from sdetool.results.figures import PlotOptions, plot
from sdetool.results.tables import markdown_table, write_json
from sdetool.spectral.bands import split_bands

MODELS = (("lit-fmnist conv map", "builtin:lit-fmnist"), ("4x4 pixel patches", "builtin:patches-fmnist"),
          ("pixels", "builtin:pixels-fmnist"))
PROBED = MODELS[:2]  # the two 7x7 grids (the 28x28 pixel grid would make 784-d x K probes for the same pixels)


def stores(out: str, limit: int | None) -> dict[str, str]:
    source = builtin_data("fashion-mnist")
    if limit:
        source = source.subset(np.arange(len(source.ids)) < limit, f"first {limit}")
    paths = {}
    for label, model in MODELS:
        paths[label] = os.path.join(out, model.split(":")[1] + ".h5")
        if not os.path.exists(paths[label]):
            extract(model, source, paths[label], ExtractOptions(tokens=True))
    return paths


def load_grids(path: str) -> np.ndarray:
    tokens = open_tokens(path, "image")
    with tokens.reader() as read:
        return read(0, tokens.shape[0]).astype(np.float64)  # (n, h, w, c)


def probe(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a linear probe (PCA to 64 whitened dimensions, then a ridge classifier, closed form),
    trained on the first 80% of the rows."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cut = int(0.8 * len(labels))
    dims = min(64, features.shape[1], cut - 1)
    model = make_pipeline(StandardScaler(), PCA(dims, whiten=True, random_state=seed), RidgeClassifier(alpha=1.0))
    model.fit(features[:cut], labels[:cut])
    return float(model.score(features[cut:], labels[cut:]))


def band_probes(path: str, labels: np.ndarray, bands: int) -> dict:
    grids = load_grids(path)
    grids -= grids.mean(axis=(0, 1, 2))  # channel centring, as analyze's default --spatial-center
    flat = grids.reshape(len(grids), -1)
    result = {"whole grid": probe(flat, labels), "zero frequency (average pool)": probe(grids.mean(axis=(1, 2)), labels)}
    for band, component in enumerate(split_bands(grids, bands)):
        result[f"band {band}"] = probe(component.reshape(len(grids), -1), labels)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--bands", type=int, default=4, help="K of both views (default 4)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    paths = stores(args.out, args.limit)
    labels = builtin_data("fashion-mnist").labels[: args.limit]

    spatial = {}
    for label, path in paths.items():
        report = analyze(path, ["image"], AnalysisOptions(spatial_bands=args.bands)).to_dict()
        write_json(report, os.path.join(args.out, os.path.basename(path).replace(".h5", "-spatial.json")))
        spatial[label] = report["spatial_bands"]
    plot("tokens", list(paths.values()), os.path.join(args.out, "tokens.png"),
         PlotOptions(keys=("image",), labels=tuple(paths), analysis=AnalysisOptions(spatial_bands=args.bands)))
    probes = {label: band_probes(paths[label], labels, args.bands) for label, _ in PROBED}
    fitmm = analyze(paths[MODELS[0][0]], ["image", "text"], AnalysisOptions(bands=args.bands)).to_dict()

    header = ("band", *(f"{label} ({'x'.join(map(str, view['grid']))}x{view['channels']})" for label, view in spatial.items()),
              "white noise (7x7)")
    rows = [(f"{b['band']} ({b['low']:.2g}-{b['high']:.2g})",
             *(f"{100 * view['bands'][k]['energy_share']:.2f} ± {100 * view['bands'][k]['energy_share_std']:.2f}"
               for view in spatial.values()),
             f"{100 * b['white_noise_share']:.2f}") for k, b in enumerate(spatial[MODELS[0][0]]["bands"])]
    rows.append(("zero frequency alone", *(f"{100 * view['dc_share']:.2f}" for view in spatial.values()), f"{100 / 49:.2f}"))
    tables = ["## Spatial-frequency energy share (%), mean ± std over images\n", markdown_table(header, rows)]
    names = list(next(iter(probes.values())))
    tables += ["\n## Held-out class accuracy (%) of a linear probe on each band's component\n",
               markdown_table(("features", *probes), [(name, *(f"{100 * probes[m][name]:.1f}" for m in probes))
                                                      for name in names])]
    cross = fitmm["cross"]["image~text"]["svd_bands"]
    image_bands = fitmm["sets"]["image"]["svd_bands"]["bands"]
    rows = [(f"{band['band']} ({image_bands[band['band']]['first_index']}-{image_bands[band['band']]['last_index']})",
             *(f"{100 * fitmm['sets'][key]['svd_bands']['bands'][band['band']]['energy_share']:.2f}" for key in ("image", "text")),
             "-" if band["subspace_overlap"] is None else f"{band['subspace_overlap']:.3f}",
             "-" if band["hellinger"] is None else f"{band['hellinger']:.3f}") for band in cross]
    tables += ["\n## FITMM SVD bands of the model's embeddings\n",
               markdown_table(("band (components)", "image energy (%)", "text energy (%)", "subspace overlap",
                               "hellinger"), rows)]
    text = "".join(tables)
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    write_json({"images": len(labels), "bands": args.bands, "spatial_bands": spatial, "probes": probes,
                "svd_bands": {"image": fitmm["sets"]["image"]["svd_bands"], "text": fitmm["sets"]["text"]["svd_bands"],
                              "cross": cross}}, os.path.join(args.out, "summary.json"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
