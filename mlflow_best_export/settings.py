"""Everything about where and how to mirror into MLflow, as one checked, frozen value.

``MLflowBestExporter`` builds one :class:`MlflowSettings` from its keyword
arguments when it is constructed, the command line from its options; the
mirror and its worker read it and never spell the options again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow_best_export.arguments import validate_flag
from mlflow_best_export.tags import validate_alias, validate_registered_model_name


@dataclass(frozen=True)
class MlflowSettings:
    """Where and how to mirror, checked when built.

    Attributes:
      tracking_uri: where to log; None uses MLflow's own resolution
        (``MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db``).
      registry_uri: the Model Registry, if not at ``tracking_uri``.
      experiment_name: the experiment of a new run (default: MLflow's choice).
      run_id: log to this run (without it: the active run, else the run found
        again by its tags, else a new one).
      run_name: the name of a run created here.
      registered_model_name: register kept exports under this name; None logs
        models without registering them.
      alias: the alias moved to the best version; None moves none.
      strict: raise MLflow failures instead of warning and carrying on.
      flush_timeout: seconds the final export and ``close()`` wait for MLflow
        (None: no limit).

    Raises:
      ValueError: a field is invalid; the message names the argument and the fix.
    """

    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment_name: str | None = None
    run_id: str | None = None
    run_name: str | None = None
    registered_model_name: str | None = None
    alias: str | None = "best"
    strict: bool = False
    flush_timeout: float | None = 600.0

    def __post_init__(self) -> None:
        checked = {
            "tracking_uri": _optional_str(
                self.tracking_uri, "tracking_uri", "'http://mlflow:5000' or 'sqlite:///mlflow.db'"
            ),
            "registry_uri": _optional_str(
                self.registry_uri, "registry_uri", "'http://mlflow:5000'"
            ),
            "experiment_name": _optional_str(
                self.experiment_name, "experiment_name", "'my-estimator'"
            ),
            "run_id": _optional_str(self.run_id, "run_id", "a run's 32-character id"),
            "run_name": _optional_str(self.run_name, "run_name", "'nightly'"),
            "registered_model_name": validate_registered_model_name(self.registered_model_name),
            "alias": None if self.alias is None else validate_alias(self.alias),
            "strict": validate_flag(self.strict, "strict"),
            "flush_timeout": _timeout(self.flush_timeout, "flush_timeout"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def moved_alias(self) -> str | None:
        """The alias the mirror moves: none without a registered model."""
        return self.alias if self.registered_model_name else None


def _optional_str(value: Any, argument: str, example: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"`{argument}` must be a non-empty string such as {example}, or None; got {value!r}."
        )
    return value


def _timeout(value: Any, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(
            f"`{argument}` must be a number of seconds >= 0, or None to wait without limit; "
            f"got {value!r}."
        )
    return float(value)
