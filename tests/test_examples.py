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


def test_finetune_seeds_runs_and_summarises(tmp_path):
    completed = subprocess.run([sys.executable, str(ROOT / "examples" / "finetune_seeds.py"), "--out", str(tmp_path),
                                "--steps", "3", "--seeds", "0", "--eval-limit", "200"],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "| zero-shot accuracy (%) |" in completed.stdout and "after infonce" in completed.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["infonce-seed0", "sde-seed0", "summary.json", "summary.md"]


def test_noisy_head_adds_the_noise_it_says(tmp_path):
    completed = subprocess.run([sys.executable, str(ROOT / "examples" / "noisy_head.py"), "--out", str(tmp_path),
                                "--steps", "3", "--seeds", "0", "--noise-share", "0.4"],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    import json

    before = json.loads((tmp_path / "sde-seed0" / "eval.json").read_text())["before"]["bands"]["image"]
    # isotropic noise carrying 40% of the energy lands (mostly) in the noise band
    assert 0.3 < before["noise"]["energy_share"] < 0.45


def test_band_views_runs_and_reports_both_views(tmp_path):
    completed = subprocess.run([sys.executable, str(ROOT / "examples" / "band_views.py"), "--out", str(tmp_path),
                                "--limit", "300"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    spatial = summary["spatial_bands"]
    assert [view["grid"] + [view["channels"]] for view in spatial.values()] == [[7, 7, 128], [7, 7, 16], [28, 28, 1]]
    for view in spatial.values():
        assert abs(sum(band["energy_share"] for band in view["bands"]) - 1) < 1e-9
    assert set(summary["probes"]["lit-fmnist conv map"]) >= {"whole grid", "band 0", "band 3"}
    assert all(0 <= accuracy <= 1 for probe in summary["probes"].values() for accuracy in probe.values())
    assert summary["svd_bands"]["cross"][0]["dimensions"] > 0
    assert (tmp_path / "tokens.png").stat().st_size > 10_000
    assert "## Spatial-frequency energy share" in completed.stdout
