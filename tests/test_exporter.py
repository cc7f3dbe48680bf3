"""MLflowBestExporter on disk: decisions, metadata, retention, restarts and crashes.

Every test trains a real (tiny) Estimator with train_and_evaluate or calls
export() with a real Estimator and checkpoint; see tests/tiny.py for the model
whose eval loss follows a schedule.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import tensorflow as tf
import tiny
from conftest import run_tiny
from oracles import eval_records, export_dirs, export_metadata, export_step, new_best_steps

from mlflow_best_export import MLflowBestExporter, loss_smaller, metric_bigger
from mlflow_best_export import exports as exports_lib
from mlflow_best_export.locks import ExportDirLockedError

# Scheduled eval losses, one per checkpoint (every 2 steps): the new bests are
# at steps 2, 4, 8, 12 and 16; everything else is worse than the best before it.
LOSSES = [50, 30, 40, 20, 25, 10, 60, 5, 8]
NEW_BEST_STEPS = [2, 4, 8, 12, 16]


def export_base(model_dir, name="best_exporter"):
    return os.path.join(model_dir, "export", name)


def exported(model_dir, name="best_exporter"):
    """The exports on disk (by listing), oldest first, as (recorded step, metadata)."""
    found = []
    for path in export_dirs(export_base(model_dir, name)):
        metadata = export_metadata(path)
        assert metadata is not None, path
        found.append((metadata["global_step"], metadata))
    return found


def expected_kept(model_dir, compare_fn, keep):
    """The last `keep` new-best evals of the recorded history (what a never-stopped run keeps)."""
    return new_best_steps(eval_records(str(model_dir)), compare_fn, keep)


def assert_metadata_matches_history(model_dir, name="best_exporter"):
    history = {r["step"]: r for r in eval_records(str(model_dir))}
    for path in export_dirs(export_base(model_dir, name)):
        metadata = export_metadata(path)
        step = export_step(path)  # what was exported, from its variables
        assert metadata["global_step"] == step, path
        record = history.get(step)
        assert record is not None, step
        assert metadata["exporter_name"] == name
        assert metadata["checkpoint_path"] == record["checkpoint_path"]
        for key, value in record["metrics"].items():
            assert metadata["eval_result"][key] == pytest.approx(value, rel=1e-6), key
        assert os.path.exists(metadata["checkpoint_path"] + ".index")
        assert isinstance(metadata["export_time"], float)


def assert_exported(path):
    """``export()`` returned the path (a str) of a SavedModel now on disk."""
    assert type(path) is str, path
    assert path in export_dirs(os.path.dirname(path)), path


def make_exporter(**kwargs):
    kwargs.setdefault("serving_input_receiver_fn", tiny.raw_serving_input_receiver_fn)
    kwargs.setdefault("log_to_mlflow", False)  # the disk alone; tests/test_mlflow.py does MLflow
    return MLflowBestExporter(**kwargs)


def _mse_smaller_by_7(best_eval_result, current_eval_result):
    return current_eval_result["mse"] < best_eval_result["mse"] - 7


@pytest.mark.slow
@pytest.mark.parametrize(
    ("compare_fn", "keep", "steps"),
    [
        (loss_smaller, 3, [8, 12, 16]),
        (metric_bigger("score"), 3, [8, 12, 16]),
        (_mse_smaller_by_7, 3, [4, 8, 12]),
        (loss_smaller, None, NEW_BEST_STEPS),
    ],
    ids=["loss_smaller", "metric_bigger", "user_compare_fn", "keep_all"],
)
def test_keeps_exactly_the_last_n_new_best_evals(tmp_path, compare_fn, keep, steps):
    model_dir = str(tmp_path / "model")
    returned = []

    class Recording(MLflowBestExporter):
        def export(self, *args, **kwargs):
            result = super().export(*args, **kwargs)
            returned.append(result)
            return result

    exporter = Recording(
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
        compare_fn=compare_fn,
        exports_to_keep=keep,
    )
    tiny.train(model_dir, exporter, LOSSES)
    exporter.close()

    assert [s for s, _ in exported(model_dir)] == steps
    assert steps == expected_kept(model_dir, compare_fn, keep)
    assert_metadata_matches_history(model_dir)
    # The return value is the new export's path as str, or None when skipped.
    paths = [r for r in returned if r is not None]
    assert [type(p) for p in paths] == [str] * len(paths)
    assert len(paths) == len(expected_kept(model_dir, compare_fn, None))
    # The last ones returned are the exports still on disk.
    assert paths[-len(steps) :] == export_dirs(export_base(model_dir))
    assert len(returned) == len(LOSSES)
    assert not [n for n in os.listdir(export_base(model_dir)) if n.startswith("temp-")]


@pytest.mark.slow
def test_as_text_and_assets_extra(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\n")
    model_dir = str(tmp_path / "model")
    exporter = make_exporter(
        as_text=True, assets_extra={"vocab.txt": str(vocab), "nested/dir/v.txt": str(vocab)}
    )
    tiny.train(model_dir, exporter, [3, 1])
    exporter.close()
    [(step, _)] = exported(model_dir)[-1:]
    assert step == 4
    path = export_dirs(export_base(model_dir))[-1]
    assert os.path.exists(os.path.join(path, "saved_model.pbtxt"))
    extra = os.path.join(path, "assets.extra")
    assert open(os.path.join(extra, "vocab.txt")).read() == "a\nb\n"
    assert open(os.path.join(extra, "nested", "dir", "v.txt")).read() == "a\nb\n"
    metadata = json.load(open(os.path.join(extra, exports_lib.METADATA_FILENAME)))
    assert metadata["global_step"] == 4


# -- restarts and crashes ------------------------------------------------------------------


@pytest.mark.slow
def test_restart_never_exports_a_worse_model_nor_collects_the_best(tmp_path):
    model_dir = str(tmp_path / "model")
    # First process: new bests at 2, 4 and 8 (20).
    run_tiny("--model-dir", model_dir, "--losses", "50,30,40,20", "--exports-to-keep", "2")
    assert [s for s, _ in exported(model_dir)] == [4, 8]
    # Second process: 25, 30, 22 are all worse than 20, then 10 is a real improvement.
    run_tiny(
        "--model-dir", model_dir, "--losses", "50,30,40,20,25,30,22,10", "--exports-to-keep", "2"
    )
    assert [s for s, _ in exported(model_dir)] == [8, 16]
    assert expected_kept(model_dir, loss_smaller, 2) == [8, 16]


@pytest.mark.slow
def test_original_best_exporter_loses_the_best_on_restart(tmp_path):
    """The behaviour we fix, shown with the original class on the same schedule."""
    model_dir = str(tmp_path / "model")

    def original():
        return tf.estimator.BestExporter(
            serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn, exports_to_keep=2
        )

    tiny.train(model_dir, original(), [50, 30, 40, 20])
    tiny.train(model_dir, original(), [50, 30, 40, 20, 25, 30, 22, 24])
    steps = sorted(export_step(p) for p in export_dirs(export_base(model_dir)))
    # It exported the worse step 10 right after the restart and collected step 8, the best.
    assert 10 in steps and 8 not in steps


def run_killed(model_dir: str, losses: str, *, keep: int, kill: str) -> None:
    """Train in a fresh process that SIGKILLs itself at ``kill`` (POINT:STEP)."""
    proc = run_tiny(
        "--model-dir", model_dir, "--losses", losses, "--exports-to-keep", str(keep),
        "--kill", kill, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_between_export_and_retention(tmp_path):
    model_dir = str(tmp_path / "model")
    run_killed(model_dir, "50,30,20,40,10,35", keep=2, kill="before_retention:6")
    # Killed after writing the export of step 6 and before collecting step 2.
    assert [s for s, _ in exported(model_dir)] == [2, 4, 6]
    run_tiny("--model-dir", model_dir, "--losses", "50,30,20,40,10,35", "--exports-to-keep", "2")
    assert [s for s, _ in exported(model_dir)] == [6, 10]
    assert expected_kept(model_dir, loss_smaller, 2) == [6, 10]


@pytest.mark.slow
def test_sigkill_between_evaluation_and_export_recovers_the_lost_best(tmp_path):
    model_dir = str(tmp_path / "model")
    losses = "50,30,20,40,45,35"
    run_killed(model_dir, losses, keep=2, kill="before_export:6")
    assert 6 in [r["step"] for r in eval_records(model_dir)]  # the eval happened...
    assert [s for s, _ in exported(model_dir)] == [2, 4]  # ...its export did not
    run_tiny("--model-dir", model_dir, "--losses", losses, "--exports-to-keep", "2")
    kept = exported(model_dir)
    assert [s for s, _ in kept] == [4, 6]
    assert expected_kept(model_dir, loss_smaller, 2) == [4, 6]
    assert kept[-1][1]["recovered_after_crash"] is True
    assert_metadata_matches_history(model_dir)


@pytest.mark.slow
def test_sigkill_during_retention(tmp_path):
    model_dir = str(tmp_path / "model")
    losses = "50,30,20,10,40,5"
    run_killed(model_dir, losses, keep=1, kill="during_retention:0")
    # Killed with the collected export renamed out of sight but not yet deleted.
    leftovers = [n for n in os.listdir(export_base(model_dir)) if n.startswith("temp-delete-")]
    assert len(leftovers) == 1
    assert [s for s, _ in exported(model_dir)] == [4]
    run_tiny("--model-dir", model_dir, "--losses", losses, "--exports-to-keep", "1")
    assert [s for s, _ in exported(model_dir)] == [12]
    assert not [n for n in os.listdir(export_base(model_dir)) if n.startswith("temp-")]


@pytest.mark.slow
def test_exports_of_the_original_class_are_ranked_from_history(tmp_path):
    model_dir = str(tmp_path / "model")
    original = tf.estimator.BestExporter(
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn, exports_to_keep=None
    )
    tiny.train(model_dir, original, [50, 30, 40, 20])  # exports steps 2, 4, 8 without metadata
    # A foreign SavedModel-like directory with no global step: left alone.
    foreign = os.path.join(export_base(model_dir), "1000000000")
    os.makedirs(foreign)
    exporter = make_exporter(exports_to_keep=2)
    tiny.train(model_dir, exporter, [50, 30, 40, 20, 25, 10])
    exporter.close()
    by_step = {export_step(p): p for p in export_dirs(export_base(model_dir))}
    assert os.path.isdir(foreign)
    assert sorted(by_step) == [8, 12]
    assert export_metadata(by_step[8]) is None and export_metadata(by_step[12]) is not None


# -- the original class's own unit-test scenarios, with a real Estimator ----------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real Estimator with one checkpoint, for calling export() by hand."""
    model_dir = str(tmp_path_factory.mktemp("trained") / "model")
    estimator = tiny.build_estimator(model_dir, 2, {2: 1.0})
    estimator.train(tiny.train_input_fn, max_steps=2)
    return estimator


def fresh(trained, tmp_path):
    """The trained Estimator, copied into its own model directory."""
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(trained.model_dir, model_dir)
    estimator = tiny.build_estimator(str(model_dir), 2, {2: 1.0})
    return estimator, estimator.latest_checkpoint()


def call_export(exporter, estimator, checkpoint, eval_result, final=False):
    return exporter.export(
        estimator, export_base(estimator.model_dir), checkpoint, eval_result, final
    )


def test_exports_to_keep_zero_raises():
    with pytest.raises(ValueError, match="positive number"):
        make_exporter(exports_to_keep=0)
    with pytest.raises(ValueError, match="exports_to_keep.*retention policy"):
        make_exporter(exports_to_keep="5")


def test_a_retention_policy_value_is_applied_on_disk(trained, tmp_path):
    from mlflow_best_export.retention import AnyOf, KeepBestN, KeepLatestN

    estimator, checkpoint = fresh(trained, tmp_path)
    policy = AnyOf(KeepBestN(1), KeepLatestN(2))
    exporter = make_exporter(exports_to_keep=policy)
    assert exporter.retention is policy and exporter.exports_to_keep is policy
    for step, loss in ((2, 0.9), (3, 0.8), (4, 0.7)):
        assert_exported(
            call_export(exporter, estimator, checkpoint, {"loss": loss, "global_step": step})
        )
    exporter.close()
    kept = [
        export_metadata(p)["global_step"] for p in export_dirs(export_base(estimator.model_dir))
    ]
    assert kept == [3, 4]


def test_first_export_and_export_on_improvement_only(trained, tmp_path):
    estimator, checkpoint = fresh(trained, tmp_path)
    exporter = make_exporter(exports_to_keep=1)
    first = call_export(exporter, estimator, checkpoint, {"loss": 0.5, "global_step": 2})
    assert isinstance(first, str) and os.path.isdir(first)
    assert call_export(exporter, estimator, checkpoint, {"loss": 0.6, "global_step": 2}) is None
    third = call_export(exporter, estimator, checkpoint, {"loss": 0.4, "global_step": 2})
    assert isinstance(third, str) and third != first
    assert [m["eval_result"]["loss"] for _, m in exported(estimator.model_dir)] == [0.4]
    exporter.close()


def write_evals(eval_dir: str, evals: dict[int, dict[str, float]]) -> None:
    """Write eval results to ``eval_dir`` the way the Estimator does, ``{step: metrics}``."""
    from tensorflow.python.eager import context
    from tensorflow_estimator.python.estimator import estimator as estimator_lib

    with context.graph_mode():
        for step, metrics in evals.items():
            estimator_lib._write_dict_to_summary(eval_dir, metrics, step)
    tf.compat.v1.summary.FileWriterCache.clear()


def test_preemption_scenario_of_the_original_tests(trained, tmp_path):
    estimator, checkpoint = fresh(trained, tmp_path)
    eval_dir = os.path.join(estimator.model_dir, "eval_continuous")
    write_evals(eval_dir, {1: {"loss": 50}, 2: {"loss": 60}})
    exporter = make_exporter(event_file_pattern="eval_continuous/*.tfevents.*", exports_to_keep=1)
    # Nothing is kept yet, and the history's best has no checkpoint to export from.
    assert_exported(call_export(exporter, estimator, checkpoint, {"loss": 100, "global_step": 3}))
    assert_exported(call_export(exporter, estimator, checkpoint, {"loss": 10, "global_step": 4}))
    assert call_export(exporter, estimator, checkpoint, {"loss": 20, "global_step": 5}) is None
    assert [m["eval_result"]["loss"] for _, m in exported(estimator.model_dir)] == [10]
    exporter.close()


def test_empty_eval_event_in_history(trained, tmp_path):
    estimator, checkpoint = fresh(trained, tmp_path)
    eval_dir = os.path.join(estimator.model_dir, "eval_continuous")
    write_evals(eval_dir, {1: {}, 2: {"loss": 60}})
    exporter = make_exporter(event_file_pattern="eval_continuous/*.tfevents.*", exports_to_keep=1)
    assert_exported(call_export(exporter, estimator, checkpoint, {"loss": 100, "global_step": 3}))
    assert_exported(call_export(exporter, estimator, checkpoint, {"loss": 10, "global_step": 4}))
    exporter.close()
    # The empty eval was skipped, not taken as a result: the one kept export is the best.
    assert [(step, m["eval_result"]["loss"]) for step, m in exported(estimator.model_dir)] == [
        (4, 10)
    ]


# -- NaN, inf, missing keys, foreign scalars ----------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_candidate_never_wins(trained, tmp_path, bad):
    estimator, checkpoint = fresh(trained, tmp_path)
    exporter = make_exporter()
    # Not even as the first export: a NaN model is not worth serving.
    assert call_export(exporter, estimator, checkpoint, {"loss": bad, "global_step": 2}) is None
    assert_exported(call_export(exporter, estimator, checkpoint, {"loss": 3.0, "global_step": 2}))
    assert call_export(exporter, estimator, checkpoint, {"loss": bad, "global_step": 2}) is None
    assert [m["eval_result"]["loss"] for _, m in exported(estimator.model_dir)] == [3.0]
    exporter.close()


def write_scalar(logdir: str, tag: str, value: float, step: int) -> None:
    """Write one simple_value scalar event with the TF1 writer the Estimator uses."""
    with tf.Graph().as_default():
        writer = tf.compat.v1.summary.FileWriter(logdir)
        value_pb = tf.compat.v1.Summary.Value(tag=tag, simple_value=value)
        writer.add_summary(tf.compat.v1.Summary(value=[value_pb]), step)
        writer.close()


def test_nan_in_history_does_not_block_later_exports(trained, tmp_path):
    estimator, checkpoint = fresh(trained, tmp_path)
    write_scalar(os.path.join(estimator.model_dir, "eval"), "loss", math.nan, step=1)
    exporter = make_exporter()
    assert_exported(call_export(exporter, estimator, checkpoint, {"loss": 7.0, "global_step": 2}))
    exporter.close()


def test_candidate_without_the_compared_key_names_its_keys(trained, tmp_path):
    estimator, checkpoint = fresh(trained, tmp_path)
    exporter = make_exporter(compare_fn=metric_bigger("auc"))
    with pytest.raises(ValueError, match=r"no 'auc'.*\['accuracy', 'global_step', 'loss'\]"):
        call_export(
            exporter, estimator, checkpoint, {"loss": 1.0, "accuracy": 0.5, "global_step": 2}
        )
    exporter.close()


@pytest.mark.slow
def test_foreign_scalars_in_the_eval_directory_are_skipped(tmp_path):
    model_dir = str(tmp_path / "model")
    write_scalar(os.path.join(model_dir, "eval"), "foo", 1.0, step=1)
    exporter = make_exporter(exports_to_keep=2)
    tiny.train(model_dir, exporter, [5, 3, 4])
    exporter.close()
    assert [s for s, _ in exported(model_dir)] == [2, 4]


# -- construction-time validation ----------------------------------------------------------


def _wrong(best, current):
    return True


# Each invalid argument fails at construction with exactly a ValueError whose message
# names the argument (and says what to do).
BAD_ARGUMENTS = [
    ({"compare_fn": _wrong}, r"`compare_fn` must take exactly.*takes \['best', 'current'\]"),
    ({"compare_fn": None}, "`compare_fn` must not be None"),
    ({"compare_fn": "loss"}, "`compare_fn` must be callable"),
    ({"exports_to_keep": 0}, "`exports_to_keep`.*positive"),
    ({"exports_to_keep": -1}, "`exports_to_keep`.*positive"),
    ({"exports_to_keep": 1.5}, "`exports_to_keep` must be a positive integer"),
    ({"exports_to_keep": True}, "`exports_to_keep` must be a positive integer"),
    ({"serving_input_receiver_fn": None}, "`serving_input_receiver_fn` must be a function"),
    ({"name": ""}, "`name` must be a non-empty string"),
    ({"name": "a/b"}, "`name` is used as a directory"),
    ({"event_file_pattern": "/abs/eval/*"}, "`event_file_pattern` is relative"),
    ({"event_file_pattern": ""}, "`event_file_pattern` must be a glob"),
    ({"as_text": "yes"}, "`as_text` must be True or False"),
    ({"assets_extra": ["a"]}, "`assets_extra` must be a dict"),
    ({"assets_extra": {"/etc/x": __file__}}, "`assets_extra` key '/etc/x' is absolute"),
    ({"assets_extra": {"../x": __file__}}, r"`assets_extra` key '\.\./x' contains '\.\.'"),
    ({"assets_extra": {"a/../../x": __file__}}, r"`assets_extra` key .* contains '\.\.'"),
    ({"assets_extra": {"x.txt": "/no/such/file"}}, r"`assets_extra\['x.txt'\]`.*does not exist"),
    ({"assets_extra": {"x": os.path.dirname(__file__)}}, r"`assets_extra\['x'\]`.*directory"),
    ({"assets_extra": {exports_lib.METADATA_FILENAME: __file__}}, "`assets_extra` key.*reserved"),
    ({"alias": "latest"}, "`alias` 'latest' is reserved"),
    ({"alias": "v3"}, "`alias` 'v3' is reserved"),
    ({"alias": "my best"}, "`alias` 'my best' is not a valid alias"),
    ({"alias": ""}, "`alias` must be a non-empty alias name"),
    ({"registered_model_name": "team/model"}, "`registered_model_name`"),
    ({"registered_model_name": "a:b"}, "`registered_model_name`"),
    ({"registered_model_name": " "}, "`registered_model_name` must be a non-empty string"),
    ({"tracking_uri": 5}, "`tracking_uri` must be a non-empty string"),
    ({"experiment_name": ""}, "`experiment_name` must be a non-empty string"),
    ({"registry_uri": ""}, "`registry_uri` must be a non-empty string"),
    ({"run_name": 7}, "`run_name` must be a non-empty string"),
    ({"run_id": 123}, "`run_id` must be a non-empty string"),
    ({"strict": "yes"}, "`strict` must be True or False"),
    ({"log_to_mlflow": 1}, "`log_to_mlflow` must be True or False"),
    ({"flush_timeout": -1}, "`flush_timeout` must be a number of seconds"),
    ({"flush_timeout": "10"}, "`flush_timeout` must be a number of seconds"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        make_exporter(**kwargs)
    assert type(info.value) is ValueError


def test_the_bad_argument_table_covers_every_argument():
    import inspect

    covered = {name for kwargs, _ in BAD_ARGUMENTS for name in kwargs}
    parameters = set(inspect.signature(MLflowBestExporter.__init__).parameters) - {"self"}
    assert parameters == covered
    # Each message names the argument it is about (the fix is in the rest of it).
    unnamed = [(k, m) for k, m in BAD_ARGUMENTS if not any(f"`{name}" in m for name in k)]
    assert not unnamed, unnamed


def test_second_exporter_on_the_same_directory_is_refused(trained, tmp_path):
    estimator, checkpoint = fresh(trained, tmp_path)
    first = make_exporter()
    second = make_exporter()
    assert_exported(call_export(first, estimator, checkpoint, {"loss": 1.0, "global_step": 2}))
    with pytest.raises(ExportDirLockedError, match="Another exporter in this process .*pid"):
        call_export(second, estimator, checkpoint, {"loss": 0.5, "global_step": 2})
    first.close()
    assert_exported(call_export(second, estimator, checkpoint, {"loss": 0.5, "global_step": 2}))
    second.close()


def test_float32_history_does_not_make_a_kept_export_look_lost(trained, tmp_path):
    # float32(0.7) < 0.7: the history holds a slightly better loss than the export's metadata.
    estimator, checkpoint = fresh(trained, tmp_path)
    eval_dir = os.path.join(estimator.model_dir, "eval")
    write_evals(eval_dir, {2: {"loss": 0.7}})
    exporter = make_exporter()
    assert_exported(call_export(exporter, estimator, checkpoint, {"loss": 0.7, "global_step": 2}))
    write_evals(eval_dir, {3: {"loss": 0.9}})
    assert call_export(exporter, estimator, checkpoint, {"loss": 0.9, "global_step": 3}) is None
    assert [step for step, _ in exported(estimator.model_dir)] == [2]
    exporter.close()


def test_the_parents_private_attributes_stay_the_parents():
    """The subclass keeps its own state under its own names: every private attribute the
    original BestExporter sets holds what the original would hold, and exporter.py never
    names one of them."""
    import inspect
    import re

    import tensorflow as tf

    from mlflow_best_export import exporter as exporter_module

    kwargs = {
        "serving_input_receiver_fn": tiny.raw_serving_input_receiver_fn,
        "exports_to_keep": 3,
        "as_text": True,
        "event_file_pattern": "eval_other/*.tfevents.*",
        "compare_fn": loss_smaller,
    }
    ours = make_exporter(**kwargs)
    theirs = tf.estimator.BestExporter(**kwargs)
    parent_attributes = set(vars(theirs)) - {"_saved_model_exporter"}
    assert parent_attributes >= {"_compare_fn", "_event_file_pattern", "_exports_to_keep"}
    for name in parent_attributes:
        assert getattr(ours, name) == getattr(theirs, name), name
    source = inspect.getsource(exporter_module)
    named = {m for m in re.findall(r"self\.(_\w+)", source) if m in vars(theirs)}
    assert not named, named
