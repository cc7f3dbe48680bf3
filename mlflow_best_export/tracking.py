"""MLflow runs and metrics: find or resume the run, mirror the eval history once.

Everything here takes an ``MlflowClient`` and ids explicitly; nothing reads the
fluent API's globals.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from mlflow_best_export import fs
from mlflow_best_export.records import EvalRecord
from mlflow_best_export.tags import TAG_CREATED_RUN, TAG_EXPORTER, TAG_KEY, TAG_MODEL_DIR

logger = logging.getLogger(__name__)


MAX_METRICS_PER_BATCH = 1000
_MAX_KEY_LENGTH = 250
_BAD_CHARS = re.compile(r"[^/\w.\- :]")


_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"]+@")


def redact_text(text: object) -> str:
    """``str(text)`` (an error message, say) with user names and passwords in URLs removed.

    MLflow puts the full tracking URI, credentials included, into the messages
    of failed requests; this keeps them out of our logs.
    """
    return _URL_USERINFO.sub(r"\g<scheme>***@", str(text))


def first_line(error: object, limit: int = 300) -> str:
    """The first line of an error message, redacted and at most ``limit`` characters:
    SQLAlchemy appends whole SQL statements to its messages."""
    text = redact_text(error).strip()
    line = text.splitlines()[0] if text else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def sanitize_metric_name(name: str) -> str:
    """A metric name MLflow accepts, as close to ``name`` as possible.

    MLflow allows alphanumerics, ``_ - . / :`` and spaces, in a normalized
    relative path; anything else becomes ``_``.
    """
    clean = _BAD_CHARS.sub("_", name)
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    parts = ["__" if p == ".." else p for p in parts]
    clean = "/".join(parts) or "_"
    if posixpath.normpath(clean) != clean:
        clean = clean.replace("/", "_")
    return clean[:_MAX_KEY_LENGTH]


def exporter_key(model_dir: str, exporter_name: str) -> str:
    """A short stable id of (model directory, exporter) used to find its MLflow objects.

    Tags hold the readable paths too; lookups use this hash so that no path
    ever has to be quoted inside a filter string.
    """
    identity = f"{normalize_dir(model_dir)}\n{exporter_name}"
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:20]


def normalize_dir(path: str) -> str:
    """An absolute, normalized path for local directories; URLs stay as given."""
    if fs.is_url(path):
        return path.rstrip("/")
    return os.path.normpath(os.path.abspath(path))


def _timestamp_ms(wall_time: float) -> int:
    return int(round(wall_time * 1000))


def record_metrics(record: EvalRecord, model_id: str | None = None) -> list[Metric]:
    """The MLflow metrics of one eval record: step = global step, time = eval time."""
    timestamp = _timestamp_ms(record.wall_time)
    return [
        Metric(
            key=sanitize_metric_name(key),
            value=float(value),
            timestamp=timestamp,
            step=int(record.step),
            model_id=model_id,
        )
        for key, value in sorted(record.metrics.items())
    ]


def log_metrics_batched(client: MlflowClient, run_id: str, metrics: list[Metric]) -> int:
    """Send metrics with as few requests as MLflow allows; return the number of requests."""
    requests = 0
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])
        requests += 1
    return requests


@dataclass
class MetricMirror:
    """Mirrors eval records into run metrics exactly once per global step.

    On first use it asks MLflow which steps the run already has (for every
    metric key of the history), so a restarted process does not log a step
    twice. Afterwards it only remembers what it sent.
    """

    client: MlflowClient
    run_id: str
    _known: dict[str, dict[int, Metric]] | None = None

    def _ensure_known(self, keys: Iterable[str]) -> dict[str, dict[int, Metric]]:
        if self._known is None:
            self._known = {}
        for key in sorted(set(keys) - self._known.keys()):
            history = self.client.get_metric_history(self.run_id, key)
            self._known[key] = {m.step: m for m in history}
        return self._known

    def pending(self, records: Iterable[EvalRecord]) -> list[EvalRecord]:
        """The records with at least one metric the run does not have at their step."""
        records = [r for r in records if r.metrics]
        known = self._ensure_known(sanitize_metric_name(k) for r in records for k in r.metrics)
        return [
            r
            for r in records
            if any(r.step not in known[sanitize_metric_name(k)] for k in r.metrics)
        ]

    def _send(self, metrics: list[Metric]) -> None:
        log_metrics_batched(self.client, self.run_id, metrics)
        known = self._ensure_known(m.key for m in metrics)
        for metric in metrics:
            known[metric.key].setdefault(metric.step, metric)

    def mirror(
        self, records: Iterable[EvalRecord], model_ids: Mapping[int, str] | None = None
    ) -> int:
        """Log the pending records; return how many records were sent.

        Args:
          records: the eval history (all of it; what is mirrored is skipped).
          model_ids: LoggedModel ids by global step, to link those metrics to
            the model that the eval earned.
        """
        pending = self.pending(records)
        if pending:
            model_ids = model_ids or {}
            self._send([m for r in pending for m in record_metrics(r, model_ids.get(r.step))])
        return len(pending)

    def link(self, record: EvalRecord, model_id: str) -> None:
        """Attach a record's metrics to a LoggedModel without duplicating run metrics.

        Metrics the run already has at this step are sent again with the same
        key, value, timestamp and step plus the model id: MLflow stores each
        such metric once in the run and also links it to the model.
        """
        known = self._ensure_known(sanitize_metric_name(k) for k in record.metrics)
        metrics = []
        for fresh in record_metrics(record):
            sent = known[fresh.key].get(record.step, fresh)
            metrics.append(Metric(fresh.key, sent.value, sent.timestamp, record.step, model_id))
        if metrics:
            self._send(metrics)

    def forget(self) -> None:
        """Drop what is known about the run, so the next call asks MLflow again."""
        self._known = None


def resolve_experiment_id(client: MlflowClient, experiment_name: str | None) -> str:
    """The id of ``experiment_name`` (created if missing), or of MLflow's default choice."""
    import mlflow

    if experiment_name is None:
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if experiment_name is None and experiment_id:
            return experiment_id
    if experiment_name is None:
        experiment_name = "Default"
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise mlflow.exceptions.MlflowException(
                f"The experiment {experiment_name!r} is deleted; restore it or choose another "
                f"experiment_name."
            )
        return experiment.experiment_id
    try:
        return client.create_experiment(experiment_name)
    except mlflow.exceptions.MlflowException:
        # Another process created it first.
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise
        return experiment.experiment_id


@dataclass(frozen=True)
class ResolvedRun:
    """The run the exporter logs to, and whether it created it."""

    run_id: str
    experiment_id: str
    created_here: bool


def resolve_run(
    client: MlflowClient,
    *,
    model_dir: str,
    exporter_name: str,
    experiment_name: str | None = None,
    run_id: str | None = None,
    run_name: str | None = None,
) -> ResolvedRun:
    """Find the run to log to.

    In order: ``run_id`` (the caller passes the active fluent run here: the
    fluent API's active run is per thread), else the run this exporter
    created earlier for this model directory (found by tag), else a new run.

    Raises:
      MlflowException: if ``run_id`` does not exist, or MLflow fails.
    """
    key = exporter_key(model_dir, exporter_name)
    if run_id is not None:
        run = client.get_run(run_id)
        return ResolvedRun(run.info.run_id, run.info.experiment_id, created_here=False)

    experiment_id = resolve_experiment_id(client, experiment_name)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_KEY}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run = found[0]
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
            client.update_run(run.info.run_id, status="RUNNING")
        logger.info("Continuing the MLflow run %s for %s", run.info.run_id, model_dir)
        return ResolvedRun(run.info.run_id, experiment_id, created_here=True)

    tags = {
        TAG_KEY: key,
        TAG_MODEL_DIR: normalize_dir(model_dir),
        TAG_EXPORTER: exporter_name,
        TAG_CREATED_RUN: "true",
    }
    name = run_name or f"{os.path.basename(normalize_dir(model_dir)) or 'model'}-{exporter_name}"
    run = client.create_run(experiment_id, tags=tags, run_name=name)
    logger.info("Created the MLflow run %s for %s", run.info.run_id, model_dir)
    return ResolvedRun(run.info.run_id, experiment_id, created_here=True)
