"""``finetune --report-to tensorboard``: the metrics.jsonl numbers as TensorBoard scalars, read back with
TensorBoard's own event reader; and ``--webdataset`` pairs for a model run."""

from __future__ import annotations

import json
import os

import pytest
from cli_helpers import assert_error, assert_ok, invoke

from sdetool.finetune.reporting import scalars

pytest.importorskip("tensorboard")  # an optional extra (sdetool[tensorboard]); the test extra installs it


def test_scalars_of_a_record():
    record = {"step": 4, "loss": 1.5, "image_shares": [0.5, 0.3, 0.2], "note": "x", "finished": True}
    assert scalars(record) == {"loss": 1.5, "image_shares/strong": 0.5, "image_shares/weak": 0.3,
                               "image_shares/noise": 0.2}


def test_tensorboard_gets_every_logged_number(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert_ok(invoke("finetune", "--out", out, "--steps", "6", "--batch-size", "32", "--log-every", "2",
                     "--eval-limit", "64", "--report-to", "tensorboard", "-q"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "image_shares/noise"} <= tags
    logged = {(event.step, round(event.value, 5)) for event in events.Scalars("loss")}
    assert logged == {(record["step"], round(record["loss"], 5)) for record in records}


def test_report_to_an_unknown_tracker_is_usage_error(tmp_path):
    result = invoke("finetune", "--out", tmp_path / "run", "--report-to", "wandb", "-q")
    assert result.exit_code == 2 and not os.path.exists(tmp_path / "run")


def test_report_to_without_tensorboard_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    assert_error(invoke("finetune", "--out", tmp_path / "run", "--steps", "2", "--report-to", "tensorboard", "-q"), 2,
                 "needs the tensorboard package")
    assert not os.path.exists(tmp_path / "run" / "config.json")
