"""The model directory on ``s3://``: tensorflow-io's S3 filesystem against moto's S3 server.

Training runs in child processes (tests/tiny.py): once tensorflow-io's S3
client has been used, the interpreter aborts at exit, which must not happen
to the test process. The oracles are boto3 listings, variables downloaded
and read with ``tf.train.load_variable``, the tiny model's loss schedule and
MLflow's own client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tiny
from conftest import run_tiny, subprocess_env
from mlflow.tracking import MlflowClient
from s3 import s3_server

pytest.importorskip("tensorflow_io", reason="the s3:// suite needs tensorflow-io (test extra)")

pytestmark = pytest.mark.slow

LOSSES = [50, 30, 40, 20, 25, 10, 60, 5, 8]  # new bests at steps 2, 4, 8, 12, 16
EXPORTS = "run/export/best_exporter"
ABORT = "pure virtual method called"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(str(tmp_path_factory.mktemp("moto") / "moto.log")) as server:
        yield server


def tiny_on_s3(s3, model_dir, *args):
    return run_tiny("--model-dir", model_dir, *args, check=False, **s3.env)


def assert_clean_or_s3_abort(proc, exit_process: bool):
    """Training finished; the exit status is 0 with fs.exit_process, else tensorflow-io's abort."""
    if exit_process:
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert ABORT not in proc.stderr
    else:
        # tensorflow/io#1912: SIGABRT after the interpreter finished (-6; 134 from a shell).
        assert proc.returncode in (-signal.SIGABRT, 134), (proc.returncode, proc.stderr[-4000:])
        assert ABORT in proc.stderr


def test_restart_with_worse_evals_keeps_the_last_new_bests_and_mlflow_mirrors_them(s3, tmp_path):
    bucket = s3.new_bucket()
    model_dir = f"s3://{bucket}/run"
    store = f"sqlite:///{tmp_path}/mlflow.db"
    kwargs = json.dumps({"tracking_uri": store, "registered_model_name": "on-s3"})
    common = ("--losses", ",".join(map(str, LOSSES)), "--exports-to-keep", "2")
    common += ("--exporter-kwargs", kwargs)

    first = tiny_on_s3(s3, model_dir, *common, "--max-steps", "8")
    # Without exit_process the S3 abort comes after everything was written and flushed.
    assert_clean_or_s3_abort(first, exit_process=False)
    assert sorted(s3.export_steps(bucket, EXPORTS)) == [4, 8]

    # Restarted: steps 10 and 14 are worse than the kept best; 12 and 16 are new bests.
    second = tiny_on_s3(s3, model_dir, *common, "--exit-process")
    assert_clean_or_s3_abort(second, exit_process=True)

    expected = tiny.new_best_steps(LOSSES)[-2:]
    kept = s3.export_steps(bucket, EXPORTS)
    assert sorted(kept) == expected == [12, 16]
    # Nothing else under the export directory: no temp-*, no half-copied export, no lock.
    assert sorted(s3.exports(bucket, EXPORTS)) == sorted(
        n for n in s3.exports(bucket, EXPORTS) if len(n) == 10 and n.isdigit()
    )
    assert len(s3.exports(bucket, EXPORTS)) == 2
    assert not [k for k in s3.keys(bucket, EXPORTS) if k.endswith(".mlflow_best_export.lock")]

    client = MlflowClient(store)
    versions = client.search_model_versions("name='on-s3'")
    assert sorted(int(v.tags["global_step"]) for v in versions) == expected
    best = client.get_model_version_by_alias("on-s3", "best")
    assert int(best.tags["global_step"]) == 16
    assert best.tags["checkpoint_path"] == kept[16]["checkpoint_path"]
    assert best.tags["checkpoint_path"].startswith(f"{model_dir}/model.ckpt-16")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, "the restarted process must find its run again"
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(2, 19, 2))
    models = client.search_logged_models([runs[0].info.experiment_id])
    live = sorted(int(m.params["global_step"]) for m in models)
    assert live == expected

    # The command line reads the history from s3:// and exits 0 despite the S3 abort.
    cli = subprocess.run(
        [sys.executable, "-c", "from mlflow_best_export.cli import console_main; console_main()"]
        + ["history", model_dir, "--format", "json"],
        env=subprocess_env(**s3.env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-4000:]
    printed = json.loads(cli.stdout)
    assert [row["step"] for row in printed["records"]] == list(range(2, 19, 2))
    assert printed["best_step"] == 16


def test_sigkill_in_the_middle_of_a_remote_export_then_restart(s3):
    bucket = s3.new_bucket()
    model_dir = f"s3://{bucket}/run"
    common = ("--losses", ",".join(map(str, LOSSES[:6])), "--exports-to-keep", "2")
    common += ("--exporter-kwargs", '{"log_to_mlflow": false}')
    killed = tiny_on_s3(
        s3, model_dir, *common, "--max-steps", "8", "--kill", "during_remote_copy:8"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    # The crash left an export with our metadata and without saved_model.pb.
    half = [n for n, files in s3.exports(bucket, EXPORTS).items() if "saved_model.pb" not in files]
    assert len(half) == 1, s3.exports(bucket, EXPORTS)
    assert "assets.extra/mlflow_best_export.json" in s3.exports(bucket, EXPORTS)[half[0]]
    assert sorted(s3.export_steps(bucket, EXPORTS)) == [2, 4]

    restarted = tiny_on_s3(s3, model_dir, *common, "--exit-process")
    assert_clean_or_s3_abort(restarted, exit_process=True)
    # Step 8's best was lost to the crash and is recovered from its checkpoint; 12 is new.
    assert (
        sorted(s3.export_steps(bucket, EXPORTS)) == tiny.new_best_steps(LOSSES[:6])[-2:] == [8, 12]
    )
    assert half[0] not in s3.exports(bucket, EXPORTS)
    assert all("saved_model.pb" in f for f in s3.exports(bucket, EXPORTS).values())


HOLD = """
import sys, time
import tensorflow_io
from mlflow_best_export.locks import ExportDirLock, ExportDirLockedError
lock = ExportDirLock(sys.argv[1])
try:
    lock.acquire()
except ExportDirLockedError as err:
    print("REFUSED", err, flush=True)
    from mlflow_best_export import fs
    fs.exit_process(3)
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
from mlflow_best_export import fs
fs.exit_process(0)
"""


def start_holder(s3, base, seconds, lease):
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, base, str(seconds)],
        env=subprocess_env(MLFLOW_BEST_EXPORT_LOCK_LEASE=str(lease), **s3.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_lock_refuses_a_live_exporter_and_is_taken_over_after_its_holder_dies(s3):
    bucket = s3.new_bucket()
    base = f"s3://{bucket}/{EXPORTS}"
    holder = start_holder(s3, base, 600, lease=3)
    try:
        assert holder.stdout.readline().strip() == "LOCKED", holder.stderr.read()
        owner = json.loads(s3.read(bucket, f"{EXPORTS}/.mlflow_best_export.lock"))
        assert owner["pid"] == holder.pid
        # Longer than the lease: the live holder renews it, so a second one is refused.
        time.sleep(4)
        second = start_holder(s3, base, 0, lease=3)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 3, err[-4000:]
        assert out.startswith("REFUSED") and f"pid {holder.pid} on " in out, out
        renewed = json.loads(s3.read(bucket, f"{EXPORTS}/.mlflow_best_export.lock"))
        assert renewed["token"] == owner["token"] and renewed["renewed"] > owner["renewed"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # On the same host a dead holder is known dead: no need to wait out its lease.
    third = start_holder(s3, base, 0, lease=3)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0 and out.strip() == "LOCKED", err[-4000:]
    assert "Taking over the lock" in err and "that process is gone" in err
    assert f"pid {holder.pid}" in err
    # Released on the way out.
    assert not [k for k in s3.keys(bucket, EXPORTS) if k.endswith(".mlflow_best_export.lock")]
