"""The torch (GPU) accumulator gives the statistics of the numpy one; CUDA checks run where a GPU is."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sdetool.analysis.analyze import AnalysisOptions, analyze
from sdetool.errors import BadInputError
from sdetool.runtime.devices import resolve_device
from sdetool.spectral.gram import GramAccumulator

torch = pytest.importorskip("torch")
from sdetool.spectral.gram_torch import TorchGramAccumulator  # noqa: E402

DEVICES = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])


def _both(matrix, block, device, **kwargs):
    reference = GramAccumulator(dim=matrix.shape[1], **kwargs)
    candidate = TorchGramAccumulator(matrix.shape[1], device, **kwargs)
    for start in range(0, matrix.shape[0], block):
        reference.update(matrix[start : start + block])
        candidate.update(matrix[start : start + block])
    return reference.finalize(), candidate.finalize()


def _assert_same(a, b):
    assert (a.n, a.zero_rows, a.nonfinite_rows, a.first_nonfinite) == (b.n, b.zero_rows, b.nonfinite_rows, b.first_nonfinite)
    assert_allclose(b.mean, a.mean, rtol=1e-12, atol=1e-12)
    assert_allclose(b.scatter, a.scatter, rtol=1e-10, atol=1e-9 * np.abs(a.scatter).max())
    assert_allclose(b.unit_sum, a.unit_sum, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("l2", [False, True])
def test_torch_accumulator_matches_numpy(device, dtype, l2):
    rng = np.random.default_rng(0)
    matrix = (rng.standard_normal((700, 24)) * 2 + 3).astype(dtype)
    matrix[5] = 0  # a zero row
    _assert_same(*_both(matrix, 64, device, l2=l2))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_accumulator_nonfinite_rows(device):
    matrix = np.random.default_rng(1).standard_normal((300, 8))
    matrix[[10, 150, 299], 3] = [np.nan, np.inf, -np.inf]
    _assert_same(*_both(matrix, 50, device, drop_nonfinite=True))
    refused = TorchGramAccumulator(8, device)
    for start in range(0, 300, 50):
        refused.update(matrix[start : start + 50])
    state = refused.finalize()
    assert refused.failed and (state.nonfinite_rows, state.first_nonfinite) == (3, 10)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_accumulator_row_sample_equals_numpy(device):
    matrix = np.random.default_rng(2).standard_normal((2000, 6)).astype(np.float32)
    a, b = _both(matrix, 128, device, sample_rows=100, seed=3)
    order_a, order_b = np.argsort(a.entry_keys), np.argsort(b.entry_keys)
    assert_allclose(b.entry_keys[order_b], a.entry_keys[order_a])
    assert_allclose(b.entry_sample[order_b], a.entry_sample[order_a], rtol=1e-12, atol=1e-12)


def test_analysis_on_the_torch_path_equals_the_numpy_path(tmp_path):
    matrix = np.random.default_rng(4).standard_normal((3000, 40)).astype(np.float32)
    matrix[:, :3] *= 6
    path = str(tmp_path / "x.npy")
    np.save(path, matrix)
    devices = ["torch:cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    reference = analyze(path, options=AnalysisOptions(device="cpu", noise_estimator="iqr")).to_dict()
    assert reference["device"] == "cpu"
    for device in devices:
        document = analyze(path, options=AnalysisOptions(device=device, noise_estimator="iqr")).to_dict()
        assert_allclose(document["singular_values"], reference["singular_values"], rtol=1e-9)
        assert document["noise"]["sigma"] == pytest.approx(reference["noise"]["sigma"], rel=1e-9)
        assert {k: v["count"] for k, v in document["bands"].items()} == {k: v["count"] for k, v in reference["bands"].items()}


def test_device_resolution():
    assert resolve_device("auto", 100, 10) == "cpu"  # small work never imports a GPU stack
    assert resolve_device("torch:cpu", 100, 10) == "torch:cpu"
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="no CUDA device"):
            resolve_device("cuda", 100, 10)
        assert resolve_device("auto", 10**7, 4096) == "cpu"
    else:
        assert resolve_device("auto", 10**7, 4096) == "cuda:0"
    with pytest.raises(BadInputError, match="expected auto, cpu, cuda"):
        AnalysisOptions(device="gpu")


def test_auto_device_on_a_machine_without_nvidia_devices_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    from sdetool.runtime.devices import nvidia_device_files

    if nvidia_device_files():
        pytest.skip("this machine has NVIDIA devices: auto may rightly import torch")
    code = ("import sys; from sdetool.runtime.devices import resolve_device; "
            "print(resolve_device('auto', 10**7, 4096), 'torch' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["cpu", "False"]
