"""Stores and reports from a newer sdetool are refused with one line naming both versions; older and equal
ones are read; another tool's own ``format_version`` is its own business."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke

from sdetool.errors import BadInputError
from sdetool.io import store, versions


@pytest.fixture()
def stored(tmp_path):
    path = str(tmp_path / "e.h5")
    store.write_set(path, "image", np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32), mode="w")
    return path


def _set_version(path, value) -> None:
    with h5py.File(path, "a") as handle:
        handle.attrs["format_version"] = value


def test_the_writers_schemas_come_from_one_table():
    from sdetool.analysis.report import SCHEMA as analysis
    from sdetool.finetune.runfolder import SCHEMA as finetune
    from sdetool.results.compare import SCHEMA as compare
    from sdetool.results.reproduce import SCHEMA as reproduce

    assert [analysis, compare, finetune, reproduce] == [versions.schema(k) for k in
                                                         ("analysis", "compare", "finetune", "reproduce")]
    assert store.FORMAT_VERSION == versions.STORE_FORMAT_VERSION == 1


@pytest.mark.parametrize("value", [99, "2", "2.0", np.int64(3)])
def test_a_store_of_a_newer_format_is_refused(stored, value):
    _set_version(stored, value)
    line = assert_error(invoke(["analyze", stored]), 2, stored, f"format_version {value}", "format_version 1",
                        "newer sdetool")
    assert line.startswith("sdetool: error:")


@pytest.mark.parametrize("value", [1, "1", "1.3"])
def test_the_same_major_version_is_read(stored, value):
    _set_version(stored, value)
    assert_ok(invoke(["analyze", stored, "-q"]))


def test_an_unreadable_version_is_refused(stored):
    _set_version(stored, "latest")
    assert_error(invoke(["analyze", stored]), 2, "format_version 'latest' is not a version number")


def test_another_tools_format_version_is_not_ours(tmp_path):
    path = str(tmp_path / "other.h5")
    with h5py.File(path, "w") as handle:
        handle.attrs["format"] = "someone-elses"
        handle.attrs["format_version"] = 7
        handle.create_dataset("emb", data=np.random.default_rng(1).standard_normal((40, 6)))
    assert_ok(invoke(["analyze", f"{path}:/emb", "-q"]))


def test_reports_of_a_newer_schema_are_refused_by_compare_and_plot(stored, tmp_path):
    report = tmp_path / "report.json"
    assert_ok(invoke(["analyze", stored, "--json", report, "-q"]))
    document = json.loads(report.read_text())
    assert document["schema"] == "sdetool.analysis/1"
    assert_ok(invoke(["compare", report, report, "-q"]))
    document["schema"] = "sdetool.analysis/2"
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(document))
    assert_error(invoke(["compare", newer, report]), 2, str(newer), "sdetool.analysis/2", "sdetool.analysis/1")
    assert_error(invoke(["plot", "spectrum", newer, "--out", tmp_path / "p.png"]), 2, "sdetool.analysis/2",
                 "sdetool.analysis/1")
    assert not (tmp_path / "p.png").exists()


def test_check_schema_is_quiet_for_what_it_does_not_know():
    versions.check_schema({"schema": "someone.else/9"}, "x.json")
    versions.check_schema({}, "x.json")
    versions.check_schema({"schema": "sdetool.compare/1"}, "x.json")
    with pytest.raises(BadInputError, match="sdetool.compare/3 was written by a newer sdetool"):
        versions.check_schema({"schema": "sdetool.compare/3"}, "x.json")
