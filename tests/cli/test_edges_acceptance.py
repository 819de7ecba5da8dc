"""Acceptance tests of issue 18, "Reliability at the edges", written from the issue text alone.

Wide matrices (n << d), stores and reports from a newer sdetool, two writers at once (real processes),
quantized (int8 / uint8) embeddings and packed binary ones, failures that say which.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke, message_lines

from sdetool.io.store import write_set

SIZE = re.compile(r"\d[\d,]*(?:\.\d+)?\s*(?:[KMGT]i?B|bytes)")  # a memory amount with its unit


# --------------------------------------------------------------------------------------------------------------
# helpers


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "COLUMNS": "250", "PYTHONUNBUFFERED": "1"})
    env.pop("SDETOOL_MEMORY_LIMIT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _sdetool(*args) -> list[str]:
    return [sys.executable, "-m", "sdetool", *[str(a) for a in args]]


def _run(cmd, cwd, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=str(cwd), env=_env(), capture_output=True, text=True, timeout=timeout, **kwargs)


def _one_error_line(returncode: int, stderr: str, code: int = 2, *fragments: str) -> str:
    """The subprocess twin of cli_helpers.assert_error."""
    assert returncode == code, (returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = message_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("sdetool: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _without(line: str, *paths) -> str:
    """``line`` without the (temporary, digit-holding) paths in it."""
    for path in sorted((str(p) for p in paths), key=len, reverse=True):
        line = line.replace(path, "<path>")
    return line


def _centred_svd(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.svd(x - x.mean(axis=0), compute_uv=False)


def _assert_same_spectrum(reported, reference, rtol=1e-8):
    """1e-8 relative agreement on every reference singular value above 1e-6 s1."""
    reported = np.asarray(reported, dtype=np.float64)
    keep = reference > 1e-6 * reference[0]
    count = int(keep.sum())
    assert count > 0
    assert reported.shape[0] >= count, (reported.shape, count)
    error = np.abs(reported[:count] - reference[:count]) / reference[:count]
    assert error.max() <= rtol, (error.max(), int(error.argmax()), reported[:5], reference[:5])


def _wait_for(predicate, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the first writer ended (exit {process.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _start(cmd, cwd, name: str) -> subprocess.Popen:
    """Start ``cmd`` in its own session, stdout and stderr to ``cwd/name.out`` and ``cwd/name.err``."""
    with open(os.path.join(str(cwd), f"{name}.out"), "w") as out, open(os.path.join(str(cwd), f"{name}.err"), "w") as err:
        return subprocess.Popen([str(c) for c in cmd], cwd=str(cwd), env=_env(), stdout=out, stderr=err,
                                start_new_session=True)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process (started with start_new_session) and its own children, then reap it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


def _read(path) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------------------------------------------
# Wide matrices (n much smaller than d)


def _wide(n: int, d: int, seed: int) -> np.ndarray:
    """Gaussian noise plus five strong directions: an embedding-like wide matrix."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    directions = np.linalg.qr(rng.normal(size=(d, 5)))[0]
    x += (rng.normal(size=(n, 5)) * np.array([400.0, 300.0, 200.0, 150.0, 100.0])) @ directions.T
    return x.astype(np.float32)


def test_wide_matrix_matches_numpy_svd_under_a_limit_smaller_than_the_dxd_gram(tmp_path):
    """600 x 16000 float32: the d x d float64 Gram alone is 2.05 GB. Under an address-space limit of 3/4 of
    that, analyze must still succeed (row space), give numpy's singular values, and peak well below it."""
    n, d = 600, 16000
    x = _wide(n, d, seed=18)
    np.save(tmp_path / "wide.npy", x)
    reference = _centred_svd(x)
    gram_bytes = d * d * 8
    limit = int(0.75 * gram_bytes)

    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        process = subprocess.Popen(
            _sdetool("analyze", "wide.npy", "--json", "wide.json", "-q"), cwd=str(tmp_path), env=_env(),
            stdout=out, stderr=err, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    stderr = _read(tmp_path / "err.txt")
    assert process.returncode == 0, (process.returncode, stderr[-3000:])
    assert "out of memory" not in stderr.lower()

    report = json.loads((tmp_path / "wide.json").read_text())
    _assert_same_spectrum(report["singular_values"], reference)
    assert len(report["singular_values"]) <= n, "a wide set has at most n (n - 1 centred) singular values"

    peak = usage.ru_maxrss * 1024  # KiB on Linux
    assert peak < gram_bytes, f"peak RSS {peak / 1e9:.2f} GB, the d x d Gram is {gram_bytes / 1e9:.2f} GB"
    assert peak < gram_bytes / 2, f"peak RSS {peak / 1e9:.2f} GB is not O(n^2 + n d)"


def test_wide_matrix_chooses_the_row_space_when_only_it_fits_the_memory_believed_available(tmp_path, monkeypatch):
    """SDETOOL_MEMORY_LIMIT below the d x d Gram but well above n^2 + n d: analyze succeeds in process."""
    n, d = 200, 5000  # d x d float64: 200 MB; the rows in float64: 8 MB; n x n: 0.3 MB
    x = _wide(n, d, seed=7)
    np.save(tmp_path / "wide.npy", x)
    monkeypatch.setenv("SDETOOL_MEMORY_LIMIT", str(100 * 1024 * 1024))
    assert_ok(invoke("analyze", tmp_path / "wide.npy", "--json", tmp_path / "wide.json", "-q"))
    report = json.loads((tmp_path / "wide.json").read_text())
    _assert_same_spectrum(report["singular_values"], _centred_svd(x))
    assert report["n"] == n and report["dim"] == d


def test_tall_matrix_still_matches_numpy_svd(tmp_path):
    """The control: n > d takes the d x d path and gives the same values as numpy."""
    x = np.random.default_rng(3).normal(size=(1500, 40)).astype(np.float32)
    np.save(tmp_path / "tall.npy", x)
    assert_ok(invoke("analyze", tmp_path / "tall.npy", "--json", tmp_path / "tall.json", "-q"))
    report = json.loads((tmp_path / "tall.json").read_text())
    _assert_same_spectrum(report["singular_values"], _centred_svd(x))


@pytest.mark.parametrize("shape", [(50_000, 60_000), (60_000, 50_000)], ids=["wide", "tall"])
def test_when_nothing_fits_analyze_says_so_up_front_with_the_numbers(tmp_path, shape):
    """A 12 GB dataset (declared, never written: reading it would take minutes) under a believed 2 GB: neither
    the n x n nor the d x d path fits. Refused at once, one line, how much is needed and what would fit.
    (A real process under a 4 GB address-space limit: an implementation that tried would fail, not swap.)"""
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("emb", shape=shape, dtype="float32", chunks=(16, shape[1]))
    limit = 4 * 1024**3
    started = time.monotonic()
    result = subprocess.run(
        _sdetool("analyze", f"{path}:/emb", "-q"), cwd=str(tmp_path), env=_env(SDETOOL_MEMORY_LIMIT=2_000_000_000),
        capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    elapsed = time.monotonic() - started
    line = _one_error_line(result.returncode, result.stderr, 2)
    assert elapsed < 20, f"refused only after {elapsed:.1f} s: not up front"
    text = _without(line, tmp_path)
    assert len(SIZE.findall(text)) >= 2, f"expected the memory needed and the memory available: {line}"
    assert "--sample" in text, f"expected what would make it fit: {line}"
    assert "--block-rows" not in text, f"the wrong advice of the issue: {line}"


# --------------------------------------------------------------------------------------------------------------
# Stores and reports from a newer sdetool


def _store(path, rows=120, dim=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    write_set(str(path), "image", x, ids=[f"r{i}" for i in range(rows)], mode="w")
    write_set(str(path), "text", x[:, ::-1].copy() + 0.1, ids=[f"r{i}" for i in range(rows)], mode="a")
    return x


def _make_newer(path, version=99):
    with h5py.File(path, "a") as handle:
        handle.attrs["format_version"] = version


def _names_both_versions(line: str, newer: str, current: str, tmp_path) -> None:
    text = _without(line, tmp_path)
    assert re.search(rf"(?<![\d.]){newer}(?![\d.])", text), f"the newer version {newer} is not named: {line}"
    assert re.search(rf"(?<![\d.]){current}(?![\d.])", text), f"the reader's version {current} is not named: {line}"


def test_current_store_version_is_still_read(tmp_path):
    _store(tmp_path / "v1.h5")
    assert_ok(invoke("analyze", tmp_path / "v1.h5", "-q"))


@pytest.mark.parametrize("version", [99, 2])
@pytest.mark.parametrize("command", ["analyze", "analyze-dataset", "compare", "plot", "finetune"])
def test_store_of_a_newer_format_version_is_refused(tmp_path, command, version):
    store = tmp_path / "new.h5"
    _store(store)
    _make_newer(store, version)
    other = tmp_path / "old.h5"
    _store(other, seed=1)
    args = {
        "analyze": ["analyze", store, "-q"],
        "analyze-dataset": ["analyze", f"{store}:/image/embeddings", "-q"],
        "compare": ["compare", other, store, "-q"],
        "plot": ["plot", "spectrum", store, "-o", tmp_path / "fig.png", "-q"],
        "finetune": ["finetune", "--target", "head", "--embeddings", store, "--out", tmp_path / "run",
                     "--steps", 2, "--batch-size", 16, "--device", "cpu", "-q"],
    }[command]
    line = assert_error(invoke(args), 2)
    assert "new.h5" in line, line
    _names_both_versions(line, str(version), "1", tmp_path)
    assert not (tmp_path / "fig.png").exists()


def _analysis_report(tmp_path, name="report.json", seed=0) -> dict:
    x = np.random.default_rng(seed).normal(size=(150, 10)).astype(np.float32)
    np.save(tmp_path / f"{name}.npy", x)
    assert_ok(invoke("analyze", tmp_path / f"{name}.npy", "--json", tmp_path / name, "-q"))
    report = json.loads((tmp_path / name).read_text())
    assert report["schema"] == "sdetool.analysis/1"
    return report


@pytest.mark.parametrize("newer", ["sdetool.analysis/99", "sdetool.analysis/2"])
@pytest.mark.parametrize("command", ["compare", "plot-spectrum", "plot-energy"])
def test_analysis_report_of_a_newer_schema_is_refused(tmp_path, command, newer):
    report = _analysis_report(tmp_path)
    _analysis_report(tmp_path, "current.json", seed=1)
    report["schema"] = newer
    (tmp_path / "newer.json").write_text(json.dumps(report))
    args = {
        "compare": ["compare", tmp_path / "current.json", tmp_path / "newer.json", "-q"],
        "plot-spectrum": ["plot", "spectrum", tmp_path / "newer.json", "-o", tmp_path / "fig.png", "-q"],
        "plot-energy": ["plot", "energy", tmp_path / "current.json", tmp_path / "newer.json",
                        "-o", tmp_path / "fig.png", "-q"],
    }[command]
    line = assert_error(invoke(args), 2)
    assert "newer.json" in line, line
    _names_both_versions(line, newer.rsplit("/", 1)[1], "1", tmp_path)
    assert not (tmp_path / "fig.png").exists()


def test_current_reports_are_still_read(tmp_path):
    _analysis_report(tmp_path, "a.json")
    _analysis_report(tmp_path, "b.json", seed=1)
    assert_ok(invoke("compare", tmp_path / "a.json", tmp_path / "b.json", "--json", tmp_path / "c.json", "-q"))
    assert json.loads((tmp_path / "c.json").read_text())["schema"] == "sdetool.compare/1"
    assert_ok(invoke("plot", "bands", tmp_path / "c.json", "-o", tmp_path / "fig.png", "-q"))
    assert (tmp_path / "fig.png").exists()


def test_comparison_of_a_newer_schema_is_refused_by_plot(tmp_path):
    _analysis_report(tmp_path, "a.json")
    _analysis_report(tmp_path, "b.json", seed=1)
    assert_ok(invoke("compare", tmp_path / "a.json", tmp_path / "b.json", "--json", tmp_path / "c.json", "-q"))
    comparison = json.loads((tmp_path / "c.json").read_text())
    comparison["schema"] = "sdetool.compare/99"
    (tmp_path / "newer.json").write_text(json.dumps(comparison))
    line = assert_error(invoke("plot", "bands", tmp_path / "newer.json", "-o", tmp_path / "fig.png", "-q"), 2)
    assert "newer.json" in line, line
    _names_both_versions(line, "99", "1", tmp_path)
    assert not (tmp_path / "fig.png").exists()


# --------------------------------------------------------------------------------------------------------------
# Two writers at once (real processes)

SLOW_EXTRACT = """
import os, runpy, sys, time
import sdetool.extract.extraction as extraction
marker, pause = sys.argv[1], float(sys.argv[2])
original = extraction._write_chunk
def slow(*args, **kwargs):
    result = original(*args, **kwargs)
    with open(marker, "a") as handle:
        handle.write("chunk\\n")
    time.sleep(pause)
    return result
extraction._write_chunk = slow
sys.argv = ["sdetool"] + sys.argv[3:]
runpy.run_module("sdetool", run_name="__main__", alter_sys=True)
"""


def _images(folder, count: int, bad: int = 0) -> list[str]:
    from extract_fixtures import write_image

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        write_image(folder / f"img{index:02d}.png", seed=index)
    for index in range(bad):
        (folder / f"bad{index:02d}.jpg").write_bytes(b"these bytes are not an image %d\n" % index)
    return [f"img{index:02d}.png" for index in range(count)]


def test_second_extract_to_the_same_output_is_refused_at_once_and_a_killed_run_resumes(tmp_path):
    _images(tmp_path / "imgs", 4)
    extract = ["extract", "--images", "imgs", "--out", "same.h5", "--device", "cpu", "--chunk-items", 1,
               "--num-workers", 0, "-b", 1]
    marker = tmp_path / "chunks.txt"
    first = _start([sys.executable, "-c", SLOW_EXTRACT, marker, 120, *extract, "-q"], tmp_path, "first")
    try:
        _wait_for(lambda: marker.exists(), 90, "the first writer's first chunk", first)
        started = time.monotonic()
        second = _run(_sdetool(*extract, "-q"), tmp_path, timeout=60)
        elapsed = time.monotonic() - started
        assert first.poll() is None, "the second writer waited for the first one to end"
        line = _one_error_line(second.returncode, second.stderr, 2)
        assert "another sdetool process" in line.lower(), line
        assert "same.h5" in line, line
        assert elapsed < 20, f"refused only after {elapsed:.1f} s"

        overwrite = _run(_sdetool(*extract, "--overwrite", "-q"), tmp_path, timeout=60)
        line = _one_error_line(overwrite.returncode, overwrite.stderr, 2)
        assert "another sdetool process" in line.lower(), line
        assert first.poll() is None
    finally:
        _kill_group(first)
    assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "same.h5").exists()

    # the killed run's lock went with it: the same command resumes at once and completes
    resumed = _run(_sdetool(*extract, "--json", "summary.json", "-q"), tmp_path, timeout=90)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"]["image"] == 4
    assert summary.get("resumed_items", 0) >= 1, summary
    with h5py.File(tmp_path / "same.h5", "r") as handle:
        assert handle["image/embeddings"].shape[0] == 4


def _pairs(path):
    from extract_fixtures import write_pairs

    return write_pairs(str(path), count=400, dim=32)


def test_second_finetune_to_the_same_run_folder_is_refused_and_a_killed_run_does_not_block(tmp_path):
    _pairs(tmp_path / "pairs.h5")
    base = ["finetune", "--target", "head", "--embeddings", "pairs.h5", "--out", "run", "--batch-size", 64,
            "--device", "cpu"]
    first = _start(_sdetool(*base, "--steps", 1_000_000), tmp_path, "first")
    try:
        _wait_for(lambda: "fine-tuning" in _read(tmp_path / "first.err"), 90, "the first run's training", first)
        seconds = []
        for extra in ([], ["--overwrite"], ["--resume"]):
            started = time.monotonic()
            second = _run(_sdetool(*base, "--steps", 1_000_000, *extra, "-q"), tmp_path, timeout=60)
            seconds.append(time.monotonic() - started)
            assert first.poll() is None, "the second writer waited for the first one to end"
            line = _one_error_line(second.returncode, second.stderr, 2)
            assert "another sdetool process" in line.lower(), (extra, line)
            assert "run" in line, line
        assert max(seconds) < 20, seconds
        assert (tmp_path / "run").is_dir()
    finally:
        _kill_group(first)
    assert first.returncode == -signal.SIGKILL

    again = _run(_sdetool(*base, "--steps", 3, "--overwrite", "-q"), tmp_path, timeout=90)
    assert again.returncode == 0, again.stderr[-3000:]


def test_second_reproduce_to_the_same_folder_is_refused(tmp_path):
    command = ["reproduce", "--quick", "--out", "results", "--device", "cpu"]
    first = _start(_sdetool(*command), tmp_path, "first")
    try:
        _wait_for(lambda: "[1/" in _read(tmp_path / "first.out") or "sdetool: " in _read(tmp_path / "first.err"),
                  90, "the first reproduction's first stage", first)
        time.sleep(0.5)
        for extra in ([], ["--resume"], ["--overwrite"]):
            started = time.monotonic()
            second = _run(_sdetool(*command, *extra, "-q"), tmp_path, timeout=60)
            elapsed = time.monotonic() - started
            assert first.poll() is None, "the second writer waited for the first one to end"
            line = _one_error_line(second.returncode, second.stderr, 2)
            assert "another sdetool process" in line.lower(), (extra, line)
            assert "results" in line, line
            assert elapsed < 20, elapsed
    finally:
        _kill_group(first)
    assert first.returncode == -signal.SIGKILL


# --------------------------------------------------------------------------------------------------------------
# Quantized embeddings


def _quantize(embeddings: np.ndarray, precision: str, calibration: np.ndarray | None = None) -> np.ndarray:
    """sentence-transformers' quantize_embeddings (int8, uint8, binary, ubinary), replicated."""
    if precision in ("int8", "uint8"):
        reference = embeddings if calibration is None else calibration
        starts, steps = reference.min(axis=0), (reference.max(axis=0) - reference.min(axis=0)) / 255
        values = (embeddings - starts) / steps
        if precision == "int8":
            return (values - 128).astype(np.int8)
        return values.astype(np.uint8)
    packed = np.packbits(embeddings > 0).reshape(embeddings.shape[0], -1)
    return (packed - 128).astype(np.int8) if precision == "binary" else packed


def _float_embeddings(seed=0, n=300, d=24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) @ np.diag(np.linspace(3.0, 0.2, d)) + 0.1).astype(np.float32)


def _analyze_json(tmp_path, target) -> dict:
    out = tmp_path / "q.json"
    assert_ok(invoke("analyze", target, "--json", out, "-q"))
    return json.loads(out.read_text())


def _says_quantized(report) -> None:
    notes = " ".join(report.get("notes") or [])
    assert "quantiz" in notes.lower(), report.get("notes")


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_quantized_npy_is_analyzed_as_its_integer_values(tmp_path, precision):
    quantized = _quantize(_float_embeddings(), precision)
    assert quantized.dtype == np.dtype(precision)
    np.save(tmp_path / "q.npy", quantized)
    report = _analyze_json(tmp_path, tmp_path / "q.npy")
    _assert_same_spectrum(report["singular_values"], _centred_svd(quantized.astype(np.float64)))
    assert report["n"] == quantized.shape[0] and report["dim"] == quantized.shape[1]
    _says_quantized(report)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_quantized_hdf5_store_set_and_dataset_are_analyzed_as_integers(tmp_path, precision):
    quantized = _quantize(_float_embeddings(seed=5), precision)
    path = tmp_path / "q.h5"
    write_set(str(path), "text", quantized.astype(np.float32), ids=[f"t{i}" for i in range(len(quantized))], mode="w")
    with h5py.File(path, "a") as handle:  # as a writer of quantized stores would: the integers themselves
        del handle["text/embeddings"]
        handle["text/embeddings"] = quantized
        handle["text"].attrs["precision"] = precision
        handle.create_dataset("raw/emb", data=quantized)
    reference = _centred_svd(quantized.astype(np.float64))

    report = _analyze_json(tmp_path, path)
    _assert_same_spectrum(report["singular_values"], reference)
    _says_quantized(report)

    report = _analyze_json(tmp_path, f"{path}:/raw/emb")
    _assert_same_spectrum(report["singular_values"], reference)
    _says_quantized(report)


def test_quantized_extreme_integer_values_are_widened_exactly(tmp_path):
    """-128 and 127 (int8) and 0 and 255 (uint8) survive: the spectrum is that of the exact integers."""
    rng = np.random.default_rng(11)
    for dtype, low, high in (("int8", -128, 127), ("uint8", 0, 255)):
        values = rng.choice(np.array([low, high, (low + high) // 2]), size=(200, 12)).astype(dtype)
        np.save(tmp_path / f"{dtype}.npy", values)
        report = _analyze_json(tmp_path, tmp_path / f"{dtype}.npy")
        _assert_same_spectrum(report["singular_values"], _centred_svd(values.astype(np.float64)))
        _says_quantized(report)


def test_sentence_transformers_int8_output_is_analyzed(tmp_path):
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:
        quantization = pytest.importorskip("sentence_transformers.quantization")
        quantize_embeddings = quantization.quantize_embeddings
    embeddings = _float_embeddings(seed=9)
    quantized = quantize_embeddings(embeddings, precision="int8")
    assert quantized.dtype == np.int8
    np.save(tmp_path / "st.npy", quantized)
    report = _analyze_json(tmp_path, tmp_path / "st.npy")
    _assert_same_spectrum(report["singular_values"], _centred_svd(quantized.astype(np.float64)))
    _says_quantized(report)


@pytest.mark.parametrize("where", ["set", "dataset"])
@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_packed_binary_embeddings_are_refused_saying_why(tmp_path, precision, where):
    packed = _quantize(_float_embeddings(seed=2, d=64), precision)
    path = tmp_path / "b.h5"
    if where == "set":
        write_set(str(path), "text", np.zeros(packed.shape, np.float32), ids=[f"t{i}" for i in range(len(packed))],
                  mode="w")
        with h5py.File(path, "a") as handle:
            del handle["text/embeddings"]
            handle["text/embeddings"] = packed
            handle["text"].attrs["precision"] = precision
        target = path
    else:
        with h5py.File(path, "w") as handle:
            handle.create_dataset("emb", data=packed).attrs["precision"] = precision
        target = f"{path}:/emb"
    line = _without(assert_error(invoke("analyze", target, "-q"), 2), tmp_path)  # the path holds "binary" too
    assert "binary" in line, line
    lowered = line.lower()
    assert "packed" in lowered or "bit" in lowered, f"the line does not say why: {line}"


# --------------------------------------------------------------------------------------------------------------
# Failures that say which


def _walk(value):
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _extract_with_failures(tmp_path, good: int, bad: int):
    _images(tmp_path / "imgs", good, bad=bad)
    result = _run(_sdetool("extract", "--images", "imgs", "--out", "f.h5", "--device", "cpu", "--num-workers", 0,
                           "--json", "f.json"), tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((tmp_path / "f.json").read_text())


def test_extract_summary_names_the_failed_item_and_why(tmp_path):
    result, summary = _extract_with_failures(tmp_path, good=3, bad=1)
    human = result.stdout + result.stderr
    flat = " ".join(human.split())
    assert "bad00.jpg" in human, human
    line = _without(next(line for line in human.splitlines() if "bad00.jpg" in line), tmp_path)
    assert len(line.replace("bad00.jpg", "").strip(" :-|│")) > 3, f"no reason beside the id: {line!r}"
    assert "image" in line.lower() or "not" in line.lower(), f"the reason does not say why: {line!r}"
    assert "/image/failed" in flat, f"the summary does not say where the failures are kept: {human}"

    records = [v for v in _walk(summary) if isinstance(v, dict) and v.get("id") == "bad00.jpg"]
    assert records and records[0].get("reason"), summary
    assert "/image/failed" in json.dumps(summary), summary
    with h5py.File(tmp_path / "f.h5", "r") as handle:
        assert handle["image/embeddings"].shape[0] == 3
        assert "failed" in handle["image"]


def test_extract_summary_shows_the_first_few_failures_and_where_the_rest_are(tmp_path):
    bad = 12
    result, summary = _extract_with_failures(tmp_path, good=2, bad=bad)
    human = result.stdout + result.stderr
    flat = " ".join(human.split())
    shown = [f"bad{i:02d}.jpg" for i in range(bad) if f"bad{i:02d}.jpg" in human]
    assert 1 <= len(shown) < bad, f"expected the first few of {bad} failures, found {len(shown)}: {human}"
    assert "bad00.jpg" in shown, "the first failure is not among those shown"
    assert "/image/failed" in flat and "f.h5" in flat, f"the summary does not say where the rest are: {human}"
    assert re.search(rf"\b{bad}\b", flat), f"the count of failures is not in the summary: {human}"
    listed = [v for v in _walk(summary) if isinstance(v, dict) and "id" in v and "reason" in v]
    assert 1 <= len(listed) <= bad, summary
    with h5py.File(tmp_path / "f.h5", "r") as handle:
        group = handle["image/failed"]
        stored = group["id"][...] if isinstance(group, h5py.Group) else group[...]
        ids = {value.decode() if isinstance(value, bytes) else str(value) for value in np.ravel(stored)}
    assert {f"bad{i:02d}.jpg" for i in range(bad)} <= ids or len(ids) >= bad, ids


@pytest.fixture
def small_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(200, 30)).astype(np.float32))
    return tmp_path / "x.npy"


@pytest.mark.parametrize(("typo", "meant"), [
    ("bands.nois.energy_share", "bands.noise.energy_share"),
    ("metrics.efective_rank", "metrics.effective_rank"),
    ("bands.noise.energy_shar", "bands.noise.energy_share"),
])
def test_fail_if_typo_suggests_the_nearest_path_first(tmp_path, small_npy, typo, meant):
    result = invoke("analyze", small_npy, "-q", "--json", tmp_path / "r.json", "--fail-if", f"{typo} > 0.5")
    line = assert_error(result, 2, f"did you mean {meant}?")
    suggestion = line.index("did you mean")
    for key in ("singular_values", "n_rows", "sdetool_version", "options"):
        if key in line:
            assert suggestion < line.index(key), f"the suggestion is not first: {line}"
    assert not (tmp_path / "r.json").exists()


def test_fail_if_typo_on_compare_suggests_the_nearest_path(tmp_path):
    _analysis_report(tmp_path, "a.json")
    _analysis_report(tmp_path, "b.json", seed=1)
    result = invoke("compare", tmp_path / "a.json", tmp_path / "b.json", "-q",
                    "--fail-if", "bands.nois.energy_share.delta > 0")
    assert_error(result, 2, "did you mean bands.noise.energy_share.delta?")


def test_fail_if_valid_path_still_works(small_npy):
    assert_ok(invoke("analyze", small_npy, "-q", "--fail-if", "bands.noise.energy_share > 2"))
    result = invoke("analyze", small_npy, "-q", "--fail-if", "bands.noise.energy_share >= 0")
    assert result.exit_code == 1, (result.exit_code, result.output)
