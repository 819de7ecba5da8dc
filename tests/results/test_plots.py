"""``plots`` and ``figures``: the figures draw exactly the numbers they are given; ``sdetool plot`` writes them.

The drawing functions are checked on documents of known content: the data of every line, bar and ribbon
is read back from the matplotlib artists (axes found by their labels) and compared with the input.
The inputs of ``sdetool plot`` are real files: a store with planted spikes, its ``analyze --json``
report, a ``compare --json`` document and a 5-step head fine-tuning run (``metrics.jsonl``, ``eval.json``).
Written files are checked by their signatures and parsers (PIL, xml.etree).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from cli_helpers import assert_error as _assert_error
from cli_helpers import assert_ok as _assert_ok
from cli_helpers import invoke as _invoke
from cli_helpers import message_lines
from matplotlib.colors import to_rgba
from numpy.testing import assert_allclose
from PIL import Image

from sdetool.cli import main
from sdetool.errors import BadInputError
from sdetool.io import store
from sdetool.results import plots
from sdetool.results.figures import PlotOptions, analysis_series, band_states, plot, training_runs
from sdetool.spectral import rmt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BANDS = ("strong", "weak", "noise")
N_ROWS, DIM = 1000, 32


def _axes(figure, label):
    found = [axes for axes in figure.axes if axes.get_label() == label]
    assert len(found) == 1, [axes.get_label() for axes in figure.axes]
    return found[0]


def _document(singular_values, bands, *, edge, threshold, sigma, n=200, shares=None) -> dict:
    """A set document of ``sdetool.analysis/1`` with the fields the figures read."""
    values = np.asarray(singular_values, dtype=np.float64)
    if shares is None:
        shares = values**2 / np.sum(values**2)
    counts = {band: sum(1 for name in bands if name == band) for band in BANDS}
    totals = {band: float(sum(share for share, name in zip(shares, bands) if name == band)) for band in BANDS}
    return {
        "schema": "sdetool.analysis/1", "key": "emb", "n_effective": n, "dim": values.size,
        "singular_values": values.tolist(),
        "noise": {"sigma": sigma, "edge": edge},
        "strong_rule": {"threshold": threshold},
        "bands": {band: {"count": counts[band], "energy_share": totals[band]} for band in BANDS},
        "components": {"band": list(bands), "energy_share": list(map(float, shares))},
    }


def _first() -> dict:
    values = [50.0, 30.0, 12.0, 9.0, 4.0, 3.5, 3.0, 2.5, 2.0, 0.0]  # the last: numerically zero
    bands = ["strong", "strong", "weak", "weak", "noise", "noise", "noise", "noise", "noise", "noise"]
    return _document(values, bands, edge=10.0, threshold=20.0, sigma=0.25)


def _second() -> dict:
    values = [40.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    bands = ["strong", "noise", "noise", "weak", "noise", "noise", "noise", "noise"]
    return _document(values, bands, edge=7.0, threshold=30.0, sigma=0.2)


# --- pure helpers -----------------------------------------------------------------------------------


def test_band_runs():
    assert plots.band_runs([]) == []
    assert plots.band_runs(["noise"]) == [("noise", 1, 1)]
    assert plots.band_runs(["strong", "strong", "weak", "noise", "noise", "noise"]) == [
        ("strong", 1, 2), ("weak", 3, 1), ("noise", 4, 3)]
    assert plots.band_runs(["strong", "noise", "noise", "weak", "noise"]) == [
        ("strong", 1, 1), ("noise", 2, 2), ("weak", 4, 1), ("noise", 5, 1)]


def test_figure_format():
    assert plots.figure_format("a/b.png") == "png"
    assert plots.figure_format("B.SVG") == "svg"
    assert plots.figure_format("x.y.pdf") == "pdf"
    for bad in ("figure.jpg", "figure", "png", "figure.png.gz"):
        with pytest.raises(ValueError, match="expected a .png, .svg or .pdf"):
            plots.figure_format(bad)


# --- spectrum -----------------------------------------------------------------------------------------


def _ribbon_rectangles(axes):
    """``[(x0, x1, y0, y1, facecolour)]`` of the ribbon's bars."""
    rectangles = []
    for collection in axes.collections:
        colours = collection.get_facecolor()
        for index, path in enumerate(collection.get_paths()):
            vertices = path.vertices
            rectangles.append((vertices[:, 0].min(), vertices[:, 0].max(), vertices[:, 1].min(), vertices[:, 1].max(),
                               tuple(colours[index % len(colours)])))
    return rectangles


def test_spectrum_figure_draws_the_singular_values_edge_and_threshold():
    first, second = _first(), _second()
    figure = plots.spectrum_figure([("one", first), ("two", second)])
    main_axes = _axes(figure, "spectrum")
    lines = main_axes.get_lines()
    # per series: its singular values (positive ones, at their 1-based indexes), then edge and threshold
    assert len(lines) == 6
    for offset, document in ((0, first), (3, second)):
        values = np.asarray(document["singular_values"])
        curve = lines[offset]
        assert_allclose(curve.get_ydata(), values[values > 0], rtol=0, atol=0)
        assert_allclose(curve.get_xdata(), np.arange(1, values.size + 1)[values > 0], rtol=0, atol=0)
        assert_allclose(lines[offset + 1].get_ydata(), [document["noise"]["edge"]] * 2, rtol=0, atol=0)
        assert_allclose(lines[offset + 2].get_ydata(), [document["strong_rule"]["threshold"]] * 2, rtol=0, atol=0)
        assert lines[offset + 1].get_linestyle() == "--" and lines[offset + 2].get_linestyle() == ":"
        assert list(lines[offset + 1].get_xdata()) == [0, 1]  # across the axes
        assert curve.get_color() == lines[offset + 1].get_color() == lines[offset + 2].get_color()
    assert lines[0].get_label() == "one" and lines[3].get_label() == "two"
    assert lines[0].get_color() != lines[3].get_color()
    assert main_axes.get_yscale() == "log" and main_axes.get_xscale() == "linear"

    # the ribbon: one bar per run of a band, row = series position, in the band's colour
    rectangles = _ribbon_rectangles(_axes(figure, "bands"))
    expected = []
    for position, document in enumerate((first, second)):
        for band, start, length in plots.band_runs(document["components"]["band"]):
            expected.append((start - 0.5, start - 0.5 + length, position - 0.4, position + 0.4,
                             to_rgba(plots.BAND_COLOURS[band])))
    assert len(rectangles) == len(expected)
    for got, want in zip(sorted(rectangles), sorted(expected)):
        assert_allclose(got[:4], want[:4], rtol=0, atol=1e-12)
        assert_allclose(got[4], want[4], rtol=0, atol=1e-12)
    covered = sum(x1 - x0 for x0, x1, y0, y1, _ in rectangles if y0 < 0 < y1)
    assert covered == pytest.approx(len(first["components"]["band"]))  # every component, once
    ribbon = _axes(figure, "bands")
    assert [tick.get_text() for tick in ribbon.get_yticklabels()] == ["one", "two"]


def test_spectrum_figure_mp_panel_is_the_closed_form_density():
    document = _first()
    figure = plots.spectrum_figure([("one", document)])
    density = _axes(figure, "mp")
    n, d = document["n_effective"], document["dim"]
    beta = min(n, d) / max(n, d)
    curve = density.get_lines()[0]
    assert_allclose(curve.get_ydata(), rmt.marchenko_pastur_pdf(curve.get_xdata(), beta), rtol=1e-12, atol=0)
    lower, upper = rmt.marchenko_pastur_support(beta)
    assert curve.get_xdata()[0] == pytest.approx(lower) and curve.get_xdata()[-1] == pytest.approx(upper)
    # the histogram: eigenvalues in noise units, as a density over all components
    values, edges, _ = density.patches[0].get_data()
    eigenvalues = np.asarray(document["singular_values"]) ** 2 / (max(n, d) * document["noise"]["sigma"] ** 2)
    inside = eigenvalues[eigenvalues <= edges[-1]]
    assert_allclose(edges[-1], 2.0 * upper, rtol=1e-12)
    assert_allclose(np.sum(values * np.diff(edges)), inside.size / min(n, d), rtol=1e-12)
    assert_allclose(values * np.diff(edges) * min(n, d), np.histogram(inside, bins=edges)[0], rtol=0, atol=1e-9)


def test_spectrum_figure_without_a_noise_level_or_lines():
    document = _first()
    document["noise"] = {"sigma": None, "edge": None}
    document["strong_rule"] = {"threshold": None}
    figure = plots.spectrum_figure([("one", document)], loglog=True, title="my title")
    main_axes = _axes(figure, "spectrum")
    assert len(main_axes.get_lines()) == 1  # no edge and no threshold to draw
    assert main_axes.get_xscale() == "log" and main_axes.get_title() == "my title"
    assert _axes(figure, "mp").get_lines() == []  # no MP density without sigma


# --- energy -------------------------------------------------------------------------------------------


def test_energy_figure_is_the_cumulative_share():
    first, second = _first(), _second()
    figure = plots.energy_figure([("one", first), ("two", second)])
    axes = _axes(figure, "energy")
    curves = [line for line in axes.get_lines() if line.get_label() in ("one", "two")]
    assert [line.get_label() for line in curves] == ["one", "two"]
    for curve, document in zip(curves, (first, second)):
        shares = np.asarray(document["components"]["energy_share"])
        assert_allclose(curve.get_ydata(), 100.0 * np.cumsum(shares), rtol=1e-12, atol=0)
        assert_allclose(curve.get_xdata(), np.arange(1, shares.size + 1), rtol=0, atol=0)
        assert curve.get_ydata()[-1] == pytest.approx(100.0, abs=1e-9)
        assert np.all(np.diff(curve.get_ydata()) >= 0)
    boundaries = sorted(line.get_xdata()[0] for line in axes.get_lines() if line not in curves)
    # first: strong 2, weak 2 -> 2.5 and 4.5; second: strong 1, weak 1 -> 1.5 and 2.5
    assert_allclose(boundaries, [1.5, 2.5, 2.5, 4.5], rtol=0, atol=0)
    assert axes.get_xscale() == "log" and axes.get_ylim() == (0, 101)


# --- bands --------------------------------------------------------------------------------------------


def _bars(axes):
    return [(patch.get_x() + patch.get_width() / 2, patch.get_y(), patch.get_height()) for patch in axes.patches]


def test_bands_figure_stacks_the_shares():
    states = [("before", {"image": {"strong": 0.62, "weak": 0.3, "noise": 0.08},
                          "text": {"strong": 0.5, "weak": 0.25, "noise": 0.25}}),
              ("after", {"image": {"strong": 0.7, "weak": 0.28, "noise": 0.02}})]
    figure = plots.bands_figure(states, title="redistribution")
    assert figure._suptitle.get_text() == "redistribution"
    image = _axes(figure, "bands:image")
    bars = _bars(image)
    assert len(bars) == 6
    for position, (_, sets) in enumerate(states):
        shares = [sets["image"][band] for band in BANDS]
        column = bars[3 * position: 3 * position + 3]
        assert_allclose([x for x, _, _ in column], [plots.SPACING * position] * 3, rtol=0, atol=1e-12)
        assert_allclose([height for _, _, height in column], [100 * share for share in shares], rtol=1e-12)
        assert_allclose([bottom for _, bottom, _ in column], [0.0, 100 * shares[0], 100 * (shares[0] + shares[1])],
                        rtol=1e-12)
    for patch, band in zip(image.patches, BANDS * 2):
        assert_allclose(patch.get_facecolor(), to_rgba(plots.BAND_COLOURS[band]), rtol=0, atol=1e-12)
    assert [tick.get_text() for tick in image.get_xticklabels()] == ["before", "after"]
    texts = [text.get_text() for text in image.texts]
    for share in (62.0, 30.0, 8.0, 70.0, 28.0):  # wide segments: the percentage inside
        assert f"{share:.1f}%" in texts, (share, texts)
    assert "noise 2.0%" in texts  # too thin: beside the bar, with its band
    assert image.get_ylim() == (0, 100)

    text = _axes(figure, "bands:text")  # a set only the first state has: one bar
    assert len(text.patches) == 3
    assert [tick.get_text() for tick in text.get_xticklabels()] == ["before"]
    assert_allclose([height for _, _, height in _bars(text)], [50.0, 25.0, 25.0], rtol=1e-12)


def test_bands_figure_tiny_and_missing_shares():
    figure = plots.bands_figure([("x", {"emb": {"strong": 0.9995, "weak": None, "noise": 0.0005}})])
    axes = _axes(figure, "bands:emb")
    assert_allclose([height for _, _, height in _bars(axes)], [99.95, 0.0, 0.05], rtol=1e-12)
    texts = [text.get_text() for text in axes.texts]
    assert "99.9%" in texts or "100.0%" in texts
    assert "weak 0.0%" in texts and "noise 0.05%" in texts


# --- training -----------------------------------------------------------------------------------------


def _records(losses, infonce=None, shares=None, steps=None):
    steps = steps or list(range(len(losses)))
    records = []
    for index, (step, loss) in enumerate(zip(steps, losses)):
        record = {"step": step, "loss": loss}
        if infonce is not None:
            record["infonce"] = infonce[index]
        for key, values in (shares or {}).items():
            record[f"{key}_shares"] = values[index]
        records.append(record)
    return records


def test_training_figure_draws_the_records():
    image_shares = [[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.7, 0.25, 0.05]]
    text_shares = [[0.4, 0.4, 0.2], [0.45, 0.4, 0.15], [0.5, 0.4, 0.1]]
    sde = _records([3.0, 2.5, 2.25], infonce=[2.5, 2.0, 2.0], shares={"image": image_shares, "text": text_shares},
                   steps=[0, 10, 20])
    baseline = _records([3.5, 3.0, 2.75], infonce=[3.5, 3.0, 2.75], shares={"image": image_shares[::-1]},
                        steps=[0, 10, 20])
    figure = plots.training_figure([("sde", sde), ("infonce", baseline)], title="runs")
    loss = _axes(figure, "loss")
    lines = loss.get_lines()
    assert [line.get_label() for line in lines] == ["sde loss", "sde InfoNCE term", "infonce loss"]
    assert_allclose(lines[0].get_ydata(), [3.0, 2.5, 2.25], rtol=0, atol=0)
    assert_allclose(lines[0].get_xdata(), [0, 10, 20], rtol=0, atol=0)
    assert_allclose(lines[1].get_ydata(), [2.5, 2.0, 2.0], rtol=0, atol=0)
    assert lines[1].get_linestyle() == "--"
    assert_allclose(lines[2].get_ydata(), [3.5, 3.0, 2.75], rtol=0, atol=0)  # InfoNCE alone: no second line

    assert sorted(axes.get_label() for axes in figure.axes) == ["loss", "shares:image", "shares:text"]
    image = _axes(figure, "shares:image")
    assert image.get_yscale() == "log"
    image_lines = image.get_lines()
    assert len(image_lines) == 6
    for run, (label, values) in enumerate((("sde", image_shares), ("infonce", image_shares[::-1]))):
        for band_index, band in enumerate(BANDS):
            line = image_lines[3 * run + band_index]
            assert line.get_label() == f"{label} {band}"
            assert_allclose(line.get_ydata(), 100.0 * np.asarray(values)[:, band_index], rtol=1e-12)
            assert line.get_color() == plots.BAND_COLOURS[band]
            assert line.get_linestyle() == plots.LINE_STYLES[run]
    text_lines = _axes(figure, "shares:text").get_lines()
    assert len(text_lines) == 6  # the baseline logged no text shares: empty lines
    assert_allclose(text_lines[2].get_ydata(), [20.0, 15.0, 10.0], rtol=1e-12)
    assert text_lines[3].get_ydata().size == 0


def test_training_figure_without_shares():
    figure = plots.training_figure([("run", _records([1.0, 0.5]))])
    assert [axes.get_label() for axes in figure.axes] == ["loss"]
    assert_allclose(figure.axes[0].get_lines()[0].get_ydata(), [1.0, 0.5], rtol=0, atol=0)


# --- saving -------------------------------------------------------------------------------------------


def _check_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def _check_svg(path):
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def _check_pdf(path):
    with open(path, "rb") as handle:
        data = handle.read()
    assert data.startswith(b"%PDF") and b"%%EOF" in data[-32:]


def test_save_figure_writes_each_format(tmp_path):
    figure = plots.energy_figure([("one", _first())])
    for name, check in (("e.png", _check_png), ("e.svg", _check_svg), ("e.pdf", _check_pdf)):
        plots.save_figure(figure, str(tmp_path / name))
        check(tmp_path / name)
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    plots.save_figure(figure, str(small), dpi=40)
    plots.save_figure(figure, str(large), dpi=80)
    (width_small, height_small), (width_large, height_large) = _check_png(small), _check_png(large)
    assert width_large == pytest.approx(2 * width_small, abs=2) and height_large == pytest.approx(2 * height_small, abs=2)
    with pytest.raises(ValueError):
        plots.save_figure(figure, str(tmp_path / "e.jpg"))
    assert sorted(os.listdir(tmp_path)) == ["e.pdf", "e.png", "e.svg", "large.png", "small.png"]  # no temporaries


def test_save_figure_pdf_is_reproducible(tmp_path):
    for name in ("a.pdf", "b.pdf"):
        plots.save_figure(plots.bands_figure([("x", {"emb": {"strong": 0.5, "weak": 0.3, "noise": 0.2}})]),
                          str(tmp_path / name))
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()


def test_save_figure_svg_is_reproducible(tmp_path):
    for name in ("a.svg", "b.svg"):
        plots.save_figure(plots.bands_figure([("x", {"emb": {"strong": 0.5, "weak": 0.3, "noise": 0.2}})]),
                          str(tmp_path / name))
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


def test_figures_never_import_pyplot(tmp_path):
    """Headless by construction: drawing and saving never touches pyplot's global state."""
    code = (
        "import sys\n"
        "from sdetool.results import plots\n"
        "states = [('x', {'emb': {'strong': 0.5, 'weak': 0.3, 'noise': 0.2}})]\n"
        f"plots.save_figure(plots.bands_figure(states), {str(tmp_path / 'b.png')!r})\n"
        "plots.save_figure(plots.training_figure([('r', [{'step': 0, 'loss': 1.0, 'image_shares': [0.5, 0.3, 0.2]}])]),"
        f" {str(tmp_path / 't.svg')!r})\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- real inputs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A two-set store with planted spikes, its analysis report, a single-set report, and a comparison."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    frame, _ = np.linalg.qr(rng.normal(size=(DIM, 3)))
    image = ((rng.normal(size=(N_ROWS, 3)) * [12.0, 8.0, 5.0]) @ frame.T + rng.normal(size=(N_ROWS, DIM)))
    text = ((rng.normal(size=(N_ROWS, 2)) * [9.0, 4.0]) @ frame[:, :2].T + 1.5 * rng.normal(size=(N_ROWS, DIM)))
    two = str(root / "two.h5")
    store.write_set(two, "image", image.astype(np.float32), mode="w")
    store.write_set(two, "text", text.astype(np.float32))
    one = str(root / "one.h5")
    paths = {"root": root, "two.h5": two, "one.h5": one, "image": image.astype(np.float32),
             "noisier image": (image + rng.normal(size=image.shape)).astype(np.float32)}
    store.write_set(one, "image", paths["noisier image"], mode="w")
    for name in ("two", "one"):
        paths[f"{name}.json"] = str(root / f"{name}.json")
        _assert_ok(_invoke("analyze", paths[f"{name}.h5"], "--json", paths[f"{name}.json"], "-q"))
    paths["compare.json"] = str(root / "compare.json")
    _assert_ok(_invoke("compare", paths["two.json"], paths["one.json"], "--json", paths["compare.json"], "-q"))
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 5-step head run on 300 cached pairs (text rows repeat every 20), without exported embeddings."""
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(1)
    n_pairs, dim = 300, 12
    text = rng.normal(size=(20, dim)).astype(np.float32)[np.arange(n_pairs) % 20]
    image = (text @ rng.normal(size=(dim, dim)) + 0.5 * rng.normal(size=(n_pairs, dim))).astype(np.float32)
    ids = [f"pair-{i:04d}" for i in range(n_pairs)]
    pairs = str(root / "pairs.h5")
    store.write_set(pairs, "image", image, ids=ids, mode="w")
    store.write_set(pairs, "text", text, ids=ids)
    out = str(root / "RUN")
    _assert_ok(_invoke("finetune", "--target", "head", "--embeddings", pairs, "--steps", 5, "--batch-size", 64,
                       "--log-every", 1, "--device", "cpu", "--out", out, "-q"))
    return out


def _json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_analysis_series_from_reports_and_stores(inputs):
    report = _json(inputs["two.json"])
    series = analysis_series([inputs["two.json"], inputs["one.json"]], PlotOptions())
    assert [label for label, _ in series] == ["two image", "two text", "one"]
    assert series[0][1] == report["sets"]["image"] and series[1][1] == report["sets"]["text"]
    assert series[2][1] == _json(inputs["one.json"])
    chosen = analysis_series([inputs["two.json"]], PlotOptions(keys=("text",)))
    assert [label for label, _ in chosen] == ["two"] and chosen[0][1] == report["sets"]["text"]
    analysed = analysis_series([inputs["two.h5"]], PlotOptions(keys=("image",)))  # a store: analysed here
    assert [label for label, _ in analysed] == ["two"]
    assert_allclose(analysed[0][1]["singular_values"], report["sets"]["image"]["singular_values"], rtol=1e-9)
    assert analysed[0][1]["components"]["band"] == report["sets"]["image"]["components"]["band"]


def test_analysis_series_refuses_bad_inputs(inputs, run, tmp_path):
    with pytest.raises(BadInputError, match="--key audio: .* has no such set; it has image, text"):
        analysis_series([inputs["two.json"]], PlotOptions(keys=("audio",)))
    with pytest.raises(BadInputError, match="expected an analysis report .* 'sdetool.compare/1'"):
        analysis_series([inputs["compare.json"]], PlotOptions())
    with pytest.raises(BadInputError, match="no such file"):
        analysis_series([str(tmp_path / "missing.json")], PlotOptions())
    for path in (run, os.path.join(run, "eval.json")):
        with pytest.raises(BadInputError, match="--export-embeddings"):
            analysis_series([path], PlotOptions())


def test_analysis_series_of_a_run_with_exported_embeddings(inputs, tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    for stage, name in (("before", "image"), ("after", "noisier image")):
        store.write_set(str(folder / f"embeddings_{stage}.h5"), "image", inputs[name], mode="w")
    (folder / "eval.json").write_text("{}")
    series = analysis_series([str(folder)], PlotOptions())
    assert [label for label, _ in series] == ["exported before", "exported after"]
    assert_allclose(series[0][1]["singular_values"], _json(inputs["two.json"])["sets"]["image"]["singular_values"],
                    rtol=1e-9)


def test_band_states_from_reports_comparisons_and_runs(inputs, run):
    two, one = _json(inputs["two.json"]), _json(inputs["one.json"])
    states = band_states([inputs["two.json"], inputs["one.json"]], PlotOptions())
    assert [label for label, _ in states] == ["two", "one"]
    assert states[0][1] == {key: {band: two["sets"][key]["bands"][band]["energy_share"] for band in BANDS}
                            for key in ("image", "text")}
    assert states[1][1] == {"image": {band: one["bands"][band]["energy_share"] for band in BANDS}}

    compared = band_states([inputs["compare.json"]], PlotOptions())
    assert [label for label, _ in compared] == ["two", "one"]
    assert compared[0][1] == {"image": states[0][1]["image"]} and compared[1][1] == states[1][1]

    evaluation = _json(os.path.join(run, "eval.json"))
    stages = band_states([run], PlotOptions(keys=("text",)))
    assert [label for label, _ in stages] == ["RUN before", "RUN after"]
    for (_, shares), stage in zip(stages, ("before", "after")):
        assert shares == {"text": {band: evaluation[stage]["bands"]["text"][band]["energy_share"] for band in BANDS}}
    twice = band_states([run, os.path.join(run, "eval.json")], PlotOptions())  # the shared "before" drawn once
    assert [label for label, _ in twice] == ["RUN before", "RUN after", "RUN after"]
    with pytest.raises(BadInputError, match="--key audio"):
        band_states([inputs["one.json"]], PlotOptions(keys=("audio",)))


def test_training_runs_reads_metrics(run, tmp_path):
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert training_runs([run]) == [("RUN", records)]
    assert training_runs([os.path.join(run, "metrics.jsonl")]) == [("RUN", records)]

    partial = tmp_path / "live.jsonl"
    partial.write_text("\n".join(json.dumps(record) for record in records[:3]) + '\n{"step": 3, "lo')
    assert training_runs([str(partial)]) == [("live", records[:3])]

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(records[0]) + "\nnot json\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(BadInputError, match="line 2 is not JSON"):
        training_runs([str(broken)])
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"step": 0}\n')
    with pytest.raises(BadInputError, match="line 1 has no step and loss"):
        training_runs([str(foreign)])
    started = tmp_path / "started.jsonl"
    started.write_text('{"step": 0, "lo')
    with pytest.raises(BadInputError, match="no training records yet"):
        training_runs([str(started)])
    with pytest.raises(BadInputError, match="expected a run folder or its metrics.jsonl"):
        training_runs([str(tmp_path / "nothing")])


def test_plot_returns_what_it_drew(inputs, tmp_path):
    out = str(tmp_path / "s.svg")
    result = plot("spectrum", [inputs["two.json"]], out, PlotOptions(labels=("img", "txt")))
    assert result == {"kind": "spectrum", "out": out, "series": ["img", "txt"]}
    _check_svg(out)
    with pytest.raises(BadInputError, match="--label given 1 times for 2 series"):
        plot("energy", [inputs["two.json"]], str(tmp_path / "e.png"), PlotOptions(labels=("only",)))
    with pytest.raises(BadInputError, match="expected one of spectrum, energy, bands, training"):
        plot("histogram", [inputs["two.json"]], str(tmp_path / "h.png"))
    with pytest.raises(BadInputError, match="give at least one input"):
        plot("bands", [], str(tmp_path / "b.png"))
    with pytest.raises(BadInputError, match="--out"):
        plot("bands", [inputs["two.json"]], str(tmp_path / "no" / "b.png"))
    assert sorted(os.listdir(tmp_path)) == ["s.svg"]


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_spectrum_and_energy(inputs, tmp_path):
    png = tmp_path / "spectrum.png"
    result = _assert_ok(_invoke("plot", "spectrum", inputs["two.json"], inputs["one.h5"], "--out", png, "--loglog"))
    said = " ".join(" ".join(message_lines(result.stderr)).split())  # after the lines of one.h5's analysis
    assert said.startswith("wrote") and "two image, two text, one" in said
    _check_png(png)
    pdf = tmp_path / "energy.pdf"
    result = _assert_ok(_invoke("plot", "energy", inputs["one.json"], "--out", pdf, "-q", "--key", "image"))
    assert result.stderr == "" and result.stdout == ""
    _check_pdf(pdf)
    small = tmp_path / "small.png"
    _assert_ok(_invoke("plot", "energy", inputs["one.json"], "--out", small, "-q", "--dpi", 30))
    assert _check_png(small)[0] < _check_png(png)[0]


def test_cli_bands(inputs, run, tmp_path):
    svg = tmp_path / "bands.svg"
    _assert_ok(_invoke("plot", "bands", inputs["compare.json"], run, "--out", svg, "-q", "--key", "image",
                       "--label", "two", "--label", "one", "--label", "run before", "--label", "run after",
                       "--title", "energy moves"))
    _check_svg(svg)
    text = svg.read_text(encoding="utf-8")
    assert "energy moves" in text and "run after" in text
    _assert_error(_invoke("plot", "bands", inputs["compare.json"], "--out", tmp_path / "x.png", "--label", "one"), 2,
                  "--label given 1 times for 2 series")
    assert not (tmp_path / "x.png").exists()


def test_cli_training(run, tmp_path):
    png = tmp_path / "training.png"
    result = _assert_ok(_invoke("plot", "training", run, "--out", png))
    assert "(training: RUN)" in " ".join(result.stderr.split())
    _check_png(png)
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    live = tmp_path / "live"
    live.mkdir()
    (live / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    _assert_ok(_invoke("plot", "training", live, "--out", tmp_path / "live.svg", "-q"))
    _check_svg(tmp_path / "live.svg")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    _assert_error(_invoke("plot", "training", broken, "--out", tmp_path / "broken.png"), 2, "line 2 is not JSON")
    assert not (tmp_path / "broken.png").exists()


def test_cli_refuses_an_unknown_extension(inputs, tmp_path):
    out = tmp_path / "figure.jpg"
    _assert_error(_invoke("plot", "spectrum", inputs["one.json"], "--out", out), 2, "--out", "figure.jpg",
                  ".png, .svg or .pdf")
    assert not out.exists() and os.listdir(tmp_path) == []


def test_cli_keeps_an_existing_output_when_plotting_fails(inputs, tmp_path):
    out = tmp_path / "figure.png"
    out.write_bytes(b"the previous figure")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    _assert_error(_invoke("plot", "spectrum", broken, "--out", out), 2, "not a readable JSON file")
    _assert_error(_invoke("plot", "spectrum", inputs["one.json"], "--out", out, "--key", "audio"), 2, "--key audio")
    _assert_error(_invoke("plot", "energy", inputs["two.json"], "--out", out, "--label", "a"), 2, "--label")
    assert out.read_bytes() == b"the previous figure"
    assert sorted(os.listdir(tmp_path)) == ["broken.json", "figure.png"]


def test_cli_spectrum_of_a_run_without_exported_embeddings(run, tmp_path):
    out = tmp_path / "spectrum.png"
    _assert_error(_invoke("plot", "spectrum", run, "--out", out), 2, "--export-embeddings")
    _assert_error(_invoke("plot", "energy", os.path.join(run, "eval.json"), "--out", out), 2, "--export-embeddings")
    assert not out.exists()


def test_cli_usage_errors_are_one_line(capsys, inputs, tmp_path):
    for argv, fragment in ((["plot", "histogram", inputs["one.json"], "--out", str(tmp_path / "h.png")], "histogram"),
                           (["plot", "spectrum", inputs["one.json"]], "--out"),
                           (["plot", "spectrum", "--out", str(tmp_path / "n.png")], "Missing argument")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("sdetool: error: ") and fragment in lines[0], lines
    assert os.listdir(tmp_path) == []


def test_mp_panel_uses_the_column_space_of_a_rank_deficient_matrix():
    from sdetool.analysis.analyze import analyze

    rng = np.random.default_rng(3)
    low_rank = rng.normal(size=(3000, 24)) @ rng.normal(size=(24, 96))  # rank 24 in 96 dimensions
    path = "rank24.npy"
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, path)
        np.save(path, low_rank.astype(np.float32))
        document = analyze(path, local=True).to_dict()
    assert document["noise"]["numerical_rank"] == 24
    p, q = plots.mp_shape(document)
    assert p == 24 and q == pytest.approx(document["n_effective"], rel=1e-9)  # read back from the reported edge
    figure = plots.spectrum_figure([("rank 24", document)])
    stairs = _axes(figure, "mp").patches[0].get_data()  # the histogram of the 24 nonzero eigenvalues
    # density over those 24 alone: the 72 numerically zero ones are not drawn as a spike at 0
    assert np.sum(stairs.values * np.diff(stairs.edges)) == pytest.approx(
        np.sum(np.asarray(document["singular_values"][:24]) ** 2 / (q * document["noise"]["sigma"] ** 2)
               <= stairs.edges[-1]) / 24, rel=1e-9)


def test_mp_shape_of_a_full_rank_matrix_is_min_and_max():
    document = {"n_effective": 500, "dim": 64, "noise": {"numerical_rank": 64, "sigma": 1.0, "mp_edge": 30.0}}
    assert plots.mp_shape(document) == (64, 500.0)
    document = {"n_effective": 40, "dim": 64, "noise": {"numerical_rank": 40, "sigma": 1.0, "mp_edge": 14.0}}
    assert plots.mp_shape(document) == (40, 64.0)
