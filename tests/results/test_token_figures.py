"""The Prism figure (``plot tokens``), the band views of ``compare``, and the pixel baselines.

Stores are written with sdetool's own writer and hold planted token grids (8 x 8 x 2) whose spatial band
shares are known exactly: constant grids (all energy at zero frequency: band 0), checkerboards (all at the
grid's highest frequency: the top band) and their sums with known weights (band 0 share c^2 / (c^2 + b^2)).
The constants cancel over each pair of images, so the default channel centring leaves every grid as it is.
Figures are read back from their matplotlib artists; written files are checked by their parsers.
The pixel baselines are checked on real Fashion-MNIST test images against an independent numpy patchify.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from numpy.testing import assert_allclose
from PIL import Image

from sdetool.analysis import checks
from sdetool.errors import BadInputError, UnknownModelError
from sdetool.extract.data import fashion_mnist
from sdetool.extract.models import load_model
from sdetool.extract.models.lit import GrayscaleTransform, standardize_pixels
from sdetool.io import store
from sdetool.results import plots
from sdetool.results.compare import compare_paths
from sdetool.results.figures import PlotOptions, plot, token_series

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, H, W, C, D, K = 42, 8, 8, 2, 16, 4
PAIR = np.arange(N) // 2
SIGN = np.where(np.arange(N) % 2, -1.0, 1.0)
CHECKER = ((-1.0) ** np.add.outer(np.arange(H), np.arange(W)))[:, :, None] * np.ones(C)
MIX_C = SIGN * np.array([1.0, 2.0, 1.0])[PAIR % 3]  # constant part of the mixed grids
MIX_B = np.array([1.0, 1.0, 2.0])[PAIR % 3]  # checkerboard part
MIX_LOW = MIX_C**2 / (MIX_C**2 + MIX_B**2)  # their band-0 shares: 0.5, 0.8, 0.2


def _white_shares(k: int = K) -> np.ndarray:
    """Hard bands' fractions of the 8 x 8 FFT bins, from integers: with r = sqrt(a^2 + b^2) / sqrt(32), bin (a, b) is
    in band max{j < k: 32 j^2 <= k^2 (a^2 + b^2)} (a radius on a boundary belongs to the band above)."""
    a = np.abs(np.rint(np.fft.fftfreq(H) * H)).astype(int)
    squares = np.add.outer(a**2, a**2)
    index = sum((squares * k * k >= 32 * j * j).astype(int) for j in range(1, k))
    return np.bincount(index.ravel(), minlength=k) / index.size


def _grids() -> dict:
    constant = (SIGN * (1 + PAIR % 3))[:, None, None, None] * np.ones((N, H, W, C))
    checker = (1 + np.arange(N) % 3)[:, None, None, None] * CHECKER[None]
    mixed = MIX_C[:, None, None, None] + MIX_B[:, None, None, None] * CHECKER[None]
    return {"const": constant, "checker": checker, "mixed": mixed}


def _write(path, seed: int, tokens=None) -> str:
    rng = np.random.default_rng(seed)
    with store.StoreWriter(str(path)) as writer:
        target = writer.create_set("image", D, with_ids=False, expected_rows=N)
        target.append((rng.normal(size=(N, D)) * np.linspace(3.0, 0.5, D)).astype(np.float32))
        if tokens is not None:
            target.append_tokens(tokens)
    return str(path)


def _load(path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Stores const / checker / mixed / plain (no tokens) and their reports (``<name><K>.json``)."""
    root = tmp_path_factory.mktemp("tokens")
    paths = {name: _write(root / f"{name}.h5", seed, grids) for seed, (name, grids) in enumerate(_grids().items())}
    paths["plain"] = _write(root / "plain.h5", 9)
    both = ["--spatial-bands", 4, "--bands", 3]
    for name, source, extra in (("const4", "const", both), ("checker4", "checker", both), ("mixed4", "mixed", both),
                                ("mixed2", "mixed", ["--spatial-bands", 2]),
                                ("mixed4smooth", "mixed", ["--spatial-bands", 4, "--smooth"]), ("plain0", "plain", [])):
        paths[name] = str(root / f"{name}.json")
        assert_ok(invoke("analyze", paths[source], *extra, "--json", paths[name], "-q"))
    paths["root"] = root
    return paths


def _view(path) -> dict:
    return _load(path)["spatial_bands"]


def _shares(view, field="energy_share"):
    return np.array([band[field] for band in view["bands"]], dtype=np.float64)


def test_planted_reports_hold_the_known_shares(files):
    low, high = MIX_LOW, 1 - MIX_LOW
    expected = {"const4": ([1, 0, 0, 0], [0] * 4), "checker4": ([0, 0, 0, 1], [0] * 4),
                "mixed4": ([low.mean(), 0, 0, high.mean()], [low.std(), 0, 0, high.std()]),
                "mixed2": ([low.mean(), high.mean()], [low.std(), high.std()])}
    for name, (mean, std) in expected.items():
        view = _view(files[name])
        assert view["grid"] == [H, W] and view["channels"] == C and view["n_images"] == N and view["empty_images"] == 0
        assert_allclose(_shares(view), mean, atol=1e-6)
        assert_allclose(_shares(view, "energy_share_std"), std, atol=1e-6)
        assert_allclose(_shares(view, "white_noise_share"), _white_shares(len(mean)), atol=1e-12)
    assert _load(files["plain0"])["spatial_bands"] is None


# --- the figure ------------------------------------------------------------------------------------


def _tokens_axes(figure):
    found = [axes for axes in figure.axes if axes.get_label() == "tokens"]
    assert len(found) == 1, [axes.get_label() for axes in figure.axes]
    return found[0]


def _read_figure(figure, count: int, bands: int):
    """Per series: bar x, heights, error-bar half lengths and white-noise line heights (from the artists)."""
    axes = _tokens_axes(figure)
    containers = [c for c in axes.containers if hasattr(c, "patches")]
    assert len(containers) == count and all(len(c.patches) == bands for c in containers)
    error_lines = [c.errorbar.lines[2][0] for c in containers]
    white = [c for c in axes.collections if isinstance(c, LineCollection) and c not in error_lines]
    assert len(white) == count
    series = []
    for container, errors, lines in zip(containers, error_lines, white):
        x = np.array([p.get_x() + p.get_width() / 2 for p in container.patches])
        heights = np.array([p.get_height() for p in container.patches])
        segments = [np.asarray(s) for s in errors.get_segments()]
        assert_allclose([s[:, 0] for s in segments], np.repeat(x[:, None], 2, axis=1))
        assert_allclose([s.mean(axis=0)[1] for s in segments], heights, atol=1e-9)  # centred on the bar tops
        flat = [np.asarray(s) for s in lines.get_segments()]
        assert_allclose([s[:, 0].mean() for s in flat], x, atol=1e-9)  # a white-noise line over each bar
        series.append({"x": x, "heights": heights, "errors": np.array([np.ptp(s[:, 1]) / 2 for s in segments]),
                       "white": np.array([s[0, 1] for s in flat]), "flat": [s[0, 1] == s[1, 1] for s in flat]})
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    return axes, series, legend


def _hand_view(shares, stds, whites, grid=(7, 7), channels=16) -> dict:
    edges = np.linspace(0, 1, len(shares) + 1)
    return {"grid": list(grid), "channels": channels, "bands": [
        {"band": k, "low": edges[k], "high": edges[k + 1], "energy_share": s, "energy_share_std": d,
         "white_noise_share": w}
        for k, (s, d, w) in enumerate(zip(shares, stds, whites))]}


def test_tokens_figure_draws_the_given_numbers():
    first = _hand_view([0.61, 0.22, 0.12, 0.05], [0.1, 0.04, 0.02, 0.01], [0.06, 0.2, 0.5, 0.24])
    second = _hand_view([0.25, None, 0.35, 0.4], [0.05, None, 0.0, 0.2], [0.1, 0.3, 0.4, 0.2], (28, 28), 1)
    figure = plots.tokens_figure([("semantic", first), ("pixels", second)], title="Prism")
    assert isinstance(figure, Figure)
    axes, series, legend = _read_figure(figure, 2, 4)
    for drawn, view in zip(series, (first, second)):
        assert_allclose(drawn["heights"], [100 * (b["energy_share"] or 0) for b in view["bands"]], rtol=1e-12)
        assert_allclose(drawn["errors"], [100 * (b["energy_share_std"] or 0) for b in view["bands"]],
                        rtol=1e-9, atol=1e-12)
        assert_allclose(drawn["white"], [100 * b["white_noise_share"] for b in view["bands"]], rtol=1e-12)
        assert all(drawn["flat"])
    # grouped by band: series side by side inside each band, low frequency left
    assert np.all(series[0]["x"] < series[1]["x"]) and np.all(np.diff(series[0]["x"]) > 0)
    assert_allclose((series[0]["x"] + series[1]["x"]) / 2, np.arange(4), atol=1e-12)
    assert sorted(legend) == ["pixels (28x28x1)", "semantic (7x7x16)", "white noise on that grid"]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["0-0.25", "0.25-0.5", "0.5-0.75", "0.75-1"]
    assert axes.get_ylim() == (0, 100) and axes.get_title() == "Prism"


def test_token_series_of_stores_equals_their_reports(files):
    from_stores = token_series([files["const"], files["mixed"]], PlotOptions())
    from_reports = token_series([files["const4"], files["mixed4"]], PlotOptions())
    assert [label for label, _ in from_stores] == ["const", "mixed"]
    assert [label for label, _ in from_reports] == ["const4", "mixed4"]
    for (_, fresh), (_, stored) in zip(from_stores, from_reports):
        for name in ("energy_share", "energy_share_std", "white_noise_share"):
            assert_allclose(_shares(fresh, name), _shares(stored, name), atol=1e-12)


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``sdetool plot`` saves, captured on their way to the file."""
    figures, save = [], plots.save_figure

    def capture(figure, path, dpi=150):
        figures.append(figure)
        save(figure, path, dpi=dpi)

    monkeypatch.setattr(plots, "save_figure", capture)
    return figures


def test_cli_plot_tokens_from_stores_writes_png_and_svg(files, drawn):
    out_png, out_svg = files["root"] / "stores.png", files["root"] / "stores.svg"
    result = assert_ok(invoke("plot", "tokens", files["const"], files["checker"], "--out", out_png))
    assert "(tokens: const, checker)" in " ".join(result.stderr.split())
    with Image.open(out_png) as image:
        image.verify()
    assert_ok(invoke("plot", "tokens", files["const"], files["checker"], "--out", out_svg, "-q"))
    assert ET.parse(out_svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    for figure in drawn:
        _, series, legend = _read_figure(figure, 2, K)
        assert_allclose(series[0]["heights"], [100, 0, 0, 0], atol=1e-4)
        assert_allclose(series[1]["heights"], [0, 0, 0, 100], atol=1e-4)
        assert_allclose(series[0]["white"], 100 * _white_shares(), rtol=1e-12)
        assert sorted(legend) == ["checker (8x8x2)", "const (8x8x2)", "white noise on that grid"]


def test_cli_plot_tokens_from_reports_with_labels(files, drawn):
    out = files["root"] / "reports.png"
    result = assert_ok(invoke("plot", "tokens", files["mixed4"], files["const4"], "--out", out,
                              "--label", "mix", "--label", "flat"))
    assert "(tokens: mix, flat)" in " ".join(result.stderr.split())
    with Image.open(out) as image:
        assert image.format == "PNG"
    svg = files["root"] / "reports.svg"
    assert_ok(invoke("plot", "tokens", files["mixed4"], files["const4"], "--out", svg, "-q",
                     "--label", "mix", "--label", "flat"))
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    _, series, legend = _read_figure(drawn[-1], 2, K)
    view = _view(files["mixed4"])
    assert_allclose(series[0]["heights"], 100 * _shares(view), rtol=1e-12)
    assert_allclose(series[0]["errors"], 100 * _shares(view, "energy_share_std"), rtol=1e-9)
    assert_allclose(series[0]["heights"], [50, 0, 0, 50], atol=1e-4)
    assert_allclose(series[0]["errors"], [100 * np.sqrt(0.06)] * 1 + [0, 0] + [100 * np.sqrt(0.06)], atol=1e-4)
    assert sorted(legend) == ["flat (8x8x2)", "mix (8x8x2)", "white noise on that grid"]
    assert plot("tokens", [files["mixed4"]], str(out), PlotOptions(labels=("x",)))["series"] == ["x"]


def test_cli_plot_tokens_analysis_options_reach_the_stores(files, drawn):
    out = files["root"] / "options.svg"
    # each image's own mean removed: the constant part is gone, the checkerboard holds everything
    assert_ok(invoke("plot", "tokens", files["mixed"], "--out", out, "--spatial-center", "image", "-q"))
    _, (centred,), _ = _read_figure(drawn[-1], 1, K)
    assert_allclose(centred["heights"], [0, 0, 0, 100], atol=1e-4)
    assert_allclose(centred["errors"], 0, atol=1e-4)
    assert_ok(invoke("plot", "tokens", files["mixed"], "--out", out, "--smooth", "-q"))
    _, (smooth,), _ = _read_figure(drawn[-1], 1, K)
    assert_allclose(smooth["white"], 100 * _shares(_view(files["mixed4smooth"]), "white_noise_share"), rtol=1e-12)
    assert not np.allclose(smooth["white"], 100 * _white_shares())
    assert_ok(invoke("plot", "tokens", files["mixed"], "--out", out, "--spatial-bands", 2, "-q"))
    _, (two,), _ = _read_figure(drawn[-1], 1, 2)
    assert_allclose(two["heights"], 100 * _shares(_view(files["mixed2"])), atol=1e-9)


def test_cli_plot_tokens_errors_are_one_line(files):
    out = files["root"] / "never.png"
    assert_error(invoke("plot", "tokens", files["plain0"], "--out", out), 2, "no spatial bands")
    assert_error(invoke("plot", "tokens", files["mixed4"], files["mixed2"], "--out", out), 2,
                 "spatial bands differ (K 2, hard, centre channel; K 4, hard, centre channel)")
    assert_error(invoke("plot", "tokens", files["mixed4"], files["mixed"], "--spatial-bands", 2, "--out", out), 2,
                 "spatial bands differ")
    assert_error(invoke("plot", "tokens", files["plain"], "--out", out), 2, "no patch-token grids")
    assert_error(invoke("plot", "tokens", files["const4"], files["mixed4"], "--out", out, "--label", "one"), 2,
                 "--label given 1 times for 2 series")
    assert_error(invoke("plot", "tokens", files["mixed"], "--out", out, "--spatial-bands", 10), 2, "at most 9")
    assert_error(invoke("plot", "tokens", files["root"] / "nowhere.json", "--out", out), 2, "no such file")
    assert not out.exists()
    with pytest.raises(BadInputError, match="no spatial bands"):
        token_series([files["plain0"]], PlotOptions())


# --- compare ---------------------------------------------------------------------------------------


def _compare(*args) -> dict:
    return json.loads(assert_ok(invoke("compare", *args, "--json", "-", "-q")).stdout)


def _deltas(entry, view):
    return np.array([band["energy_share"]["delta"] for band in entry[view]], dtype=np.float64)


def test_compare_planted_stores_gives_the_exact_band_deltas(files):
    document = _compare(files["const"], files["checker"], "--spatial-bands", 4, "--bands", 3)
    entry = document["sets"]["image"]
    assert [band["band"] for band in entry["spatial_bands"]] == [0, 1, 2, 3]
    assert_allclose(_deltas(entry, "spatial_bands"), [-1, 0, 0, 1], atol=1e-6)
    before, after = (_load(files[name])["svd_bands"]["bands"] for name in ("const4", "checker4"))
    assert len(entry["svd_bands"]) == 3
    for band, first, second in zip(entry["svd_bands"], before, after):
        share = band["energy_share"]
        assert_allclose([share["before"], share["after"]], [first["energy_share"], second["energy_share"]], rtol=1e-9)
        assert_allclose(share["delta"], second["energy_share"] - first["energy_share"], rtol=1e-9, atol=1e-12)
    assert not any("not compared" in note or "only on the" in note for note in document["notes"])
    # the same from their reports, and nothing without the options
    reports = _compare(files["const4"], files["checker4"])["sets"]["image"]
    assert_allclose(_deltas(reports, "spatial_bands"), _deltas(entry, "spatial_bands"), atol=1e-12)
    assert_allclose(_deltas(reports, "svd_bands"), _deltas(entry, "svd_bands"), rtol=1e-9, atol=1e-12)
    plain = _compare(files["const"], files["checker"])
    assert plain["sets"]["image"]["spatial_bands"] is None and plain["sets"]["image"]["svd_bands"] is None


def test_compare_reports_with_different_views_gives_null_and_a_note(files):
    document = _compare(files["mixed4"], files["mixed2"])
    entry = document["sets"]["image"]
    assert entry["spatial_bands"] is None and entry["svd_bands"] is None
    assert "image: spatial_bands not compared: the two sides' bands differ (k 4 vs 2); analyze both alike" in document["notes"]
    assert "image: svd_bands only on the before side, not compared" in document["notes"]
    smooth = files["root"] / "mixed4-smooth.json"
    assert_ok(invoke("analyze", files["mixed"], "--spatial-bands", 4, "--smooth", "--spatial-center", "none", "--json",
                     smooth, "-q"))
    same_k = _compare(files["mixed4"], smooth)  # same K, other masks and centring: not the same bands
    assert same_k["sets"]["image"]["spatial_bands"] is None
    assert any("center channel vs none" in note and "smooth False vs True" in note for note in same_k["notes"])
    other = _compare(files["plain0"], files["const4"])
    assert other["sets"]["image"]["spatial_bands"] is None
    assert "image: spatial_bands only on the after side, not compared" in other["notes"]


def test_fail_if_on_the_band_views(files):
    check = "spatial_bands.0.energy_share.delta < 0"
    fell = invoke("compare", files["const"], files["checker"], "--spatial-bands", 4, "-q", "--fail-if", check)
    assert fell.exit_code == 1, (fell.output, fell.exception)
    assert "FAILED" in fell.stderr and "[image] spatial_bands.0.energy_share.delta" in fell.stderr
    rose = invoke("compare", files["checker"], files["const"], "--spatial-bands", 4, "-q", "--fail-if", check)
    assert rose.exit_code == 0 and rose.stderr == "", (rose.output, rose.exception)
    top = invoke("compare", files["const4"], files["checker4"], "-q",
                 "--fail-if", "sets.image.spatial_bands.3.energy_share.delta > 0.5",
                 "--fail-if", "svd_bands.2.energy_share.after > 2")
    assert top.exit_code == 1 and top.stderr.count("FAILED") == 1, top.stderr
    null = invoke("compare", files["mixed4"], files["mixed2"], "-q",
                  "--fail-if", "spatial_bands.1.energy_share.delta > 99")
    assert null.exit_code == 1, null.output  # a null view fails its check


def test_fail_if_typo_in_a_band_view_name_is_refused_before_any_work(files):
    missing, out = files["root"] / "missing.h5", files["root"] / "never.json"
    result = invoke("compare", missing, files["const"], "--json", out,
                    "--fail-if", "spatial_band.0.energy_share.delta < 0")
    assert_error(result, 2, "spatial_band.0.energy_share.delta", "no value")
    assert not out.exists()
    # a valid path passes the check and the missing input is what is reported
    assert_error(invoke("compare", missing, files["const"], "--fail-if", "svd_bands.0.energy_share.delta < 0"), 2,
                 "missing.h5")
    checks.check_paths([checks.parse_check("sets.a:b.spatial_bands.7.band == 7")], compare_paths())


# --- the pixel baselines ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist():
    return fashion_mnist.load("test").images[:30]


def _patchify(images: np.ndarray, patch: int) -> np.ndarray:
    side = images.shape[1] // patch
    out = np.zeros((images.shape[0], side, side, patch * patch), dtype=images.dtype)
    for i in range(side):
        for j in range(side):
            out[:, i, j, :] = images[:, patch * i:patch * (i + 1), patch * j:patch * (j + 1)].reshape(len(images), -1)
    return out


@pytest.mark.parametrize("name, shape", [("pixels-fmnist", (28, 28, 1)), ("patches-fmnist", (7, 7, 16))])
def test_pixel_models_embed_the_standardised_pixels(fmnist, name, shape):
    import torch

    model = load_model(f"builtin:{name}")
    assert model.dim == 784 and model.modalities == ("image",) and model.has_tokens and model.backend == "builtin"
    transform = model.image_transform()
    assert isinstance(transform, GrayscaleTransform)
    standard = standardize_pixels(fmnist[:12])
    assert_allclose(transform(Image.fromarray(fmnist[0], mode="L")).numpy()[0], standard[0], rtol=0, atol=0)
    output = model.encode_images(torch.from_numpy(standard[:, None]), tokens=True)
    assert_allclose(output.embeddings.numpy(), standard.reshape(12, -1), rtol=0, atol=0)
    assert tuple(output.tokens.shape) == (12, *shape)
    expected = standard[..., None] if name == "pixels-fmnist" else _patchify(standard, 4)
    assert_allclose(output.tokens.numpy(), expected, rtol=0, atol=0)
    assert model.encode_images(torch.from_numpy(standard[:, None])).tokens is None
    with pytest.raises(UnknownModelError, match="no text tower"):
        model.encode_texts(["a photo of a sneaker."])


def test_models_command_lists_the_pixel_baselines():
    rows = {row["name"]: row for row in json.loads(assert_ok(invoke("models", "--json", "-")).stdout)["models"]}
    for name in ("builtin:pixels-fmnist", "builtin:patches-fmnist"):
        assert rows[name]["available"] is True and rows[name]["kind"] == "built-in model"
    assert "28x28x1" in rows["builtin:pixels-fmnist"]["description"]
    assert "7x7x16" in rows["builtin:patches-fmnist"]["description"]


def test_extract_patches_model_on_real_images(fmnist, tmp_path, drawn):
    folder = tmp_path / "images"
    folder.mkdir()
    with open(folder / "captions.jsonl", "w") as handle:
        for index, image in enumerate(fmnist):
            Image.fromarray(image, mode="L").save(folder / f"item{index:02d}.png")
            handle.write(json.dumps({"file": f"item{index:02d}.png", "caption": "a grayscale image of a coat."}) + "\n")
    out = tmp_path / "patches.h5"
    result = assert_ok(invoke("extract", "--images", folder, "--model", "builtin:patches-fmnist", "--tokens",
                              "--out", out, "--num-workers", "0", "--device", "cpu", "--json", "-", "-q"))
    summary = json.loads(result.stdout)
    assert summary["rows"] == {"image": 30}
    assert "the data has texts but builtin:patches-fmnist has no text tower: texts skipped" in summary["notes"]
    with h5py.File(out, "r") as handle:
        assert list(handle.keys()) == ["image"]
        tokens, embeddings = handle["image/tokens"][()], handle["image/embeddings"][()]
    assert tokens.shape == (30, 7, 7, 16) and tokens.dtype == np.float16
    order = [int(os.path.basename(i)[4:6]) for i in store.read_ids(str(out), "image")]
    standard = standardize_pixels(fmnist[order])
    assert_allclose(embeddings, standard.reshape(30, -1), rtol=1e-6, atol=1e-6)
    assert_allclose(tokens.astype(np.float32), _patchify(standard, 4), rtol=1e-3, atol=1e-3)
    # the Prism figure of a real token grid: every bar is the analysis' number
    assert_ok(invoke("plot", "tokens", out, "--out", tmp_path / "patches.png", "-q"))
    _, (series,), legend = _read_figure(drawn[-1], 1, K)
    report = tmp_path / "patches.json"
    assert_ok(invoke("analyze", out, "--spatial-bands", K, "--json", report, "-q"))
    assert_allclose(series["heights"], 100 * _shares(_view(report)), rtol=1e-12)
    assert_allclose(series["heights"].sum(), 100, rtol=1e-6)
    assert "patches (7x7x16)" in legend


TYPO_BUG = ("BUG: compare_paths() models the band lists as {ANY: ...} and checks._known lets ANY swallow the "
            "rest of the path, so a typo below spatial_bands/svd_bands passes the check that should refuse it "
            "before any work")


def test_fail_if_typo_inside_a_band_view_is_refused_before_any_work(files):
    result = invoke("compare", files["root"] / "missing.h5", files["const"], "--fail-if",
                    "spatial_bands.0.energy_shares.delta < 0")
    assert_error(result, 2, "spatial_bands.0.energy_shares.delta", "no value")  # not the missing input
    for path in ("svd_bands.first.energy_share.delta", "spatial_bands.0.energy_share.delta.x"):
        with pytest.raises(BadInputError, match="no value"):
            checks.check_paths([checks.parse_check(f"{path} < 0")], compare_paths())


def test_fail_if_typo_inside_a_null_band_view_is_refused(files):
    result = invoke("compare", files["plain0"], files["const4"], "-q",
                    "--fail-if", "spatial_bands.0.energy_shares.delta < 0")
    assert_error(result, 2, "spatial_bands.0.energy_shares.delta")
