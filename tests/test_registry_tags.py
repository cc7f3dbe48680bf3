"""Version and LoggedModel tags: few and clear, and the first release's tags still read."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from mlflow_best_export import registry
from mlflow_best_export.exports import Export
from mlflow_best_export.retention import KeepBestN

KEY = "0123456789abcdef0123"


def old_style_tags(step: int, loss: float, export_dir: str) -> dict[str, str]:
    """Tags as the first release wrote them: seven separate mlflow_best_export.* tags."""
    return {
        "mlflow_best_export.key": KEY,
        "mlflow_best_export.exporter": "best_exporter",
        "mlflow_best_export.export_dir": export_dir,
        "mlflow_best_export.compare_key": "loss",
        "mlflow_best_export.compare_mode": "min",
        "global_step": str(step),
        "metric.loss": repr(loss),
    }


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


def test_versions_with_the_first_releases_tags_are_found_and_ranked(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model("old")
    for step, loss in ((2, 3.0), (4, 1.0), (6, 2.0)):
        client.create_model_version(
            "old", source=str(tmp_path), tags=old_style_tags(step, loss, f"/m/e/{step}")
        )
    found = registry.find_versions(client, "old", KEY)
    assert [v.export_dir for v in found] == ["/m/e/2", "/m/e/4", "/m/e/6"]
    plan = registry.gc_plan(client, "old", KeepBestN(2))
    [(doomed, reason)] = plan.delete
    assert doomed.export_dir == "/m/e/2" and "loss=3.0" in reason
