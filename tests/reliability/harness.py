"""Kill real training at a chosen point, restart it, and check what it left behind.

Every process here is a real ``train_and_evaluate`` of ``tests/tiny.py`` with
``MLflowBestExporter`` writing to a private SQLite tracking store and a
registered model. ``tiny.py --kill POINT:STEP`` SIGKILLs the process at one
exact moment (see ``tiny.KILL_POINTS``); that is the only injected fault.

Restarting means what a user does: start the same training again. A process
killed after its last checkpoint was evaluated cannot be repaired that way:
``Estimator.train`` skips when ``max_steps`` is reached, so ``export()`` is never
called again. The recovery run therefore trains one checkpoint further than
the killed runs (``tiny.loss_at`` repeats the last scheduled loss), which
gives the exporter one more ``export()`` call to reconcile in.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from mlflow_checks import check_mlflow, exporter_runs, kept_dirs  # noqa: E402
from oracles import eval_records, export_dirs, export_metadata, export_steps, new_best_steps  # noqa: E402

from mlflow_best_export import loss_smaller  # noqa: E402

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

    def __post_init__(self):
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        create_store(self.uri, self.root)

    @property
    def model_dir(self) -> str:
        return str(self.root / "model")

    @property
    def uri(self) -> str:
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
        self, *, kill: str | None = None, max_steps: int | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """Run tiny.py to ``max_steps`` (default: the schedule's end), maybe killed at ``kill``."""
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
        # A private temporary directory, so that what a killed process staged can be seen.
        env = dict(child_env(), TMPDIR=str(self.tmpdir))
        proc = subprocess.run(
            args, env=env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )
        self.log.append(f"{kill or 'no kill'} (max_steps={max_steps}): exit {proc.returncode}")
        # Kept for post-mortems: what each process said, numbered in order.
        (self.root / f"process-{len(self.log)}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode not in (0, KILLED):
            raise AssertionError(
                f"tiny.py failed with {proc.returncode} ({kill})\n{proc.stderr[-6000:]}"
            )
        return proc

    def kill_at(self, point: str, step: int) -> bool:
        """Train with a kill at ``point`` armed for ``step``; True if the process was killed."""
        return self.train(kill=f"{point}:{step}").returncode == KILLED

    def recover(self) -> None:
        """Restart training and let it finish (one checkpoint past the killed runs' end)."""
        proc = self.train(max_steps=STEPS[-1] + EVERY)
        if proc.returncode != 0:
            raise AssertionError(f"the recovery run was killed\n{proc.stderr[-6000:]}")

    def latest_checkpoint_step(self) -> int:
        """The step of the newest checkpoint (0 when there is none), without TensorFlow."""
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

    def expected_kept(self) -> list[int]:
        """What a never-stopped process keeps: the last ``keep`` new bests of the history."""
        return new_best_steps(eval_records(self.model_dir), loss_smaller, self.keep)

    def kept_steps(self) -> list[int]:
        """The steps of the exports on disk, oldest first."""
        return sorted(export_steps(self.export_base))

    def check(self) -> None:
        """Assert every invariant of a recovered model directory and its MLflow mirror.

        Raises:
          AssertionError: naming the first invariant that does not hold.
        """
        check_invariants(self)


def create_store(uri: str, root: Path) -> None:
    """Create the SQLite tracking store before any process that may be killed uses it.

    A team's tracking store exists before training starts. Creating it is MLflow's
    schema migration, which is not atomic: a SIGKILL in the middle of it leaves a
    store that fails forever after ("duplicate column name: run_link"), which no
    exporter can repair. The artifact root is ``<root>/mlruns``.
    """
    with contextlib.chdir(root):
        MlflowClient(uri).search_experiments()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(TESTS), env.get("PYTHONPATH")) if p
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("MLFLOW_TRACKING_URI", None)  # every process gets its store explicitly
    return env


def check_invariants(trial: Trial) -> None:
    """The disk holds what a never-stopped run keeps, and MLflow mirrors exactly that."""
    expected = trial.expected_kept()
    exports = export_dirs(trial.export_base)
    missing_metadata = [p for p in exports if export_metadata(p) is None]
    assert not missing_metadata, f"exports without metadata: {missing_metadata}"
    assert trial.kept_steps() == expected, f"disk keeps {trial.kept_steps()}, want {expected}"
    temps = [n for n in os.listdir(trial.export_base) if n.startswith("temp-")]
    assert not temps, f"unfinished directories left: {temps}"
    assert not trial.staged(), f"staging directories left in TMPDIR: {trial.staged()}"

    try:
        found = check_mlflow(
            trial.model_dir,
            trial.uri,
            registered_model_name=trial.registered_model_name,
            best_step=expected[-1],
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
    assert len(kept_dirs(trial.model_dir)) == len(expected)


def invariants_hold(trial: Trial) -> bool:
    """True when :func:`check_invariants` passes."""
    try:
        check_invariants(trial)
    except AssertionError:
        return False
    return True
