"""Where the Gram is accumulated: numpy/BLAS on the CPU, or float64 on a CUDA device through torch.

``auto`` picks CUDA only when the work is large enough to repay importing torch (a few seconds) and
a GPU is present; torch is never imported for small inputs or when it is not installed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re

from sdetool.errors import BadInputError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|torch:cpu)$")
# n * d^2 above which a GPU pays for itself: about a second of float64 syrk on a 2-core laptop.
AUTO_CUDA_FLOPS = 1e11


def check_device(device: str) -> None:
    """Refuse device names other than ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (and ``torch:cpu``)."""
    if not DEVICE_PATTERN.match(device or ""):
        raise BadInputError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def nvidia_device_files() -> bool:
    """Whether the NVIDIA driver exposes a device here (checked without importing torch)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.isdir("/proc/driver/nvidia")


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str, rows: int, dim: int) -> str:
    """The concrete device for ``rows x dim`` rows: ``cpu``, ``torch:cpu`` or ``cuda:N``.

    ``torch:cpu`` runs the torch code path on the CPU (it exists to test that path without a GPU).
    Under ``torchrun`` plain ``cuda`` means this rank's ``LOCAL_RANK`` device.
    """
    check_device(device)
    if device == "auto":
        # Importing torch costs seconds: only where the work is large and a GPU can be there at all.
        if rows * dim * dim < AUTO_CUDA_FLOPS or not nvidia_device_files() or not _cuda_available():
            return "cpu"
        device = "cuda"
    if device.startswith("cuda"):
        if not _cuda_available():
            raise BadInputError(f"--device {device}: no CUDA device is available here (use cpu or auto)")
        import torch

        index = int(device.partition(":")[2] or os.environ.get("LOCAL_RANK", "0"))
        if index >= torch.cuda.device_count():
            raise BadInputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        return f"cuda:{index}"
    return device


def describe(device: str) -> str:
    """``cpu``, or the device with its name (``cuda:0 (NVIDIA H100 80GB HBM3)``)."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
