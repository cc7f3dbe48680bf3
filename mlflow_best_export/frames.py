"""pandas frames in and out of a served model: input columns, tf.Example protos, predictions.

What a pyfunc caller hands over (a DataFrame, a dict of columns, a list of row
dicts) becomes columns for the signature's inputs, or one ``tf.Example`` per row
for a parsing receiver that cannot be fed below its parse op; the outputs come
back as a DataFrame with one column per signature output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlflow_best_export.signature import Feature, TensorInfo, one_value_per_row


def as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, pd.Series):
        return model_input.to_frame()
    if isinstance(model_input, Mapping):
        columns = {k: _column_values(v) for k, v in model_input.items()}
        lengths = {len(v) for v in columns.values() if isinstance(v, list)}
        if not lengths:  # one example given as scalars
            return pd.DataFrame({k: [v] for k, v in columns.items()})
        return pd.DataFrame(columns)
    if isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
        return pd.DataFrame(list(model_input))
    raise TypeError(
        "Expected a pandas DataFrame, a dict of columns or a list of row dicts; got "
        f"{type(model_input).__name__}."
    )


def _column_values(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return list(value) if value.ndim else value.item()
    if isinstance(value, pd.Series | tuple):
        return list(value)
    return value


def as_columns(model_input: Any, names: Sequence[str]) -> Mapping[str, Any]:
    if isinstance(model_input, np.ndarray) and not model_input.dtype.names:
        if len(names) != 1:
            raise ValueError(
                f"A numpy array can feed a model with a single input; this one takes {list(names)}."
            )
        return {names[0]: model_input}
    if isinstance(model_input, Mapping):
        return {k: v for k, v in model_input.items()}
    frame = as_frame(model_input)
    return {name: frame[name] for name in frame.columns}


def to_array(values: Any, info: TensorInfo) -> np.ndarray:
    """One column as a batch of the tensor's dtype and shape."""
    import tensorflow as tf

    numpy_dtype = (
        object if info.dtype == "string" else tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
    )
    if isinstance(values, pd.Series):
        column = values.to_numpy()
        # A numeric column goes to the graph as it is (no copy when the dtype matches);
        # only cells holding lists or arrays need a Python pass to be stacked.
        values = column if column.dtype != object else values.tolist()
    array = np.asarray(values, dtype=numpy_dtype)
    row_shape = info.row_shape
    if row_shape is not None and None not in row_shape and array.ndim:
        # Scalars for [batch, 1] and flat lists for [batch, 2, 3] are accepted as well.
        array = array.reshape((len(array), *row_shape))
    return array


def examples_from_frame(frame: pd.DataFrame, features: Sequence[Feature] | None) -> list[bytes]:
    """Serialize each row of ``frame`` as a ``tf.Example``.

    Args:
      frame: one row per example, one column per feature; a list or array
        cell holds a multi-valued feature; None or NaN leaves a feature out
        of that example (so the graph's default applies).
      features: the feature spec; None encodes every column by its values'
        type (floats, integers and booleans, strings and bytes).

    Returns:
      The serialized protos, one per row.

    Raises:
      ValueError: if a required feature's column is missing.
    """
    import tensorflow as tf

    if features is None:
        spec = [(name, None) for name in frame.columns]
    else:
        missing = [f.name for f in features if f.required and f.name not in frame.columns]
        if missing:
            raise ValueError(
                f"The model needs the features {missing}; the input has {list(frame.columns)}."
            )
        spec = [(f.name, f.dtype) for f in features if f.name in frame.columns]
    columns = [(name, dtype, frame[name].tolist()) for name, dtype in spec]
    serialized = []
    for row in range(len(frame)):
        feature = {}
        for name, dtype, values in columns:
            value = values[row]
            if is_missing(value):
                continue
            feature[str(name)] = _to_feature(value, dtype, name)
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        serialized.append(example.SerializeToString())
    return serialized


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return False


def _to_feature(value: Any, dtype: str | None, name: Any):
    import tensorflow as tf

    flat = np.ravel(np.asarray(value, dtype=object if is_text(value) else None))
    if dtype is None:
        dtype = _infer_feature_dtype(flat, name)
    if dtype == "string":
        encoded = [v if isinstance(v, bytes) else str(v).encode() for v in flat]
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=encoded))
    if dtype == "int64":
        integers = flat.astype(np.int64)
        if flat.dtype.kind == "f" and not np.array_equal(integers, flat):
            raise ValueError(f"The feature {name!r} takes integers; got {value!r}.")
        return tf.train.Feature(int64_list=tf.train.Int64List(value=integers))
    return tf.train.Feature(float_list=tf.train.FloatList(value=flat.astype(np.float32)))


def is_text(value: Any) -> bool:
    if isinstance(value, str | bytes):
        return True
    if isinstance(value, list | tuple) and value:
        return isinstance(value[0], str | bytes)
    return isinstance(value, np.ndarray) and value.dtype.kind in "OSU"


def _infer_feature_dtype(flat: np.ndarray, name: Any) -> str:
    kind = flat.dtype.kind
    if kind in "OSU":
        return "string"
    if kind in "iub":
        return "int64"
    if kind == "f":
        return "float32"
    raise ValueError(f"Cannot encode the column {name!r} of dtype {flat.dtype} in a tf.Example.")


def to_frame(
    outputs: Mapping[str, np.ndarray], infos: Sequence[TensorInfo], rows: int | None
) -> pd.DataFrame:
    columns = {}
    for info in infos:
        array = outputs[info.name]
        if rows is None:
            rows = len(array) if array.ndim else 1
        if array.ndim == 0 or array.shape[0] != rows:
            # A value for the whole batch rather than per example: repeat it on each row.
            columns[info.name] = [_plain(array)] * rows
            continue
        if info.row_shape is not None:
            scalar = one_value_per_row(info.row_shape)
        else:
            scalar = math.prod(array.shape[1:]) == 1
        if scalar:
            array = array.reshape(rows)
            columns[info.name] = _decode(array) if array.dtype == object else array
        else:
            columns[info.name] = [_plain(row) for row in array]
    return pd.DataFrame(columns, index=pd.RangeIndex(rows or 0))


def _plain(array: np.ndarray) -> Any:
    """A JSON-friendly value: nested lists of Python scalars, bytes decoded."""
    if array.dtype == object:
        return np.vectorize(_decode_one, otypes=[object])(array).tolist()
    return array.tolist()


def _decode(array: np.ndarray) -> np.ndarray:
    return np.array([_decode_one(v) for v in array], dtype=object)


def _decode_one(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    return value
