"""The reproduction's figures and ``README.md``, made from its numbers (see :mod:`sdetool.results.reproduce`).

Every number and every sentence that states a result is computed from the comparisons; the prose
around them says only what was run.
"""

from __future__ import annotations

import os
import platform
import time

from sdetool.results.tables import compare_band_rows, compare_evaluation_rows, markdown_table, subspace_line
from sdetool.spectral.spectrum import BANDS

PAPER = {"strong": (10.42, 17.32), "weak": (7.75, 12.17), "noise": (81.84, 70.51)}


def _shares(report) -> dict:
    document = report.to_dict()
    return {key: {band: entry["bands"][band]["energy_share"] for band in BANDS} for key, entry in document["sets"].items()}


def draw_figures(pipeline) -> None:
    """bands, spectrum, energy, training (experiment 1); noisy_bands, noisy_spectrum (experiment 2)."""
    from sdetool.results import plots
    from sdetool.results.figures import comparison_states, training_runs

    labels = {"before": "before", "infonce": "InfoNCE", "sde": "SDE"}
    order = ("before", "infonce", "sde")
    states = [(labels[name], _shares(pipeline.analyses[name])) for name in order]
    save = lambda figure, name: plots.save_figure(figure, pipeline.path(name))  # noqa: E731
    save(plots.bands_figure(states, title="Held-out embeddings of the built-in model: energy per band"), "bands.png")
    series = [(labels[name], pipeline.analyses[name].to_dict()["sets"]["image"]) for name in order]
    save(plots.spectrum_figure(series, title="Image embeddings: singular spectrum"), "spectrum.png")
    save(plots.energy_figure(series, title="Image embeddings: cumulative energy"), "energy.png")
    runs = training_runs([pipeline.path("runs", "sde"), pipeline.path("runs", "infonce")])
    save(plots.training_figure([("SDE", runs[0][1]), ("InfoNCE", runs[1][1])]), "training.png")
    if "noisy-sde" not in pipeline.comparisons:
        return
    noisy = comparison_states(pipeline.comparisons["noisy-sde"]) + comparison_states(pipeline.comparisons["noisy-infonce"])[1:]
    save(plots.bands_figure([noisy[0], noisy[2], noisy[1]], title="Noisy embeddings, linear heads: energy per band"),
         "noisy_bands.png")
    series = [(label, pipeline.analyses[name].to_dict()["sets"]["image"])
              for label, name in (("noisy before", "noisy-before"), ("InfoNCE head", "noisy-infonce"),
                                  ("SDE head", "noisy-sde"))]
    save(plots.spectrum_figure(series, title="Noisy image embeddings (held out): singular spectrum"), "noisy_spectrum.png")


# --- README --------------------------------------------------------------------------------------


def _band_table(first: dict, second: dict, key: str) -> str:
    """before | InfoNCE (change) | SDE (change), counts and shares, from two comparisons with one before."""
    rows = []
    for row_a, row_b in zip(compare_band_rows(first["sets"][key]), compare_band_rows(second["sets"][key])):
        band, count_before, count_a, _, share_before, share_a, change_a = row_a
        _, _, count_b, _, _, share_b, change_b = row_b
        rows.append((band, f"{share_before} ({count_before})", f"{share_a} ({count_a})", change_a,
                     f"{share_b} ({count_b})", change_b))
    header = ("band", "before: share (count)", f"{first['after']['label']}", "change",
              f"{second['after']['label']}", "change")
    return markdown_table(header, rows)


def _metric_table(first: dict, second: dict, key: str, evaluation: bool = True) -> str:
    """Metrics of set ``key`` before and after both runs; with ``evaluation``, the runs' accuracy and recalls."""
    rows = []
    metrics_a, metrics_b = first["sets"][key]["metrics"], second["sets"][key]["metrics"]
    for name, values in metrics_a.items():
        rows.append((name.replace("_", " "), _g(values["before"]), _g(values["after"]),
                     _g(metrics_b.get(name, {}).get("after"))))
    for row_a, row_b in zip(compare_evaluation_rows(first), compare_evaluation_rows(second)) if evaluation else ():
        rows.append((row_a[0], row_a[1], row_a[2], row_b[2]))
    return markdown_table(("held-out metric", "before", first["after"]["label"], second["after"]["label"]), rows)


def _g(value) -> str:
    return "" if value is None else f"{value:.4g}"


def _delta(document: dict, key: str, band: str) -> float:
    return 100.0 * document["sets"][key]["bands"][band]["energy_share"]["delta"]


def findings(sde: dict, infonce: dict, key: str = "image") -> list[str]:
    """Sentences stating what the numbers show (each computed, none typed by hand)."""
    lines = []
    for band in BANDS:
        shares = {name: document["sets"][key]["bands"][band]["energy_share"] for name, document in
                  (("SDE", sde), ("InfoNCE", infonce))}
        lines.append(f"{band.capitalize()} band share of the {key} embeddings: {100 * shares['SDE']['before']:.4g}% "
                     f"before; {100 * shares['SDE']['after']:.4g}% after SDE ({100 * shares['SDE']['delta']:+.3g} points), "
                     f"{100 * shares['InfoNCE']['after']:.4g}% after InfoNCE ({100 * shares['InfoNCE']['delta']:+.3g} "
                     f"points).")
    accuracy = (sde.get("evaluation") or {}).get("zero_shot_accuracy")
    if accuracy:
        other = infonce["evaluation"]["zero_shot_accuracy"]
        lines.append(f"Zero-shot accuracy: {100 * accuracy['before']:.2f}% before, {100 * accuracy['after']:.2f}% "
                     f"after SDE, {100 * other['after']:.2f}% after InfoNCE.")
    return lines


def _machine() -> str:
    try:
        import torch

        threads = f", torch {torch.__version__} with {torch.get_num_threads()} threads"
    except ImportError:
        threads = ""
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores{threads}"


def _figure(name: str, alt: str) -> str:
    return f"![{alt}]({name})\n"


def readme(pipeline, result) -> str:
    """The results folder's README.md."""
    from sdetool import __version__

    options, seconds = result.options, result.seconds
    sde, infonce = pipeline.comparisons["sde"], pipeline.comparisons["infonce"]
    total = sum(seconds.values())
    resumed = " (this invocation: `--resume` kept the steps already done)" if options["resume"] else ""
    parts = [
        "# SDE reproduction\n",
        f"Written by `sdetool reproduce` (sdetool {__version__}) on {time.strftime('%Y-%m-%d')}, in "
        f"{total / 60:.1f} min{resumed} on {_machine()}. Every number below comes from the files in this folder.\n",
        _figure("bands.png", "Energy in the strong, weak and noise bands before and after fine-tuning"),
        "## 1. The built-in model, fine-tuned with SDE and with InfoNCE\n",
        f"`builtin:lit-fmnist` (a small CNN image tower and a frozen MiniLM text tower, 256-d), fine-tuned for "
        f"{options['model_steps']} steps (batch 256, seed {options['seed']}) on Fashion-MNIST image-caption pairs with "
        f"`--loss sde` and with `--loss infonce`, everything else identical. Each model embeds the held-out pairs "
        f"(`sdetool extract --model run:runs/<loss>`), and `sdetool analyze` partitions each spectrum into strong, weak "
        f"and noise bands. Energy shares below are of the held-out embeddings; changes are in percentage points.\n",
    ]
    for position, key in enumerate(sde["sets"]):
        parts += [f"### {key} embeddings\n", _band_table(infonce, sde, key), "",
                  _metric_table(infonce, sde, key, evaluation=position == 0), ""]
        for name, document in (("SDE", sde), ("InfoNCE", infonce)):
            line = subspace_line(document["sets"][key])
            if line:
                parts.append(f"- {name}: {line}.")
        parts.append("")
    parts += ["### What the numbers show\n", *[f"- {line}" for line in findings(sde, infonce)], "",
              "For reference, the SDE paper reports (CLIP on its data) "
              + ", ".join(f"{band} {a}% -> {b}%" for band, (a, b) in PAPER.items()) + ".\n",
              *_redistribution_section(result.redistribution, "model"),
              "### Figures\n", _figure("spectrum.png", "Singular spectra of the image embeddings"),
              _figure("energy.png", "Cumulative energy of the image embeddings"),
              _figure("training.png", "Loss and batch band shares during training")]
    if "noisy-sde" in pipeline.comparisons:
        parts += _noisy_section(pipeline, options, result)
    parts += _files_section(result)
    return "\n".join(parts) + "\n"


def _redistribution_section(summary: dict, experiment: str) -> list[str]:
    """The image band shares under the run's null and under mp, held out and at batch size."""
    from sdetool.results.redistribution import table_rows

    if experiment not in summary["experiments"]:
        return []
    seeds = summary["seeds"]
    spread = f"mean ± sd over seeds {', '.join(map(str, seeds))}; " if len(seeds) > 1 else ""
    header = ("state", "null", "strong (%)", "weak (%)", "noise (%)", f"noise at n = {summary['batch_rows']} (%)")
    return [
        "### Energy redistribution under two nulls\n",
        f"The image shares under `--null {summary['nulls'][0]}` (the analyses of this folder) and under `mp` (one "
        f"noise level for every entry: the paper's reading). Held out: {spread}90% jackknife interval of seed "
        f"{seeds[0]} in brackets. At n = {summary['batch_rows']}: the mean ± sd over seeded subsets of that many rows, "
        f"the size of a training batch. A band share depends on the null and on n: read the paper's numbers against "
        f"the row that matches how they were measured.\n",
        markdown_table(header, table_rows(summary, experiment)), "",
    ]


def _noisy_section(pipeline, options, result) -> list[str]:
    sde, infonce = pipeline.comparisons["noisy-sde"], pipeline.comparisons["noisy-infonce"]
    return [
        "## 2. A model with a noise band: linear heads on noisy embeddings\n",
        f"The \"before\" embeddings with Gaussian noise added to the image embeddings, carrying "
        f"{100 * options['noise_share']:g}% of their energy (a degraded image encoder), and a linear head per modality "
        f"(identity at start) trained on them for {options['noisy_steps']} steps with each loss "
        f"(`sdetool finetune --target head`). Held out: 10% of the pairs, by id.\n",
        _figure("noisy_bands.png", "Energy per band of the noisy embeddings before and after the heads"),
        "### image embeddings\n", _band_table(infonce, sde, "image"), "", _metric_table(infonce, sde, "image"), "",
        *[f"- {line}" for line in findings(sde, infonce)], "",
        *_redistribution_section(result.redistribution, "noisy"),
        _figure("noisy_spectrum.png", "Singular spectra of the noisy image embeddings before and after the heads"),
    ]


def _files_section(result) -> list[str]:
    rows = [(name, f"{value:.1f}") for name, value in result.seconds.items()]
    options = result.options
    flags = [("--quick", options["quick"]), (f"--steps {options['steps']}", options["steps"]),
             (f"--head-steps {options['head_steps']}", options["head_steps"]), (f"--seed {options['seed']}", options["seed"]),
             (f"--noise-share {options['noise_share']:g}", options["noise_share"] != 0.5),
             (f"--seeds {options['seeds']}", options["seeds"] != 1), (f"--null {options['null']}", options["null"] != "ddpa"),
             (f"--bootstrap {options['bootstrap']}", options["bootstrap"] != 20)]
    command = " ".join(["sdetool reproduce --out", result.out] + [flag for flag, given in flags if given])
    return [
        "## Files\n",
        "- `embeddings/`: the stores (`sdetool analyze` reads them); `analysis/`: their reports; `runs/`: the "
        "fine-tuning runs (`sdetool plot training runs/sde`); `compare/`: the comparisons (`sdetool compare "
        "analysis/before.json analysis/sde.json` prints the band table); `summary.json`: all of it, machine-readable.",
        f"- Made with `{command}`.\n",
        *(["### Notes\n", *[f"- {note}" for note in result.notes], ""] if result.notes else []),
        "### Time per step (s)\n", markdown_table(("step", "seconds"), rows),
    ]


def write_readme(pipeline, result) -> None:
    """Write README.md into the results folder (after the figures it links)."""
    from sdetool.io.atomic import write_text

    write_text(pipeline.path("README.md"), readme(pipeline, result))
