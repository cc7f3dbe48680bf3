"""Batch scoring on Spark: ``spark_udf(spark, "models:/NAME@best")`` over 1,000,000 rows.

A real local Spark session (pyspark from PyPI, a Java runtime from Debian) scores
a model registered by ``MLflowBestExporter`` (parsing receiver); a sample of its
answers must equal ``Estimator.predict`` on the best version's checkpoint. Without
Java the test is skipped, except under CI (``CI=1``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import tiny

pytestmark = pytest.mark.slow
pyspark = pytest.importorskip("pyspark", reason="the Spark test needs pyspark (test extra)")

ROWS = 1_000_000


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        reason = "Spark needs a Java runtime (e.g. Debian's default-jre-headless)"
        if os.environ.get("CI"):
            pytest.fail(f"CI=1 and {reason}; .ci/run installs it")
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("mlflow-best-export-test")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "20000")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_spark_udf_scores_a_million_rows_like_the_estimator(spark, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient
    from pyspark.sql import functions as F

    from mlflow_best_export import MLflowBestExporter

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    model_dir = str(tmp_path / "model")
    exporter = MLflowBestExporter(
        serving_input_receiver_fn=tiny.parsing_serving_input_receiver_fn,
        exports_to_keep=2,
        tracking_uri=uri,
        registered_model_name="spark-best",
    )
    tiny.train(model_dir, exporter, [30, 20, 10])
    exporter.close()
    best = MlflowClient(uri).get_model_version_by_alias("spark-best", "best")

    udf = mlflow.pyfunc.spark_udf(
        spark, "models:/spark-best@best", env_manager="local", result_type="double"
    )
    frame = spark.range(ROWS).select(
        F.array((F.rand(1) * 2 - 1).cast("double"), (F.rand(2) * 2 - 1).cast("double")).alias("x")
    )
    scored = frame.withColumn("y", udf(F.struct("x"))).cache()
    summary = scored.agg(F.count("y").alias("n"), F.sum(F.isnan("y").cast("int")).alias("nan"))
    row = summary.collect()[0]
    assert row["n"] == ROWS and row["nan"] == 0

    sample = scored.limit(1000).toPandas()
    x = np.asarray(sample["x"].tolist(), dtype="float32")
    estimator = tiny.build_estimator(model_dir, 2, {2: 1.0})
    import tensorflow as tf

    input_fn = tf.compat.v1.estimator.inputs.numpy_input_fn({"x": x}, shuffle=False)
    want = np.array(
        [
            p["y"][0]
            for p in estimator.predict(input_fn, checkpoint_path=best.tags["checkpoint_path"])
        ]
    )
    np.testing.assert_allclose(sample["y"].to_numpy(), want, rtol=1e-5, atol=1e-6)
    mlflow.set_tracking_uri(None)
