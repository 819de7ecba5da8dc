"""``finetune`` under ``torchrun`` with two CPU ranks (gloo, DistributedDataParallel).

- One run folder, written once.
- With gathered features (the default), two ranks train as one process does on the same global batch: the
  loss curves of metrics.jsonl agree to 1e-4 relative on ``--target head`` and on the built-in model (whose
  batch normalization then uses the global batch's statistics). Without gathering, each rank's loss sees its
  own slice: the curve differs (the test that shows the comparison can fail).
- A checkpoint saved by two ranks (after a Ctrl-C on one of them) resumes on two ranks to the same weights,
  metrics and bands, bit for bit; one process refuses it.

Each torchrun takes 5-10 s here; every rank runs torch on one thread.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from cli_helpers import assert_error, assert_ok, invoke
from extract_fixtures import write_pairs
from safetensors.torch import load_file

from sdetool.finetune.runfolder import read_metadata

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                 reason="torch.distributed with gloo is not available")]

DIM = 32
STEPS = 8
TOLERANCE = 1e-4  # relative, per logged step


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _kill_tree(process) -> None:
    """SIGKILL a launcher and its descendants (torchrun starts each rank in a session of its own)."""
    import psutil

    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
    process.communicate(timeout=30)


def _torchrun(args, out: str, script: str | None = None, timeout: int = 90):
    """``torchrun --nproc_per_node 2`` of ``sdetool`` (or of ``script``); returns (returncode, stderr)."""
    target = [script] if script else ["-m", "sdetool"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), *target, *map(str, args)]
    process = subprocess.Popen(command, env=_env(), start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stuck = sorted(os.listdir(out)) if os.path.isdir(out) else []
        _kill_tree(process)
        pytest.fail(f"torchrun still running after {timeout} s; the run folder holds {stuck}")
    return process.returncode, stderr


def _lines(folder, name="metrics.jsonl") -> list[dict]:
    with open(os.path.join(folder, name)) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _without_seconds(records):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in records]


def _assert_same_curve(got: str, expected: str, tolerance: float = TOLERANCE) -> None:
    a, b = _lines(got), _lines(expected)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= tolerance * abs(y["loss"]), (x["step"], x["loss"], y["loss"])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(str(tmp_path_factory.mktemp("pairs") / "pairs.h5"), 400, DIM, 40)


def _head(pairs, out, *extra):
    return ["finetune", "--target", "head", "--embeddings", pairs["path"], "--out", out, "--batch-size", "64",
            "--log-every", "1", "--device", "cpu", "-q", "--steps", STEPS, "--checkpoint-every", 3, *extra]


@pytest.fixture(scope="module")
def two_ranks(pairs, tmp_path_factory):
    """Eight SDE steps of the heads on two ranks, global batch 64, with a JSON summary."""
    root = tmp_path_factory.mktemp("two-ranks")
    out = str(root / "run")
    code, stderr = _torchrun(_head(pairs, out, "--json", root / "result.json"), out)
    assert code == 0, stderr[-3000:]
    return {"out": out, "root": str(root)}


def test_two_ranks_write_one_run_folder(two_ranks):
    out = two_ranks["out"]
    assert sorted(os.listdir(two_ranks["root"])) == ["result.json", "run"]
    with open(os.path.join(two_ranks["root"], "result.json")) as handle:
        document = json.load(handle)  # written once, by rank 0
    assert document["status"] == "trained" and document["steps"] == STEPS and document["device"] == "cpu", document
    assert [r["step"] for r in _lines(out)] == list(range(STEPS))  # logged once, not once per rank
    assert [r["step"] for r in _lines(out, "bands.jsonl")] == list(range(STEPS))
    assert read_metadata(os.path.join(out, "checkpoint.safetensors"))["finished"] is True
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not torch.equal(weights["image_head.weight"], torch.eye(DIM))
    with open(os.path.join(out, "config.json")) as handle:
        training = json.load(handle)["training"]
    assert training["ranks"] == 2 and training["gather_features"] is True
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_two_ranks_train_the_heads_as_one_process_does(pairs, two_ranks, tmp_path):
    one = str(tmp_path / "one")
    assert_ok(invoke(_head(pairs, one)))
    _assert_same_curve(two_ranks["out"], one)
    # The batch spectrum is the global batch's on every rank: the same bands as one process.
    for got, expected in zip(_lines(two_ranks["out"], "bands.jsonl"), _lines(one, "bands.jsonl")):
        for modality in ("image", "text"):
            for band in ("strong", "weak", "noise"):
                assert got[modality][band]["count"] == expected[modality][band]["count"], (got["step"], modality)
                assert got[modality][band]["energy_share"] == pytest.approx(expected[modality][band]["energy_share"],
                                                                            abs=1e-5)


def test_without_gathering_each_rank_sees_only_its_slice(pairs, two_ranks, tmp_path):
    out = str(tmp_path / "local")
    code, stderr = _torchrun(_head(pairs, out, "--no-gather-features"), out)
    assert code == 0, stderr[-3000:]
    first, gathered = _lines(out)[0]["loss"], _lines(two_ranks["out"])[0]["loss"]
    # 32 candidates per row instead of 64: a smaller InfoNCE from the very first step.
    assert first < gathered * (1 - 10 * TOLERANCE), (first, gathered)


def test_two_ranks_train_the_builtin_model_as_one_process_does(tmp_path):
    # 33 pairs: slices of 17 and 16 rows, so the gather pads; batch normalization sees all 33.
    args = ["finetune", "--steps", 4, "--batch-size", 33, "--eval-limit", 64, "--log-every", 1, "--device", "cpu",
            "-q"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert_ok(invoke([*args, "--out", one]))
    code, stderr = _torchrun([*args, "--out", two], two, timeout=120)
    assert code == 0, stderr[-3000:]
    _assert_same_curve(two, one)


_INTERRUPT = """
import os, runpy, signal
import sdetool.finetune.trainloop as loop
step = loop.TrainingLoop.step
def interrupted(self, index):
    terms = step(self, index)
    if index == 3 and os.environ.get("RANK") == "0":
        signal.raise_signal(signal.SIGINT)  # Ctrl-C on one rank: every rank stops after the same step
    return terms
loop.TrainingLoop.step = interrupted
runpy.run_module("sdetool", run_name="__main__", alter_sys=True)
"""


def test_a_checkpoint_of_two_ranks_resumes_on_two_ranks_bit_for_bit(pairs, two_ranks, tmp_path):
    out = str(tmp_path / "run")
    script = tmp_path / "interrupt.py"
    script.write_text(_INTERRUPT)
    code, stderr = _torchrun(_head(pairs, out), out, script=str(script))
    assert code != 0 and "interrupted after step 4 of 8" in stderr, stderr[-3000:]
    metadata = read_metadata(os.path.join(out, "checkpoint.safetensors"))
    assert metadata["step"] == 4 and metadata["world_size"] == 2 and metadata["finished"] is False
    assert [r["step"] for r in _lines(out)] == [0, 1, 2, 3]

    assert_error(invoke(_head(pairs, out, "--resume")), 2, "ranks: 2 -> 1")  # another number of ranks

    code, stderr = _torchrun(_head(pairs, out, "--resume"), out)
    assert code == 0, stderr[-3000:]
    reference = two_ranks["out"]
    got, expected = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(reference,
                                                                                              "model.safetensors"))
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    assert _without_seconds(_lines(out)) == _without_seconds(_lines(reference))
    assert _lines(out, "bands.jsonl") == _lines(reference, "bands.jsonl")
