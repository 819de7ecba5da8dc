"""Uncertainty of the band statistics (issue 14, item 3): the delete-a-block jackknife of --bootstrap, its
formula, the block statistics the single pass keeps, the JSON fields, and a small calibration in simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_helpers import assert_ok, invoke
from numpy.testing import assert_allclose
from threadpoolctl import threadpool_limits

from sdetool.analysis.options import AnalysisOptions
from sdetool.spectral import rmt
from sdetool.spectral.gram import GramAccumulator
from sdetool.spectral.jackknife import jackknife_interval
from sdetool.spectral.summary import intervals, partition_state

Z90 = 1.6448536269514722  # the normal quantile of a two-sided 90 % interval
INTERVAL_FIELDS = ("strong.energy_share", "weak.energy_share", "noise.energy_share", "strong.count", "weak.count",
                   "noise.count", "edge", "effective_rank")


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with threadpool_limits(1):
        yield


# --- the interval formula ----------------------------------------------------------------------------


def test_jackknife_interval_of_a_known_array():
    found = jackknife_interval(2.5, [1.0, 2.0, 3.0, 4.0], level=0.9)
    error = math.sqrt(3 / 4 * (1.5**2 + 0.5**2 + 0.5**2 + 1.5**2))  # (K - 1) / K sum (theta_k - mean)^2
    assert_allclose(found.standard_error, error, rtol=1e-14)
    assert_allclose([found.low, found.high], [2.5 - Z90 * error, 2.5 + Z90 * error], rtol=1e-14)
    assert found.estimate == 2.5 and found.bounds() == [found.low, found.high]
    wider = jackknife_interval(2.5, [1.0, 2.0, 3.0, 4.0], level=0.99)
    assert wider.low < found.low and wider.high > found.high


def test_equal_block_sizes_give_the_plain_formula():
    replicates = np.random.default_rng(0).normal(5.0, 0.3, 12)
    plain = jackknife_interval(5.1, replicates, 0.9)
    weighted = jackknife_interval(5.1, replicates, 0.9, sizes=np.full(12, 40))
    assert_allclose(weighted.standard_error, plain.standard_error, rtol=1e-12)


def test_unequal_blocks_of_the_mean_use_the_delete_a_group_pseudo_values():
    """For the mean, the weighted pseudo-value of block k is the block's own mean (Busing et al. 1999)."""
    rng = np.random.default_rng(1)
    sizes = np.array([30, 55, 41, 70, 24, 60])
    blocks = [rng.normal(2.0, 1.0, size) for size in sizes]
    values = np.concatenate(blocks)
    n, estimate = values.size, values.mean()
    replicates = [(values.sum() - block.sum()) / (n - block.size) for block in blocks]
    pooled = len(sizes) * estimate - sum((1 - m / n) * r for m, r in zip(sizes, replicates))
    reference = math.sqrt(sum((block.mean() - pooled) ** 2 / (n / block.size - 1) for block in blocks) / len(sizes))
    found = jackknife_interval(estimate, replicates, 0.9, sizes=sizes)
    assert_allclose(found.standard_error, reference, rtol=1e-12)


def test_block_sizes_are_not_read_as_sampling_error():
    """A statistic that only grows with the rows (like the noise edge, ~ sqrt(n)) has no sampling error:
    weighted by the block sizes its jackknife error is near zero; unweighted it is the size spread."""
    sizes = np.random.default_rng(2).binomial(2000, 1 / 20, 20)
    n = sizes.sum()
    replicates = 3.0 * np.sqrt(n - sizes)
    plain = jackknife_interval(3.0 * math.sqrt(n), replicates, 0.9)
    weighted = jackknife_interval(3.0 * math.sqrt(n), replicates, 0.9, sizes=sizes)
    assert weighted.standard_error < plain.standard_error / 20


def test_jackknife_interval_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="at least 2"):
        jackknife_interval(1.0, [1.0])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        jackknife_interval(1.0, [1.0, 2.0], level=1.0)
    broken = jackknife_interval(1.0, [1.0, float("nan")])
    assert broken.bounds() == [None, None]


def test_an_interval_stays_inside_the_values_the_statistic_can_take():
    found = jackknife_interval(0.98, [0.9, 1.0, 0.95, 0.99], 0.9, (0.0, 1.0))
    assert found.high == 1.0 and found.low < 0.98


# --- the blocks the single pass keeps -----------------------------------------------------------------


def test_blocks_partition_the_rows_and_removing_one_inverts_the_merge():
    """The blocks' statistics merge to the whole state (they split the rows), and ``without`` undoes a merge:
    the state less one block, merged with that block again, is the whole state."""
    rows = np.random.default_rng(3).standard_normal((500, 6)) * [1, 2, 3, 4, 5, 6] + 10.0
    accumulator = GramAccumulator(6, blocks=7, seed=4)
    for chunk in np.array_split(rows, 9):
        accumulator.update(chunk)
    state = accumulator.finalize()
    centred = rows - rows.mean(axis=0)
    assert_allclose(state.scatter, centred.T @ centred, rtol=1e-10)
    assert all(block.n > 0 for block in state.blocks)
    merged = state.blocks[0]
    for block in state.blocks[1:]:
        merged = merged.merge(block)
    assert merged.n == 500
    assert_allclose(merged.mean, rows.mean(axis=0), rtol=1e-12)
    assert_allclose(merged.scatter, centred.T @ centred, rtol=1e-10)
    for block in state.blocks:
        rest = state.without(block)
        assert rest.n == 500 - block.n
        again = rest.merge(block)
        assert_allclose(again.mean, state.mean, rtol=1e-12)
        assert_allclose(again.scatter, state.scatter, rtol=1e-10)


def test_intervals_do_not_depend_on_how_the_rows_were_chunked():
    matrix = planted(600, 16, np.random.default_rng(5))
    options = AnalysisOptions(bootstrap=10)
    results = []
    for chunks in (1, 7):
        accumulator = GramAccumulator(16, blocks=10, seed=0)
        for chunk in np.array_split(matrix, chunks):
            accumulator.update(chunk)
        state = accumulator.finalize()
        found = intervals(state, partition_state(state, options), options)
        results.append({name: found[name].bounds() for name in INTERVAL_FIELDS})
    for name in INTERVAL_FIELDS:
        assert_allclose(np.asarray(results[0][name], float), np.asarray(results[1][name], float), rtol=1e-9)


# --- the report -----------------------------------------------------------------------------------------


SPIKES = np.array([8.0, 5.0, 3.0, 2.0])  # multiples of the BBP threshold


def planted(n: int, d: int, rng: np.random.Generator, right: np.ndarray | None = None) -> np.ndarray:
    """Independent rows of a spiked covariance: unit noise plus four latent factors along ``right``."""
    if right is None:
        right, _ = np.linalg.qr(np.random.default_rng(99).standard_normal((d, SPIKES.size)))
    strengths = rmt.bbp_threshold(min(n, d) / max(n, d)) * SPIKES * math.sqrt(max(n, d) / n)
    return (rng.standard_normal((n, SPIKES.size)) * strengths) @ right.T + rng.standard_normal((n, d))


@pytest.fixture(scope="module")
def spiked_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("uncertainty") / "spiked.npy"
    np.save(path, planted(2000, 48, np.random.default_rng(6)))
    return path


def _report(*args) -> dict:
    return json.loads(assert_ok(invoke("analyze", *args, "--json", "-", "-q")).stdout)


def _intervals_of(document: dict) -> dict:
    found = {f"{band}.{kind}": (document["bands"][band][f"{kind}_ci"], document["bands"][band][kind])
             for band in ("strong", "weak", "noise") for kind in ("energy_share", "count")}
    found["edge"] = (document["noise"]["edge_ci"], document["noise"]["edge"])
    found["effective_rank"] = (document["metrics"]["effective_rank_ci"], document["metrics"]["effective_rank"])
    return found


def test_bootstrap_adds_ordered_intervals_to_every_band(spiked_file):
    document = _report(spiked_file, "--bootstrap", 20)
    assert document["uncertainty"] == {"method": "delete-a-block jackknife", "blocks": 20, "ci_level": 0.9}
    for name, (interval, estimate) in _intervals_of(document).items():
        low, high = interval
        assert low <= estimate <= high, (name, interval, estimate)
    noise_low, noise_high = document["bands"]["noise"]["energy_share_ci"]
    assert 0.0 <= noise_low and noise_high <= 1.0
    assert document["noise"]["edge_ci"][1] > document["noise"]["edge_ci"][0]  # the edge does vary
    assert document["metrics"]["effective_rank_ci"][1] > document["metrics"]["effective_rank_ci"][0]
    narrower = _report(spiked_file, "--bootstrap", 20, "--ci-level", 0.5)
    assert narrower["uncertainty"]["ci_level"] == 0.5
    wide, narrow = document["metrics"]["effective_rank_ci"], narrower["metrics"]["effective_rank_ci"]
    assert_allclose(narrow[1] - narrow[0], (wide[1] - wide[0]) * 0.6744897501960817 / Z90, rtol=1e-9)


def test_without_bootstrap_the_intervals_are_null(spiked_file):
    document = _report(spiked_file)
    assert document["uncertainty"] is None
    assert all(interval is None for interval, _ in _intervals_of(document).values())


@pytest.mark.parametrize("args,option", [(("--bootstrap", 1), "--bootstrap"), (("--bootstrap", 10, "--ci-level", 1.5),
                                                                           "--ci-level")])
def test_bootstrap_options_are_checked(spiked_file, args, option):
    result = invoke("analyze", spiked_file, *args, "-q")
    assert result.exit_code == 2 and option in result.stderr and "Traceback" not in result.output


def test_fail_if_reads_the_intervals(spiked_file):
    document = _report(spiked_file, "--bootstrap", 20)
    low = document["bands"]["noise"]["energy_share_ci"][0]
    assert invoke("analyze", spiked_file, "--bootstrap", 20, "-q", "--fail-if",
                  f"bands.noise.energy_share_ci.0 > {low - 0.01}").exit_code == 1
    assert invoke("analyze", spiked_file, "--bootstrap", 20, "-q", "--fail-if",
                  f"bands.noise.energy_share_ci.0 > {low + 0.01}").exit_code == 0
    for path in ("noise.edge_ci.1", "metrics.effective_rank_ci.0", "bands.strong.count_ci.1"):
        assert invoke("analyze", spiked_file, "--bootstrap", 20, "-q", "--fail-if", f"{path} < 0").exit_code == 0
    # without --bootstrap the interval is null, and a null value fails a check
    assert invoke("analyze", spiked_file, "-q", "--fail-if", "bands.noise.energy_share_ci.0 > 0.5").exit_code == 1


# --- calibration in simulation ---------------------------------------------------------------------------


def test_90_percent_intervals_cover_the_mean_over_independent_draws():
    """40 independent samples of one population (1000 x 32, four spikes at 2-8x the threshold, unit noise),
    K = 20 blocks: the 90 % intervals of the noise share, the effective rank and the edge each cover the
    mean of the estimates over the draws in 80-97 % of the draws (the issue's target)."""
    d, draws = 32, 40
    right, _ = np.linalg.qr(np.random.default_rng([21, 0]).standard_normal((d, SPIKES.size)))
    options = AnalysisOptions(bootstrap=20)
    names = ("noise.energy_share", "effective_rank", "edge")
    estimates, bounds = {name: [] for name in names}, {name: [] for name in names}
    for draw in range(draws):
        accumulator = GramAccumulator(d, blocks=20, seed=draw)
        accumulator.update(planted(1000, d, np.random.default_rng([21, 1, draw]), right))
        state = accumulator.finalize()
        found = intervals(state, partition_state(state, options), options)
        for name in names:
            estimates[name].append(found[name].estimate)
            bounds[name].append((found[name].low, found[name].high))
    for name in names:
        target = float(np.mean(estimates[name]))
        covered = sum(low <= target <= high for low, high in bounds[name])
        assert 32 <= covered <= 38, (name, covered)
