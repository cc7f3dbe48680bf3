"""MLflowBestExporter in a real cluster: chief, worker, parameter server and evaluator.

Four processes on 127.0.0.1 (free ports), each started with its own TF_CONFIG and running
``tf.estimator.train_and_evaluate`` (tests/cluster.py): between-graph replication with the
variables on the parameter server, checkpoints written by the chief into a model directory
on shared (here: local) disk, and the evaluator evaluating checkpoints as they appear. The
tracking store is a real ``mlflow server`` subprocess that only the evaluator is told about.

Which checkpoints the evaluator picks up depends on timing, so what must be kept is
computed from the eval history that was actually recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from conftest import TESTS, subprocess_env
from mlflow_checks import MlflowServer, check_mlflow, free_port
from oracles import eval_records, export_steps, new_best_steps

from mlflow_best_export import exports as exports_lib
from mlflow_best_export import loss_smaller

pytestmark = pytest.mark.slow

# Dips and rises, so that exports and retention both have work; 20 checkpoints of 10 steps.
LOSSES = [50, 30, 40, 26, 34, 22, 60, 18, 24, 14, 20, 11, 16, 8, 12, 5, 9, 3, 6, 1]
EVERY = 10
MAX_STEPS = EVERY * len(LOSSES)
KEEP = 2
TIMEOUT = 240


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(str(tmp_path_factory.mktemp("server"))).start()
    yield server
    server.stop()


@dataclass
class Cluster:
    """The four tasks of one training job, as subprocesses of this test."""

    root: str
    tracking_uri: str
    registered_model_name: str
    train_delay: float = 0.15
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    evaluator_pids: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.ports = {task: free_port() for task in ("chief", "worker", "ps")}

    @property
    def model_dir(self) -> str:
        return os.path.join(self.root, "model")

    @property
    def record(self) -> str:
        return os.path.join(self.root, "exports.jsonl")

    @property
    def elsewhere(self) -> str:
        """The MLflow store the other tasks are given: it must never be created."""
        return os.path.join(self.root, "not-the-evaluator.db")

    def tf_config(self, task: str) -> str:
        cluster = {t: [f"127.0.0.1:{p}"] for t, p in self.ports.items()}
        return json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}})

    def start(self, task: str) -> subprocess.Popen:
        args = [
            sys.executable,
            str(TESTS / "cluster.py"),
            "--model-dir",
            self.model_dir,
            "--losses",
            ",".join(map(str, LOSSES)),
            "--every",
            str(EVERY),
            "--exports-to-keep",
            str(KEEP),
            "--train-delay",
            str(self.train_delay),
            "--record",
            self.record,
            "--exporter-kwargs",
            json.dumps({"registered_model_name": self.registered_model_name}),
        ]
        uri = self.tracking_uri if task == "evaluator" else f"sqlite:///{self.elsewhere}"
        log = open(os.path.join(self.root, f"{task}.log"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            args,
            env=subprocess_env(TF_CONFIG=self.tf_config(task), MLFLOW_TRACKING_URI=uri),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[task] = proc
        if task == "evaluator":
            self.evaluator_pids.append(proc.pid)
        return proc

    def start_all(self) -> None:
        self.start("ps")
        self.start("chief")
        self.start("evaluator")
        # A worker that asks before the chief initialized the variables re-checks only every
        # 30 s (SessionManager.recovery_wait_secs): start it once the first checkpoint exists.
        self.wait_for(lambda: os.path.exists(os.path.join(self.model_dir, "checkpoint")))
        self.start("worker")

    def wait_for(self, condition, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for task, proc in self.procs.items():
                if proc.poll() not in (None, 0) and not (
                    task == "evaluator" and proc.returncode == -signal.SIGKILL
                ):
                    raise AssertionError(f"{task} exited with {proc.returncode}\n{self.log(task)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out\n{self.logs()}")
            time.sleep(0.25)

    def finish(self) -> None:
        """Wait for chief, worker and evaluator to exit by themselves; all must succeed."""
        for task in ("chief", "worker", "evaluator"):
            proc = self.procs[task]
            try:
                code = proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{task} did not exit\n{self.logs()}") from None
            assert code == 0, f"{task} exited with {code}\n{self.log(task)}"

    def kill(self, task: str) -> None:
        proc = self.procs[task]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def stop(self) -> None:
        for task in self.procs:
            self.kill(task)

    def log(self, task: str) -> str:
        with open(os.path.join(self.root, f"{task}.log"), "rb") as f:
            return f.read()[-6000:].decode(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {task}\n{self.log(task)}" for task in self.procs)

    def export_calls(self) -> list[dict]:
        if not os.path.exists(self.record):
            return []
        with open(self.record) as f:
            return [json.loads(line) for line in f]


@pytest.fixture
def cluster(tmp_path, server, request):
    cluster = Cluster(str(tmp_path), server.uri, registered_model_name=request.node.name[:60])
    yield cluster
    cluster.stop()


def expected_kept(model_dir: str, keep: int) -> list[int]:
    """The last ``keep`` new-best evals of the recorded history (what a never-stopped run keeps)."""
    return new_best_steps(eval_records(model_dir), loss_smaller, keep)


def kept_steps(model_dir: str) -> list[int]:
    base = os.path.join(model_dir, "export", "best_exporter")
    return sorted(export_steps(base))


def check_cluster_run(cluster: Cluster) -> None:
    """What must hold once the job is over, however the evaluator's work was interleaved."""
    steps = [r["step"] for r in eval_records(cluster.model_dir)]
    # The evaluator followed training (several checkpoints, not only the last one) and
    # stopped after the final checkpoint.
    assert len(steps) >= 4, steps
    assert steps[-1] >= MAX_STEPS, steps

    # Only the evaluator exported, and it was told about every eval it made.
    calls = cluster.export_calls()
    assert {c["task"] for c in calls} == {"evaluator"}, calls
    assert {c["pid"] for c in calls} <= set(cluster.evaluator_pids), calls
    assert set(steps) <= {c["step"] for c in calls}
    # ... and only the evaluator talked to MLflow: the others' store was never opened.
    assert not os.path.exists(cluster.elsewhere)
    with open(
        os.path.join(cluster.model_dir, "export", "best_exporter", exports_lib.LOCK_FILENAME)
    ) as f:
        assert f.read().startswith(f"pid {cluster.evaluator_pids[-1]} ")

    expected = expected_kept(cluster.model_dir, KEEP)
    assert len(expected) == KEEP, steps
    assert kept_steps(cluster.model_dir) == expected
    check_mlflow(
        cluster.model_dir,
        cluster.tracking_uri,
        registered_model_name=cluster.registered_model_name,
        best_step=expected[-1],
    )


def test_a_cluster_exports_on_the_evaluator_only(cluster):
    cluster.start_all()
    cluster.finish()
    check_cluster_run(cluster)
    assert len(cluster.evaluator_pids) == 1


def test_an_evaluator_killed_mid_run_is_restarted_and_catches_up(cluster):
    cluster.start_all()

    def exported_twice():
        return len(kept_steps(cluster.model_dir)) >= 1 and len(cluster.export_calls()) >= 2

    cluster.wait_for(exported_twice)
    cluster.kill("evaluator")
    assert cluster.procs["chief"].poll() is None, "training ended before the kill"
    time.sleep(2)  # checkpoints the dead evaluator never sees
    cluster.start("evaluator")
    cluster.finish()
    check_cluster_run(cluster)
    assert len(cluster.evaluator_pids) == 2
