"""The examples a user copies from run and say what they claim."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_runs(tmp_path):
    completed = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "image: strong 8" in completed.stdout
    assert "sigma 0.0200 (planted 0.02)" in completed.stdout
    assert (tmp_path / "pairs.h5").exists()
