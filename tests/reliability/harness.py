"""Kill real training at a chosen point or moment, restart it, and check what it left.

Every process here is a real ``train_and_evaluate`` of ``tests/tiny.py`` with
``MLflowBestExporter`` writing to a private SQLite tracking store (created by
the first process, as a user's first run does) and a registered model; the
model directory is local or in a bucket of a real S3 server (moto's, through
tensorflow-io). A process is SIGKILLed either by itself at one exact moment
(``tiny.py --kill POINT:STEP``, see ``tiny.KILL_POINTS``) or from outside after a
number of seconds; that is the only injected fault.

Restarting means what a user does: start the same training again. A process
killed after its last checkpoint was evaluated cannot be repaired that way:
``Estimator.train`` skips when ``max_steps`` is reached, so ``export()`` is never
called again. The recovery run therefore trains one checkpoint further than
the killed runs (``tiny.loss_at`` repeats the last scheduled loss), which
gives the exporter one more ``export()`` call to reconcile in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

RELIABILITY = Path(__file__).resolve().parent
TESTS = RELIABILITY.parent
REPO = TESTS.parent
for _path in (str(TESTS), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_checks import check_mlflow, exporter_runs  # noqa: E402
from oracles import eval_records, export_dirs, export_metadata, export_steps, new_best_steps  # noqa: E402

# Scheduled eval losses, one per checkpoint every 2 steps: new bests at 2, 4, 8, 12, 16.
LOSSES = (50, 30, 40, 20, 25, 10, 60, 5, 8)
EVERY = 2
STEPS = tuple(EVERY * (i + 1) for i in range(len(LOSSES)))
NEW_BEST_STEPS = (2, 4, 8, 12, 16)
MODEL_NAME = "tiny"
KILLED = -9


@dataclass
class Trial:
    """One model directory, its tracking store, and the processes run on it."""

    root: Path
    keep: int = 2
    registered_model_name: str = MODEL_NAME
    exporter_kwargs: dict = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    #: A running ``tests/s3.S3Server``: the model directory is ``s3://<new bucket>/run``.
    s3: object | None = None
    #: The model directory is ``ram://<root's name>/run``: it ends with each process, so
    #: the recovery run copies it out for the oracles (``tiny.py --copy-to``).
    ram: bool = False
    #: A running ``mlflow_checks.MlflowServer`` (proxied artifacts) instead of a SQLite file;
    #: each trial then has an experiment and a registered model of its own.
    server: object | None = None

    def __post_init__(self):
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.bucket = self.s3.new_bucket() if self.s3 is not None else None
        if self.server is not None:
            self.registered_model_name = f"{MODEL_NAME}-{self.root.name}"
            self.exporter_kwargs.setdefault("experiment_name", f"campaign-{self.root.name}")

    @property
    def model_dir(self) -> str:
        if self.bucket is not None:
            return f"s3://{self.bucket}/run"
        if self.ram:
            return f"ram://{self.root.name}/run"
        return str(self.root / "model")

    @property
    def ram_copy(self) -> Path:
        return self.root / "ram-copy"

    def local_model_dir(self) -> str:
        """The model directory as the oracles read it: itself, or a fresh copy of the
        bucket's objects made with boto3 (so that what is read is what the bucket holds)."""
        if self.ram:
            return str(self.ram_copy)
        if self.bucket is None:
            return self.model_dir
        copy = self.root / "bucket-copy"
        shutil.rmtree(copy, ignore_errors=True)
        for key in self.s3.keys(self.bucket, "run/"):
            target = copy / key[len("run/") :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.s3.read(self.bucket, key))
        copy.mkdir(exist_ok=True)
        return str(copy)

    @property
    def uri(self) -> str:
        if self.server is not None:
            return self.server.uri
        return f"sqlite:///{self.root}/mlflow.db"

    @property
    def tmpdir(self) -> Path:
        """The processes' temporary directory (``TMPDIR``)."""
        path = self.root / "tmp"
        path.mkdir(exist_ok=True)
        return path

    def staged(self) -> list[str]:
        """What processes staged in the temporary directory and did not remove."""
        return sorted(n for n in os.listdir(self.tmpdir) if n.startswith("mlflow_best_export-"))

    @property
    def export_base(self) -> str:
        return os.path.join(self.model_dir, "export", "best_exporter")

    def train(
        self,
        *,
        kill: str | None = None,
        max_steps: int | None = None,
        timeout: float = 300,
        kill_after: float | None = None,
        copy_to: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run tiny.py to ``max_steps`` (default: the schedule's end), maybe killed at ``kill``
        (a point) or SIGKILLed from outside ``kill_after`` seconds after it started."""
        kwargs = {"tracking_uri": self.uri, "registered_model_name": self.registered_model_name}
        kwargs.update(self.exporter_kwargs)
        args = [
            sys.executable,
            str(TESTS / "tiny.py"),
            "--model-dir",
            self.model_dir,
            "--losses",
            ",".join(map(str, LOSSES)),
            "--every",
            str(EVERY),
            "--exports-to-keep",
            str(self.keep),
            "--exporter-kwargs",
            json.dumps(kwargs),
            "--log-level",
            "INFO",
        ]
        if max_steps is not None:
            args += ["--max-steps", str(max_steps)]
        if kill is not None:
            args += ["--kill", kill]
        if self.s3 is not None:
            args += ["--exit-process"]  # tensorflow-io's S3 filesystem aborts at exit
        if copy_to:
            args += ["--copy-to", str(self.ram_copy)]
        # A private temporary directory, so that what a killed process staged can be seen.
        env = dict(child_env(), TMPDIR=str(self.tmpdir))
        if self.s3 is not None:
            env.update(self.s3.env)
        proc = _run(args, env, self.root, timeout, kill_after)
        what = kill or (f"SIGKILL after {kill_after:.2f} s" if kill_after is not None else "")
        self.log.append(f"{what or 'no kill'} (max_steps={max_steps}): exit {proc.returncode}")
        # Kept for post-mortems: what each process said, numbered in order.
        (self.root / f"process-{len(self.log)}.log").write_text(proc.stdout)
        if proc.returncode not in (0, KILLED):
            raise AssertionError(
                f"tiny.py failed with {proc.returncode} ({kill})\n{proc.stdout[-6000:]}"
            )
        return proc

    def kill_at(self, point: str, step: int) -> bool:
        """Train with a kill at ``point`` armed for ``step``; True if the process was killed."""
        return self.train(kill=f"{point}:{step}").returncode == KILLED

    def kill_after(self, seconds: float) -> bool:
        """Train and SIGKILL the process ``seconds`` after it started; True if it was
        still running then."""
        return self.train(kill_after=seconds).returncode == KILLED

    def recover(self) -> None:
        """Restart training and let it finish (one checkpoint past the killed runs' end)."""
        shutil.rmtree(self.ram_copy, ignore_errors=True)
        proc = self.train(max_steps=STEPS[-1] + EVERY, copy_to=self.ram)
        if proc.returncode != 0:
            raise AssertionError(f"the recovery run was killed\n{proc.stdout[-6000:]}")

    def latest_checkpoint_step(self) -> int:
        """The step of the newest checkpoint (0 when there is none), without TensorFlow."""
        if self.ram:
            return 0  # each process starts with an empty ram:// directory
        if self.bucket is not None:
            names = [k[len("run/") :] for k in self.s3.keys(self.bucket, "run/")]
        else:
            try:
                names = os.listdir(self.model_dir)
            except FileNotFoundError:
                return 0
        steps = [
            int(n[len("model.ckpt-") : -len(".index")])
            for n in names
            if n.startswith("model.ckpt-") and n.endswith(".index")
        ]
        return max(steps, default=0)

    def expected_kept(self, local: str | None = None) -> list[int]:
        """What a never-stopped process keeps: the last ``keep`` new bests of the history."""
        records = eval_records(local or self.local_model_dir())
        return new_best_steps(records, _loss_smaller, self.keep)

    def kept_steps(self, local: str | None = None) -> list[int]:
        """The steps of the exports on disk, oldest first."""
        return sorted(export_steps(_export_base(local or self.local_model_dir())))

    def check(self) -> None:
        """Assert every invariant of a recovered model directory and its MLflow mirror.

        Raises:
          AssertionError: naming the first invariant that does not hold.
        """
        check_invariants(self)


def _loss_smaller(best_eval_result, current_eval_result) -> bool:
    """The Estimator's ``_loss_smaller``, written out (the oracle uses no product code)."""
    return current_eval_result["loss"] < best_eval_result["loss"]


def _export_base(model_dir: str) -> str:
    return os.path.join(model_dir, "export", "best_exporter")


def _run(args, env, cwd, timeout: float, kill_after: float | None) -> subprocess.CompletedProcess:
    """Run a child; with ``kill_after``, SIGKILL it that many seconds after its start."""
    with subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout if kill_after is None else kill_after)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                proc.kill()
                raise
            proc.kill()
            out, _ = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(args, proc.returncode, out, "")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(TESTS), env.get("PYTHONPATH")) if p
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("MLFLOW_TRACKING_URI", None)  # every process gets its store explicitly
    return env


#: What may stand in an export directory beside the kept exports: the lock (a lease file
#: on object stores; README "Model directory on GCS, S3, HDFS").
LOCK_FILE = ".mlflow_best_export.lock"


def check_invariants(trial: Trial) -> None:
    """The disk (or bucket) holds what a never-stopped run keeps, MLflow mirrors exactly
    that, and nothing is left over: no temp-* directory, no other object in the export
    directory, no staging directory in TMPDIR."""
    local = trial.local_model_dir()
    base = _export_base(local)
    expected = trial.expected_kept(local)
    exports = export_dirs(base)
    missing_metadata = [p for p in exports if export_metadata(p) is None]
    assert not missing_metadata, f"exports without metadata: {missing_metadata}"
    kept = trial.kept_steps(local)
    assert kept == expected, f"disk keeps {kept}, want {expected}"
    leftovers = sorted(set(os.listdir(base)) - {os.path.basename(p) for p in exports} - {LOCK_FILE})
    assert not leftovers, f"left in the export directory: {leftovers}"
    assert not trial.staged(), f"staging directories left in TMPDIR: {trial.staged()}"

    try:
        found = check_mlflow(
            trial.model_dir,
            trial.uri,
            registered_model_name=trial.registered_model_name,
            best_step=expected[-1],
            local_copy=local if trial.bucket is not None or trial.ram else None,
            artifacts_destination=(
                trial.server.artifacts_destination if trial.server is not None else None
            ),
        )
    except MlflowException as err:  # e.g. "Registered model alias best not found."
        raise AssertionError(f"MLflow does not mirror the model directory: {err}") from err
    assert found["run"].info.status == "FINISHED", found["run"].info.status
    client = MlflowClient(trial.uri)
    assert len(exporter_runs(client, trial.model_dir)) == 1
    # Versions were made only from kept exports, each pointing at its own LoggedModel.
    models = {m.model_id: m for m in found["models"]}
    for version in found["versions"]:
        assert version.model_id in models, (version, sorted(models))
        assert models[version.model_id].export_dir == version.export_dir
    assert len(found["kept"]) == len(expected)


def invariants_hold(trial: Trial) -> bool:
    """True when :func:`check_invariants` passes."""
    try:
        check_invariants(trial)
    except AssertionError:
        return False
    return True
