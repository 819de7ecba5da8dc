"""``sdetool reproduce``: the SDE experiment end to end into one results folder.

The pipeline runs once for the module, through the real command line in a subprocess, with tiny
settings (``--steps 3 --head-steps 5``, about 40 s on 2 idle cores); the tests then read the folder
back through the library: the layout and figures, ``summary.json`` against the ``--json`` output and
the ``compare/`` files, the comparisons against the ``analysis/`` reports, the README's numbers
against the files they come from, and the embeddings of each fine-tuned model against the run's own
``eval.json``. Refusals are checked through the CLI (exit 2, one line, nothing touched); ``--resume``
runs last, into the same folder, and must leave the results as they were; ``noise_share=0`` is
checked in a copy of the folder, in process, with the extractions skipped (a second full run would
double the time). The pure :func:`~sdetool.results.reproduce.add_isotropic_noise` is checked on a matrix of
known structure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import hidden_paths
import numpy as np
import pytest

import sdetool
from sdetool import __version__
from sdetool.errors import BadInputError
from sdetool.io import store
from sdetool.results.reproduce import FIGURES, LAYOUT, LOSSES, MARKER, SCHEMA, ReproduceOptions, add_isotropic_noise

BANDS = ("strong", "weak", "noise")
# the main job's --quick path, shortened; two seeds and few jackknife blocks to keep it fast
FLAGS = ("--quick", "--steps", "3", "--head-steps", "5", "--seeds", "2", "--bootstrap", "4")
COMPARISONS = ("sde", "infonce", "sde-vs-infonce", "noisy-sde", "noisy-infonce")
SEED_RUNS = ("sde-seed1", "infonce-seed1", "noisy-sde-seed1", "noisy-infonce-seed1")
RUNS = ("sde", "infonce", "noisy-sde", "noisy-infonce", *SEED_RUNS)
ANALYSES = ("before", "sde", "infonce", "noisy-before", "noisy-sde", "noisy-infonce", *SEED_RUNS)
STEPS = ("extract before", "analyze before", "finetune sde", "finetune infonce", "extract sde", "analyze sde",
         "extract infonce", "analyze infonce", "compare sde", "compare infonce", "compare sde-vs-infonce",
         "finetune sde-seed1", "analyze sde-seed1", "finetune infonce-seed1", "analyze infonce-seed1", "noise",
         "finetune noisy-sde", "finetune noisy-infonce", "analyze noisy-before", "analyze noisy-sde",
         "analyze noisy-infonce", "compare noisy-sde", "compare noisy-infonce", "finetune noisy-sde-seed1",
         "analyze noisy-sde-seed1", "finetune noisy-infonce-seed1", "analyze noisy-infonce-seed1", "figures")


def _sdetool(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    """The command line as the ``sdetool`` console script runs it (``sdetool.cli:main``), on what a fresh
    machine has: the folders only a developer's machine may hold (Debian's datasets) are hidden."""
    tests = os.path.dirname(os.path.abspath(hidden_paths.__file__))
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", hidden_paths.BOOT, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _assert_ok(process) -> subprocess.CompletedProcess:
    assert process.returncode == 0, (process.returncode, process.stderr[-3000:])
    assert "Traceback" not in process.stderr
    return process


def _assert_refused(process, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one non-blank line on stderr naming the problem; returns it."""
    assert process.returncode == 2, (process.returncode, process.stdout[-2000:], process.stderr[-2000:])
    assert "Traceback" not in process.stderr
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("sdetool: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _json(*parts) -> dict:
    with open(os.path.join(*parts), encoding="utf-8") as handle:
        return json.load(handle)


def _text(*parts) -> str:
    with open(os.path.join(*parts), encoding="utf-8") as handle:
        return handle.read()


def _snapshot(folder: str) -> dict:
    """Every file under ``folder``: relative path -> (size, mtime_ns)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            stat = os.stat(path)
            files[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return files


def _shares(bands: dict) -> dict:
    return {band: bands[band]["energy_share"] for band in BANDS}


def _image(path: str, key: str = "image") -> np.ndarray:
    matrix = store.open_matrices(path)[key]
    with matrix.reader() as read:
        return np.asarray(read(0, matrix.shape[0]), dtype=np.float64)


def _assert_close(got, want, where, rel: float = 1e-9) -> None:
    """Equal JSON trees, floats to rounding (a re-analysis sums the Gram in another order)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            _assert_close(got[key], want[key], (where, key), rel)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want)):
            _assert_close(a, b, (where, index), rel)
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=rel, abs=1e-12), where
    else:
        assert got == want, where


def _between(text: str, start: str, stop: str) -> str:
    return text[text.index(start):text.index(stop)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """One reproduction with tiny settings, through the CLI; what the tests compare against later."""
    root = tmp_path_factory.mktemp("reproduce")
    out, summary = str(root / "results"), str(root / "results.json")
    process = _assert_ok(_sdetool("reproduce", "--out", out, *FLAGS, "-q", "--json", summary))
    assert process.stdout == "" and process.stderr == ""  # -q: nothing on the terminal
    return {"out": out, "json": _json(summary), "root": str(root), "files": _snapshot(out)}


# --- the folder ---------------------------------------------------------------------------------------


def test_folder_layout(results):
    out = results["out"]
    assert sorted(os.listdir(out)) == sorted(["README.md", "summary.json", MARKER, *FIGURES, *LAYOUT])
    assert sorted(os.listdir(os.path.join(out, "embeddings"))) == ["before.h5", "infonce.h5", "noisy.h5", "sde.h5"]
    assert sorted(os.listdir(os.path.join(out, "analysis"))) == sorted(
        f"{name}{suffix}.json" for name in ANALYSES for suffix in ("", "-mp"))
    assert sorted(os.listdir(os.path.join(out, "compare"))) == sorted(f"{name}.json" for name in COMPARISONS)
    assert sorted(os.listdir(os.path.join(out, "runs"))) == sorted(RUNS)
    for run in RUNS:
        for name in ("config.json", "model.safetensors", "eval.json", "metrics.jsonl", "checkpoint.safetensors"):
            assert os.path.isfile(os.path.join(out, "runs", run, name)), (run, name)
    for run in ("noisy-sde", "noisy-infonce", *SEED_RUNS):  # the heads and the later seeds export their embeddings
        for stage in ("before", "after"):
            assert os.path.isfile(os.path.join(out, "runs", run, f"embeddings_{stage}.h5")), (run, stage)
    leftovers = [path for path in results["files"] if path.endswith((".tmp", ".partial")) or ".partial" in path]
    assert not leftovers, leftovers
    assert set(os.listdir(results["root"])) - {"resumed.json"} == {"results", "results.json"}


def test_every_figure_is_a_png_image(results):
    from PIL import Image

    for name in FIGURES:
        path = os.path.join(results["out"], name)
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG", name
            width, height = image.size
            assert width >= 300 and height >= 200, (name, image.size)
            image.load()


def test_runs_were_trained_as_asked(results):
    out = results["out"]
    for run in RUNS:
        training = _json(out, "runs", run, "config.json")["training"]
        name, seed = (run.rpartition("-seed")[0], 1) if "-seed" in run else (run, 0)
        assert training["loss"] == name.rpartition("-")[2], run
        assert training["seed"] == seed, run
        assert training["method"]["partition"]["null"] == "ddpa", run
        if name in LOSSES:
            assert training["target"] == "model" and training["model"] == "builtin:lit-fmnist"
            assert training["steps"] == 3
        else:
            assert training["target"] == "head" and training["steps"] == 5
            assert training["embeddings"] == os.path.join(os.path.abspath(out), "embeddings", "noisy.h5")
        with open(os.path.join(out, "runs", run, "metrics.jsonl")) as handle:
            steps = [json.loads(line)["step"] for line in handle if line.strip()]
        assert steps and steps[-1] == training["steps"] - 1, (run, steps)


# --- summary.json and the comparisons ------------------------------------------------------------------


def test_summary_is_the_json_output(results):
    out = results["out"]
    summary = _json(out, "summary.json")
    assert summary == results["json"]
    assert summary["schema"] == SCHEMA == "sdetool.reproduce/1"
    assert summary["out"] == out and summary["sdetool_version"] == __version__
    options = summary["options"]
    assert options["steps"] == 3 and options["head_steps"] == 5 and options["model_steps"] == 3
    assert options["noisy_steps"] == 5 and options["noise_share"] == 0.5 and options["seed"] == 0
    assert options["quick"] is True and options["resume"] is False and options["overwrite"] is False
    assert options["seeds"] == 2 and options["null"] == "ddpa" and options["bootstrap"] == 4
    assert list(summary["seconds"]) == list(STEPS)
    assert all(value >= 0 for value in summary["seconds"].values())
    assert summary["total_seconds"] == pytest.approx(sum(summary["seconds"].values()), abs=0.06)
    assert any(note.startswith("noisy embeddings: Gaussian noise of sigma") for note in summary["notes"])
    assert len(summary["notes"]) == len(set(summary["notes"]))


def test_the_run_used_what_ships_with_sdetool(results):
    """The pipeline ran with the machine-only folders hidden: the train split came from the install."""
    out = results["out"]
    config = _json(out, "runs", "sde", "config.json")["training"]
    assert config["data"] == "builtin:fashion-mnist:train (train) / builtin:fashion-mnist:test (held out)"
    before = _json(out, "runs", "sde", "eval.json")["before"]
    assert before["pairs"] == 10000  # the whole test split is held out
    noisy = _json(out, "runs", "noisy-sde", "eval.json")["before"]
    assert 900 < noisy["pairs"] < 1100  # the cached pairs' own 10 % split, salted: not all on one side


def test_hidden_paths_hide_machine_only_folders(tmp_path):
    hidden = tmp_path / "machine-only"
    hidden.mkdir()
    (hidden / "file.txt").write_text("x")
    code = ("import os, sys, hidden_paths; hidden_paths.install([sys.argv[1]]); "
            "print(os.path.exists(sys.argv[1]), os.path.isfile(sys.argv[1] + '/file.txt'), os.path.exists(sys.argv[2]))")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(hidden_paths.__file__))}
    process = subprocess.run([sys.executable, "-c", code, str(hidden), str(tmp_path)], capture_output=True, text=True,
                             env=env, check=True)
    assert process.stdout.split() == ["False", "False", "True"]


def test_no_module_reads_outside_the_install():
    """No sdetool module names a machine folder a fresh install lacks."""
    root = os.path.dirname(os.path.abspath(sdetool.__file__))
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                text = _text(folder, name)
                assert not any(prefix in text for prefix in hidden_paths.MACHINE_ONLY), os.path.join(folder, name)


@pytest.mark.parametrize("name", ANALYSES)
def test_every_store_is_analysed_under_the_default_null_and_mp(results, name):
    out = results["out"]
    for suffix, null in (("", "ddpa"), ("-mp", "mp")):
        entry = _json(out, "analysis", f"{name}{suffix}.json")["sets"]["image"]
        assert entry["noise"]["null"] == null
        assert entry["uncertainty"] == {"method": "delete-a-block jackknife", "blocks": 4, "ci_level": 0.9}
        for band in BANDS:
            low, high = entry["bands"][band]["energy_share_ci"]
            assert 0.0 <= low <= high <= 1.0
        assert [row["n"] for row in entry["scale"]] == [256] and entry["scale"][0]["repeats"] == 10
    default, mp = (_json(out, "analysis", f"{name}{suffix}.json")["sets"]["image"] for suffix in ("", "-mp"))
    # One spectrum: equal to rounding (values at the numerical floor differ by ~1e-9 of the top one).
    top = default["singular_values"][0]
    np.testing.assert_allclose(default["singular_values"], mp["singular_values"], rtol=1e-9, atol=1e-8 * top)


def test_redistribution_is_the_analyses(results):
    """summary.json's redistribution and the README's tables are the analyses' numbers, over both seeds."""
    out, summary = results["out"], results["json"]["redistribution"]
    assert summary["nulls"] == ["ddpa", "mp"] and summary["seeds"] == [0, 1] and summary["batch_rows"] == 256
    assert summary["paper"]["noise"] == [81.84, 70.51]
    readme = _text(out, "README.md")
    for experiment, prefix in (("model", ""), ("noisy", "noisy-")):
        states = summary["experiments"][experiment]
        assert list(states) == [f"{prefix}before", f"{prefix}sde", f"{prefix}infonce"]
        for name, row in states.items():
            for null, suffix in (("ddpa", ""), ("mp", "-mp")):
                runs = [name] if name.endswith("before") else [name, f"{name}-seed1"]
                entries = [_json(out, "analysis", f"{run}{suffix}.json")["sets"]["image"] for run in runs]
                for band in BANDS:
                    shares = [entry["bands"][band]["energy_share"] for entry in entries]
                    cell = row[null][band]
                    assert cell["share"] == pytest.approx(np.mean(shares), abs=1e-12)
                    assert cell["ci"] == entries[0]["bands"][band]["energy_share_ci"]
                    batch = [entry["scale"][0]["bands"][band]["energy_share"]["mean"] for entry in entries]
                    assert cell["batch_share"] == pytest.approx(np.mean(batch), abs=1e-12)
                    if len(runs) > 1:
                        assert cell["sd"] == pytest.approx(np.std(shares, ddof=1), abs=1e-12)
                noise = row[null]["noise"]
                assert f"| {row['label']} | {null} |" in readme
                assert f"{100 * noise['batch_share']:.2f} ± {100 * noise['batch_sd']:.2f} |" in readme


def test_comparisons_are_the_compare_files(results):
    comparisons = results["json"]["comparisons"]
    assert sorted(comparisons) == sorted(COMPARISONS)
    for name in COMPARISONS:
        document = _json(results["out"], "compare", f"{name}.json")
        assert document == comparisons[name], name
        assert document["schema"] == "sdetool.compare/1", name
    assert comparisons["sde"]["after"]["label"] == "SDE" and comparisons["infonce"]["after"]["label"] == "InfoNCE"
    assert comparisons["noisy-sde"]["before"]["label"] == "noisy before"


@pytest.mark.parametrize("name,before,after", [("sde", "before", "sde"), ("infonce", "before", "infonce"),
                                               ("sde-vs-infonce", "infonce", "sde")])
def test_compared_band_shares_are_the_analyses(results, name, before, after):
    out = results["out"]
    document = _json(out, "compare", f"{name}.json")
    reports = {side: _json(out, "analysis", f"{analysis}.json") for side, analysis in (("before", before),
                                                                                      ("after", after))}
    assert document["before"]["source"] == os.path.join(out, "analysis", f"{before}.json")
    assert document["after"]["source"] == os.path.join(out, "analysis", f"{after}.json")
    assert sorted(document["sets"]) == ["image", "text"]
    for key, entry in document["sets"].items():
        for band in BANDS:
            share, count = entry["bands"][band]["energy_share"], entry["bands"][band]["count"]
            for side in ("before", "after"):
                analysed = reports[side]["sets"][key]["bands"][band]
                assert share[side] == analysed["energy_share"], (key, band, side)
                assert count[side] == analysed["count"], (key, band, side)
            assert share["delta"] == pytest.approx(share["after"] - share["before"], rel=0, abs=1e-15)
            assert count["delta"] == count["after"] - count["before"]
        for metric, values in entry["metrics"].items():
            assert values["before"] == pytest.approx(reports["before"]["sets"][key]["metrics"][metric], rel=1e-12)


def test_compared_evaluations_are_the_runs(results):
    out = results["out"]
    for loss in LOSSES:
        evaluation = _json(out, "runs", loss, "eval.json")
        compared = results["json"]["comparisons"][loss]["evaluation"]
        accuracy = compared["zero_shot_accuracy"]
        assert accuracy["before"] == evaluation["before"]["zero_shot_accuracy"]
        assert accuracy["after"] == evaluation["after"]["zero_shot_accuracy"]
        assert accuracy["delta"] == pytest.approx(accuracy["after"] - accuracy["before"], abs=1e-15)
        for metric, values in compared["recall"].items():
            assert values["before"] == evaluation["before"]["recall"][metric], (loss, metric)
            assert values["after"] == evaluation["after"]["recall"][metric], (loss, metric)
    # both model runs start from the same model and evaluate the same pairs
    assert _json(out, "runs", "sde", "eval.json")["before"] == _json(out, "runs", "infonce", "eval.json")["before"]


def test_noisy_comparisons_are_the_head_runs(results):
    out = results["out"]
    for loss in LOSSES:
        document = _json(out, "compare", f"noisy-{loss}.json")
        evaluation = _json(out, "runs", f"noisy-{loss}", "eval.json")
        for key in ("image", "text"):
            for band in BANDS:
                share = document["sets"][key]["bands"][band]["energy_share"]
                for side in ("before", "after"):
                    assert share[side] == pytest.approx(evaluation[side]["bands"][key][band]["energy_share"],
                                                        rel=1e-9), (loss, key, band, side)
    # one "noisy before" for both losses: the same store, the same held-out pairs, identity heads
    assert (_json(out, "compare", "noisy-sde.json")["sets"]["image"]["bands"]["noise"]["energy_share"]["before"]
            == _json(out, "compare", "noisy-infonce.json")["sets"]["image"]["bands"]["noise"]["energy_share"]["before"])


def test_noisy_store_carries_the_noise_share(results):
    out = results["out"]
    clean, noisy = os.path.join(out, "embeddings", "before.h5"), os.path.join(out, "embeddings", "noisy.h5")
    assert store.read_ids(noisy, "image") == store.read_ids(clean, "image") == store.read_ids(noisy, "text")
    np.testing.assert_array_equal(_image(noisy, "text"), _image(clean, "text"))
    result, signal = _image(noisy), _image(clean)
    noise = result - signal
    centred = lambda m: float(((m - m.mean(axis=0)) ** 2).sum())  # noqa: E731
    assert centred(noise) / centred(result) == pytest.approx(0.5, rel=0.02)
    import h5py

    with h5py.File(noisy, "r") as handle:
        attrs = dict(handle["image"].attrs)
    assert attrs["noise_share"] == 0.5 and attrs["source"] == clean
    assert float(np.std(noise)) == pytest.approx(attrs["noise_sigma"], rel=0.01)
    note = next(n for n in results["json"]["notes"] if n.startswith("noisy embeddings"))
    assert f"sigma {attrs['noise_sigma']:.4g} per entry" in note


# --- the fine-tuned embeddings are the fine-tuned models' ------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
def test_embeddings_are_the_fine_tuned_models(results, loss):
    import h5py

    from sdetool.analysis.analyze import analyze
    from sdetool.extract.models.base import file_fingerprint

    out = results["out"]
    evaluation = _json(out, "runs", loss, "eval.json")
    for name, stage in (("before", "before"), (loss, "after")):
        path = os.path.join(out, "embeddings", f"{name}.h5")
        report = analyze(path).to_dict()
        assert sorted(report["sets"]) == ["image", "text"]
        for key in ("image", "text"):
            analysed = report["sets"][key]
            reported = evaluation[stage]["bands"][key]
            assert analysed["n_rows"] == evaluation[stage]["pairs"], (name, key)
            np.testing.assert_allclose([analysed["bands"][b]["energy_share"] for b in BANDS],
                                       [reported[b]["energy_share"] for b in BANDS], rtol=1e-6, atol=0,
                                       err_msg=f"{name} {key}")
            assert [analysed["bands"][b]["count"] for b in BANDS] == [reported[b]["count"] for b in BANDS]
    with h5py.File(os.path.join(out, "embeddings", f"{loss}.h5"), "r") as handle:
        attrs = dict(handle["image"].attrs)
    run = os.path.join(out, "runs", loss)
    assert attrs["model"] == f"run:{run}" and attrs["finetune_run"] == os.path.abspath(run)
    assert attrs["finetune_weights"] == file_fingerprint(os.path.join(run, "model.safetensors"))


def test_fine_tuned_embeddings_differ_from_before(results):
    out = results["out"]
    before = _image(os.path.join(out, "embeddings", "before.h5"))
    for loss in LOSSES:
        after = _image(os.path.join(out, "embeddings", f"{loss}.h5"))
        assert after.shape == before.shape
        assert not np.allclose(after, before, rtol=0, atol=1e-6), loss


# --- README.md -----------------------------------------------------------------------------------------


def test_readme_shows_the_numbers_of_the_files(results):
    out = results["out"]
    readme = _text(out, "README.md")
    assert "TODO" not in readme
    before = _json(out, "analysis", "before.json")["sets"]["image"]["bands"]
    after = {loss: _json(out, "analysis", f"{loss}.json")["sets"]["image"]["bands"] for loss in LOSSES}
    image_table = _between(readme, "### image embeddings", "### text embeddings")
    # | band | before: share (count) | InfoNCE | change | SDE | change |
    for band in BANDS:
        changes = {loss: 100 * (after[loss][band]["energy_share"] - before[band]["energy_share"]) for loss in LOSSES}
        row = (f"| {band} | {100 * before[band]['energy_share']:.2f}% ({before[band]['count']}) | "
               f"{100 * after['infonce'][band]['energy_share']:.2f}% ({after['infonce'][band]['count']}) | "
               f"{changes['infonce']:+.2f} pt | "
               f"{100 * after['sde'][band]['energy_share']:.2f}% ({after['sde'][band]['count']}) | "
               f"{changes['sde']:+.2f} pt |")
        assert row in image_table, (row, image_table)
    noise_before = 100 * before["noise"]["energy_share"]
    assert f"Noise band share of the image embeddings: {noise_before:.4g}% before;" in readme

    evaluations = {loss: _json(out, "runs", loss, "eval.json") for loss in LOSSES}
    accuracy = (f"Zero-shot accuracy: {100 * evaluations['sde']['before']['zero_shot_accuracy']:.2f}% before, "
                f"{100 * evaluations['sde']['after']['zero_shot_accuracy']:.2f}% after SDE, "
                f"{100 * evaluations['infonce']['after']['zero_shot_accuracy']:.2f}% after InfoNCE.")
    assert accuracy in readme
    assert "fine-tuned for 3 steps" in readme and "for 5 steps with each loss" in readme
    assert f"`sdetool reproduce --out {out} {' '.join(FLAGS)}`" in readme


def test_readme_noisy_section_shows_the_noisy_comparisons(results):
    readme = _text(results["out"], "README.md")
    section = _between(readme, "## 2. A model with a noise band", "## Files")
    noisy = {loss: results["json"]["comparisons"][f"noisy-{loss}"]["sets"]["image"]["bands"] for loss in LOSSES}
    for band in BANDS:
        share = {loss: noisy[loss][band]["energy_share"] for loss in LOSSES}
        assert (f"| {band} | {100 * share['sde']['before']:.2f}% ({noisy['sde'][band]['count']['before']:.0f}) | "
                f"{100 * share['infonce']['after']:.2f}% ({noisy['infonce'][band]['count']['after']:.0f}) | "
                f"{100 * share['infonce']['delta']:+.2f} pt | ") in section, band
    assert "carrying 50% of their energy" in section
    noise_before = 100 * noisy["sde"]["noise"]["energy_share"]["before"]
    assert f"Noise band share of the image embeddings: {noise_before:.4g}% before;" in section
    assert 40 < noise_before < 60  # noise carrying half the image energy lands in the noise band


def test_readme_links_every_figure_and_only_files_that_exist(results):
    out = results["out"]
    readme = _text(out, "README.md")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert sorted(linked) == sorted(FIGURES)  # each once
    for name in linked:
        assert os.path.isfile(os.path.join(out, name)), name
    # the time table lists each step with its seconds as in summary.json
    table = readme[readme.index("### Time per step (s)"):]
    for step, seconds in results["json"]["seconds"].items():
        if step != "figures":  # timed while the README itself was being written
            assert f"| {step} | {seconds:.1f} |" in table, step


# --- refusals: exit 2, one line, nothing touched -----------------------------------------------------------


def test_rerun_without_resume_or_overwrite_is_refused(results):
    out = results["out"]
    line = _assert_refused(_sdetool("reproduce", "--out", out, *FLAGS, "-q"), f"--out {out}", "--resume",
                           "--overwrite")
    assert "holds a reproduction already" in line
    _assert_refused(_sdetool("reproduce", "--out", out, *FLAGS, "--resume", "--overwrite", "-q"), "--resume",
                    "--overwrite", "choose one")
    assert _snapshot(out) == results["files"]


def test_a_folder_with_other_files_is_refused(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")
    (busy / "runs").mkdir()  # a name of ours does not make the folder ours
    for extra in ((), ("--overwrite",), ("--resume",)):
        _assert_refused(_sdetool("reproduce", "--out", busy, *FLAGS, "-q", *extra), "notes.txt",
                        "no reproduction")
        assert sorted(os.listdir(busy)) == ["notes.txt", "runs"] and os.listdir(busy / "runs") == []
    # names of ours only, but no marker: a user's folder all the same (a README and their own runs)
    (busy / "notes.txt").unlink()
    (busy / "README.md").write_text("my notes\n")
    (busy / "runs" / "mine").mkdir()
    _assert_refused(_sdetool("reproduce", "--out", busy, *FLAGS, "-q", "--overwrite"), "no reproduction")
    assert sorted(os.listdir(busy)) == ["README.md", "runs"] and os.listdir(busy / "runs") == ["mine"]
    # a reproduction with a file of the user's in it
    (busy / MARKER).write_text("{}\n")
    (busy / "notes.txt").write_text("mine\n")
    _assert_refused(_sdetool("reproduce", "--out", busy, *FLAGS, "-q", "--overwrite"), "did not write")


def test_overwrite_with_a_bad_device_deletes_nothing(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / MARKER).write_text("{}\n")
    (out / "README.md").write_text("results\n")
    _assert_refused(_sdetool("reproduce", "--out", out, "-q", "--overwrite", "--device", "cuda:7"), "--device")
    assert (out / "README.md").read_text() == "results\n"


def test_bad_options_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "new"
    _assert_refused(_sdetool("reproduce", "--out", out, "--noise-share", "1.5", "-q"), "--noise-share", "0.95")
    _assert_refused(_sdetool("reproduce", "--out", out, "--steps", "0", "-q"), "--steps")
    _assert_refused(_sdetool("reproduce", "--out", out, "--resume", "--overwrite", "-q"), "choose one")
    _assert_refused(_sdetool("reproduce", "--out", tmp_path / "missing" / "out", "-q"), "does not exist")
    (tmp_path / "file").write_text("x")
    _assert_refused(_sdetool("reproduce", "--out", tmp_path / "file", "-q"), "is a file")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_options_validate():
    assert ReproduceOptions().model_steps == 500 and ReproduceOptions().noisy_steps == 500
    assert ReproduceOptions(quick=True).model_steps == 100 and ReproduceOptions(quick=True).noisy_steps == 200
    assert ReproduceOptions(quick=True, steps=7, head_steps=9).model_steps == 7
    assert ReproduceOptions(quick=True, steps=7, head_steps=9).noisy_steps == 9
    ReproduceOptions(noise_share=0.0).validate()
    ReproduceOptions(noise_share=0.95).validate()
    for options, fragment in ((ReproduceOptions(noise_share=1.0), "--noise-share"),
                              (ReproduceOptions(noise_share=-0.1), "--noise-share"),
                              (ReproduceOptions(steps=0), "--steps"), (ReproduceOptions(head_steps=-1), "--head-steps"),
                              (ReproduceOptions(resume=True, overwrite=True), "choose one")):
        with pytest.raises(BadInputError, match=re.escape(fragment)):
            options.validate()


# --- add_isotropic_noise (pure) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def structured():
    """4000 x 64: anisotropic (scales 10 .. 0.1), far from centred (a mean of 50 per column)."""
    rng = np.random.default_rng(0)
    scales = np.geomspace(10.0, 0.1, 64)
    return (rng.normal(size=(4000, 64)) * scales + 50.0).astype(np.float32)


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_added_noise_carries_its_share_of_the_centred_energy(structured, share):
    noisy, sigma = add_isotropic_noise(structured, share, seed=3)
    assert noisy.dtype == np.float64 and noisy.shape == structured.shape
    noise = noisy - structured.astype(np.float64)
    centred = lambda m: float(((m - m.mean(axis=0)) ** 2).sum())  # noqa: E731
    assert centred(noise) / centred(noisy) == pytest.approx(share, rel=0.02)
    # isotropic: the same spread in every column, whatever the column's own scale
    np.testing.assert_allclose(noise.std(axis=0), sigma, rtol=0.1)
    assert float(noise.mean()) == pytest.approx(0.0, abs=5 * sigma / np.sqrt(noise.size))
    expected_sigma = np.sqrt(share / (1 - share) * centred(structured.astype(np.float64)) / structured.size)
    assert sigma == pytest.approx(expected_sigma, rel=1e-12)


def test_added_noise_is_seeded_and_leaves_the_input_alone(structured):
    original = structured.copy()
    first, sigma = add_isotropic_noise(structured, 0.5, seed=7)
    again, sigma_again = add_isotropic_noise(structured, 0.5, seed=7)
    other, _ = add_isotropic_noise(structured, 0.5, seed=8)
    np.testing.assert_array_equal(first, again)
    assert sigma == sigma_again
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(structured, original)
    unchanged, zero = add_isotropic_noise(structured, 0.0, seed=7)
    assert zero == 0.0
    np.testing.assert_array_equal(unchanged, structured.astype(np.float64))


# --- --resume (last: it writes into the module's folder) -----------------------------------------------


@pytest.fixture(scope="module")
def resumed(results) -> dict:
    out = results["out"]
    saved = {"summary": results["json"], "readme": _text(out, "README.md"),
             "analysis": {name: _json(out, "analysis", name) for name in os.listdir(os.path.join(out, "analysis"))},
             "compare": {name: _json(out, "compare", name) for name in os.listdir(os.path.join(out, "compare"))}}
    summary = os.path.join(results["root"], "resumed.json")
    _assert_ok(_sdetool("reproduce", "--out", out, *FLAGS, "--resume", "-q", "--json", summary))
    return {"saved": saved, "json": _json(summary), "files": _snapshot(out)}


def test_resume_completes_and_leaves_the_results_equal(results, resumed):
    out, saved, document = results["out"], resumed["saved"], resumed["json"]
    assert document == _json(out, "summary.json")
    assert document["schema"] == SCHEMA and document["options"]["resume"] is True
    assert document["comparisons"] == saved["summary"]["comparisons"]
    assert list(document["seconds"]) == list(STEPS)
    for name, content in saved["compare"].items():
        assert _json(out, "compare", name) == content, name
    for name, content in saved["analysis"].items():
        assert _json(out, "analysis", name) == content, name
    readme = _text(out, "README.md")
    assert _between(readme, "## 1.", "## Files") == _between(saved["readme"], "## 1.", "## Files")
    assert sorted(resumed["files"]) == sorted(results["files"])  # nothing new, nothing lost


def test_resume_does_not_train_again(results, resumed):
    # every fine-tuning run was complete: its weights, checkpoint and log are not rewritten
    for run in RUNS:
        for name in ("model.safetensors", "checkpoint.safetensors", "metrics.jsonl", "eval.json", "config.json"):
            path = os.path.join("runs", run, name)
            assert resumed["files"][path] == results["files"][path], path
    assert "nothing to do: the run is complete" in resumed["json"]["notes"]


def test_noise_share_0_leaves_experiment_2_out(results, tmp_path, monkeypatch):
    """A second full run would double this file's time: the model experiment is resumed in a copy of the
    folder (its runs are complete, its stores copied, so extraction is skipped), with experiment 2's
    outputs removed; what noise_share=0 changes is then all that differs from a fresh run."""
    from sdetool.results import reproduce as module

    out = str(tmp_path / "results")
    shutil.copytree(results["out"], out)
    for path in ("noisy_bands.png", "noisy_spectrum.png", "embeddings/noisy.h5", "compare/noisy-sde.json",
                 "compare/noisy-infonce.json", "README.md", "summary.json"):
        os.remove(os.path.join(out, path))
    for run in ("noisy-sde", "noisy-infonce", *SEED_RUNS):  # and the second seed's runs (seeds=1 here)
        shutil.rmtree(os.path.join(out, "runs", run))
    monkeypatch.setattr(module.Pipeline, "extract", lambda self, name, model: None)
    stages = []

    class Recorder(module.Reporter):
        def stage(self, number, total, text):
            stages.append((number, total, text))

    result = module.reproduce(out, ReproduceOptions(steps=3, head_steps=5, noise_share=0.0, resume=True,
                                                    device="cpu"), Recorder())
    # 11 steps and the figures (17 with experiment 2); the 3 extractions, skipped here, are not reported
    assert [number for number, _, _ in stages] == list(range(1, 10))
    assert {total for _, total, _ in stages} == {12}
    assert stages[-1][2] == "plot the figures"
    assert not any("noise" in text for _, _, text in stages)
    assert sorted(result.comparisons) == ["infonce", "sde", "sde-vs-infonce"]
    summary = _json(out, "summary.json")
    assert sorted(summary["comparisons"]) == ["infonce", "sde", "sde-vs-infonce"]
    assert summary["options"]["noise_share"] == 0.0
    assert not any("noisy" in step or step == "noise" for step in summary["seconds"])
    assert not any(note.startswith("noisy embeddings") for note in summary["notes"])
    for name in ("sde", "infonce", "sde-vs-infonce"):  # experiment 1 is unchanged
        _assert_close(summary["comparisons"][name]["sets"], results["json"]["comparisons"][name]["sets"], name)
    assert sorted(os.listdir(out)) == sorted(["README.md", "summary.json", MARKER, *LAYOUT, *FIGURES[:4]])
    assert sorted(os.listdir(os.path.join(out, "runs"))) == ["infonce", "sde"]
    assert "noisy.h5" not in os.listdir(os.path.join(out, "embeddings"))
    readme = _text(out, "README.md")
    assert "## 2." not in readme and "noisy" not in readme.lower()
    assert sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)) == sorted(FIGURES[:4])
    assert "--noise-share 0`" in readme


def test_resume_keeps_finished_extractions(results, resumed):
    for name in ("before", "sde", "infonce"):
        path = os.path.join("embeddings", f"{name}.h5")
        assert resumed["files"][path] == results["files"][path], path


def test_a_moved_results_folder_can_be_resumed(results, resumed, tmp_path, monkeypatch):
    from sdetool.results import reproduce as module

    moved = str(tmp_path / "moved")
    shutil.copytree(results["out"], moved)
    # the stores are in place (copied); skip re-embedding them, which is slow and beside the point here
    monkeypatch.setattr(module.Pipeline, "extract", lambda self, name, model: None)
    result = module.reproduce(moved, ReproduceOptions(steps=3, head_steps=5, resume=True, device="cpu"))
    for name in COMPARISONS:
        for key, entry in result.comparisons[name]["sets"].items():
            _assert_close(entry["bands"], resumed["json"]["comparisons"][name]["sets"][key]["bands"], (name, key))
