"""Train a small Estimator with MLflowBestExporter and look at the best models in MLflow.

The data is generated: house prices from four features (area, rooms, age and
distance to the centre) with noise, 4,000 training and 1,000 eval rows. A
``DNNRegressor`` is trained with ``train_and_evaluate``; the exporter keeps
the 3 best exports (by eval loss) on disk and mirrors them into MLflow: the
eval curve as run metrics, each kept export as a logged model, and versions
of the registered model ``house-prices`` with the alias ``best`` on the best.

Run it from any directory; it uses MLflow's embedded store
(``sqlite:///mlflow.db`` in the current directory) unless
``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` says otherwise::

    python examples/train_and_evaluate.py
    mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

FEATURES = ("area", "rooms", "age", "distance")


def make_data(rows: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """House prices (in thousands) that depend on the features, with noise."""
    rng = np.random.RandomState(seed)
    area = rng.uniform(30, 200, rows)
    rooms = np.clip(np.round(area / 30 + rng.normal(0, 1, rows)), 1, 8)
    age = rng.uniform(0, 80, rows)
    distance = rng.uniform(0.5, 30, rows)
    price = 3.0 * area + 12 * rooms - 0.8 * age - 4.0 * distance + 60 + rng.normal(0, 15, rows)
    features = {"area": area, "rooms": rooms, "age": age, "distance": distance}
    return {k: v.astype("float32") for k, v in features.items()}, price.astype("float32")


def build_estimator(model_dir: str, checkpoint_every: int = 200):
    """The DNNRegressor and its feature columns (features scaled to about [0, 1])."""
    import tensorflow as tf

    scale = {"area": 200.0, "rooms": 8.0, "age": 80.0, "distance": 30.0}
    columns = [
        tf.feature_column.numeric_column(name, normalizer_fn=lambda x, s=scale[name]: x / s)
        for name in FEATURES
    ]
    estimator = tf.estimator.DNNRegressor(
        hidden_units=[32, 16],
        feature_columns=columns,
        optimizer=lambda: tf.keras.optimizers.legacy.Adam(learning_rate=0.05),
        config=tf.estimator.RunConfig(
            model_dir=model_dir,
            save_checkpoints_steps=checkpoint_every,
            keep_checkpoint_max=50,
            log_step_count_steps=1000,
            tf_random_seed=42,
        ),
    )
    return estimator, columns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="example_model_dir")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--registered-model", default="house-prices")
    parser.add_argument("--experiment", default="house-prices")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)

    import mlflow
    import tensorflow as tf

    from mlflow_best_export import MLflowBestExporter

    tf.get_logger().setLevel("ERROR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow_best_export").setLevel(logging.INFO)

    estimator, columns = build_estimator(args.model_dir, args.checkpoint_every)
    train_x, train_y = make_data(4000, seed=1)
    eval_x, eval_y = make_data(1000, seed=2)

    def train_input_fn():
        data = tf.data.Dataset.from_tensor_slices((train_x, train_y))
        return data.shuffle(4000, seed=3).repeat().batch(64)

    def eval_input_fn():
        return tf.data.Dataset.from_tensor_slices((eval_x, eval_y)).batch(1000)

    # Clients send plain JSON rows; the served model turns them into tf.Examples.
    serving_input_receiver_fn = tf.estimator.export.build_parsing_serving_input_receiver_fn(
        tf.feature_column.make_parse_example_spec(columns)
    )
    exporter = MLflowBestExporter(
        serving_input_receiver_fn=serving_input_receiver_fn,
        exports_to_keep=3,
        tracking_uri=args.tracking_uri,
        experiment_name=args.experiment,
        registered_model_name=args.registered_model,
    )
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(train_input_fn, max_steps=args.max_steps),
        tf.estimator.EvalSpec(
            eval_input_fn, steps=None, exporters=[exporter], start_delay_secs=0, throttle_secs=0
        ),
    )
    exporter.close()

    client = mlflow.MlflowClient(args.tracking_uri)
    best = client.get_model_version_by_alias(args.registered_model, "best")
    tracking_uri = args.tracking_uri or mlflow.get_tracking_uri()
    print()
    print(
        f"Best export: global step {best.tags['global_step']}, "
        f"eval loss {float(best.tags['metric.loss']):.4g}, "
        f"version {best.version} of {args.registered_model!r}."
    )
    print(f"Kept on disk: {os.path.abspath(os.path.join(args.model_dir, 'export'))}")
    print()
    print("Look at it in the MLflow UI:")
    print(f"  mlflow ui --backend-store-uri {tracking_uri}")
    print(
        f"  then open http://127.0.0.1:5000 -> Experiments -> {args.experiment} "
        f"(run {best.run_id}: eval metrics, Models tab),"
    )
    print(f"  and Models -> {args.registered_model} (versions, alias 'best').")
    print(
        f"Serve the best model:  mlflow models serve -m "
        f"models:/{args.registered_model}@best --env-manager local"
    )


if __name__ == "__main__":
    main()
