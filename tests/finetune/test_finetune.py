"""``finetune``: ``sdetool finetune`` on real stores, real models and real run folders.

Head runs train on a small store written with :func:`sdetool.io.store.write_set` (400 pairs, d = 32, texts
repeating every 40 rows so that positive groups matter); the run folder is checked through the library
(``analyze`` on the exported embeddings, the heads of ``model.safetensors`` applied to the cached rows).
Resumption is checked against an uninterrupted run, after an in-process Ctrl-C and after a real SIGINT
of the CLI. The built-in LiT model and a tiny random CLIP run a few steps each (``torchrun``: test_distributed.py). Torch runs on one thread in this process and in the subprocesses (the machine is shared).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from cli_helpers import assert_error as _assert_error
from cli_helpers import assert_ok as _assert_ok
from cli_helpers import invoke as _invoke
from extract_fixtures import build_tiny_clip, image_folder, write_pairs
from safetensors.torch import load_file

from sdetool import __version__
from sdetool.analysis.analyze import analyze
from sdetool.errors import TrainingInterrupted
from sdetool.finetune.pairs import CACHED_PAIRS_SALT, held_out_mask
from sdetool.finetune.run import FinetuneOptions, Progress, finetune
from sdetool.finetune.runfolder import SCHEMA, load_tensors, read_metadata
from sdetool.io import store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_PAIRS, DIM, N_TEXTS = 400, 32, 40
LOSS_TERMS = ("infonce", "hellinger2", "subspace", "snr", "loss")
RECALLS = {f"{a}_to_{b}_R@{k}" for a, b in (("image", "text"), ("text", "image")) for k in (1, 5, 10)}
BANDS = ("strong", "weak", "noise")


def _records(folder) -> list[dict]:
    with open(os.path.join(folder, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _json(folder, name):
    with open(os.path.join(folder, name)) as handle:
        return json.load(handle)


def _without_seconds(records):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in records]


def _assert_same_tensors(path, reference, atol: float = 0.0):
    got, expected = load_file(path), load_file(reference)
    assert sorted(got) == sorted(expected)
    for key in expected:
        if atol:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=key)
        else:
            assert torch.equal(got[key], expected[key]), key


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --- the store of cached pairs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """400 pairs: text row i is text ``i mod 40``; image i a noisy linear map of its text."""
    return write_pairs(str(tmp_path_factory.mktemp("pairs") / "pairs.h5"), N_PAIRS, DIM, N_TEXTS)


def _head(store_path, out, *extra):
    return ["finetune", "--target", "head", "--embeddings", store_path, "--out", out, "--batch-size", "64",
            "--log-every", "1", "--device", "cpu", "-q", *extra]


@pytest.fixture(scope="module")
def head_run(pairs, tmp_path_factory):
    """Six SDE steps on the heads, checkpoints every 3, held-out embeddings exported."""
    root = tmp_path_factory.mktemp("head")
    out, summary = str(root / "run"), str(root / "result.json")
    _assert_ok(_invoke(_head(pairs["path"], out, "--steps", 6, "--checkpoint-every", 3, "--export-embeddings",
                             "--json", summary)))
    with open(summary) as handle:
        return out, json.load(handle)


# --- a head run: the run folder -------------------------------------------------------------------


def test_head_run_folder(head_run, pairs):
    out, document = head_run
    for name in ("config.json", "checkpoint.safetensors", "model.safetensors", "metrics.jsonl", "eval.json",
                 "before.json", "embeddings_before.h5", "embeddings_after.h5"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]

    config = _json(out, "config.json")
    assert config["schema"] == SCHEMA and config["sdetool_version"] == __version__
    training = config["training"]
    assert training["loss"] == "sde" and training["target"] == "head" and training["model"] is None
    assert training["steps"] == 6 and training["batch_size"] == 64 and training["learning_rate"] == 2e-4
    assert training["embeddings"] == os.path.abspath(pairs["path"])
    assert training["data_fingerprint"].startswith("sha256:")
    assert training["method"]["enhance"] is True and training["method"]["eta"] == 0.2
    for name in ("device", "log_every", "checkpoint_every", "export_embeddings", "resume", "overwrite"):
        assert name not in training, name  # may change on a resume

    metadata = read_metadata(os.path.join(out, "checkpoint.safetensors"))
    assert metadata["step"] == 6 and metadata["finished"] is True
    checkpoint = load_tensors(os.path.join(out, "checkpoint.safetensors"))
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(weights) == ["image_head.bias", "image_head.weight", "logit_scale", "text_head.bias",
                               "text_head.weight"]
    assert weights["image_head.weight"].shape == (DIM, DIM)
    for key, value in weights.items():  # the final checkpoint holds the final weights
        assert torch.equal(checkpoint[f"target.{key}"], value), key
    assert not torch.equal(weights["image_head.weight"], torch.eye(DIM))  # it trained
    assert read_metadata(os.path.join(out, "model.safetensors"))["config"] == training

    records = _records(out)
    assert [r["step"] for r in records] == list(range(6))
    for record in records:
        for name in (*LOSS_TERMS, "alpha", "lambda", "rho", "lr", "logit_scale", "seconds"):
            assert np.isfinite(record[name]), (name, record)
        for key in ("image_shares", "text_shares"):
            assert len(record[key]) == 3 and all(0 <= share <= 1 for share in record[key])
            assert sum(record[key]) == pytest.approx(1.0, abs=1e-9)
    # The curriculum (METHOD.md section 7, default ramp: linear over the first half): alpha rises from
    # 0, rho and lambda fall to their floors.
    assert records[0]["alpha"] == 0.0 and records[0]["rho"] == pytest.approx(0.55)
    assert records[0]["lambda"] == pytest.approx(1.1)
    assert records[-1]["alpha"] == pytest.approx(0.2) and records[-1]["rho"] == pytest.approx(0.05)
    assert records[-1]["lambda"] == pytest.approx(0.1)
    assert all(a["alpha"] <= b["alpha"] and a["rho"] >= b["rho"] for a, b in zip(records, records[1:]))
    for record in records:  # the dual-domain loss is the sum of its logged terms
        expected = (record["infonce"] + record["lambda"] * (record["hellinger2"] + record["subspace"])
                    + record["rho"] * record["snr"])
        assert record["loss"] == pytest.approx(expected, rel=1e-5)

    evaluation = _json(out, "eval.json")
    assert evaluation == document["evaluation"]
    assert evaluation["before"] == _json(out, "before.json")
    held_out = int(held_out_mask(pairs["ids"], 0.1, CACHED_PAIRS_SALT).sum())
    for stage in ("before", "after"):
        result = evaluation[stage]
        assert result["pairs"] == held_out and 2 <= result["distinct_texts"] <= N_TEXTS
        assert set(result["recall"]) == RECALLS
        assert all(0 <= value <= 1 for value in result["recall"].values())
        assert result["recall"]["image_to_text_R@1"] <= result["recall"]["image_to_text_R@10"]
        assert "zero_shot_accuracy" not in result  # cached pairs have no classes
        for key in ("image", "text"):
            bands = result["bands"][key]
            assert sum(bands[band]["count"] for band in BANDS) == min(held_out - 1, DIM)  # p = min(n - 1, d)
            assert sum(bands[band]["energy_share"] for band in BANDS) == pytest.approx(1.0)
            assert 1 <= bands["effective_rank"] <= DIM
    assert document["schema"] == SCHEMA and document["status"] == "trained" and document["steps"] == 6
    assert document["resumed_from"] == 0 and document["device"] == "cpu" and document["seconds"] > 0


def test_exported_embeddings_are_what_eval_json_reports(head_run, pairs):
    out, _ = head_run
    evaluation = _json(out, "eval.json")
    mask = held_out_mask(pairs["ids"], 0.1, CACHED_PAIRS_SALT)
    rows = np.flatnonzero(mask)
    weights = load_file(os.path.join(out, "model.safetensors"))
    for stage in ("before", "after"):
        path = os.path.join(out, f"embeddings_{stage}.h5")
        report = analyze(path)
        assert sorted(report.sets) == ["image", "text"]
        for key in ("image", "text"):
            assert store.read_ids(path, key) == [pairs["ids"][i] for i in rows]
            analysed = report.sets[key].to_dict()
            reported = evaluation[stage]["bands"][key]
            for band in BANDS:
                assert reported[band]["count"] == analysed["bands"][band]["count"]
                expected = analysed["bands"][band]["energy_share"]
                assert reported[band]["energy_share"] == pytest.approx(expected, abs=1e-12)
            assert reported["effective_rank"] == pytest.approx(analysed["metrics"]["effective_rank"], abs=1e-9)
    for key in ("image", "text"):
        with store.open_matrices(os.path.join(out, "embeddings_before.h5"))[key].reader() as read:
            before = read(0, len(rows))
        with store.open_matrices(os.path.join(out, "embeddings_after.h5"))[key].reader() as read:
            after = read(0, len(rows))
        cached = pairs[key][rows]
        # A square linear head starts as the identity: "before" is exactly the cached embeddings.
        np.testing.assert_array_equal(before, cached)
        # "after" is the trained head of model.safetensors applied to the cached rows.
        weight, bias = weights[f"{key}_head.weight"].numpy(), weights[f"{key}_head.bias"].numpy()
        np.testing.assert_allclose(after, cached @ weight.T + bias, rtol=0, atol=1e-5)
        assert not np.allclose(after, before)


def test_json_to_stdout_overwrite_and_a_finished_resume(pairs, tmp_path):
    out = str(tmp_path / "run")
    first = _assert_ok(_invoke(_head(pairs["path"], out, "--steps", 2, "--json", "-")))
    document = json.loads(first.stdout)  # stdout holds the document alone
    assert document["schema"] == "sdetool.finetune/1" and document["status"] == "trained"
    assert document["out"] == out and document["steps"] == 2 and document["resumed_from"] == 0
    assert set(document["evaluation"]) == {"before", "after"}
    assert document["evaluation"] == _json(out, "eval.json")
    assert set(document) >= {"seconds", "seconds_per_step", "device", "notes"}

    done = json.loads(_assert_ok(_invoke(_head(pairs["path"], out, "--steps", 2, "--resume", "--json", "-"))).stdout)
    assert done["status"] == "already complete" and done["evaluation"] == document["evaluation"]

    again = _assert_ok(_invoke(_head(pairs["path"], out, "--steps", 3, "--overwrite", "--json", "-")))
    again = json.loads(again.stdout)
    assert again["status"] == "trained" and again["steps"] == 3
    assert [r["step"] for r in _records(out)] == [0, 1, 2]  # the old run's log is gone
    assert _json(out, "config.json")["training"]["steps"] == 3


# --- --loss infonce against --loss sde --------------------------------------------------------------


def test_infonce_and_sde_differ_only_in_the_loss(pairs, tmp_path):
    runs = {"infonce": ["--loss", "infonce"], "sde": [], "no-enhance": ["--no-enhance"],
            "all-off": ["--no-enhance", "--w-hellinger", 0, "--w-subspace", 0, "--w-snr", 0]}
    for name, extra in runs.items():
        _assert_ok(_invoke(_head(pairs["path"], str(tmp_path / name), "--steps", 4, *extra)))
    first = {name: _records(tmp_path / name)[0] for name in runs}
    baseline = first["infonce"]
    assert baseline["loss"] == baseline["infonce"]
    assert not {"hellinger2", "subspace", "snr", "delta_ratio"} & set(baseline)
    # the baseline's batch band shares are observed through the same partition, outside the loss
    assert baseline["image_shares"] == first["no-enhance"]["image_shares"]
    assert sum(baseline["text_shares"]) == pytest.approx(1.0)
    # Step 0 sees the same batch through the same initial heads: without the enhancement, SDE's InfoNCE
    # term is the baseline's loss, bit for bit; the spectral terms come on top of it.
    assert first["no-enhance"]["infonce"] == baseline["infonce"]
    assert first["no-enhance"]["loss"] > baseline["loss"]
    assert all(first[name]["lr"] == baseline["lr"] for name in runs)
    # With the enhancement, alpha is 0 at t = 0 but rho is not: the noise band is already attenuated,
    # so the InfoNCE term differs from the first step on, while the spectral terms (computed on the
    # features before enhancement) are those of the run without it.
    assert first["sde"]["alpha"] == 0.0 and first["sde"]["rho"] == pytest.approx(0.55)
    assert first["sde"]["delta_ratio"] > 0 and first["sde"]["infonce"] != baseline["infonce"]
    for term in ("hellinger2", "subspace", "snr", "image_shares", "text_shares"):
        assert first["sde"][term] == first["no-enhance"][term], term
    # Every SDE part switched off is the baseline: same data order, same updates, same weights.
    _assert_same_tensors(tmp_path / "all-off" / "model.safetensors", tmp_path / "infonce" / "model.safetensors")
    assert [r["loss"] for r in _records(tmp_path / "all-off")] == [r["loss"] for r in _records(tmp_path / "infonce")]
    assert not torch.equal(load_file(tmp_path / "sde" / "model.safetensors")["image_head.weight"],
                           load_file(tmp_path / "infonce" / "model.safetensors")["image_head.weight"])


# --- resume -----------------------------------------------------------------------------------------

RESUME_STEPS = 12


def _resume_args(pairs, out, *extra):
    return _head(pairs["path"], out, "--steps", RESUME_STEPS, "--checkpoint-every", 3, *extra)


@pytest.fixture(scope="module")
def uninterrupted(pairs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    _assert_ok(_invoke(_resume_args(pairs, out)))
    return out


class _CtrlCAfter(Progress):
    """Presses Ctrl-C (a real SIGINT to this process) once ``count`` steps have finished."""

    def __init__(self, count: int) -> None:
        self.count, self.done, self.training = count, 0, False

    def start(self, label: str, total: int, unit: str | None = None) -> None:
        self.training = unit is None  # the evaluations before and after count held-out pairs

    def advance(self, count: int, status: str = "") -> None:
        self.done += count if self.training else 0
        if self.training and self.done == self.count:
            signal.raise_signal(signal.SIGINT)


def test_interrupted_then_resumed_equals_uninterrupted(pairs, uninterrupted, tmp_path):
    out = str(tmp_path / "run")
    options = FinetuneOptions(target="head", steps=RESUME_STEPS, batch_size=64, log_every=1, checkpoint_every=3,
                              device="cpu")
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match=r"interrupted after step 5 of 12; .*--resume"):
        finetune(out, options, embeddings=pairs["path"], progress=_CtrlCAfter(4))  # the step under way finishes
    assert signal.getsignal(signal.SIGINT) is handler
    checkpoint = os.path.join(out, "checkpoint.safetensors")
    assert read_metadata(checkpoint)["step"] == 5 and read_metadata(checkpoint)["finished"] is False
    assert [r["step"] for r in _records(out)] == [0, 1, 2, 3, 4]
    assert not any(os.path.exists(os.path.join(out, name)) for name in ("model.safetensors", "eval.json"))

    # The CLI resumes what the library began; checkpoint spacing is not part of the configuration.
    result = _assert_ok(_invoke(_head(pairs["path"], out, "--steps", RESUME_STEPS, "--checkpoint-every", 4, "--resume",
                                      "--json", "-")))
    assert json.loads(result.stdout)["resumed_from"] == 5
    _assert_same_tensors(os.path.join(out, "model.safetensors"), os.path.join(uninterrupted, "model.safetensors"))
    assert _without_seconds(_records(out)) == _without_seconds(_records(uninterrupted))
    assert _json(out, "eval.json") == _json(uninterrupted, "eval.json")


# The CLI exactly as `python -m sdetool`, except that every training step is followed by a pause, so that
# the SIGINT lands mid-run whatever the machine's speed (a head step takes milliseconds here).
_SLOW_CLI = """
import runpy, signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with SIGINT ignored
import sdetool.finetune.run as finetune
step = finetune.TrainingLoop.step
def paused(self, index):
    terms = step(self, index)
    time.sleep(0.25)
    return terms
finetune.TrainingLoop.step = paused
runpy.run_module("sdetool", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_saves_a_resumable_checkpoint(pairs, uninterrupted, tmp_path):
    out = str(tmp_path / "run")
    checkpoint = os.path.join(out, "checkpoint.safetensors")
    args = [str(a) for a in _resume_args(pairs, out)[1:]]
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, "finetune", *args], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (os.path.isfile(checkpoint) and read_metadata(checkpoint)["step"] >= 3):
            assert process.poll() is None, f"exited early ({process.returncode}): {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint past step 0 within 120 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
    assert process.returncode == 130, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    match = re.fullmatch(r"sdetool: error: interrupted after step (\d+) of 12; a checkpoint was saved in (.+): run "
                         r"the same command with --resume to continue", lines[0])
    assert match and match.group(2) == out, lines[0]
    stopped = int(match.group(1))
    assert 3 <= stopped < RESUME_STEPS
    metadata = read_metadata(checkpoint)
    assert metadata["step"] == stopped and metadata["finished"] is False
    assert all(torch.isfinite(t).all() for t in load_tensors(checkpoint).values() if t.is_floating_point())
    assert [r["step"] for r in _records(out)] == list(range(stopped))

    result = _assert_ok(_invoke(_resume_args(pairs, out, "--json", "-", "--resume")))
    assert json.loads(result.stdout)["resumed_from"] == stopped
    _assert_same_tensors(os.path.join(out, "model.safetensors"), os.path.join(uninterrupted, "model.safetensors"),
                         atol=1e-6)
    assert [r["step"] for r in _records(out)] == list(range(RESUME_STEPS))


# The CLI as `python -m sdetool`, except that the evaluation before or after training (argv[1]) first
# waits a minute: a signal then lands inside that evaluation whatever the machine's speed.
_PAUSED_EVALUATION_CLI = """
import os, runpy, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with SIGINT ignored
import sdetool.finetune.run as finetune
paused_label = sys.argv.pop(1)
evaluate = finetune.evaluate
def paused(target, data, export, label, *args):
    if label == paused_label:
        open(os.environ["SDETOOL_TEST_PAUSED"], "w").close()  # the test signals once this exists
        time.sleep(60)
    return evaluate(target, data, export, label, *args)
finetune.evaluate = paused
runpy.run_module("sdetool", run_name="__main__", alter_sys=True)
"""


def _signal_during_evaluation(label, args, ready, signum):
    """Run the CLI with its ``label`` evaluation paused, send ``signum`` once ``ready()``; returns (code, stderr)."""
    marker = os.path.join(tempfile.mkdtemp(prefix="sdetool-paused-"), "paused")  # made by the child as it pauses
    process = subprocess.Popen([sys.executable, "-c", _PAUSED_EVALUATION_CLI, label, "finetune", *map(str, args)],
                               env={**_env(), "SDETOOL_TEST_PAUSED": marker}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (ready() and os.path.exists(marker)):  # inside the pause: no race with a loaded machine
            assert process.poll() is None, f"exited early ({process.returncode}): {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "not ready within 120 s"
            time.sleep(0.02)
        time.sleep(0.2)  # into the sleep itself
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
        if os.path.exists(marker):
            os.remove(marker)
    return process.returncode, stderr


def test_killed_after_the_last_log_resumes_without_duplicate_records(pairs, uninterrupted, tmp_path):
    out = str(tmp_path / "run")

    def logged() -> bool:  # whole lines only: the log is appended to, not replaced
        if not os.path.isfile(os.path.join(out, "metrics.jsonl")):
            return False
        with open(os.path.join(out, "metrics.jsonl")) as handle:
            return handle.read().count("\n") == RESUME_STEPS

    code, _ = _signal_during_evaluation("after", _resume_args(pairs, out)[1:], logged, signal.SIGKILL)
    assert code == -signal.SIGKILL
    # the state after the last step is saved before the final evaluation: a resume only evaluates
    assert read_metadata(os.path.join(out, "checkpoint.safetensors"))["step"] == RESUME_STEPS
    assert not os.path.exists(os.path.join(out, "model.safetensors"))

    _assert_ok(_invoke(_resume_args(pairs, out, "--resume")))
    _assert_same_tensors(os.path.join(out, "model.safetensors"), os.path.join(uninterrupted, "model.safetensors"),
                         atol=1e-6)
    assert [r["step"] for r in _records(out)] == list(range(RESUME_STEPS))


def test_ctrl_c_before_training_names_the_way_on(pairs, tmp_path):
    out = str(tmp_path / "run")
    args = _head(pairs["path"], out, "--steps", 3)
    started = lambda: os.path.isfile(os.path.join(out, "config.json"))  # noqa: E731
    code, stderr = _signal_during_evaluation("before", args[1:], started, signal.SIGINT)
    assert code == 130 and "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdetool: error: interrupted"), lines
    assert os.listdir(out) == ["config.json"]
    _assert_error(_invoke(args), 2, "holds a run already")
    assert json.loads(_assert_ok(_invoke(args + ["--resume", "--json", "-"])).stdout)["status"] == "trained"
    assert "no output was written" not in lines[0] and "--resume" in lines[0], lines[0]


# --- refusals: exit 2, one line, nothing written --------------------------------------------------------


def test_refuses_to_touch_an_existing_run(head_run, pairs):
    out, _ = head_run
    weights = os.path.join(out, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 6)), 2, "holds a run already", "--resume", "--overwrite")
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 6, "--checkpoint-every", 3, "--weight-decay", 1e-3,
                                "--resume")), 2, "another configuration", "weight_decay", "0.0001 -> 0.001")
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 6, "--eta", 0.3, "--resume")), 2, "method.eta")
    assert os.stat(weights).st_mtime_ns == stamp


def test_refuses_resume_without_a_run(pairs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_error(_invoke(_head(pairs["path"], str(empty), "--steps", 2, "--resume")), 2, "--resume", "holds no run")
    assert os.listdir(empty) == []
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n")
    _assert_error(_invoke(_head(pairs["path"], str(busy), "--steps", 2)), 2, "not an empty folder")
    _assert_error(_invoke(_head(pairs["path"], str(busy), "--steps", 2, "--overwrite")), 2, "not an empty folder")
    assert os.listdir(busy) == ["notes.txt"]


def test_refuses_bad_stores(pairs, tmp_path):
    only_image = str(tmp_path / "only-image.h5")
    store.write_set(only_image, "image", pairs["image"], ids=pairs["ids"], mode="w")
    _assert_error(_invoke(_head(only_image, str(tmp_path / "a"), "--steps", 2)), 2,
                  "needs both an 'image' and a 'text' set", "sets found: image")
    short = str(tmp_path / "short.h5")
    store.write_set(short, "image", pairs["image"], ids=pairs["ids"], mode="w")
    store.write_set(short, "text", pairs["text"][:390], ids=pairs["ids"][:390])
    _assert_error(_invoke(_head(short, str(tmp_path / "b"), "--steps", 2)), 2, "mismatched pair counts", "400", "390")
    _assert_error(_invoke(_head(str(tmp_path / "missing.h5"), str(tmp_path / "c"), "--steps", 2)), 2, "missing.h5")
    _assert_error(_invoke(["finetune", "--target", "head", "--out", tmp_path / "d", "--steps", 2, "-q"]), 2,
                  "--target head", "--embeddings")
    for name in "abcd":
        assert not os.path.exists(tmp_path / name)


def test_refuses_bad_options(pairs, tmp_path):
    out = tmp_path / "run"
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 2, "--eta", -0.5)), 2, "SDE option", "eta")
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 2, "--warmup", 2)), 2, "SDE option", "warmup")
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 2, "--learning-rate", 0)), 2, "--learning-rate")
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 2, "--eval-fraction", 1.5)), 2, "--eval-fraction")
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 2, "--images", tmp_path)), 2, "--target head")
    assert not os.path.exists(out)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """60 captioned 16x16 PNGs (three captions repeating)."""
    root = tmp_path_factory.mktemp("captioned") / "images"
    image_folder(root, 60, size=(16, 16))
    return str(root)


def test_refuses_models_and_sources_that_cannot_be_fine_tuned(captioned, tmp_path):
    out = tmp_path / "run"
    _assert_error(_invoke(["finetune", "--model", "hf:/nonexistent", "--images", captioned, "--out", out,
                           "--steps", 2, "-q"]), 2, "/nonexistent")
    manifest = tmp_path / "texts.csv"
    manifest.write_text("id,text\n" + "".join(f"t{i},caption number {i % 3}\n" for i in range(20)))
    _assert_error(_invoke(["finetune", "--manifest", manifest, "--out", out, "--steps", 2, "-q"]), 2,
                  "image-text pairs", "text only")
    uncaptioned = tmp_path / "uncaptioned"
    image_folder(uncaptioned, 6, captions=False, size=(8, 8))
    _assert_error(_invoke(["finetune", "--images", uncaptioned, "--out", out, "--steps", 2, "-q"]), 2,
                  "image-text pairs", "image only")
    assert not os.path.exists(out)


# --- a NaN loss ---------------------------------------------------------------------------------------

_NAN = re.compile(r"sdetool: error: the loss became (?:nan|-?inf) at step (\d+)(?: \(or, under torchrun, on another rank\))?; "
                  r"training stopped; the last good checkpoint \(step (\d+)\) is in (.+checkpoint\.safetensors): "
                  r"add --resume with a lower --learning-rate to continue from it")


def test_nan_loss_exits_4_and_keeps_the_last_good_checkpoint(pairs, tmp_path):
    out = str(tmp_path / "run")
    line = _assert_error(_invoke(_head(pairs["path"], out, "--steps", 10, "--checkpoint-every", 2,
                                       "--learning-rate", 1e30)), 4)
    match = _NAN.fullmatch(line)
    assert match, line
    assert int(match.group(1)) == 1 and int(match.group(2)) == 0  # one absurd step blows the heads up
    path = match.group(3)
    assert path == os.path.join(out, "checkpoint.safetensors")
    metadata, tensors = read_metadata(path), load_tensors(path)
    assert metadata["step"] == 0 and metadata["finished"] is False
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert torch.equal(tensors["target.image_head.weight"], torch.eye(DIM))  # the state before any step
    assert not any(os.path.exists(os.path.join(out, name)) for name in ("model.safetensors", "eval.json"))


def test_nan_advice_lower_learning_rate_then_resume_works(pairs, tmp_path):
    out = str(tmp_path / "run")
    line = _assert_error(_invoke(_head(pairs["path"], out, "--steps", 10, "--checkpoint-every", 2,
                                       "--learning-rate", 1e30)), 4, "add --resume with a lower --learning-rate")
    assert _NAN.fullmatch(line)
    _assert_ok(_invoke(_head(pairs["path"], out, "--steps", 10, "--checkpoint-every", 2, "--learning-rate", 2e-4,
                             "--resume")))
    config = _json(out, "config.json")
    assert config["training"]["learning_rate"] == 2e-4
    assert config["changes"] == [{"from_step": 0, "learning_rate": [1e30, 2e-4]}]


def test_nan_last_good_checkpoint_precedes_the_failing_step(pairs, tmp_path):
    out = str(tmp_path / "run")
    args = _head(pairs["path"], out, "--steps", 10, "--checkpoint-every", 1, "--learning-rate", 1e10)
    match = _NAN.fullmatch(_assert_error(_invoke(args), 4))
    assert match
    failing, good = int(match.group(1)), int(match.group(2))
    assert read_metadata(match.group(3))["step"] == good
    assert good < failing, match.group(0)


# --- model targets ----------------------------------------------------------------------------------


def test_builtin_model_target(tmp_path):
    out = str(tmp_path / "run")
    result = _assert_ok(_invoke(["finetune", "--out", out, "--steps", 3, "--batch-size", 64, "--eval-limit", 300,
                                 "--device", "cpu", "--json", "-", "-q"]))
    document = json.loads(result.stdout)
    training = _json(out, "config.json")["training"]
    assert training["model"] == "builtin:lit-fmnist" and training["embeddings"] is None
    assert training["data"] == "builtin:fashion-mnist:train (train) / builtin:fashion-mnist:test (held out)"
    assert not any("not installed" in note for note in document["notes"])
    evaluation = _json(out, "eval.json")
    for stage in ("before", "after"):
        result = evaluation[stage]
        assert result["pairs"] == 300
        assert 0 <= result["zero_shot_accuracy"] <= 1
        assert set(result["recall"]) == RECALLS and set(result["bands"]) == {"image", "text"}
    assert evaluation["before"]["zero_shot_accuracy"] > 0.6  # the built-in model is already trained
    assert abs(evaluation["after"]["zero_shot_accuracy"] - evaluation["before"]["zero_shot_accuracy"]) < 0.2
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert "logit_scale" in weights and all(k == "logit_scale" or k.startswith("network.") for k in weights)
    assert [r["step"] for r in _records(out)] == [0, 2]  # every 10th step and the last


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_hf_target_trains_only_the_top(tiny_clip, captioned, tmp_path):
    out = str(tmp_path / "run")
    _assert_ok(_invoke(["finetune", "--model", f"hf:{tiny_clip}", "--images", captioned, "--out", out, "--steps", 2,
                        "--batch-size", 16, "--train-blocks", 1, "--eval-fraction", 0.3, "--device", "cpu", "-q"]))
    weights = load_file(os.path.join(out, "model.safetensors"))
    buffers = {k for k in weights if k.endswith("position_ids")}
    trained = set(weights) - buffers - {"logit_scale"}
    prefixes = ("model.visual_projection.", "model.text_projection.", "model.vision_model.encoder.layers.1.",
                "model.vision_model.post_layernorm.", "model.logit_scale")
    assert all(key.startswith(prefixes) for key in trained), sorted(trained)
    for prefix in prefixes:
        assert any(key.startswith(prefix) for key in trained), prefix
    original = load_file(os.path.join(tiny_clip, "model.safetensors"))
    changed = {key for key in trained if not torch.equal(weights[key], original[key[len("model."):]])}
    assert {"model.visual_projection.weight", "model.text_projection.weight", "model.logit_scale",
            "model.vision_model.encoder.layers.1.mlp.fc1.weight"} <= changed
    assert torch.equal(weights["logit_scale"], weights["model.logit_scale"])
    for key in buffers:  # buffers are saved too (not in the original file: HF keeps them out of it)
        assert torch.equal(weights[key].flatten(), torch.arange(weights[key].numel())), key
    evaluation = _json(out, "eval.json")
    assert evaluation["before"]["pairs"] == evaluation["after"]["pairs"] >= 2
    assert "zero_shot_accuracy" not in evaluation["after"]  # a caption folder has no classes


# --- review fixes ------------------------------------------------------------------------------------


def test_refuses_stores_whose_rows_are_not_paired(pairs, tmp_path):
    path = str(tmp_path / "shuffled.h5")
    store.write_set(path, "image", pairs["image"], ids=pairs["ids"], mode="w")
    store.write_set(path, "text", pairs["text"][::-1].copy(), ids=pairs["ids"][::-1])
    out = str(tmp_path / "run")
    _assert_error(_invoke(_head(path, out, "--steps", 2)), 2, "rows are not paired", "'pair-0000'", "'pair-0399'")
    assert not os.path.exists(out)


@pytest.mark.parametrize("extra,fragments", [
    (["--positives", "class"], ("--positives class", "no class labels")),
    (["--head-dim", "-5"], ("--head-dim must be >= 1",)),
    (["--weight-decay", "-1"], ("--weight-decay must be >= 0",)),
    (["--noise-estimator", "iqr"], ("noise estimator 'iqr'", "median")),
])
def test_refuses_impossible_options_before_writing(pairs, tmp_path, extra, fragments):
    out = str(tmp_path / "run")
    _assert_error(_invoke(_head(pairs["path"], out, "--steps", 2, *extra)), 2, *fragments)
    assert not os.path.exists(out)


def test_refuses_more_blocks_than_the_tower_has(tiny_clip, captioned, tmp_path):
    out = str(tmp_path / "run")
    _assert_error(_invoke(["finetune", "--model", f"hf:{tiny_clip}", "--images", captioned, "--out", out, "--steps", 1,
                           "--batch-size", 8, "--train-blocks", 99, "--device", "cpu", "-q"]), 2, "--train-blocks 99",
                  "blocks")


def test_non_square_linear_heads_start_as_the_padded_identity(pairs, tmp_path):
    path = str(tmp_path / "narrow-text.h5")
    store.write_set(path, "image", pairs["image"], ids=pairs["ids"], mode="w")
    store.write_set(path, "text", pairs["text"][:, :8].copy(), ids=pairs["ids"])
    out = str(tmp_path / "run")
    _assert_ok(_invoke(_head(path, out, "--steps", 1, "--export-embeddings")))
    exported = store.open_matrices(os.path.join(out, "embeddings_before.h5"))["text"]
    with exported.reader() as read:
        before = read(0, exported.shape[0])
    rows = [pairs["ids"].index(i) for i in store.read_ids(os.path.join(out, "embeddings_before.h5"), "text")]
    np.testing.assert_array_equal(before[:, :8], pairs["text"][rows, :8])
    np.testing.assert_array_equal(before[:, 8:], 0.0)


def test_resume_survives_a_half_written_metrics_line(pairs, tmp_path):
    out = str(tmp_path / "run")
    args = _head(pairs["path"], out, "--steps", 6, "--checkpoint-every", 3)
    _assert_ok(_invoke(args))
    os.remove(os.path.join(out, "eval.json"))
    checkpoint = os.path.join(out, "checkpoint.safetensors")
    metadata = read_metadata(checkpoint)
    metadata["finished"], metadata["step"] = False, 3
    tensors = load_tensors(checkpoint)
    from sdetool.finetune.runfolder import save_tensors

    save_tensors(checkpoint, tensors, metadata)
    with open(os.path.join(out, "metrics.jsonl"), "a") as handle:
        handle.write('{"step": 7, "loss": 1.2')  # a kill in the middle of a write
    _assert_ok(_invoke(args + ["--resume"]))
    assert [r["step"] for r in _records(out)] == list(range(6))


def test_refuses_a_checkpoint_of_another_configuration(pairs, tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    _assert_ok(_invoke(_head(pairs["path"], first, "--steps", 6, "--checkpoint-every", 3, "--seed", 0)))
    _assert_ok(_invoke(_head(pairs["path"], second, "--steps", 6, "--checkpoint-every", 3, "--seed", 5)))
    os.remove(os.path.join(second, "eval.json"))
    shutil.copy(os.path.join(first, "checkpoint.safetensors"), os.path.join(second, "checkpoint.safetensors"))
    metadata = read_metadata(os.path.join(second, "checkpoint.safetensors"))
    assert metadata["finished"] is True  # a finished checkpoint is a no-op; make it resumable
    from sdetool.finetune.runfolder import save_tensors

    metadata["finished"] = False
    save_tensors(os.path.join(second, "checkpoint.safetensors"), load_tensors(os.path.join(second, "checkpoint.safetensors")),
                 metadata)
    _assert_error(_invoke(_head(pairs["path"], second, "--steps", 6, "--checkpoint-every", 3, "--seed", 5, "--resume")),
                  2, "written by another configuration", "seed: 0 -> 5")


def test_seed_summary_and_table_are_mean_and_population_sd():
    from sdetool.results.tables import seed_summary, seed_table

    def run(before, after):
        return {"before": {"bands": {"image": {"noise": {"energy_share": before}}}, "zero_shot_accuracy": 0.9},
                "after": {"bands": {"image": {"noise": {"energy_share": after}}}, "zero_shot_accuracy": 0.91}}

    runs = {"sde": [run(0.5, 0.1), run(0.5, 0.3)], "infonce": [run(0.5, 0.2)]}
    metrics = (("image noise share", ("bands", "image", "noise", "energy_share")),)
    summary = seed_summary(runs, metrics)
    assert summary["image noise share"]["before"] == (0.5, 0.0)
    assert summary["image noise share"]["sde"] == pytest.approx((0.2, 0.1))
    assert summary["image noise share"]["infonce"] == pytest.approx((0.2, 0.0))
    table = seed_table(summary, 2).splitlines()
    assert table[0] == "| held-out metric (2 seeds, mean ± sd) | before | after sde | after infonce |"
    assert table[2] == "| image noise share (%) | 50.000 ± 0.000 | 20.000 ± 10.000 | 20.000 ± 0.000 |"
