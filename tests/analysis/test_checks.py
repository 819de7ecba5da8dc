"""``--fail-if`` checks: parsing, dotted-path resolution and evaluation against JSON reports."""

from __future__ import annotations

import math

import pytest

from sdetool.analysis.checks import _MISSING, Check, evaluate, parse_check, resolve
from sdetool.errors import BadInputError

SINGLE = {
    "schema": "sdetool.analysis/1",
    "key": "image",
    "n_samples": 200,
    "singular_values": [9.0, 4.0, 1.0],
    "centered": True,
    "bands": {
        "strong": {"count": 1, "energy_share": 0.6, "first_index": 1},
        "weak": {"count": 0, "energy_share": 0.0, "first_index": None},
        "noise": {"count": 2, "energy_share": 0.4, "first_index": 2},
    },
    "metrics": {"power_law_alpha": None, "effective_rank": 2.5},
}

MULTI = {
    "schema": "sdetool.analysis/1",
    "sets": {
        "image": {"key": "image", "bands": {"noise": {"energy_share": 0.9}}, "metrics": {"stable_rank": 3.0}},
        "text": {"key": "text", "bands": {"noise": {"energy_share": 0.2}}, "metrics": {"stable_rank": None}},
    },
    "cross": {"image~text": {"hellinger": 0.25, "modality_gap": 0.7}},
}


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path, op, value",
    [
        ("a.b > 0.5", "a.b", ">", 0.5),
        ("x<=1e-3", "x", "<=", 1e-3),
        ("a.b == -2", "a.b", "==", -2.0),
        ("  bands.noise.energy_share >= 0.85  ", "bands.noise.energy_share", ">=", 0.85),
        ("singular_values.0 != 3", "singular_values.0", "!=", 3.0),
        ("cross.image~text.hellinger < .1", "cross.image~text.hellinger", "<", 0.1),
    ],
)
def test_parse_valid(text, path, op, value):
    check = parse_check(text)
    assert check == Check(text=text.strip(), path=path, op=op, value=value)


@pytest.mark.parametrize("text", ["a.b >> 1", "a.b > foo", "> 1", "", "   ", "a.b = 1", "a.b 1", "a.b > 1 2",
                                  "a.b <", "a.b => 1", None])
def test_parse_malformed(text):
    with pytest.raises(BadInputError) as info:
        parse_check(text)
    message = str(info.value)
    assert message.startswith("--fail-if")
    assert "\n" not in message


def test_parse_names_the_bad_number():
    with pytest.raises(BadInputError, match="'foo' is not a number"):
        parse_check("a.b > foo")


def test_parse_refuses_nan_threshold():
    refused = []
    for text in ("a.b > nan", "a.b < NaN"):
        try:
            parse_check(text)
        except BadInputError:
            refused.append(text)
    assert refused == ["a.b > nan", "a.b < NaN"]


# --- resolving -----------------------------------------------------------------------------------


def test_resolve_nested_and_list_indices():
    assert resolve(SINGLE, "bands.strong.count") == 1
    assert resolve(SINGLE, "singular_values.0") == 9.0
    assert resolve(SINGLE, "singular_values.2") == 1.0
    assert resolve(SINGLE, "singular_values.-1") == 1.0
    assert resolve({"rows": [{"v": 5}, {"v": 6}]}, "rows.1.v") == 6
    assert resolve(SINGLE, "metrics.power_law_alpha") is None  # present, null


@pytest.mark.parametrize("path", ["singular_values.3", "singular_values.-4", "singular_values.x", "bands.nope",
                                  "n_samples.0", "missing"])
def test_resolve_missing(path):
    assert resolve(SINGLE, path) is _MISSING


def test_resolve_keys_with_dots_longest_wins():
    document = {"a.b": {"c": 1}, "a": {"b": {"c": 2}, "x": 3}, "v1.2": [10, 20]}
    assert resolve(document, "a.b.c") == 1
    assert resolve(document, "a.x") == 3
    assert resolve(document, "v1.2.1") == 20
    assert resolve({"model": {"clip.vit-b": {"rank": 4}}}, "model.clip.vit-b.rank") == 4


# --- evaluating ----------------------------------------------------------------------------------


def test_evaluate_single_set_holds_and_not():
    checks = [parse_check("bands.noise.energy_share > 0.3"), parse_check("n_samples < 100"),
              parse_check("singular_values.0 >= 9"), parse_check("centered == 1")]
    results = evaluate(checks, SINGLE)
    assert [r.failed for r in results] == [True, False, True, True]
    assert all(r.subject is None for r in results)
    assert [r.actual for r in results] == [0.4, 200.0, 9.0, 1.0]
    assert results[0].describe() == "bands.noise.energy_share = 0.4"


def test_evaluate_null_counts_as_failed():
    (result,) = evaluate([parse_check("metrics.power_law_alpha > 100")], SINGLE)
    assert result.failed and result.actual is None
    assert result.describe() == "metrics.power_law_alpha = null"
    (result,) = evaluate([parse_check("x < 0")], {"x": math.nan})
    assert result.failed and result.actual is None


def test_evaluate_multi_set_checks_every_set_and_names_it():
    results = evaluate([parse_check("bands.noise.energy_share > 0.85")], MULTI)
    assert [(r.subject, r.actual, r.failed) for r in results] == [("image", 0.9, True), ("text", 0.2, False)]
    assert results[0].describe() == "[image] bands.noise.energy_share = 0.9"


def test_evaluate_multi_set_null_in_one_set():
    results = evaluate([parse_check("metrics.stable_rank < 1")], MULTI)
    assert [(r.subject, r.failed) for r in results] == [("image", False), ("text", True)]


def test_evaluate_multi_set_top_level_path():
    (result,) = evaluate([parse_check("cross.image~text.hellinger > 0.2")], MULTI)
    assert result.subject is None and result.failed and result.actual == 0.25
    (result,) = evaluate([parse_check("sets.text.bands.noise.energy_share < 0.5")], MULTI)
    assert result.subject is None and result.failed


def test_evaluate_path_found_nowhere_lists_top_level_keys():
    with pytest.raises(BadInputError) as info:
        evaluate([parse_check("bands.nois.energy_share > 0.5")], MULTI)
    message = str(info.value)
    assert "'bands.nois.energy_share'" in message
    assert "schema, sets, cross" in message
    with pytest.raises(BadInputError, match="top-level keys: schema, key, n_samples"):
        evaluate([parse_check("nope > 1")], SINGLE)


@pytest.mark.parametrize("path, kind", [("key", "str"), ("bands", "dict"), ("singular_values", "list")])
def test_evaluate_non_numeric_value(path, kind):
    with pytest.raises(BadInputError) as info:
        evaluate([parse_check(f"{path} > 1")], SINGLE)
    assert f"is a {kind}, not a number" in str(info.value)


def test_evaluate_non_numeric_value_in_a_set():
    with pytest.raises(BadInputError, match="is a str"):
        evaluate([parse_check("key > 1")], MULTI)


def test_evaluate_no_checks():
    assert evaluate([], SINGLE) == []


def test_a_typo_gets_the_nearest_path_first():
    from sdetool.analysis.checks import check_paths, suggestion

    assert suggestion("bands.nois.energy_share", ["bands.noise.energy_share", "bands.noise.count"]) == \
        "; did you mean bands.noise.energy_share?"
    assert suggestion("zzz", ["bands.noise.energy_share"]) == ""
    from sdetool.analysis.report import report_paths

    with pytest.raises(BadInputError) as caught:
        check_paths([parse_check("bands.nois.energy_share > 0.5")], report_paths())
    message = str(caught.value)
    assert message.index("did you mean bands.noise.energy_share?") < message.index("top-level keys")
    with pytest.raises(BadInputError, match=r"did you mean sets\.image\.metrics\.effective_rank\?"):
        check_paths([parse_check("sets.image.metrics.efective_rank < 3")], report_paths())
    with pytest.raises(BadInputError, match=r"did you mean metrics\.effective_rank\?"):
        evaluate([parse_check("metrics.efective_rank < 3")], SINGLE)
