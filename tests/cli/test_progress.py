"""Progress without a terminal: plain lines on stderr at the start, every interval and at the end.

The unit is driven with a fake clock; the commands run for real (in-process with ``CliRunner``, whose
stderr is no terminal, and once as a subprocess with stderr a pipe) on small real inputs: the built-in
spiked matrix, a folder of a few images, a store of cached pairs.
"""

from __future__ import annotations

import doctest
import io
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import PROGRESS_LINE as LINE
from cli_helpers import assert_ok, invoke, message_lines
from extract_fixtures import image_folder
from rich.console import Console

from sdetool.cli import progress as progressbar
from sdetool.cli.progress import INTERVAL_VARIABLE, PlainProgress, RichProgress, progress_for
from sdetool.errors import BadInputError, TrainingInterrupted
from sdetool.finetune.run import FinetuneOptions, finetune
from sdetool.io import store

ANSI = re.compile(r"\x1b\[")


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _plain(interval: float = 10.0, unit: str = "rows"):
    stream, clock = io.StringIO(), FakeClock()
    return PlainProgress(stream, unit, interval=interval, clock=clock), stream, clock


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def _parsed(line: str) -> dict:
    match = LINE.match(line)
    assert match, line
    return match.groupdict()


# --- the unit, on a fake clock --------------------------------------------------------------------


def test_start_line_names_the_task_the_total_and_the_unit():
    progress, stream, _ = _plain(unit="items")
    progress.start("embedding 6 images", 1200)
    (line,) = _lines(stream)
    assert line == "sdetool: embedding 6 images: 0/1,200 items (0%), ? items/s, elapsed 0:00:00, ETA ?"
    assert _parsed(line)["outlook"] == "ETA ?"


def test_rows_are_read():
    progress, stream, _ = _plain()
    progress.start("image", 10)
    assert _lines(stream) == ["sdetool: reading image: 0/10 rows (0%), ? rows/s, elapsed 0:00:00, ETA ?"]


def test_middle_lines_at_most_one_per_interval_with_rate_and_eta():
    progress, stream, clock = _plain(interval=10.0)
    progress.start("image", 1000)
    for _ in range(9):  # 100 rows every 3 s: lines at 12 s and 24 s only
        clock.now += 3.0
        progress.advance(100)
    lines = _lines(stream)
    assert len(lines) == 3, lines
    assert lines[1] == "sdetool: reading image: 400/1,000 rows (40%), 33 rows/s, elapsed 0:00:12, ETA 0:00:18"
    assert lines[2] == "sdetool: reading image: 800/1,000 rows (80%), 33 rows/s, elapsed 0:00:24, ETA 0:00:06"
    clock.now += 3.0
    progress.advance(100)
    progress.finish()
    end = _lines(stream)[-1]
    assert end == "sdetool: reading image: 1,000/1,000 rows (100%), 33 rows/s, elapsed 0:00:30, done"
    assert len(_lines(stream)) == 4


def test_the_interval_counts_from_the_last_line_not_from_the_start():
    progress, stream, clock = _plain(interval=10.0)
    progress.start("image", 100)
    clock.now += 9.9
    progress.advance(1)
    assert len(_lines(stream)) == 1
    clock.now += 0.1
    progress.advance(1)  # 10 s after the start line
    clock.now += 9.0
    progress.advance(1)  # 9 s after that one
    assert [_parsed(line)["done"] for line in _lines(stream)] == ["0", "2"]


def test_interval_zero_writes_a_line_per_advance():
    progress, stream, clock = _plain(interval=0.0)
    progress.start("image", 3)
    for _ in range(3):
        clock.now += 0.5
        progress.advance(1)
    progress.finish()
    assert [_parsed(line)["done"] for line in _lines(stream)] == ["0", "1", "2", "3", "3"]
    assert _parsed(_lines(stream)[1])["rate"] == "2.00" and _parsed(_lines(stream)[1])["outlook"] == "ETA 0:00:01"


def test_zero_total_starts_and_ends_without_a_share():
    progress, stream, clock = _plain(unit="items")
    progress.start("embedding nothing", 0)
    clock.now += 1.0
    progress.finish()
    assert _lines(stream) == ["sdetool: embedding nothing: 0/0 items, ? items/s, elapsed 0:00:00, ETA 0:00:00",
                              "sdetool: embedding nothing: 0/0 items, 0.00 items/s, elapsed 0:00:01, done"]


def test_status_text_ends_the_line_and_the_latest_one_is_kept():
    progress, stream, clock = _plain(interval=0.0, unit="steps")
    progress.start("sde fine-tuning", 4)
    clock.now += 2.0
    progress.advance(1, "loss 8.0775")
    clock.now += 2.0
    progress.advance(1)
    progress.finish()
    lines = _lines(stream)
    assert lines[1] == "sdetool: sde fine-tuning: 1/4 steps (25%), 0.50 steps/s, elapsed 0:00:02, ETA 0:00:06, loss 8.0775"
    assert _parsed(lines[2])["status"] == "loss 8.0775"
    assert lines[3] == "sdetool: sde fine-tuning: 2/4 steps (50%), 0.50 steps/s, elapsed 0:00:04, stopped, loss 8.0775"


def test_a_task_ended_short_of_its_total_is_stopped_and_each_task_starts_afresh():
    progress, stream, clock = _plain()
    progress.start("image", 10)
    clock.now += 1.0
    progress.advance(4)
    progress.finish()  # an error: finish runs in a finally
    progress.start("text", 5, unit="pairs")
    clock.now += 5.0
    progress.advance(5)
    progress.finish()
    lines = [_parsed(line) for line in _lines(stream)]
    assert [(p["label"], p["done"], p["total"], p["unit"], p["outlook"]) for p in lines] == [
        ("reading image", "0", "10", "rows", "ETA ?"), ("reading image", "4", "10", "rows", "stopped"),
        ("text", "0", "5", "pairs", "ETA ?"), ("text", "5", "5", "pairs", "done")]
    assert lines[-1]["rate"] == "1.00" and lines[-1]["elapsed"] == "0:00:05"


def test_calls_outside_a_task_write_nothing():
    progress, stream, _ = _plain(interval=0.0)
    progress.advance(3)
    progress.finish()
    progress.start("image", 3)
    progress.finish()
    progress.finish()
    assert len(_lines(stream)) == 2


def test_long_tasks_show_hours_and_large_rates_with_separators():
    progress, stream, clock = _plain(interval=0.0)
    progress.start("image", 100_000_000)
    clock.now += 3725.0
    progress.advance(12_345_678)
    assert _lines(stream)[1] == ("sdetool: reading image: 12,345,678/100,000,000 rows (12%), 3,314 rows/s, "
                                 "elapsed 1:02:05, ETA 7:20:47")


def test_lines_are_plain_text():
    progress, stream, clock = _plain(interval=0.0)
    progress.start("[bold]image[/]", 2)
    clock.now += 1.0
    progress.advance(2, "[red]loss[/]")
    progress.finish()
    assert not ANSI.search(stream.getvalue())
    assert _lines(stream)[0].startswith("sdetool: reading [bold]image[/]: ")  # markup is not interpreted


def test_the_default_stream_is_stderr_at_write_time(capsys):
    progress = PlainProgress(unit="rows", interval=0.0)
    progress.start("image", 1)
    progress.finish()
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 2


def test_the_module_examples_run():
    failures, tried = doctest.testmod(progressbar)
    assert tried > 0 and failures == 0


# --- the interval and the choice of display -------------------------------------------------------


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_VARIABLE, raising=False)
    assert progressbar.progress_interval() == 10.0
    monkeypatch.setenv(INTERVAL_VARIABLE, "0")
    assert progressbar.progress_interval() == 0.0
    monkeypatch.setenv(INTERVAL_VARIABLE, " 2.5 ")
    assert progressbar.progress_interval() == 2.5
    assert PlainProgress(io.StringIO(), clock=FakeClock())._interval == 2.5
    for bad in ("-1", "soon", "nan", "inf"):
        monkeypatch.setenv(INTERVAL_VARIABLE, bad)
        with pytest.raises(BadInputError, match=f"{INTERVAL_VARIABLE}='{bad}': expected a number of seconds >= 0"):
            progressbar.progress_interval()


def test_progress_for_picks_the_display():
    plain_file = io.StringIO()
    console = Console(file=plain_file)
    plain = progress_for(console, unit="items")
    assert isinstance(plain, PlainProgress) and plain._stream is plain_file and plain._unit == "items"
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(progress_for(terminal), RichProgress)
    for quiet, main in ((True, True), (False, False), (True, False)):
        assert progress_for(console, quiet, main=main) is None
        assert progress_for(terminal, quiet, main=main) is None


def test_rich_progress_takes_a_unit_per_task():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    bar = RichProgress(console, unit="steps")
    bar.start("evaluation before training", 4, unit="pairs")
    bar.advance(4)
    assert bar._bar.tasks[0].fields["unit"] == "pairs"
    bar.finish()
    bar.start("sde fine-tuning", 2)
    bar.advance(1, "loss 1.0")
    assert bar._bar.tasks[-1].fields["unit"] == "steps"
    bar.finish()


def test_reproduce_stages_get_plain_progress_without_a_terminal():
    from sdetool.cli.results import StageReporter

    console = Console(file=io.StringIO())
    assert isinstance(StageReporter(console, quiet=False).progress("items"), PlainProgress)
    assert StageReporter(console, quiet=True).progress("items") is None


# --- the commands, with stderr no terminal ---------------------------------------------------------


@pytest.fixture
def every_line(monkeypatch):
    """A line per advance, and no variable that would make rich treat the test's stderr as a terminal."""
    monkeypatch.setenv(INTERVAL_VARIABLE, "0")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def _progress_lines(text: str) -> list[dict]:
    return [_parsed(line) for line in text.splitlines() if LINE.match(line)]


def _tasks(lines: list[dict]) -> list[tuple[str, str]]:
    """(label, outlook) of every start line (nothing done, no ETA yet) and end line, in order."""
    return [(line["label"], line["outlook"]) for line in lines
            if line["outlook"] in ("done", "stopped") or (line["outlook"] == "ETA ?" and line["done"] == "0")]


def test_analyze_prints_start_middle_and_end_lines_on_stderr_and_json_on_stdout(every_line):
    result = assert_ok(invoke("analyze", "builtin:spiked", "--block-rows", "5000", "--json", "-"))
    document = json.loads(result.stdout)  # stdout: the JSON alone
    assert document["n_samples"] == 20000
    lines = _progress_lines(result.stderr)
    assert [(line["done"], line["outlook"]) for line in lines] == [
        ("0", "ETA ?"), ("5,000", lines[1]["outlook"]), ("10,000", lines[2]["outlook"]), ("15,000", lines[3]["outlook"]),
        ("20,000", "ETA 0:00:00"), ("20,000", "done")]
    assert all(line["label"] == "reading builtin:spiked" and line["total"] == "20,000" for line in lines)
    assert all(line["outlook"].startswith("ETA ") for line in lines[1:4])
    assert "sdetool:" not in result.stdout and not ANSI.search(result.stderr)


def test_analyze_with_the_default_interval_prints_the_start_and_end_lines(monkeypatch):
    monkeypatch.setenv(INTERVAL_VARIABLE, "3600")
    result = assert_ok(invoke("analyze", "builtin:spiked", "--block-rows", "5000", "--json", "-"))
    lines = result.stderr.splitlines()
    assert [_parsed(line)["outlook"] for line in lines[:2]] == ["ETA ?", "done"]
    assert [line for line in lines[2:] if LINE.match(line)] == []  # then the tables


def test_quiet_prints_nothing(every_line, tmp_path):
    result = assert_ok(invoke("analyze", "builtin:spiked", "--json", "-", "--quiet"))
    assert result.stderr == "" and json.loads(result.stdout)["n_rows"] == 20000
    result = assert_ok(invoke("compare", "builtin:spiked", "builtin:spiked", "--json", "-", "-q"))
    assert result.stderr == "" and json.loads(result.stdout)["sets"]
    assert_ok(invoke("plot", "spectrum", "builtin:spiked", "--out", tmp_path / "s.png", "-q"))


def test_an_error_stops_the_task_and_its_one_line_comes_last(every_line, tmp_path):
    image_folder(tmp_path / "images", 4, bad=True)
    result = invoke("extract", "--images", tmp_path / "images", "--out", tmp_path / "o.h5", "--strict",
                    "--num-workers", "0", "--batch-size", "1")
    assert result.exit_code == 2
    (error,) = message_lines(result.stderr)
    assert error.startswith("sdetool: error: ") and "(--strict)" in error and result.stderr.splitlines()[-1] == error
    lines = _progress_lines(result.stderr)
    assert (lines[0]["done"], lines[0]["outlook"]) == ("0", "ETA ?") and lines[-1]["outlook"] == "stopped"
    assert int(lines[-1]["done"]) < int(lines[-1]["total"]) == 6


def test_the_interval_variable_with_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv(INTERVAL_VARIABLE, "soon")
    result = invoke("analyze", "builtin:spiked")
    assert result.exit_code == 2 and f"{INTERVAL_VARIABLE}='soon'" in result.stderr


def test_a_real_process_with_stderr_in_a_pipe(tmp_path):
    env = {name: value for name, value in os.environ.items() if name not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    completed = subprocess.run([sys.executable, "-m", "sdetool", "analyze", "builtin:spiked", "--json", "-"],
                               capture_output=True, text=True, timeout=300, env={**env, INTERVAL_VARIABLE: "0"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(completed.stdout)["n_rows"] == 20000
    lines = _progress_lines(completed.stderr)
    assert lines[0]["outlook"] == "ETA ?" and lines[-1]["outlook"] == "done" and lines[-1]["done"] == "20,000"
    assert not ANSI.search(completed.stderr)


def test_compare_and_plot_report_the_stores_they_analyse(every_line, tmp_path):
    result = assert_ok(invoke("compare", "builtin:spiked", "builtin:spiked", "--json", "-"))
    assert json.loads(result.stdout)["sets"]
    assert _tasks(_progress_lines(result.stderr)) == [("reading builtin:spiked", "ETA ?"), ("reading builtin:spiked", "done")] * 2
    result = assert_ok(invoke("plot", "spectrum", "builtin:spiked", "--out", tmp_path / "s.png"))
    assert _tasks(_progress_lines(result.stderr)) == [("reading builtin:spiked", "ETA ?"), ("reading builtin:spiked", "done")]
    assert "wrote " in result.stderr and "wrote " not in result.stdout


def test_extract_reports_items(every_line, tmp_path):
    image_folder(tmp_path / "images", 6)
    out = tmp_path / "out.h5"
    result = assert_ok(invoke("extract", "--images", tmp_path / "images", "--out", out, "--json", "-",
                              "--num-workers", "0", "--batch-size", "2", "--chunk-items", "4"))
    assert json.loads(result.stdout)["rows"] == {"image": 6, "text": 6}
    lines = _progress_lines(result.stderr)
    assert all(line["unit"] == "items" and line["total"] == "6" and line["label"].startswith("embedding ")
               for line in lines)
    assert [line["done"] for line in lines] == ["0", "2", "4", "6", "6"]
    assert lines[-1]["outlook"] == "done" and lines[-1]["rate"] != "?"
    quiet = assert_ok(invoke("extract", "--images", tmp_path / "images", "--out", tmp_path / "q.h5", "-q",
                             "--num-workers", "0"))
    assert quiet.stderr == "" and quiet.stdout == ""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """120 cached pairs, d = 16, texts repeating every 12 rows."""
    rng = np.random.default_rng(0)
    text = rng.normal(size=(12, 16)).astype(np.float32)[np.arange(120) % 12]
    image = (text @ rng.normal(size=(16, 16)) + rng.normal(size=(120, 16))).astype(np.float32)
    ids = [f"pair-{i:03d}" for i in range(120)]
    path = str(tmp_path_factory.mktemp("pairs") / "pairs.h5")
    store.write_set(path, "image", image, ids=ids, mode="w")
    store.write_set(path, "text", text, ids=ids)
    return path


def _finetune(pairs: str, out, steps: int, *extra):
    return invoke("finetune", "--target", "head", "--embeddings", pairs, "--out", out, "--steps", steps,
                  "--batch-size", "32", "--device", "cpu", *extra)


@pytest.mark.usefixtures("one_torch_thread")
def test_finetune_reports_the_evaluations_and_the_steps_with_the_loss(every_line, pairs, tmp_path):
    result = assert_ok(_finetune(pairs, tmp_path / "run", 3, "--json", "-"))
    document = json.loads(result.stdout)
    held_out = document["evaluation"]["before"]["pairs"]
    lines = _progress_lines(result.stderr)
    assert _tasks(lines) == [("evaluation before training", "ETA ?"), ("evaluation before training", "done"),
                             ("sde fine-tuning", "ETA ?"), ("sde fine-tuning", "done"),
                             ("evaluation after training", "ETA ?"), ("evaluation after training", "done")]
    steps = [line for line in lines if line["label"] == "sde fine-tuning"]
    assert [line["done"] for line in steps] == ["0", "1", "2", "3", "3"]
    assert all(line["unit"] == "steps" and line["total"] == "3" for line in steps)
    assert steps[0]["status"] is None and all(re.fullmatch(r"loss -?\d+\.\d{4}", line["status"]) for line in steps[1:])
    evaluations = [line for line in lines if line["label"].startswith("evaluation")]
    assert all(line["unit"] == "pairs" and line["total"] == str(held_out) for line in evaluations)


class _CtrlCAfterSteps:
    """A progress display that presses Ctrl-C (a real SIGINT) once ``count`` training steps have finished."""

    def __init__(self, count: int) -> None:
        self.count, self.steps, self.training = count, 0, False

    def start(self, label: str, total: int, unit: str | None = None) -> None:
        self.training = unit is None

    def advance(self, count: int, status: str = "") -> None:
        self.steps += count if self.training else 0
        if self.training and self.steps == self.count:
            signal.raise_signal(signal.SIGINT)

    def finish(self) -> None:
        self.training = False


@pytest.mark.usefixtures("one_torch_thread")
def test_finetune_resumed_names_the_step_and_quiet_is_silent(every_line, pairs, tmp_path):
    out = tmp_path / "run"
    options = FinetuneOptions(target="head", steps=5, batch_size=32, device="cpu")
    with pytest.raises(TrainingInterrupted, match="after step 3 of 5"):  # the step under way finishes
        finetune(str(out), options, embeddings=pairs, progress=_CtrlCAfterSteps(2))
    result = assert_ok(_finetune(pairs, out, 5, "--resume"))
    steps = [line for line in _progress_lines(result.stderr) if "fine-tuning" in line["label"]]
    assert {line["label"] for line in steps} == {"sde fine-tuning (resumed at step 3 of 5)"}
    assert [(line["done"], line["total"]) for line in steps] == [("0", "2"), ("1", "2"), ("2", "2"), ("2", "2")]
    quiet = assert_ok(_finetune(pairs, tmp_path / "quiet", 3, "-q"))
    assert quiet.stderr == "" and quiet.stdout == ""
