"""Benchmark: export() of a ~1 GB model, MLflowBestExporter vs the original BestExporter.

The Estimator is tests/cluster.py's scheduled linear model plus a non-trainable
"ballast" variable of ``--size-mb`` MB (random float32, so nothing compresses it): every
checkpoint and SavedModel carries it. The tracking store is a real ``mlflow server``
subprocess with proxied artifacts (``--artifacts-destination`` on local disk; SQLite
backend, or PostgreSQL with ``--postgres``), so the upload is a real HTTP PUT of the
whole SavedModel.

Each round trains one more step (a new checkpoint), evaluates it for real (the loss
schedule makes every round a new best, so both exporters export every time), then calls
``export()`` of each exporter on that checkpoint and eval result, alternating which goes
first. It prints:

- the blocking time of ``export()``: what ``train_and_evaluate`` waits for. The original
  writes the SavedModel; ours writes it too, then hands the MLflow mirror (LoggedModel
  upload, model version, alias) to its background worker;
- their ratio (target: <= 1.10, i.e. ours within 10% of the original);
- the upload time: from ``export()`` returning to MLflow being in step (the LoggedModel
  READY, its version registered and aliased). Each round waits for it before the next
  measurement, so no upload competes with an export being timed.

With ``--crash`` it then repeats, at the same size, what tests/test_postgres.py checks with
8 MB: a training process SIGKILLed half way through uploading the variables file, and a
restart that repairs MLflow (prints the time of both runs).

Usage::

    python benchmarks/large_upload.py                      # 1024 MB, 3 rounds
    python benchmarks/large_upload.py --size-mb 64 --rounds 2
    python benchmarks/large_upload.py --crash --postgres
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cluster  # noqa: E402  (tests/cluster.py)
import tiny  # noqa: E402
from mlflow_checks import MlflowServer, check_mlflow  # noqa: E402


def start_server(root: str, postgres: bool):
    pg = None
    backend = None
    if postgres:
        from postgres import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            sys.exit("--postgres: PostgreSQL is not installed (apt-get install postgresql)")
        pg = PostgresServer(bindir).start()
        backend = pg.create_database("large_upload")
    return MlflowServer(os.path.join(root, "server"), backend_store_uri=backend).start(), pg


def timed_rounds(args, root: str, uri: str) -> None:
    import tensorflow as tf
    from mlflow.tracking import MlflowClient

    from mlflow_best_export import MLflowBestExporter
    from mlflow_best_export.registry import find_models
    from mlflow_best_export.tracking import exporter_key

    tf.get_logger().setLevel("ERROR")
    model_dir = os.path.join(root, "model")
    schedule = {step: float(100 - step) for step in range(1, args.rounds + 1)}
    estimator = cluster.build_estimator(
        model_dir, every=1, schedule=schedule, ballast_mb=args.size_mb, keep_checkpoint_max=2
    )
    original = tf.estimator.BestExporter(
        name="original",
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
        exports_to_keep=2,
    )
    ours = MLflowBestExporter(
        name="ours",
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
        exports_to_keep=2,
        tracking_uri=uri,
        registered_model_name="large-upload",
        flush_timeout=None,
    )
    client = MlflowClient(uri)
    times: dict[str, list[float]] = {"original": [], "ours": [], "upload": []}
    for step in range(1, args.rounds + 1):
        start = time.perf_counter()
        estimator.train(tiny.train_input_fn, max_steps=step)
        checkpoint = estimator.latest_checkpoint()
        eval_result = estimator.evaluate(cluster.eval_input_fn, steps=1, checkpoint_path=checkpoint)
        prepare = time.perf_counter() - start
        order = [original, ours] if step % 2 else [ours, original]
        for exporter in order:
            base = os.path.join(model_dir, "export", exporter.name)
            start = time.perf_counter()
            path = exporter.export(estimator, base, checkpoint, eval_result, False)
            blocking = time.perf_counter() - start
            assert path, f"{exporter.name} did not export step {step}"
            times[exporter.name].append(blocking)
            if exporter is ours:
                start = time.perf_counter()
                assert ours.flush(None), "MLflow did not catch up"
                times["upload"].append(time.perf_counter() - start)
        print(
            f"round {step}: train+eval {prepare:6.2f} s | export() original "
            f"{times['original'][-1]:6.2f} s, ours {times['ours'][-1]:6.2f} s | "
            f"upload to READY {times['upload'][-1]:6.2f} s",
            flush=True,
        )
    ours.close()

    run_models = find_models(
        client,
        client.search_experiments()[0].experiment_id,
        exporter_key(model_dir, "ours"),
    )
    assert run_models and all(m.ready for m in run_models), run_models
    check_mlflow(model_dir, uri, name="ours", registered_model_name="large-upload")
    size = sum(
        os.path.getsize(os.path.join(r, n))
        for r, _, ns in os.walk(os.path.join(model_dir, "export", "ours"))
        for n in ns
        if n.startswith("variables.data")
    ) / len(run_models)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nexported variables per SavedModel: {size / 2**20:.0f} MB, {args.rounds} rounds")
    print("                     best     median")
    for key, label in (("original", "original BestExporter"), ("ours", "MLflowBestExporter")):
        print(f"export() {label:22s} {best[key]:6.2f} s  {median[key]:6.2f} s")
    print(
        f"ratio ours/original {'':10s}{best['ours'] / best['original']:6.3f}    "
        f"{median['ours'] / median['original']:6.3f}   (target <= 1.10)"
    )
    print(f"upload to READY (background)  {best['upload']:6.2f} s  {median['upload']:6.2f} s")


def crash_and_repair(args, root: str, uri: str) -> None:
    model_dir = os.path.join(root, "crash-model")
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    common = [
        sys.executable,
        str(REPO / "tests" / "cluster.py"),
        "--model-dir",
        model_dir,
        "--losses",
        "5,3,4,1",
        "--every",
        "1",
        "--throttle-secs",
        "0",
        "--ballast-mb",
        str(args.size_mb),
        "--exporter-kwargs",
        json.dumps({"registered_model_name": "large-crash"}),
    ]
    start = time.perf_counter()
    crashed = subprocess.run(
        [*common, "--kill-mid-upload", "--max-steps", "2"], env=env, capture_output=True, text=True
    )
    crash_time = time.perf_counter() - start
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    print(
        f"\ncrash: {[ln for ln in crashed.stderr.splitlines() if 'kill_mid' in ln][-1]} "
        f"({crash_time:.1f} s after start)"
    )
    start = time.perf_counter()
    restarted = subprocess.run(common, env=env, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    found = check_mlflow(model_dir, uri, registered_model_name="large-crash")
    print(
        f"restart: trained to the end and repaired MLflow in {time.perf_counter() - start:.1f} s;"
        f" {len(found['models'])} READY LoggedModels == kept exports, alias on step "
        f"{found['best'].tags['global_step']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL backend store")
    parser.add_argument("--crash", action="store_true", help="also crash mid-upload, restart")
    parser.add_argument("--workdir", help="where to put everything (default: a temp dir)")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="large_upload-", dir=args.workdir)
    server, pg = start_server(root, args.postgres)
    print(
        f"mlflow server {server.uri} (backend {server.backend_store_uri.split(':')[0]}, "
        f"proxied artifacts in {root}/server/artifacts); ballast {args.size_mb} MB",
        flush=True,
    )
    try:
        timed_rounds(args, root, server.uri)
        if args.crash:
            crash_and_repair(args, root, server.uri)
    finally:
        server.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
