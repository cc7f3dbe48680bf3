"""The compare functions, the NaN rules and ordering (retention: tests/test_keeper.py)."""

import functools
import math
import subprocess
import sys

import pytest

from mlflow_best_export import loss_smaller, metric_bigger, metric_smaller, ranking
from mlflow_best_export.ranking import Ranking

NAN = math.nan
INF = math.inf


def test_ranking_imports_neither_tensorflow_nor_mlflow():
    code = (
        "import sys, mlflow_best_export.ranking as r; "
        "bad = [m for m in ('tensorflow', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("best", "current", "expected"),
    [
        (0.5, 0.4, True),
        (0.5, 0.6, False),
        (0.5, 0.5, False),
        (0.5, NAN, False),
        (0.5, INF, False),
        (0.5, -INF, False),
        (NAN, 0.6, True),
        (NAN, NAN, False),
        (INF, 0.6, True),
    ],
)
def test_loss_smaller(best, current, expected):
    assert loss_smaller(best_eval_result={"loss": best}, current_eval_result={"loss": current}) is (
        expected
    )
    assert Ranking.of(loss_smaller).better({"loss": best}, {"loss": current}) is expected


@pytest.mark.parametrize(
    ("best", "current", "expected"),
    [
        (0.8, 0.9, True),
        (0.9, 0.8, False),
        (0.9, 0.9, False),
        (NAN, 0.1, True),
        (0.1, NAN, False),
        (INF, 0.1, True),
        (-INF, 0.1, True),
    ],
)
def test_metric_bigger(best, current, expected):
    fn = metric_bigger("auc")
    assert fn(best_eval_result={"auc": best}, current_eval_result={"auc": current}) is expected


def test_min_delta_needs_a_real_improvement():
    smaller = metric_smaller("loss", min_delta=0.1)
    assert smaller(best_eval_result={"loss": 1.0}, current_eval_result={"loss": 0.95}) is False
    assert smaller(best_eval_result={"loss": 1.0}, current_eval_result={"loss": 0.85}) is True
    bigger = metric_bigger("acc", min_delta=0.01)
    assert bigger(best_eval_result={"acc": 0.90}, current_eval_result={"acc": 0.905}) is False
    assert bigger(best_eval_result={"acc": 0.90}, current_eval_result={"acc": 0.92}) is True


def test_missing_key_names_the_keys_present():
    with pytest.raises(ValueError, match=r"current_eval_result has no 'loss'.*\['accuracy'\]"):
        loss_smaller(best_eval_result={"loss": 1.0}, current_eval_result={"accuracy": 0.5})
    with pytest.raises(ValueError, match=r"best_eval_result has no 'loss'"):
        loss_smaller(best_eval_result={}, current_eval_result={"loss": 0.5})
    with pytest.raises(ValueError, match=r"has no 'auc'.*\['loss'\]"):
        Ranking.of(metric_bigger("auc")).better(None, {"loss": 1.0})


@pytest.mark.parametrize("bad", ["", None, 3])
def test_metric_key_is_validated(bad):
    with pytest.raises(ValueError, match="key"):
        metric_smaller(bad)


@pytest.mark.parametrize("bad", [-0.1, NAN, INF, "0.1", True])
def test_min_delta_is_validated(bad):
    with pytest.raises(ValueError, match="min_delta"):
        metric_bigger("auc", min_delta=bad)


def test_compare_functions_pass_the_original_argument_check():
    from tensorflow_estimator.python.estimator import exporter as tf_exporter

    for fn in (loss_smaller, metric_smaller("loss"), metric_bigger("auc", 0.01)):
        assert tf_exporter._verify_compare_fn_args(fn) is None  # raises ValueError otherwise
        assert ranking.check_compare_fn(fn) is fn


def test_compared_key():
    from tensorflow_estimator.python.estimator import exporter as tf_exporter

    assert ranking.compared_key(loss_smaller) == "loss"
    assert ranking.compared_key(metric_bigger("auc")) == "auc"
    assert ranking.compared_key(tf_exporter._loss_smaller) == "loss"
    assert ranking.compared_key(lambda best_eval_result, current_eval_result: True) is None


def _user_fn(best_eval_result, current_eval_result):
    return current_eval_result["auc"] > best_eval_result["auc"]


def _three_args(best_eval_result, current_eval_result, extra):
    return True


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (None, "must not be None"),
        ("loss", "callable"),
        (lambda a, b: True, r"takes \['a', 'b'\]"),
        (lambda best_eval_result: True, r"takes \['best_eval_result'\]"),
        (_three_args, "extra"),
    ],
)
def test_check_compare_fn_rejects_wrong_parameters(fn, message):
    with pytest.raises(ValueError, match=message):
        ranking.check_compare_fn(fn)


def test_check_compare_fn_accepts_partials_and_methods():
    class Judge:
        def better(self, best_eval_result, current_eval_result):
            return True

    method = Judge().better
    partial = functools.partial(_three_args, extra=1)
    assert ranking.check_compare_fn(method) is method
    assert ranking.check_compare_fn(partial) is partial


def test_better_calls_by_keyword():
    calls = []

    def fn(current_eval_result, best_eval_result):  # reversed on purpose
        calls.append((best_eval_result, current_eval_result))
        return current_eval_result["auc"] > best_eval_result["auc"]

    assert Ranking.of(fn).better({"auc": 0.5}, {"auc": 0.6}) is True
    assert calls == [({"auc": 0.5}, {"auc": 0.6})]


def test_better_with_no_best():
    assert Ranking.of(loss_smaller).better(None, {"loss": 3.0}) is True
    assert Ranking.of(loss_smaller).better(None, {"loss": NAN}) is False
    assert Ranking.of(_user_fn).better(None, {"auc": 0.1}) is True


def _rank(items, fn):
    return Ranking.of(fn).rank(items, lambda i: i[1], lambda i: i[0])


def test_rank_by_value_then_newer_step():
    items = [(1, {"loss": 3.0}), (2, {"loss": 1.0}), (3, {"loss": NAN}), (4, {"loss": 1.0})]
    items.append((5, {"loss": INF}))
    assert [s for s, _ in _rank(items, loss_smaller)] == [4, 2, 1, 5, 3]
    bigger = [(1, {"auc": 0.7}), (2, {"auc": 0.9}), (3, {"auc": 0.8})]
    assert [s for s, _ in _rank(bigger, metric_bigger("auc"))] == [2, 3, 1]


def test_rank_with_a_user_compare_fn():
    items = [(1, {"auc": 0.7}), (2, {"auc": 0.9}), (3, {"auc": 0.8}), (4, {"auc": 0.9})]
    assert [s for s, _ in _rank(items, _user_fn)] == [4, 2, 3, 1]


def test_new_bests_is_the_sequence_an_uninterrupted_exporter_exports():
    items = [
        (1, {"loss": 5.0}),
        (2, {"loss": 3.0}),
        (3, {"accuracy": 0.1}),  # foreign record: skipped, not fatal
        (4, {"loss": 4.0}),
        (5, {"loss": NAN}),
        (6, {"loss": 2.0}),
        (7, {"loss": 2.0}),
    ]
    chain = Ranking.of(loss_smaller).new_bests(items, None, lambda i: i[1])
    assert [s for s, _ in chain] == [1, 2, 6]
    chain = Ranking.of(loss_smaller).new_bests(items, {"loss": 3.5}, lambda i: i[1])
    assert [s for s, _ in chain] == [2, 6]


def test_new_bests_skips_records_a_user_compare_fn_cannot_read():
    items = [(1, {"auc": 0.5}), (2, {"loss": 1.0}), (3, {"auc": 0.7})]
    chain = Ranking.of(_user_fn).new_bests(items, None, lambda i: i[1])
    assert [s for s, _ in chain] == [1, 3]


def test_rank_skips_what_cannot_be_ranked_and_best_needs_a_finite_value():
    items = [(1, {"loss": NAN}), (2, {"accuracy": 0.5}), (3, {"loss": INF})]
    assert [s for s, _ in _rank(items, loss_smaller)] == [3, 1]
    best = Ranking.of(loss_smaller).best(items, lambda i: i[1], lambda i: i[0])
    assert best is None
    items.append((4, {"loss": 7.0}))
    assert Ranking.of(loss_smaller).best(items, lambda i: i[1], lambda i: i[0]) == (
        4,
        {"loss": 7.0},
    )
