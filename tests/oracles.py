"""What the tests expect, computed without this package.

Event files are read with ``tf.compat.v1.train.summary_iterator``, exports are
found by listing the directory and their step read with
``tf.train.load_variable``, and the new bests are picked by a plain loop that
calls the compare function the way ``tf.estimator.BestExporter`` does. None of
it uses the package's reader, ranking or export listing.
"""

from __future__ import annotations

import glob
import json
import math
import os

METADATA = os.path.join("assets.extra", "mlflow_best_export.json")


def eval_records(model_dir: str, pattern: str = "eval/*.tfevents.*") -> list[dict]:
    """One dict per evaluated step, ascending: ``step``, ``metrics``, ``checkpoint_path``.

    Scalars are ``simple_value`` and rank-0 numeric tensors; a later event of a
    step overwrites an earlier one key by key (a re-evaluation after a restart).
    """
    import tensorflow as tf

    by_step: dict[int, dict] = {}
    events = []
    for path in glob.glob(os.path.join(model_dir, pattern)):
        events.extend(tf.compat.v1.train.summary_iterator(path))
    for event in sorted(events, key=lambda e: e.wall_time):
        record = by_step.setdefault(
            event.step, {"step": event.step, "metrics": {}, "checkpoint_path": None}
        )
        for value in event.summary.value:
            if value.HasField("simple_value"):
                record["metrics"][value.tag] = value.simple_value
            elif value.HasField("tensor"):
                array = tf.make_ndarray(value.tensor)
                if array.ndim:
                    continue
                if array.dtype.kind in "SO":
                    if value.tag == "checkpoint_path":
                        record["checkpoint_path"] = array.item().decode()
                elif array.dtype.kind in "fiu":
                    record["metrics"][value.tag] = float(array)
    return [r for _, r in sorted(by_step.items()) if r["metrics"] or r["checkpoint_path"]]


def new_best_steps(records: list[dict], compare_fn, keep: int | None = None) -> list[int]:
    """The steps an uninterrupted best exporter exports (the last ``keep`` of them).

    A record is a new best when ``compare_fn`` (called by keyword) says it beats
    the best before it; records with a non-finite value never win; records the function
    cannot read are skipped.
    """
    best, chain = None, []
    for record in records:
        metrics = record["metrics"]
        if not all(math.isfinite(v) for v in metrics.values()):
            continue
        try:
            better = best is None or compare_fn(best_eval_result=best, current_eval_result=metrics)
        except (KeyError, ValueError):
            continue
        if better:
            best = metrics
            chain.append(record["step"])
    return chain if keep is None else chain[-keep:]


def export_dirs(export_base: str) -> list[str]:
    """The SavedModel directories under ``export_base``, oldest first, by listing."""
    if not os.path.isdir(export_base):
        return []
    return [
        os.path.join(export_base, name)
        for name in sorted(os.listdir(export_base))
        if len(name) == 10
        and name.isdigit()
        and any(
            os.path.exists(os.path.join(export_base, name, f))
            for f in ("saved_model.pb", "saved_model.pbtxt")
        )
    ]


def export_step(export_dir: str) -> int | None:
    """The global step in an export's variables (None if it has none)."""
    import tensorflow as tf

    try:
        return int(
            tf.train.load_variable(
                os.path.join(export_dir, "variables", "variables"), "global_step"
            )
        )
    except (tf.errors.OpError, ValueError):
        return None


def export_steps(export_base: str) -> list[int | None]:
    """The global steps of the exports on disk, oldest export first."""
    return [export_step(d) for d in export_dirs(export_base)]


def export_metadata(export_dir: str) -> dict | None:
    """Our metadata file of an export, parsed with ``json`` (None without one)."""
    path = os.path.join(export_dir, METADATA)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)
