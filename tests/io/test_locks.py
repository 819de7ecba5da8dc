"""One writer per output (:mod:`sdetool.io.locks`), between real processes.

A holder is a separate Python process that takes the lock and waits; the second writer is the real CLI
(``extract``, ``finetune``, ``reproduce``), refused at once with one line and exit 2, writing nothing. A
SIGKILLed holder releases the lock (the operating system does), so the same command then runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke

from sdetool.errors import BadInputError
from sdetool.io import store
from sdetool.io.locks import OutputLock, lock_path, writing

pytest.importorskip("fcntl")

_HOLD = """
import sys, time
from sdetool.io.locks import OutputLock
lock = OutputLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture()
def holder(tmp_path):
    """Start a process holding the lock of an output; yields (output path, process)."""
    processes = []

    def start(out: str):
        process = subprocess.Popen([sys.executable, "-c", _HOLD, out], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=30)


def test_a_second_lock_in_another_process_is_refused_naming_the_holder(tmp_path, holder):
    out = str(tmp_path / "same.h5")
    process = holder(out)
    with pytest.raises(BadInputError, match=rf"--out {out}: another sdetool process \(pid {process.pid}\) is writing"):
        OutputLock(out).acquire()


def test_a_killed_holder_releases_the_lock(tmp_path, holder):
    out = str(tmp_path / "same.h5")
    process = holder(out)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    with writing(out):
        assert os.path.exists(lock_path(out))
    assert not os.path.exists(lock_path(out))  # removed by its holder at the end


def test_locks_of_different_outputs_do_not_meet(tmp_path, holder):
    holder(str(tmp_path / "a.h5"))
    with writing(str(tmp_path / "b.h5")) as lock:
        assert os.path.exists(lock.path) and lock.path != lock_path(str(tmp_path / "a.h5"))


def test_extract_refuses_a_second_writer_at_once(tmp_path, holder):
    out = str(tmp_path / "same.h5")
    holder(out)
    started = time.perf_counter()
    result = invoke(["extract", "--out", out, "--device", "cpu", "-q"])
    assert_error(result, 2, out, "another sdetool process", "is writing this output")
    assert time.perf_counter() - started < 5  # before the model loads
    assert sorted(os.listdir(tmp_path)) == ["same.h5.lock"]


def _pairs(tmp_path) -> str:
    path = str(tmp_path / "pairs.h5")
    rng = np.random.default_rng(0)
    store.write_set(path, "image", rng.standard_normal((100, 8)).astype(np.float32), mode="w")
    store.write_set(path, "text", rng.standard_normal((100, 8)).astype(np.float32))
    return path


def test_finetune_and_reproduce_refuse_a_second_writer(tmp_path, holder):
    pairs = _pairs(tmp_path)
    run = str(tmp_path / "run")
    holder(run)
    assert_error(invoke(["finetune", "--target", "head", "--embeddings", pairs, "--out", run, "--steps", 2,
                         "--device", "cpu", "-q"]), 2, run, "another sdetool process")
    assert not os.path.exists(run)
    reproduction = str(tmp_path / "repro")
    holder(reproduction)
    assert_error(invoke(["reproduce", "--out", reproduction, "--quick", "-q"]), 2, reproduction,
                 "another sdetool process")
    assert not os.path.exists(reproduction)


def test_finetune_runs_once_the_holder_is_gone(tmp_path, holder):
    pairs = _pairs(tmp_path)
    run = str(tmp_path / "run")
    process = holder(run)
    process.kill()
    process.wait(timeout=30)
    assert_ok(invoke(["finetune", "--target", "head", "--embeddings", pairs, "--out", run, "--steps", 2,
                      "--batch-size", 32, "--device", "cpu", "-q"]))
    assert not os.path.exists(lock_path(run))


_SLOW_EXTRACT = """
import runpy, time
import sdetool.extract.extraction as extraction
write = extraction._write_chunk
def slow(*args, **kwargs):
    write(*args, **kwargs)
    time.sleep(0.5)
extraction._write_chunk = slow
runpy.run_module("sdetool", run_name="__main__", alter_sys=True)
"""


def test_two_real_extractions_of_one_output_then_a_kill_and_a_resume(tmp_path):
    from extract_fixtures import image_folder

    from sdetool.io.checkpoint import work_folder

    folder = tmp_path / "images"
    image_folder(folder, 24, bad=True)
    out = str(tmp_path / "same.h5")
    args = ["extract", "--model", "builtin:lit-fmnist", "--images", str(folder), "--out", out, "--chunk-items", "2",
            "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", _SLOW_EXTRACT, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.isdir(work_folder(out)) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert os.path.isdir(work_folder(out)), "the first extraction never started"
        second = subprocess.run([sys.executable, "-m", "sdetool", *args], env=env, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert "another sdetool process" in second.stderr and out in second.stderr
        first.send_signal(signal.SIGKILL)  # the lock goes with the process
    finally:
        first.kill()
        first.wait(timeout=30)
    assert not os.path.exists(out) and os.path.isdir(work_folder(out))
    resumed = subprocess.run([sys.executable, "-m", "sdetool", *args, "--json", "-"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    import json

    document = json.loads(resumed.stdout)
    assert document["resumed_items"] > 0 and document["rows"]["image"] == 24
    assert document["failed"]["image"] == 2
    assert {record["id"] for record in document["failures"]["image"]} == {"broken.jpg", "sub/fake.png"}
    assert document["failures_in"]["image"] == f"{out}:/image/failed"
    assert store.read_failed(out, "image")  # where the records are
    assert not os.path.exists(lock_path(out)) and not os.path.exists(work_folder(out))
