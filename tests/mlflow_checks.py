"""Invariants that tie MLflow to a model directory, and a real `mlflow server` to test against."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from types import SimpleNamespace

from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from oracles import export_dirs

# Tag names are the contract under test; everything expected is computed here, from the
# model directory (directory listing, TensorFlow's own event reader) and MLflow's client.
TAG_MODEL_DIR = "mlflow_best_export.model_dir"
TAG_EXPORTER = "mlflow_best_export.exporter"
TAG_KEY = "mlflow_best_export.key"
TAG_INFO = "mlflow_best_export"
_PLAIN_METRIC = re.compile(r"^[\w\-. :]+(/[\w\-. :]+)*$")


def _absolute(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.normpath(os.path.abspath(path))


def kept_dirs(model_dir: str, name: str = "best_exporter") -> list[str]:
    """The export directories on disk, by listing (see tests/oracles.py)."""
    return export_dirs(os.path.join(_absolute(model_dir), "export", name))


def eval_steps(model_dir: str) -> dict[str, list[int]]:
    """{metric: steps} of the eval scalars, read with tf.compat.v1.train.summary_iterator."""
    import tensorflow as tf

    steps: dict[str, set[int]] = {}
    for path in glob.glob(os.path.join(model_dir, "eval", "*.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    steps.setdefault(value.tag, set()).add(event.step)
                elif value.HasField("tensor") and value.tensor.dtype != tf.string.as_datatype_enum:
                    if tf.make_ndarray(value.tensor).ndim == 0:
                        steps.setdefault(value.tag, set()).add(event.step)
    return {tag: sorted(found) for tag, found in steps.items()}


def exporter_runs(client: MlflowClient, model_dir: str, name: str = "best_exporter"):
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{TAG_EXPORTER}` = '{name}'")
    return [r for r in runs if r.data.tags.get(TAG_MODEL_DIR) == _absolute(model_dir)]


def _export_dir(tags) -> str | None:
    try:
        return json.loads(tags[TAG_INFO])["export_dir"]
    except (KeyError, ValueError, TypeError):
        return None


def _of_exporter(export_dir: str | None, model_dir: str, name: str) -> bool:
    base = os.path.join(_absolute(model_dir), "export", name) + os.sep
    return bool(export_dir) and export_dir.startswith(base)


def check_mlflow(
    model_dir: str,
    tracking_uri: str,
    *,
    registered_model_name: str | None = None,
    name: str = "best_exporter",
    alias: str = "best",
    best_step: int | None = None,
    run_id: str | None = None,
    artifacts_destination: str | None = None,
    local_copy: str | None = None,
) -> dict:
    """Assert that MLflow mirrors the model directory exactly; return what was found.

    - one run for this exporter (or the given ``run_id``), holding every eval
      step's metrics exactly once;
    - live READY LoggedModels == kept exports;
    - live versions of this exporter == kept exports, alias on the best;
    - model directories in the artifact store == live LoggedModels (local
      artifact roots, or ``artifacts_destination`` of an ``mlflow server``);
    - each live version is linked on its LoggedModel (``mlflow.modelVersions``).

    Expectations come from the model directory itself (listing, summary_iterator)
    and MLflow's client, never from this package's readers. For a model directory
    in a bucket, ``local_copy`` is a copy of its objects made with boto3: it is
    read, and its paths stand for ``model_dir``'s.
    """
    client = MlflowClient(tracking_uri)
    if run_id is None:
        runs = exporter_runs(client, model_dir, name)
        assert len(runs) == 1, [r.info.run_id for r in runs]
        run = runs[0]
    else:
        run = client.get_run(run_id)
    history = eval_steps(local_copy or model_dir)
    assert history, "no eval history"
    for metric, expected in history.items():
        if not _PLAIN_METRIC.match(metric):
            continue
        logged = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in logged) == expected, (metric, logged, expected)

    kept = kept_dirs(local_copy or model_dir, name)
    if local_copy is not None:
        kept = [model_dir.rstrip("/") + d[len(_absolute(local_copy)) :] for d in kept]
    models = [
        SimpleNamespace(
            model_id=m.model_id,
            export_dir=_export_dir(m.tags),
            ready=m.status == LoggedModelStatus.READY,
            tags=m.tags,
        )
        for m in _all_live_models(client, run.info.experiment_id)
        if _of_exporter(_export_dir(m.tags), model_dir, name)
    ]
    assert all(m.ready for m in models), models
    assert sorted(m.export_dir for m in models) == kept, (models, kept)

    # Storage: the artifact store holds a model directory for each live logged model and
    # nothing else (retired models' artifacts are reclaimed), listed without MLflow's help.
    stored = stored_model_ids(client, run.info.experiment_id, artifacts_destination)
    if stored is not None:
        live = {m.model_id for m in _all_live_models(client, run.info.experiment_id)}
        assert stored == live, (sorted(stored), sorted(live))

    found = {"run": run, "models": models, "kept": kept}
    if registered_model_name is not None:
        versions = sorted(
            (
                SimpleNamespace(
                    version=str(mv.version),
                    export_dir=_export_dir(mv.tags),
                    model_id=mv.tags.get("mlflow_best_export.model_id"),
                    tags=mv.tags,
                )
                for mv in client.search_model_versions(f"name = '{registered_model_name}'")
                if _of_exporter(_export_dir(mv.tags), model_dir, name)
            ),
            key=lambda v: int(v.version),
        )
        assert sorted(v.export_dir for v in versions) == kept, (versions, kept)
        by_dir = {m.export_dir: m.model_id for m in models}
        assert all(v.model_id == by_dir[v.export_dir] for v in versions), (versions, models)
        best = client.get_model_version_by_alias(registered_model_name, alias)
        if best_step is not None:
            assert best.tags["global_step"] == str(best_step), best.tags
        assert _export_dir(best.tags) in kept
        found["versions"] = versions
        found["best"] = best
        for v in versions:
            model = client.get_logged_model(v.model_id)
            links = json.loads(model.tags.get("mlflow.modelVersions", "[]"))
            links = [(link["name"], str(link["version"])) for link in links]
            assert links == [(registered_model_name, v.version)], links
    return found


def mlflow_state(tracking_uri: str, registered_model_name: str) -> dict:
    """Everything a sync could change, read with MLflow's client: every run's metric
    histories, the live logged models with their tags and status, the versions with
    their tags, the aliases. Two equal states mean that nothing changed in between."""
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    metrics = {
        (run.info.run_id, key): sorted(
            (m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, key)
        )
        for run in runs
        for key in run.data.metrics
    }
    models = {
        m.model_id: (str(m.status), dict(m.tags))
        for experiment_id in experiments
        for m in _all_live_models(client, experiment_id)
    }
    versions = {
        mv.version: dict(mv.tags)
        for mv in client.search_model_versions(f"name = '{registered_model_name}'")
    }
    aliases = dict(client.get_registered_model(registered_model_name).aliases or {})
    return {"metrics": metrics, "models": models, "versions": versions, "aliases": aliases}


def _all_live_models(client: MlflowClient, experiment_id: str) -> list:
    models, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


def stored_model_ids(
    client: MlflowClient, experiment_id: str, artifacts_destination: str | None = None
) -> set[str] | None:
    """The logged-model directories in an experiment's artifact store, listed on disk
    (None when the store is not a local directory or a known server destination)."""
    location = client.get_experiment(experiment_id).artifact_location
    if location.startswith("mlflow-artifacts:"):
        if artifacts_destination is None:
            return None
        path = os.path.join(artifacts_destination, location.split(":", 1)[1].lstrip("/"))
    elif location.startswith("file:"):
        path = urllib.request.url2pathname(urllib.parse.urlparse(location).path)
    elif "://" not in location:
        path = location
    else:
        return None
    models = os.path.join(path, "models")
    if not os.path.isdir(models):
        return set()
    return {n for n in os.listdir(models) if n.startswith("m-")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MlflowServer:
    """A real `mlflow server` subprocess on 127.0.0.1, with a SQLite backend by default."""

    root: str
    port: int = 0
    backend_store_uri: str | None = None
    process: subprocess.Popen | None = None
    #: Replaces ``--artifacts-destination <root>/artifacts`` (e.g. an s3:// default root).
    artifact_args: tuple[str, ...] | None = None
    extra_env: dict[str, str] | None = None

    def __post_init__(self):
        self.port = self.port or free_port()
        self.backend_store_uri = self.backend_store_uri or f"sqlite:///{self.root}/server.db"
        os.makedirs(self.root, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts_destination(self) -> str:
        return os.path.join(self.root, "artifacts")

    def start(self, timeout: float = 120) -> MlflowServer:
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(self.extra_env or {})
        artifact_args = self.artifact_args or (
            "--artifacts-destination",
            self.artifacts_destination,
        )
        self._log = open(os.path.join(self.root, "server.log"), "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                self.backend_store_uri,
                *artifact_args,
                "--workers",
                "1",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.tail()}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start in {timeout}s: {self.tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None
        self._log.close()

    def tail(self) -> str:
        try:
            with open(os.path.join(self.root, "server.log"), "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""
