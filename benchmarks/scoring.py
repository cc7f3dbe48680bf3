"""Benchmark: batch scoring of an exported Estimator, ours against the model's own speed.

A ``DNNRegressor`` on four scalar columns is trained briefly and exported twice,
with a parsing receiver (serialized ``tf.Example`` input) and a raw receiver.
On the same ``--rows`` rows (a pandas DataFrame), it prints rows/s for:

- ``predict()`` of our pyfunc model (``ServingModel.predict``, what
  ``mlflow.pyfunc.load_model(...).predict`` calls), for both receivers;
- the floor: the SavedModel's serving signature called directly on inputs
  already in its own form (pre-serialized examples, or ready tensors);
- ``Estimator.predict`` on the same rows;

and the ratio of ours to the floor (goal: at least 0.5), plus the peak extra
memory of ``predict()`` against the input frame's size (goal: at most 2x);
then ``mlflow.pyfunc.spark_udf`` rows/s on a local Spark session, and the p50
and p99 latency of ``mlflow models serve`` for 1-row and 100-row requests.

Usage::

    python benchmarks/scoring.py                 # 200,000 rows
    python benchmarks/scoring.py --rows 20000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLUMNS = ("area", "rooms", "age", "distance")


def data(rows: int):
    import numpy as np
    import pandas as pd

    rng = np.random.RandomState(0)
    return pd.DataFrame({c: rng.uniform(0, 100, rows).astype("float32") for c in COLUMNS})


def train_and_export(work: str):
    import tensorflow as tf

    columns = [tf.feature_column.numeric_column(c) for c in COLUMNS]
    estimator = tf.estimator.DNNRegressor([32, 16], columns, model_dir=os.path.join(work, "m"))
    frame = data(256)

    def input_fn():
        features = {c: frame[c].to_numpy() for c in COLUMNS}
        labels = frame["area"].to_numpy() * 2
        return tf.data.Dataset.from_tensor_slices((features, labels)).repeat().batch(64)

    estimator.train(input_fn, max_steps=20)
    spec = tf.feature_column.make_parse_example_spec(columns)
    parsing = tf.estimator.export.build_parsing_serving_input_receiver_fn(spec)

    def raw():
        # Called by export_saved_model inside its own graph.
        return tf.estimator.export.build_raw_serving_input_receiver_fn(
            {c: tf.compat.v1.placeholder(tf.float32, [None], name=c) for c in COLUMNS}
        )()

    exports = {
        "parsing": estimator.export_saved_model(os.path.join(work, "parsing"), parsing).decode(),
        "raw": estimator.export_saved_model(os.path.join(work, "raw"), raw).decode(),
    }
    return estimator, exports


def rate(rows: int, fn, repeat: int) -> float:
    fn()  # warm up (graph tracing, first allocation)
    best = min(_timed(fn) for _ in range(repeat))
    return rows / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--spark-rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="per latency figure")
    parser.add_argument("--no-spark", action="store_true", help="skip spark_udf")
    parser.add_argument("--no-serve", action="store_true", help="skip mlflow models serve")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from mlflow_best_export import flavor, frames, serving

    work = tempfile.mkdtemp(prefix="scoring-")
    estimator, exports = train_and_export(work)
    frame = data(args.rows)
    frame_bytes = int(frame.memory_usage(index=False, deep=True).sum())
    print(f"{args.rows:,} rows, {len(COLUMNS)} float columns ({frame_bytes / 1e6:.1f} MB)")

    results = {}
    for kind, export in exports.items():
        model = serving.load_serving_model(export)
        ours = rate(args.rows, lambda m=model: m.predict(frame), args.repeat)
        if kind == "parsing":
            examples = frames.examples_from_frame(frame, model.signature.features)
            feeds = {model.signature.examples_input: tf.constant(examples)}
        else:
            feeds = {c: tf.constant(frame[c].to_numpy()) for c in COLUMNS}
        floor = rate(args.rows, lambda m=model, f=feeds: m._function(**f), args.repeat)
        tracemalloc.start()
        model.predict(frame)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results[kind] = (ours, floor, model.vectorized, peak)

    def estimator_input():
        return tf.data.Dataset.from_tensor_slices({c: frame[c].to_numpy() for c in COLUMNS}).batch(
            10_000
        )

    start = time.perf_counter()
    predictions = np.array([p["predictions"][0] for p in estimator.predict(estimator_input)])
    estimator_rate = args.rows / (time.perf_counter() - start)
    assert len(predictions) == args.rows

    print(f"{'receiver':9s} {'ours rows/s':>12s} {'signature floor':>16s} {'ratio':>6s}  path")
    for kind, (ours, floor, vectorized, peak) in results.items():
        path = "vectorized" if vectorized else "per-row tf.Example"
        print(
            f"{kind:9s} {ours:12,.0f} {floor:16,.0f} {ours / floor:6.2f}  {path}; "
            f"peak extra memory {peak / frame_bytes:.2f}x the frame (Python allocations)"
        )
    print(f"Estimator.predict: {estimator_rate:,.0f} rows/s")
    print("goals: ratio >= 0.5 on both receivers; extra memory <= 2x the frame")
    for kind, export in exports.items():
        model_path = os.path.join(work, f"pyfunc-{kind}")
        flavor.save_model(export, model_path)
        if not args.no_spark:
            spark_rows, spark_rate = spark_rate_of(model_path, args.spark_rows)
            print(f"{kind:9s} spark_udf (local[2], {spark_rows:,} rows): {spark_rate:,.0f} rows/s")
        if not args.no_serve:
            for batch, (p50, p99) in serve_latency(model_path, work, args.requests).items():
                print(
                    f"{kind:9s} mlflow models serve, {batch:3d}-row requests: "
                    f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
                )
    return 0


def spark_rate_of(model_path: str, rows: int) -> tuple[int, float]:
    """Rows/s of ``mlflow.pyfunc.spark_udf`` on a local Spark session (model loading included)."""
    import mlflow
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        udf = mlflow.pyfunc.spark_udf(spark, model_path, env_manager="local", result_type="double")
        frame = spark.range(rows).select(
            *[(F.rand(i) * 100).alias(c) for i, c in enumerate(COLUMNS)]
        )
        start = time.perf_counter()
        frame.select(udf(F.struct(*COLUMNS)).alias("y")).agg(F.sum("y")).collect()
        return rows, rows / (time.perf_counter() - start)
    finally:
        spark.stop()


def serve_latency(
    model_path: str, work: str, requests_count: int
) -> dict[int, tuple[float, float]]:
    """p50 and p99 seconds of ``mlflow models serve`` for 1-row and 100-row requests."""
    import socket
    import subprocess

    import numpy as np
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    log = open(os.path.join(work, f"serve-{port}.log"), "w")
    server = subprocess.Popen(
        [
            os.path.join(bin_dir, "mlflow"),
            "models",
            "serve",
            "-m",
            model_path,
            "--env-manager",
            "local",
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"mlflow models serve did not start; see {log.name}")
            time.sleep(0.5)
        latencies = {}
        session = requests.Session()
        for batch in (1, 100):
            body = {"dataframe_records": data(batch).to_dict(orient="records")}
            session.post(f"{url}/invocations", json=body, timeout=30).raise_for_status()
            times = []
            for _ in range(requests_count):
                start = time.perf_counter()
                session.post(f"{url}/invocations", json=body, timeout=30).raise_for_status()
                times.append(time.perf_counter() - start)
            latencies[batch] = (float(np.percentile(times, 50)), float(np.percentile(times, 99)))
        return latencies
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
