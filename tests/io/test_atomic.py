"""sdetool.io.atomic: the one atomic writer (unique temporary, fsync'd, renamed) that every file writer uses."""

from __future__ import annotations

import ast
import os
import stat

import pytest

import sdetool
from sdetool.errors import BadInputError
from sdetool.io import atomic


def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    atomic.write_text(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        atomic.write_bytes(str(path), broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_two_writers_of_one_path_get_their_own_temporaries(tmp_path):
    path = str(tmp_path / "store.h5")
    with atomic.atomic_path(path) as first, atomic.atomic_path(path) as second:
        assert first != second
        assert os.path.dirname(first) == os.path.dirname(second) == str(tmp_path)
        with open(first, "w") as handle:
            handle.write("first")
        with open(second, "w") as handle:
            handle.write("second")
    with open(path) as handle:
        assert handle.read() == "first"  # the last to finish wins, whole
    assert os.listdir(tmp_path) == ["store.h5"]


def test_the_file_and_its_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording(descriptor):
        synced.append(stat.S_ISDIR(os.fstat(descriptor).st_mode))
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    atomic.write_text(str(tmp_path / "a.txt"), "x")
    assert synced == [False, True]  # the temporary file, then the folder that holds the new name


def test_the_file_gets_the_mode_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic.write_text(str(tmp_path / "a.txt"), "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644


def test_a_missing_folder_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(BadInputError, match="missing/a.txt: folder .* does not exist"):
        atomic.write_text(str(tmp_path / "missing" / "a.txt"), "x")


def test_a_write_error_names_the_file(tmp_path):
    def full(handle):
        raise OSError(28, "No space left on device")

    with pytest.raises(BadInputError, match=r"a\.bin: cannot write \(No space left on device\)"):
        atomic.write_bytes(str(tmp_path / "a.bin"), full)
    assert os.listdir(tmp_path) == []


def test_dash_writes_text_to_stdout(capsys):
    atomic.write_text("-", "hello\n")
    assert capsys.readouterr().out == "hello\n"


def test_no_other_module_renames_a_temporary_of_its_own():
    """Every writer goes through sdetool.io.atomic: no mkstemp or '.tmp' rename anywhere else."""
    package = os.path.dirname(sdetool.__file__)
    offenders = []
    for folder, _, names in os.walk(package):
        for name in names:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path == atomic.__file__:
                continue
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in ("mkstemp", "NamedTemporaryFile"):
                    offenders.append((path, node.lineno, node.attr))
                if isinstance(node, ast.Constant) and node.value == ".tmp":
                    offenders.append((path, node.lineno, ".tmp"))
    assert not offenders, offenders


def test_the_writers_of_each_format_use_it(tmp_path, monkeypatch):
    """The store, the reports, the run folder and the extraction work folder all write through it."""
    import numpy as np

    from sdetool.finetune import runfolder
    from sdetool.io import checkpoint, store
    from sdetool.results import tables

    prefixes = []
    real = atomic.tempfile.mkstemp

    def recording(*args, **kwargs):
        prefixes.append(kwargs["prefix"])
        return real(*args, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", recording)
    store.write_set(str(tmp_path / "s.h5"), "image", np.ones((3, 2), np.float32), mode="w")
    tables.write_json({"a": 1}, str(tmp_path / "r.json"))
    runfolder.write_json(str(tmp_path / "m.json"), {"a": 1})
    folder = checkpoint.WorkFolder(str(tmp_path / "out.h5"))
    folder.create({"a": 1})
    assert prefixes == [".s.h5.", ".r.json.", ".m.json.", ".run.json."], prefixes
