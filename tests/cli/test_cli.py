"""The ``sdetool`` command line: help, JSON/CSV contract, ``--fail-if`` exit codes, bad inputs."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import message_lines
from typer.testing import CliRunner

from sdetool import __version__
from sdetool.analysis.analyze import SCHEMA
from sdetool.cli import app
from sdetool.io import store

N, D = 200, 16
OLD_JSON = b'{"previous": "report", "keep": true}\n'


def _spiked(seed: int, n: int = N, d: int = D, strengths=(150.0, 60.0, 24.0)) -> np.ndarray:
    """Planted rank-3 signal plus unit Gaussian noise and a common offset, float32."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((n, len(strengths))))
    right, _ = np.linalg.qr(rng.standard_normal((d, len(strengths))))
    return ((left * np.asarray(strengths)) @ right.T + rng.standard_normal((n, d)) + 0.5).astype(np.float32)


def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _error_lines(result) -> list[str]:
    """The non-blank lines of stderr besides the progress lines of the work an error stopped."""
    return message_lines(result.stderr)


def _assert_bad_input(result, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr naming the problem, the last one; returns it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = _error_lines(result)
    assert len(lines) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == lines[0], result.stderr
    assert lines[0].startswith("sdetool: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def two_sets(tmp_path):
    """A store with paired sets ``image`` and ``text`` (200 x 16) and the matrices."""
    path = tmp_path / "emb.h5"
    image, text = _spiked(0), _spiked(1)
    store.write_set(str(path), "image", image, attrs={"modality": "image", "model": "test"})
    store.write_set(str(path), "text", text, attrs={"modality": "text", "model": "test"})
    return path, image, text


# --- help and version ----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["analyze", "--help"], ["analyze", "-h"]])
def test_help_renders(args):
    result = _invoke(args)
    assert result.exit_code == 0
    assert "Usage" in result.stdout
    if "analyze" in args:
        for option in ("--json", "--csv", "--fail-if", "--drop-nonfinite", "--key"):
            assert option in result.stdout


@pytest.mark.parametrize("argv", [["-h"], ["analyze", "-h"]])
def test_short_help_option_through_the_entry_point(capsys, argv):
    from sdetool.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"Usage: sdetool {' '.join(argv[:-1])}".rstrip() + " [OPTIONS]")


def test_bare_sdetool_prints_the_help_and_exits_2(capsys):
    from sdetool.cli import main

    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("Usage: sdetool [OPTIONS] COMMAND [ARGS]...") and "analyze" in captured.out
    assert captured.err == ""


def test_version():
    result = _invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sdetool {__version__}"


# --- analyze: the JSON contract ------------------------------------------------------------------


def _check_set_entry(entry: dict, n: int, d: int, centered: bool = True) -> None:
    assert entry["schema"] == SCHEMA == "sdetool.analysis/1"
    assert entry["n_samples"] == n and entry["dim"] == d
    assert entry["centered"] is centered and entry["normalized"] is False
    values = entry["singular_values"]
    assert len(values) == (min(n - 1, d) if centered else min(n, d))
    assert all(isinstance(v, float) and v >= 0 for v in values)
    assert values == sorted(values, reverse=True)
    noise = entry["noise"]
    assert set(noise) >= {"estimator", "sigma", "edge", "edge_level"}
    assert noise["estimator"] == "median" and noise["edge_level"] == 0.01
    assert noise["sigma"] > 0 and noise["edge"] > 0
    rule = entry["strong_rule"]
    assert rule["name"] == "iqr" and isinstance(rule["threshold"], float)
    bands = entry["bands"]
    assert list(bands) == ["strong", "weak", "noise"]
    assert sum(band["count"] for band in bands.values()) == len(values)
    assert math.isclose(sum(band["energy_share"] for band in bands.values()), 1.0, abs_tol=1e-9)
    metrics = entry["metrics"]
    for name in ("effective_rank", "stable_rank", "participation_ratio", "power_law_alpha", "power_law_r2",
                 "mean_cosine"):
        assert name in metrics
    for name in ("effective_rank", "stable_rank", "participation_ratio", "mean_cosine"):
        assert isinstance(metrics[name], float)
    assert 1.0 <= metrics["effective_rank"] <= len(values)
    assert 1.0 <= metrics["stable_rank"] <= len(values)


def test_analyze_single_set_json(two_sets, tmp_path):
    path, image, _ = two_sets
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    result = _invoke(["analyze", path, "--key", "image", "--json", target])
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text())
    _check_set_entry(document, N, D)
    assert document["key"] == "image"
    assert document["source"] == f"{path}:/image/embeddings"
    assert document["modality"] == "image" and document["model"] == "test"
    assert document["dropped_nonfinite"] == 0
    # The planted rank-3 signal lies above the noise edge; its two largest spikes are strong.
    bands = document["bands"]
    assert bands["strong"]["count"] + bands["weak"]["count"] == 3
    assert bands["strong"]["count"] >= 2 and bands["strong"]["first_index"] == 1
    assert bands["noise"]["count"] == D - 3 and bands["noise"]["first_index"] == 4
    assert bands["strong"]["energy_share"] > 0.5
    # Against an exact reference: the singular values of the centred matrix.
    expected = np.linalg.svd(image.astype(np.float64) - image.astype(np.float64).mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(document["singular_values"], expected, rtol=1e-6)
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


@pytest.mark.parametrize("center, expected_count", [("--center", 9), ("--no-center", 10)])
def test_analyze_fewer_rows_than_dimensions(tmp_path, center, expected_count):
    path = tmp_path / "small.npy"
    data = _spiked(3, n=10, d=D, strengths=(20.0,))
    np.save(path, data)
    target = tmp_path / "small.json"
    result = _invoke(["analyze", path, center, "--json", target, "-q"])
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text())
    _check_set_entry(document, 10, D, centered=center == "--center")
    assert len(document["singular_values"]) == expected_count


def test_analyze_two_sets_json_has_sets_and_cross(two_sets, tmp_path):
    path, image, text = two_sets
    target = tmp_path / "both.json"
    result = _invoke(["analyze", path, "--key", "image", "--key", "text", "--json", target, "-q"])
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text())
    assert document["schema"] == SCHEMA
    assert list(document["sets"]) == ["image", "text"]
    for key in ("image", "text"):
        _check_set_entry(document["sets"][key], N, D)
        assert document["sets"][key]["key"] == key
    assert list(document["cross"]) == ["image~text"]
    pair = document["cross"]["image~text"]
    assert pair["a"] == "image" and pair["b"] == "text" and pair["paired"] is True
    for name in ("hellinger", "subspace_overlap", "modality_gap"):
        assert isinstance(pair[name], float), name
    assert 0.0 <= pair["hellinger"] <= 1.0
    assert 0.0 <= pair["subspace_overlap"] <= 1.0 + 1e-12
    assert pair["modality_gap"] >= 0.0


def test_json_to_stdout_is_pure_json_and_tables_go_to_stderr(two_sets):
    path, _, _ = two_sets
    result = _invoke(["analyze", path, "--key", "image", "--key", "text", "--json", "-"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) >= {"schema", "sets", "cross"}
    assert "energy share" in result.stderr and "cross-modal" in result.stderr
    assert "energy share" not in result.stdout


def test_tables_go_to_stdout_without_json_stdout(two_sets):
    path, _, _ = two_sets
    result = _invoke(["analyze", path, "--key", "image"])
    assert result.exit_code == 0, result.output
    assert "energy share" in result.stdout
    assert "image" in result.stdout


def test_csv_has_one_row_per_singular_value(two_sets, tmp_path):
    path, _, _ = two_sets
    table, report = tmp_path / "components.csv", tmp_path / "report.json"
    result = _invoke(["analyze", path, "-k", "image", "-k", "text", "--csv", table, "--json", report, "-q"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert list(rows[0]) == ["key", "index", "singular_value", "band", "energy_share", "snr"]
    document = json.loads(report.read_text())
    for key in ("image", "text"):
        entry = document["sets"][key]
        mine = [row for row in rows if row["key"] == key]
        assert len(mine) == len(entry["singular_values"])
        assert [int(row["index"]) for row in mine] == list(range(1, len(mine) + 1))
        np.testing.assert_allclose([float(row["singular_value"]) for row in mine], entry["singular_values"], rtol=1e-9)
        assert [row["band"] for row in mine] == entry["components"]["band"]
        assert math.isclose(sum(float(row["energy_share"]) for row in mine), 1.0, abs_tol=1e-8)
    assert len(rows) == 2 * (N - 1 if N - 1 < D else D)


# --- --fail-if -----------------------------------------------------------------------------------


def test_fail_if_that_holds_exits_1_and_names_the_check(two_sets, tmp_path):
    path, _, _ = two_sets
    target = tmp_path / "report.json"
    result = _invoke(["analyze", path, "-k", "image", "--json", target, "-q",
                      "--fail-if", "n_samples >= 200", "--fail-if", "n_samples < 10"])
    assert result.exit_code == 1, result.output
    assert "FAILED --fail-if 'n_samples >= 200'" in result.stderr
    assert "n_samples = 200" in result.stderr
    assert "n_samples < 10" not in result.stderr
    assert "Traceback" not in result.output
    assert json.loads(target.read_text())["key"] == "image"  # the report is still written


def test_fail_if_that_does_not_hold_exits_0(two_sets):
    path, _, _ = two_sets
    result = _invoke(["analyze", path, "-k", "image", "-q", "--fail-if", "bands.noise.energy_share > 0.85"])
    assert result.exit_code == 0, result.output
    assert "FAILED" not in result.output


def test_fail_if_on_several_sets_names_the_set(two_sets):
    path, _, _ = two_sets
    result = _invoke(["analyze", path, "-k", "image", "-k", "text", "-q", "--fail-if", "n_samples > 10"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert len(lines) == 2
    assert "[image] n_samples = 200" in lines[0]
    assert "[text] n_samples = 200" in lines[1]


def test_fail_if_with_unknown_path_is_bad_input(two_sets):
    path, _, _ = two_sets
    result = _invoke(["analyze", path, "-k", "image", "-q", "--fail-if", "bands.nois.energy_share > 0.5"])
    _assert_bad_input(result, "'bands.nois.energy_share'", "top-level keys")


@pytest.mark.parametrize("expression", ["bands.nois.energy_share > 0.5", "key > 1"])
def test_fail_if_with_bad_path_leaves_json_untouched(two_sets, tmp_path, expression):
    path, _, _ = two_sets
    target = tmp_path / "report.json"
    target.write_bytes(OLD_JSON)
    result = _invoke(["analyze", path, "-k", "image", "-q", "--json", target, "--fail-if", expression])
    _assert_bad_input(result, "--fail-if")
    assert target.read_bytes() == OLD_JSON


# --- bad inputs ----------------------------------------------------------------------------------


def _write_odd_h5(folder: Path) -> Path:
    path = folder / "odd.h5"
    with h5py.File(path, "w") as handle:
        handle["ints"] = np.arange(30, dtype=np.int32).reshape(10, 3)
        handle.create_dataset("strings", data=np.array([["a", "b"], ["c", "d"]], dtype=object),
                              dtype=h5py.string_dtype("utf-8"))
        handle["vector"] = np.zeros(6, np.float32)
        handle["cube"] = np.zeros((4, 3, 2), np.float32)
        handle["empty_columns"] = np.zeros((5, 0), np.float32)
    return path


def _case_missing(folder):
    return [folder / "missing.h5"], ["missing.h5", "no such file"]


def _case_not_hdf5(folder):
    path = folder / "fake.h5"
    path.write_bytes(b"this is not HDF5\n" * 20)
    return [path], ["fake.h5", "not an HDF5 file"]


def _case_truncated(folder):
    path = folder / "cut.h5"
    store.write_set(str(path), "image", _spiked(0))
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    return [path], ["cut.h5", "truncated"]


def _case_unknown_key(folder):
    path = folder / "emb.h5"
    store.write_set(str(path), "image", _spiked(0))
    store.write_set(str(path), "text", _spiked(1))
    return [path, "--key", "audio"], ["'audio'", "sets found: image, text"]


def _case_vector(folder):
    return [f"{_write_odd_h5(folder)}:/vector"], ["odd.h5:/vector", "1-D", "2-D"]


def _case_cube(folder):
    return [f"{_write_odd_h5(folder)}:/cube"], ["odd.h5:/cube", "3-D"]


def _case_no_rows(folder):  # one row is a degenerate report (tests/analysis/test_degenerate.py); none is nothing to report
    path = folder / "none.npy"
    np.save(path, _spiked(0)[:0])
    return [path], ["none.npy", "n = 0", "nothing to analyze"]


def _case_zero_columns(folder):
    return [f"{_write_odd_h5(folder)}:/empty_columns"], ["odd.h5:/empty_columns", "d = 0"]


def _case_nonfinite(folder):
    path = folder / "holes.npy"
    data = _spiked(0)
    data[[3, 50, 120], 2] = np.nan
    data[77, 0] = np.inf
    np.save(path, data)
    return [path], ["holes.npy", "4 rows hold NaN or Inf", "--drop-nonfinite"]


def _case_integer(folder):
    return [f"{_write_odd_h5(folder)}:/ints"], ["odd.h5:/ints", "int32"]


def _case_string(folder):
    return [f"{_write_odd_h5(folder)}:/strings"], ["odd.h5:/strings", "dtype object"]


def _case_integer_npy(folder):
    path = folder / "ints.npy"
    np.save(path, np.arange(40, dtype=np.int64).reshape(10, 4))
    return [path], ["ints.npy", "int64"]


def _case_malformed_fail_if(folder):
    path = folder / "emb.npy"
    np.save(path, _spiked(0))
    return [path, "--fail-if", "bands.noise.energy_share >> 0.5"], ["--fail-if", "PATH OP NUMBER"]


def _case_fail_if_not_a_number(folder):
    path = folder / "emb.npy"
    np.save(path, _spiked(0))
    return [path, "--fail-if", "n_samples > many"], ["--fail-if", "'many' is not a number"]


def _case_pt_list(folder):
    path = folder / "list.pt"
    torch.save([1, 2, 3], path)
    return [path], ["list.pt", "holds a list"]


def _case_pt_string(folder):
    path = folder / "text.pt"
    torch.save("not a tensor", path)
    return [path], ["text.pt", "holds a str"]


def _case_truncated_pt(folder):
    path = folder / "cut.pt"
    torch.save(torch.from_numpy(_spiked(0)), path)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    return [path], ["cut.pt"]


def _case_truncated_npz(folder):
    path = folder / "cut.npz"
    np.savez(path, image=_spiked(0))
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    return [path], ["cut.npz"]


BAD_INPUTS = [pytest.param(case, id=case.__name__.removeprefix("_case_")) for case in (
    _case_missing, _case_not_hdf5, _case_truncated, _case_unknown_key, _case_vector, _case_cube,
    _case_no_rows, _case_zero_columns, _case_nonfinite, _case_integer, _case_string, _case_integer_npy,
    _case_malformed_fail_if, _case_fail_if_not_a_number, _case_pt_list, _case_pt_string,
    _case_truncated_pt, _case_truncated_npz,
)]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, fragments = case(inputs)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "report.json"
    target.write_bytes(OLD_JSON)
    before_inputs = sorted(p.name for p in inputs.iterdir())
    result = _invoke(["analyze", *args, "--json", target, "--csv", out / "components.csv"])
    _assert_bad_input(result, *fragments)
    assert target.read_bytes() == OLD_JSON
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert sorted(p.name for p in inputs.iterdir()) == before_inputs


def test_nonfinite_rows_are_dropped_on_request(tmp_path):
    (path,), _ = _case_nonfinite(tmp_path)
    target = tmp_path / "report.json"
    result = _invoke(["analyze", path, "--drop-nonfinite", "--json", target, "-q"])
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text())
    assert document["dropped_nonfinite"] == 4
    assert document["n_rows"] == N
    _check_set_entry(document, N - 4, D)
    data = np.load(path).astype(np.float64)
    kept = data[np.isfinite(data).all(axis=1)]
    expected = np.linalg.svd(kept - kept.mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(document["singular_values"], expected, rtol=1e-6)


def test_pt_tensor_requiring_grad_is_analyzed(tmp_path):
    data = _spiked(0)
    path = tmp_path / "grad.pt"
    torch.save(torch.from_numpy(data).requires_grad_(True), path)
    target = tmp_path / "report.json"
    result = _invoke(["analyze", path, "--json", target, "-q"])
    assert "Traceback" not in result.output
    assert result.exit_code == 0, repr(result.exception)
    assert json.loads(target.read_text())["n_samples"] == N


class _Payload:
    """Pickles to a call that writes a marker file when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_pt_with_pickled_object_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save(_Payload(str(marker)), path)
    assert not marker.exists()
    result = _invoke(["analyze", path, "-q"])
    _assert_bad_input(result, "evil.pt", "weights_only")
    assert not marker.exists()


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_output_in_missing_folder_is_refused_before_work(two_sets, tmp_path, option):
    path, _, _ = two_sets
    target = tmp_path / "no" / "such" / "folder" / "out.file"
    result = _invoke(["analyze", path, option, target])
    _assert_bad_input(result, option, "does not exist")
    assert not (tmp_path / "no").exists()


def test_output_that_is_a_folder_is_refused(two_sets, tmp_path):
    path, _, _ = two_sets
    result = _invoke(["analyze", path, "--json", tmp_path])
    _assert_bad_input(result, "--json", "is a folder")


def test_json_report_honours_umask(two_sets, tmp_path, umask_022):
    path, _, _ = two_sets
    target = tmp_path / "report.json"
    assert _invoke(["analyze", path, "-k", "image", "--json", target, "-q"]).exit_code == 0
    assert os.stat(target).st_mode & 0o777 == 0o644


# --- the installed console script ----------------------------------------------------------------


def _console_script() -> str:
    beside = Path(sys.executable).with_name("sdetool")
    found = str(beside) if beside.exists() else shutil.which("sdetool")
    assert found, "the sdetool console script is not installed"
    return found


def test_console_script_end_to_end(two_sets, tmp_path):
    path, _, _ = two_sets
    script = _console_script()
    ok = subprocess.run([script, "analyze", str(path), "--key", "image", "--key", "text", "--json", "-", "-q"],
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    document = json.loads(ok.stdout)
    assert document["schema"] == SCHEMA and list(document["sets"]) == ["image", "text"]

    bad = subprocess.run([script, "analyze", str(tmp_path / "missing.h5")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr + bad.stdout
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines == [f"sdetool: error: {tmp_path / 'missing.h5'}: no such file"]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["analyze", "builtin:spiked", "--noise-estimator", "foo"], "--noise-estimator"),
        (["analyze", "builtin:spiked", "--edge-level", "2"], "--edge-level"),
        (["analyze"], "Missing argument 'INPUT'"),
        (["bogus"], "No such command 'bogus'"),
    ],
)
def test_usage_errors_of_the_console_script_are_one_line(args, fragment):
    completed = subprocess.run([sys.executable, "-m", "sdetool", *args], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdetool: error:") and fragment in lines[0], completed.stderr
    assert "Traceback" not in completed.stderr and completed.stdout == ""


def test_csv_to_stdout_sends_tables_to_stderr_and_both_to_stdout_is_refused(two_sets):
    path, _, _ = two_sets
    result = _invoke(["analyze", path, "-k", "image", "--csv", "-"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "key,index,singular_value,band,energy_share,snr"
    assert "energy share" in result.stderr and "energy share" not in result.stdout
    _assert_bad_input(_invoke(["analyze", path, "--csv", "-", "--json", "-"]), "only one of them")


def test_fail_if_path_typo_is_refused_before_reading(tmp_path):
    # The input does not even exist: the typo is caught first, at no cost.
    result = _invoke(["analyze", tmp_path / "missing.h5", "--fail-if", "metrics.efective_rank < 2"])
    _assert_bad_input(result, "metrics.efective_rank", "no value")


def test_overflowing_rows_are_bad_input(tmp_path):
    rows = np.ones((50, 4))
    rows[7, 2] = 1e160
    path = tmp_path / "huge.npy"
    np.save(path, rows)
    for extra in ([], ["--l2"]):
        _assert_bad_input(_invoke(["analyze", path, *extra]), "overflow", "row 7")


def test_unexpected_errors_exit_3_with_one_line(two_sets, monkeypatch):
    import sdetool.api

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(sdetool.api, "analyze", broken)  # the CLI calls the library through sdetool.api
    result = _invoke(["analyze", two_sets[0]])
    assert result.exit_code == 3
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("sdetool: internal error: RuntimeError: simulated failure")


def test_torch_path_leaves_a_read_only_float64_memory_map_alone(tmp_path):
    rows = np.random.default_rng(0).standard_normal((300, 8))
    path = tmp_path / "x64.npy"
    np.save(path, rows)
    result = _invoke(["analyze", path, "--device", "torch:cpu", "--json", tmp_path / "r.json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["device"] == "torch:cpu"
    np.testing.assert_array_equal(np.load(path), rows)


@pytest.mark.parametrize("args,fragment", [(["--seed", "-1", "--sample", "10"], "seed"), (["--edge-level", "1e-13"], "edge_level")])
def test_option_values_out_of_range(two_sets, args, fragment):
    _assert_bad_input(_invoke(["analyze", two_sets[0], *args]), fragment)
