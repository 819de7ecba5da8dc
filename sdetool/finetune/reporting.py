"""``finetune --report-to tensorboard``: the numbers of ``metrics.jsonl`` as TensorBoard scalars, written
as the run logs them (``OUT/tensorboard/``; ``tensorboard --logdir OUT`` shows them)."""

from __future__ import annotations

import os

from sdetool.errors import BadInputError

REPORT_TO = ("none", "tensorboard")
FOLDER = "tensorboard"
BANDS = ("strong", "weak", "noise")


def check_tensorboard() -> None:
    """Refuse at once, in one line, when the tensorboard package is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise BadInputError("--report-to tensorboard: needs the tensorboard package "
                            "(pip install 'sdetool[tensorboard]')") from None


def scalars(record: dict) -> dict[str, float]:
    """The scalars of one metrics record: numbers by name, band-share lists as ``name/strong`` and so on."""
    values = {}
    for name, value in record.items():
        if name == "step" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            values[name] = float(value)
        elif isinstance(value, (list, tuple)) and len(value) == len(BANDS) and all(
                isinstance(v, (int, float)) for v in value):
            values.update({f"{name}/{band}": float(v) for band, v in zip(BANDS, value)})
    return values


def tensorboard_report(run_folder: str):
    """The metrics records' scalars at their steps in ``OUT/tensorboard``: the monitor's TensorBoard writer
    (:class:`sdetool.monitor.TensorBoardWriter`), given this module's :func:`scalars`."""
    from sdetool.monitor import TensorBoardWriter

    return TensorBoardWriter(os.path.join(run_folder, FOLDER), to_scalars=scalars, prefix="")
