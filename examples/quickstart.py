"""Write an embedding store with known structure, analyse it, and gate on the result.

Run: python examples/quickstart.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from sdetool.api import AnalysisOptions, analyze, evaluate_checks, parse_check
from sdetool.io import store
from sdetool.spectral.synthetic import planted_spikes


def main(folder: Path) -> int:
    # Paired "image" and "text" sets sharing 8 signal directions, plus a cone offset in each.
    rng = np.random.default_rng(0)
    shared = planted_spikes(5000, 256, np.geomspace(6.0, 1.0, 8), sigma=0.02, offset_norm=1.0, seed=1)
    image = shared.matrix
    text = shared.matrix + 0.01 * rng.standard_normal(image.shape) - 0.5 * shared.offset
    path = folder / "pairs.h5"
    ids = [f"pair-{i}" for i in range(image.shape[0])]
    store.write_set(str(path), "image", image, ids=ids, attrs={"modality": "image", "model": "example"})
    store.write_set(str(path), "text", text, ids=ids, attrs={"modality": "text", "model": "example"})

    report = analyze(str(path), keys=["image", "text"], options=AnalysisOptions(top_k=8))
    for key, result in report.sets.items():
        bands = result.to_dict()["bands"]
        summary = ", ".join(f"{name} {band['count']} ({band['energy_share']:.1%})" for name, band in bands.items())
        print(f"{key}: {summary}; sigma {result.partition.sigma:.4f} (planted 0.02)")
    pair = report.cross[0]
    print(f"{pair.name}: Hellinger {pair.hellinger:.3f}, top-8 subspace overlap {pair.subspace_overlap:.3f}, "
          f"modality gap {pair.modality_gap:.3f}")

    failed = [r for r in evaluate_checks([parse_check("bands.noise.energy_share > 0.9")], report.to_dict()) if r.failed]
    for result in failed:
        print("check failed:", result.describe())
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory() as temp:
        sys.exit(main(Path(temp)))
