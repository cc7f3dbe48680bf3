"""mlflow-best-export: the N best Estimator models, on disk and in the MLflow Model Registry.

``MLflowBestExporter`` is imported lazily, so that the event reader, the history
and the ranking can be used without loading TensorFlow; so are the ranking's
names, so that a process's first read of the history pays for the reader alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlflow_best_export._version import __version__
from mlflow_best_export.history import HistoryReader, read_eval_history
from mlflow_best_export.records import EvalHistory, EvalRecord

if TYPE_CHECKING:
    from mlflow_best_export.exporter import MLflowBestExporter
    from mlflow_best_export.ranking import loss_smaller, metric_bigger, metric_smaller

_RANKING = ("loss_smaller", "metric_bigger", "metric_smaller")

__all__ = [
    "EvalHistory",
    "EvalRecord",
    "HistoryReader",
    "MLflowBestExporter",
    "__version__",
    "loss_smaller",
    "metric_bigger",
    "metric_smaller",
    "read_eval_history",
]


def __getattr__(name: str) -> Any:
    if name == "MLflowBestExporter":
        from mlflow_best_export.exporter import MLflowBestExporter

        return MLflowBestExporter
    if name in _RANKING:
        from mlflow_best_export import ranking

        return getattr(ranking, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
