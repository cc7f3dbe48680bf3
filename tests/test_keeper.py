"""The pure core: keeper decisions, lost-best recovery, retention policies, Comparison.

This module imports neither TensorFlow nor MLflow, and neither does anything it
runs (tests/conftest.py creates the MLflow store only for other modules);
``test_runs_without_tensorflow_or_mlflow`` checks that in a fresh process.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_best_export.keeper import Candidate, Keeper
from mlflow_best_export.ranking import Comparison, loss_smaller, metric_bigger, metric_smaller
from mlflow_best_export.retention import (
    AnyOf,
    KeepAll,
    KeepBestN,
    KeepLatestN,
    RetentionPolicy,
    retention_policy,
)

NAN = math.nan
HERE = os.path.dirname(os.path.abspath(__file__))


def test_importing_the_keeper_imports_neither_tensorflow_nor_mlflow():
    code = (
        "import sys, mlflow_best_export.keeper; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'mlflow', "
        "'tensorflow_estimator', 'keras')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runs_without_tensorflow_or_mlflow():
    code = (
        "import sys, pytest; "
        f"rc = pytest.main(['-q', '-p', 'no:cacheprovider', {__file__!r}, "
        "'-k', 'not without_tensorflow and not imports_neither']); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'mlflow')); "
        "print('IMPORTED', bad); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(HERE)
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "IMPORTED []" in out.stdout, out.stdout[-2000:]


def c(step: int, loss: float, time: float | None = None, **more: float) -> Candidate:
    return Candidate(step, {"loss": loss, **more}, float(step if time is None else time))


def steps(candidates) -> list[int]:
    return [x.step for x in candidates]


# -- decide -------------------------------------------------------------------------------


def test_first_candidate_is_exported():
    decision = Keeper().decide([], [], c(10, 3.0))
    assert (decision.baseline, decision.recover, decision.unrecoverable, decision.export) == (
        None,
        (),
        (),
        True,
    )


def test_the_baseline_is_the_best_kept_export_not_the_last_eval():
    kept = [c(10, 1.0), c(20, 0.5), c(30, 0.7)]
    keeper = Keeper()
    decision = keeper.decide(kept, [], c(40, 0.6))
    assert decision.baseline.step == 20
    assert decision.export is False
    assert keeper.decide(kept, [], c(40, 0.4)).export is True


@pytest.mark.parametrize("bad", [NAN, math.inf, -math.inf])
def test_a_non_finite_candidate_never_wins(bad):
    assert Keeper().decide([], [], c(10, bad)).export is False
    assert Keeper().decide([c(5, 2.0)], [], c(10, bad)).export is False


def test_a_nan_kept_export_never_blocks_a_finite_candidate():
    assert Keeper().decide([c(5, NAN)], [], c(10, 9.0)).export is True


def test_a_candidate_without_the_compared_metric_names_its_keys():
    with pytest.raises(ValueError, match=r"no 'loss'.*\['accuracy'\]"):
        Keeper().decide([], [], Candidate(10, {"accuracy": 0.5}))


def test_lost_bests_are_recovered_oldest_first_and_gone_checkpoints_reported():
    kept = [c(10, 1.0)]
    earlier = [c(10, 1.0000001), c(20, 0.8), c(30, 0.9), c(40, 0.5), c(45, 0.6)]
    gone = {40}
    asked = []

    def recoverable(candidate):
        asked.append(candidate.step)
        return candidate.step not in gone

    decision = Keeper(policy=KeepAll()).decide(kept, earlier, c(50, 0.55), recoverable)
    # 10 is kept (its float32 history value differs by rounding), 30 never beat 20.
    assert steps(decision.unrecoverable) == [40]
    assert steps(decision.recover) == [20, 45]
    # The candidate is judged against what can be served after recovery: 0.6 at step 45.
    assert decision.export is True
    # Only evals that beat the baseline are looked up on disk.
    assert sorted(asked) == [20, 30, 40, 45]


def test_only_what_retention_keeps_is_recovered():
    earlier = [c(s, 10.0 - s / 10) for s in range(10, 70, 10)]  # six lost new bests
    decision = Keeper(policy=KeepBestN(2)).decide([c(5, 20.0)], earlier, c(100, 50.0))
    assert steps(decision.recover) == [50, 60]
    assert decision.export is False
    latest = Keeper(policy=AnyOf(KeepBestN(1), KeepLatestN(3))).decide([], earlier, c(100, 50.0))
    assert steps(latest.recover) == [40, 50, 60]


def test_history_at_or_after_the_candidate_is_not_a_lost_best():
    decision = Keeper().decide([c(5, 9.0)], [c(10, 1.0), c(20, 0.5)], c(10, 2.0))
    assert decision.recover == ()


def test_a_user_compare_fn_is_used_pairwise_and_foreign_records_skipped():
    def auc_bigger(best_eval_result, current_eval_result):
        return current_eval_result["auc"] > best_eval_result["auc"]

    keeper = Keeper(auc_bigger, KeepBestN(2))
    kept = [Candidate(1, {"auc": 0.7}), Candidate(2, {"auc": 0.9}), Candidate(3, {"auc": 0.8})]
    earlier = [Candidate(4, {"loss": 1.0}), Candidate(5, {"auc": 0.95})]
    decision = keeper.decide(kept, earlier, Candidate(6, {"auc": 0.93}))
    assert decision.baseline.step == 2
    assert steps(decision.recover) == [5]
    assert decision.export is False
    assert steps(keeper.retire(kept)) == [1]


def test_min_delta_decides_exports():
    keeper = Keeper(metric_smaller("loss", min_delta=0.1))
    assert keeper.decide([c(1, 1.0)], [], c(2, 0.95)).export is False
    assert keeper.decide([c(1, 1.0)], [], c(2, 0.85)).export is True


# -- retire -------------------------------------------------------------------------------


def test_keep_best_n_retires_the_worst():
    kept = [c(1, 0.4), c(2, 0.3), c(3, 0.5), c(4, 0.1)]
    assert steps(Keeper(policy=KeepBestN(2)).retire(kept)) == [1, 3]
    assert steps(Keeper(metric_bigger("loss"), KeepBestN(2)).retire(kept)) == [2, 4]


def test_ties_keep_the_later_step():
    assert steps(Keeper(policy=KeepBestN(1)).retire([c(1, 0.5), c(2, 0.5)])) == [1]


def test_keep_latest_n_and_any_of():
    kept = [c(1, 0.1), c(2, 0.3), c(3, 0.5), c(4, 0.4)]
    assert steps(Keeper(policy=KeepLatestN(1)).retire(kept)) == [1, 2, 3]
    both = Keeper(policy=AnyOf(KeepBestN(1), KeepLatestN(1)))
    assert steps(both.retire(kept)) == [2, 3]
    assert steps(both.keep(kept)) == [1, 4]


def test_keep_all_retires_nothing_and_nan_ranks_last():
    kept = [c(1, NAN), c(2, 0.3), c(3, math.inf)]
    assert Keeper(policy=KeepAll()).retire(kept) == []
    assert steps(Keeper(policy=KeepBestN(1)).keep(kept)) == [2]
    assert steps(Keeper(policy=KeepBestN(1)).retire(kept)) == [3, 1]


def test_exports_that_cannot_be_ranked_are_never_retired():
    kept = [Candidate(1, {"accuracy": 0.1}), c(2, 0.3), c(3, 0.2)]
    assert steps(Keeper(policy=KeepBestN(1)).retire(kept)) == [2]


# -- policies -----------------------------------------------------------------------------


def test_exports_to_keep_maps_onto_policies():
    assert retention_policy(5) == KeepBestN(5)
    assert retention_policy(None) == KeepAll()
    policy = AnyOf(KeepBestN(3), KeepLatestN(1))
    assert retention_policy(policy) is policy
    assert repr(policy) == "AnyOf(policies=(KeepBestN(n=3), KeepLatestN(n=1)))"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "5", KeepBestN])
def test_bad_exports_to_keep_names_the_argument(bad):
    with pytest.raises(ValueError, match="exports_to_keep"):
        retention_policy(bad)


@pytest.mark.parametrize("make", [lambda: KeepBestN(0), lambda: KeepLatestN(-2), AnyOf])
def test_bad_policies_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_a_policy_of_ones_own_is_a_value_too():
    class EveryOther:
        def keep(self, ranked):
            return [candidate.step % 2 == 0 for candidate in ranked]

    assert isinstance(EveryOther(), RetentionPolicy)
    kept = [c(1, 0.1), c(2, 0.2), c(3, 0.3), c(4, 0.4)]
    assert steps(Keeper(policy=AnyOf(EveryOther(), KeepBestN(1))).retire(kept)) == [3]


# -- Comparison ---------------------------------------------------------------------------


def test_comparison_is_the_compare_function_and_the_metadata():
    auc = metric_bigger("auc", min_delta=0.01)
    assert auc == Comparison("auc", "max", 0.01)
    assert auc(best_eval_result={"auc": 0.5}, current_eval_result={"auc": 0.52}) is True
    assert auc(best_eval_result={"auc": 0.5}, current_eval_result={"auc": 0.505}) is False
    assert auc.to_metadata() == {"compare_key": "auc", "compare_mode": "max", "min_delta": 0.01}
    assert Comparison.from_metadata(auc.to_metadata()) == auc
    assert Comparison.from_metadata({"compare_key": "loss", "compare_mode": "min"}) == loss_smaller
    assert Comparison.from_metadata({"compare_key": None}) is None
    assert Comparison.from_metadata({"compare_key": "loss", "compare_mode": "up"}) is None


@pytest.mark.parametrize(
    "args", [("",), ("loss", "down"), ("loss", "min", -1.0), ("loss", "min", NAN)]
)
def test_bad_comparisons_are_refused(args):
    with pytest.raises(ValueError):
        Comparison(*args)


# -- property: restarts and lost exports end where an uninterrupted run would --------------


def _chain_oracle(losses: list[float]) -> list[int]:
    """Indices an uninterrupted best exporter exports: finite, strictly smaller than all before."""
    best, chain = math.inf, []
    for i, loss in enumerate(losses):
        if math.isfinite(loss) and loss < best:
            best = loss
            chain.append(i)
    return chain


losses_st = st.lists(
    st.one_of(st.floats(0.0, 10.0, allow_nan=False), st.just(NAN), st.just(math.inf)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(losses=losses_st, lost=st.sets(st.integers(0, 24)), n=st.integers(1, 4))
def test_exports_lost_to_crashes_end_as_the_n_best_of_an_uninterrupted_run(losses, lost, n):
    keeper = Keeper(loss_smaller, KeepBestN(n))
    kept: list[Candidate] = []
    history: list[Candidate] = []
    for i, loss in enumerate(losses):
        candidate = c(i, loss)
        decision = keeper.decide(kept, history, candidate)
        kept += list(decision.recover)
        # A crash between the eval and its export: the export is lost, the eval is not.
        if decision.export and i not in lost:
            kept.append(candidate)
        doomed = {id(x) for x in keeper.retire(kept)}
        kept = [x for x in kept if id(x) not in doomed]
        history.append(candidate)
    final = keeper.decide(kept, history, c(len(losses), math.inf))
    kept += list(final.recover)
    kept = [x for x in kept if id(x) not in {id(y) for y in keeper.retire(kept)}]
    assert sorted(steps(kept)) == _chain_oracle(losses)[-n:]


def bind(model_dir):
    """An ExportSession on ``model_dir`` without history or MLflow."""
    from mlflow_best_export.session import ExportSession

    return ExportSession(
        model_dir=str(model_dir),
        export_base=str(model_dir / "export" / "best_exporter"),
        exporter_name="best_exporter",
        event_file_pattern=None,
        keeper=Keeper(),
        mlflow=None,
    )


def test_a_lost_best_is_reported_once_per_bound_directory(tmp_path, caplog):
    session = bind(tmp_path)
    try:
        lost = Candidate(40, {"loss": 0.5}, 0.0)
        for _ in range(3):
            session.report_unrecoverable(lost, "loss=0.5", "its checkpoint /m/ckpt-40 is gone")
    finally:
        session.close()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "step 40 (loss=0.5)" in warned[0] and "ckpt-40 is gone" in warned[0]


def test_a_bind_that_fails_releases_the_directory(tmp_path, monkeypatch):
    from mlflow_best_export import exports

    def unreadable(export_base):  # a fault a test cannot cause for real on a local disk
        raise PermissionError(13, "Permission denied", export_base)

    with monkeypatch.context() as patch:
        patch.setattr(exports, "remove_stale_temps", unreadable)
        with pytest.raises(PermissionError):
            bind(tmp_path)
    bind(tmp_path).close()  # raises ExportDirLockedError if the failed bind kept the lock
