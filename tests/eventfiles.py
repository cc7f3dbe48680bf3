"""Event files written for real by TensorFlow, and tools to cut and damage them.

Nothing here fakes the format: every event file is written by a TensorFlow
writer (the TF1 ``FileWriter`` the Estimator uses, the TF2 summary writer, or
``tf.io.TFRecordWriter``), and damaged files are made by cutting or flipping
bytes of such files.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import struct

import numpy as np


def tensorflow():
    """TensorFlow, imported on first use and quiet."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def event_file(logdir: str | os.PathLike[str]) -> str:
    """The one event file in ``logdir``."""
    (path,) = glob.glob(os.path.join(os.fspath(logdir), "*.tfevents.*"))
    return path


def record_spans(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """(start, end) byte offsets of every framed record, from the framing alone."""
    with open(path, "rb") as file:
        data = file.read()
    spans, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        spans.append((pos, pos + 16 + length))
        pos += 16 + length
    return spans


def records(path: str | os.PathLike[str]) -> list[bytes]:
    """The framed records of a file, header and footer included."""
    with open(path, "rb") as file:
        data = file.read()
    return [data[start:end] for start, end in record_spans(path)]


def f32(value: float) -> float:
    """``value`` as a float32 holds it: what a simple_value reads back as."""
    return float(np.float32(value))


# -- TF1: the FileWriter the Estimator uses ---------------------------------------------


def summary(values: dict[str, float] | None = None, strings: dict[str, str] | None = None):
    """A Summary of ``simple_value`` scalars and rank-0 string tensors (like the Estimator's)."""
    tf = tensorflow()
    proto = tf.compat.v1.Summary()
    for tag, value in (values or {}).items():
        proto.value.add(tag=tag, simple_value=value)
    for tag, text in (strings or {}).items():
        proto.value.add(tag=tag, tensor=tf.make_tensor_proto(text, dtype=tf.string))
    return proto


def event(step: int, wall_time: float, values=None, strings=None):
    """An Event with a summary, at an explicit wall time."""
    tf = tensorflow()
    return tf.compat.v1.Event(wall_time=wall_time, step=step, summary=summary(values, strings))


def write_summaries(logdir, evals, suffix: str | None = None) -> str:
    """Write ``[(step, summary proto or {tag: value}), ...]`` with FileWriter.add_summary.

    add_summary stamps the current time and strips the metadata of tags it has
    written before, as in training. Returns the event file.
    """
    tf = tensorflow()
    with tf.Graph().as_default():
        writer = tf.compat.v1.summary.FileWriter(os.fspath(logdir), filename_suffix=suffix)
        for step, proto in evals:
            if isinstance(proto, dict):
                proto = summary(proto)
            writer.add_summary(proto, step)
        writer.close()
    return _newest(logdir, suffix)


def write_events(logdir, events, suffix: str | None = None) -> str:
    """Write Event protos as they are (explicit wall times) with FileWriter.add_event."""
    tf = tensorflow()
    with tf.Graph().as_default():
        writer = tf.compat.v1.summary.FileWriter(os.fspath(logdir), filename_suffix=suffix)
        for proto in events:
            writer.add_event(proto)
        writer.close()
    return _newest(logdir, suffix)


def _newest(logdir, suffix: str | None) -> str:
    paths = glob.glob(os.path.join(os.fspath(logdir), f"*.tfevents.*{suffix or ''}"))
    return max(paths, key=os.path.getmtime)


def write_graph_summaries(logdir, steps: list[int]) -> str:
    """TF1 graph-mode summary ops run in a session: scalars, an image, a histogram, a
    tensor_summary per plugin, written with add_summary (metadata kept only the first time).

    Per step ``s`` the scalars are ``loss = s / 2`` and ``acc = 1 / (s + 1)`` (float32),
    ``scalars_plugin = s`` (a rank-0 float tensor with the scalars plugin), ``no_plugin = 2s``
    (a rank-0 float tensor without metadata) and ``other_plugin`` (a rank-0 float tensor of
    an unknown plugin, not a scalar).
    """
    tf = tensorflow()
    from tensorboard.compat.proto import summary_pb2

    def metadata(plugin: str):
        return summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
        )

    with tf.Graph().as_default():
        step = tf.compat.v1.placeholder(tf.float32, [])
        ops = [
            tf.compat.v1.summary.scalar("loss", step / 2),
            tf.compat.v1.summary.image("picture", tf.zeros([1, 4, 4, 3]) + step / 100),
            tf.compat.v1.summary.scalar("acc", 1 / (step + 1)),
            tf.compat.v1.summary.histogram("weights", tf.range(5.0) * step),
            tf.compat.v1.summary.tensor_summary(
                "scalars_plugin", step, summary_metadata=metadata("scalars")
            ),
            tf.compat.v1.summary.tensor_summary("no_plugin", step * 2),
            tf.compat.v1.summary.tensor_summary(
                "other_plugin", step * 3, summary_metadata=metadata("custom")
            ),
        ]
        merged = tf.compat.v1.summary.merge(ops)
        writer = tf.compat.v1.summary.FileWriter(os.fspath(logdir))
        with tf.compat.v1.Session() as session:
            for s in steps:
                writer.add_summary(session.run(merged, {step: s}), s)
        writer.close()
    return event_file(logdir)


def write_garbage_record(path: str, payload: bytes) -> None:
    """Append one TFRecord (correct CRCs, written by tf.io.TFRecordWriter) holding ``payload``."""
    tf = tensorflow()
    scratch = path + ".record"
    with tf.io.TFRecordWriter(scratch) as writer:
        writer.write(payload)
    with open(scratch, "rb") as source, open(path, "ab") as target:
        target.write(source.read())
    os.remove(scratch)


# -- TF2 -------------------------------------------------------------------------------


def write_tf2(logdir, write) -> str:
    """Run ``write()`` under a TF2 summary writer (eagerly) and return its event file."""
    tf = tensorflow()
    writer = tf.summary.create_file_writer(os.fspath(logdir))
    with writer.as_default():
        write()
    writer.close()
    return event_file(logdir)


def scalars_metadata() -> bytes:
    """The SummaryMetadata of the scalars plugin, as tf.summary.scalar writes it."""
    from tensorboard.plugins.scalar import metadata

    return metadata.create_summary_metadata(display_name="", description="").SerializeToString()


# -- a tiny Estimator ------------------------------------------------------------------


def train_dnn_regressor(model_dir: str, max_steps: int = 6, every: int = 2):
    """Train a tiny DNNRegressor with train_and_evaluate, evaluating every checkpoint.

    Returns:
        The estimator.
    """
    tf = tensorflow()
    x = np.random.RandomState(0).uniform(-1, 1, size=(64, 2)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0]], dtype="float32")) + 0.5

    def input_fn():
        return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).repeat().batch(16)

    estimator = tf.estimator.DNNRegressor(
        hidden_units=[3],
        feature_columns=[tf.feature_column.numeric_column("x", shape=[2])],
        model_dir=model_dir,
        config=tf.estimator.RunConfig(
            save_checkpoints_steps=every,
            save_summary_steps=every,
            log_step_count_steps=1000,
            tf_random_seed=1,
        ),
    )
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(input_fn, max_steps=max_steps),
        tf.estimator.EvalSpec(input_fn, steps=2, start_delay_secs=0, throttle_secs=0),
    )
    return estimator


# -- what TensorFlow itself reads from a file -----------------------------------------------


def tf_scalar_events(path: str) -> list[tuple[int, dict[str, float], dict[str, str]]]:
    """(step, scalars, strings) of every event, read by TensorFlow's own iterator.

    The oracle for files whose values carry no plugin metadata: simple_value,
    rank-0 numeric tensors (tf.make_ndarray) and rank-0 string tensors. Events
    with none of these are left out, as ``read_events`` does.
    """
    tf = tensorflow()
    found = []
    for proto in tf.compat.v1.train.summary_iterator(path):
        scalars: dict[str, float] = {}
        strings: dict[str, str] = {}
        for value in proto.summary.value:
            if value.HasField("simple_value"):
                scalars[value.tag] = value.simple_value
            elif value.HasField("tensor"):
                array = tf.make_ndarray(value.tensor)
                if array.ndim != 0:
                    continue
                if array.dtype.kind in "fiu":
                    scalars[value.tag] = float(array)
                elif array.dtype.kind in "SO":
                    strings[value.tag] = array.item().decode()
        if scalars or strings:
            found.append((proto.step, scalars, strings))
    return found


def copy_prefix(source: str, target: str, size: int) -> str:
    """Copy the first ``size`` bytes of ``source`` to ``target``."""
    with open(source, "rb") as file:
        data = file.read(size)
    with open(target, "wb") as file:
        file.write(data)
    return target


def flip_byte(path: str, offset: int) -> None:
    """Invert the bits of one byte of a file."""
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def copy_file(source: str, target: str) -> str:
    """Copy a file, returning the target."""
    shutil.copyfile(source, target)
    return target


def is_nan(value: float) -> bool:
    """True for NaN (for asserting on records that hold one)."""
    return isinstance(value, float) and math.isnan(value)


# -- tensors as writers put them into a Summary ---------------------------------------------

#: The numeric dtypes of rank-0 tensors the reader must understand, by numpy name.
SCALAR_DTYPES = ("float32", "float64", "float16", "int32", "int64")


def scalar_tensor(value: float, dtype: str, encoding: str):
    """A rank-0 TensorProto holding ``value``.

    Args:
        value: the number.
        dtype: a numpy dtype name of ``SCALAR_DTYPES``.
        encoding: ``"val"`` for the ``*_val`` field ``tf.make_tensor_proto`` uses, or
            ``"content"`` for ``tensor_content`` (what TF2's ``tf.summary.scalar`` writes).
    """
    tf = tensorflow()
    array = np.array(value, dtype=dtype)
    if encoding == "val":
        return tf.make_tensor_proto(array)
    proto = tf.make_tensor_proto(array)
    proto.ClearField("float_val")
    proto.ClearField("double_val")
    proto.ClearField("half_val")
    proto.ClearField("int_val")
    proto.ClearField("int64_val")
    proto.tensor_content = array.tobytes()
    return proto


def tensor_summary(tensors: dict, plugin: str | None = None):
    """A Summary of ``{tag: TensorProto}``, with the plugin's metadata on every value."""
    tf = tensorflow()
    proto = tf.compat.v1.Summary()
    for tag, tensor in tensors.items():
        value = proto.value.add(tag=tag)
        value.tensor.CopyFrom(tensor)
        if plugin is not None:
            value.metadata.plugin_data.plugin_name = plugin
    return proto


# -- an independent oracle, for files TensorFlow's iterator cannot read whole -------------------


def reference_events(path: str) -> list[tuple[float, int, dict[str, float], dict[str, str]]]:
    """(wall_time, step, scalars, strings) of every event, the slow and obvious way.

    The framing is read by TensorFlow (``tf_record_iterator``, which raises on damage:
    use it on whole, undamaged framing), every payload is parsed by protobuf and
    every value converted by ``tf.make_ndarray``. Reading stops at the first payload
    that is not an Event. The rules are those of ``events.py``: a tag's plugin is
    remembered from its last metadata; rank-0 numeric tensors are scalars unless
    their plugin is neither unknown nor ``scalars``; rank-0 string tensors are
    strings unless the plugin is neither unknown nor ``text``.
    """
    tf = tensorflow()
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    plugins: dict[str, str] = {}
    found = []
    for payload in tf.compat.v1.io.tf_record_iterator(path):
        try:
            proto = event_pb2.Event.FromString(payload)
        except DecodeError:
            break
        scalars: dict[str, float] = {}
        strings: dict[str, str] = {}
        if proto.WhichOneof("what") == "summary":
            for value in proto.summary.value:
                _reference_value(tf, value, plugins, scalars, strings)
        if scalars or strings:
            found.append((proto.wall_time, proto.step, scalars, strings))
    return found


def _reference_value(tf, value, plugins, scalars, strings) -> None:
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        scalars[value.tag] = value.simple_value
        return
    if kind != "tensor":
        return
    if value.metadata.plugin_data.plugin_name:
        plugins[value.tag] = value.metadata.plugin_data.plugin_name
    plugin = plugins.get(value.tag, "")
    tensor = value.tensor
    if tensor.tensor_shape.unknown_rank or tensor.tensor_shape.dim:
        return
    if tensor.dtype == tf.string.as_datatype_enum:
        # make_ndarray cannot read an empty string_val; a missing value is the default, "".
        if plugin in ("", "text") and len(tensor.string_val) <= 1:
            text = tensor.string_val[0] if tensor.string_val else b""
            strings[value.tag] = text.decode("utf-8", errors="replace")
        return
    try:
        array = tf.make_ndarray(tensor)
    except Exception:  # malformed tensors are not scalars
        return
    if array.ndim != 0:
        return
    if plugin in ("", "scalars") and (array.dtype.kind in "fiu" or array.dtype.name == "bfloat16"):
        scalars[value.tag] = float(array)
