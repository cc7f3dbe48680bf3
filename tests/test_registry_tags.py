"""Version and LoggedModel tags: few and clear."""

from __future__ import annotations

import json

from mlflow_best_export import registry
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
