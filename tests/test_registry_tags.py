"""Version and LoggedModel tags: few and clear."""

from __future__ import annotations

import json

from mlflow_best_export import reconcile, registry
from mlflow_best_export.exports import Export

KEY = "0123456789abcdef0123"


def test_new_tags_fold_the_bookkeeping_into_one_json_tag():
    export = Export(
        path="/m/export/best_exporter/1700000000",
        version=1700000000,
        step=12,
        metrics={"loss": 0.5, "auc": 0.9},
        checkpoint_path="/m/model.ckpt-12",
        has_metadata=True,
        metadata={"compare_key": "loss", "compare_mode": "min"},
    )
    tags = registry.model_tags(export, KEY, "best_exporter")
    ours = sorted(k for k in tags if k.startswith("mlflow_best_export"))
    assert ours == ["mlflow_best_export", "mlflow_best_export.key"]
    assert json.loads(tags["mlflow_best_export"]) == {
        "exporter": "best_exporter",
        "export_dir": "/m/export/best_exporter/1700000000",
        "compare_key": "loss",
        "compare_mode": "min",
        "min_delta": 0.0,
    }
    assert tags["global_step"] == "12" and tags["checkpoint_path"] == "/m/model.ckpt-12"
    assert tags["metric.loss"] == "0.5" and tags["metric.auc"] == "0.9"


def test_an_export_dir_given_to_a_later_export_is_a_new_export_for_mlflow():
    """A directory name that retention freed and a later export got again (on ram://
    and object stores, names are taken ahead of the clock): the logged model and the
    version of the earlier export (step 8) must not pass for the new one (step 16)."""
    directory = "ram://run/export/best_exporter/1796541742"
    new = Export(
        path=directory,
        version=1796541742,
        step=16,
        metrics={"loss": 5.0},
        checkpoint_path="ram://run/model.ckpt-16",
        has_metadata=True,
        metadata={"compare_key": "loss", "compare_mode": "min"},
    )
    old_model = registry.ModelEntry("m-old", directory, True, step=8)
    old_version = registry.VersionEntry("3", directory, "m-old", ("best",), step=8)
    plan = reconcile.plan([new], [old_model], [old_version], alias="best", alias_on=(directory, 8))
    assert plan.log == (new,) and plan.register == (new,) and plan.alias_to == new
    assert plan.delete_versions == (old_version,) and plan.delete_models == (old_model,)
    # The same directory and step is the same export: nothing to do.
    same_model = registry.ModelEntry("m-new", directory, True, step=16)
    same_version = registry.VersionEntry("4", directory, "m-new", ("best",), step=16)
    plan = reconcile.plan(
        [new], [same_model], [same_version], alias="best", alias_on=(directory, 16)
    )
    assert plan.log == plan.register == plan.delete_versions == plan.delete_models == ()
    assert plan.alias_to is None
