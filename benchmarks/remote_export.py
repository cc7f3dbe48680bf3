"""Benchmark: the model directory on s3://, ours against the original BestExporter.

A real S3 API server (moto's standalone server) is started on 127.0.0.1 and
the model directory is ``s3://<bucket>/model``, through tensorflow-io's S3
filesystem, in one run, on the same store:

1. export() blocking time: an Estimator with ``--mb`` MB of variables, both
   exporters asked round after round to export a candidate that beats every
   earlier one, in alternating order (as ``export_overhead.py`` does
   locally). Ours logs to a SQLite MLflow store with a registered model; the
   worker is allowed to catch up before each round (evals minutes apart), so
   the figure is the training thread's cost. The original writes the
   SavedModel through tensorflow-io into ``temp-*`` and renames it (object
   by object); ours writes it locally and copies it once, ``saved_model.pb``
   last. Goal: ratio ours/original at most 1.10.
2. One incremental poll: an eval event file of ``--evals`` evals is put on
   the store, read once by ``HistoryReader``; then one more eval is written
   and the object replaced (what a TensorFlow writer's flush on S3 does). The
   bytes the next poll reads (counted by ``mlflow_best_export.fs``, which
   reads exactly the ranges it asks for) are printed as a fraction of the
   file's size. Goal: under 1%.

Usage::

    python benchmarks/remote_export.py              # 50 MB, 4 rounds, 20,000 evals
    python benchmarks/remote_export.py --mb 100 --rounds 6
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def start_moto(work: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(work, "moto.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        S3_ENDPOINT=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket="bench")
            return proc, endpoint
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)


def bench_exports(model_dir: str, work: str, megabytes: int, rounds: int, keep: int) -> None:
    import tensorflow as tf
    from export_overhead import (
        build_estimator,
        serving_input_receiver_fn,
        train_input_fn,
        write_eval,
    )

    from mlflow_best_export import MLflowBestExporter

    estimator = build_estimator(model_dir, megabytes)
    estimator.train(train_input_fn, max_steps=1)
    checkpoint = tf.train.latest_checkpoint(model_dir)
    original = tf.estimator.BestExporter(
        name="original", serving_input_receiver_fn=serving_input_receiver_fn, exports_to_keep=keep
    )
    ours = MLflowBestExporter(
        name="ours",
        serving_input_receiver_fn=serving_input_receiver_fn,
        exports_to_keep=keep,
        tracking_uri=f"sqlite:///{work}/mlflow.db",
        registered_model_name="remote-overhead",
    )
    times: dict[str, list[float]] = {"original": [], "ours": []}
    loss = 100.0
    for round_ in range(rounds):
        loss *= 0.9
        eval_result = {"loss": loss, "global_step": round_ + 1}
        write_eval(model_dir, eval_result, round_ + 1)
        ours.flush()
        time.sleep(1.0 - time.time() % 1.0 + 0.01)  # a fresh second for both names
        order = (original, ours) if round_ % 2 == 0 else (ours, original)
        for exporter in order:
            base = f"{model_dir}/export/{exporter.name}"
            start = time.perf_counter()
            path = exporter.export(estimator, base, checkpoint, dict(eval_result), False)
            times["original" if exporter is original else "ours"].append(
                time.perf_counter() - start
            )
            assert path is not None, "every round must export"
    in_step = ours.flush()
    ours.close()
    kept = {name: sorted(tf.io.gfile.listdir(f"{model_dir}/export/{name}")) for name in times}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"export() blocking time on s3://, {megabytes} MB of variables, {rounds} rounds "
        f"(median; min..max)"
    )
    print(
        f"  original {med['original']:.3f} s ({min(times['original']):.3f}.."
        f"{max(times['original']):.3f})  ours {med['ours']:.3f} s ({min(times['ours']):.3f}.."
        f"{max(times['ours']):.3f})  ratio ours/original {med['ours'] / med['original']:.2f}"
        f"  (goal <= 1.10)"
    )
    print(f"  kept on the store: {kept}; MLflow in step: {in_step}")


def bench_poll(model_dir: str, work: str, evals: int) -> None:
    import tensorflow as tf

    from mlflow_best_export import fs
    from mlflow_best_export.history import HistoryReader

    local = os.path.join(work, "events")
    keys = ("loss", "accuracy", "auc", "precision", "recall", "mse")

    def summary(step: int):
        values = [
            tf.compat.v1.Summary.Value(tag=k, simple_value=1.0 / (step + i))
            for i, k in enumerate(keys)
        ]
        return tf.compat.v1.Summary(value=values)

    with tf.Graph().as_default():
        writer = tf.compat.v1.summary.FileWriter(local)
        for step in range(1, evals + 1):
            writer.add_summary(summary(step), step)
        writer.flush()
        [local_file] = [os.path.join(local, n) for n in os.listdir(local)]
        remote = f"{model_dir}/eval/{os.path.basename(local_file)}"
        tf.io.gfile.makedirs(f"{model_dir}/eval")
        tf.io.gfile.copy(local_file, remote, overwrite=True)
        reader = HistoryReader(model_dir)
        start = time.perf_counter()
        history = reader.poll()
        full = time.perf_counter() - start
        assert len(history) == evals, len(history)

        writer.add_summary(summary(evals + 1), evals + 1)
        writer.flush()
        writer.close()
        tf.io.gfile.copy(local_file, remote, overwrite=True)  # what a flush does on S3
        size = tf.io.gfile.stat(remote).length
        before = fs.bytes_read()
        start = time.perf_counter()
        history = reader.poll()
        poll = time.perf_counter() - start
        read = fs.bytes_read() - before
    assert history.records[-1].step == evals + 1
    print(
        f"one incremental poll on s3:// after one new eval, file of {evals:,} evals "
        f"({size / 1e6:.1f} MB): read {read} bytes = {100 * read / size:.4f}% of the file "
        f"(goal < 1%); {poll * 1000:.1f} ms vs {full:.2f} s for the first full read"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50, help="size of the variables in MB")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--evals", type=int, default=20_000)
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="remote-export-")
    os.chdir(work)  # MLflow's default artifact root is ./mlruns
    moto, endpoint = start_moto(work)
    try:
        import tensorflow as tf
        import tensorflow_io  # noqa: F401 - the s3:// filesystem

        tf.get_logger().setLevel("ERROR")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        print(f"S3 API server (moto) at {endpoint}; work directory {work}")
        bench_exports("s3://bench/model", work, args.mb, args.rounds, args.keep)
        bench_poll("s3://bench/history", work, args.evals)
    finally:
        moto.terminate()
        moto.wait()
    from mlflow_best_export import fs

    fs.exit_process(0)  # tensorflow-io's S3 client aborts the interpreter's own exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
