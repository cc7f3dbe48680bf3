"""The pyfunc loader of logged exports: columns in, the SavedModel's graph, a frame out.

Both kinds of serving input receiver are served from plain columns:

- raw tensors (``build_raw_serving_input_receiver_fn``): each column feeds the
  signature input of the same name, without a copy where the dtype allows;
- parsing (``build_parsing_serving_input_receiver_fn``): dense and
  variable-length features are fed below the graph's ``ParseExample`` op, as
  the batches it would have made; other features are serialized into
  ``tf.Example`` protos with the feature spec read from the graph.

Predictions come back as a DataFrame with one column per signature output: a
scalar when the output has one value per example (shape ``[batch]`` or
``[batch, 1]``), a (nested) list per row otherwise; strings are decoded.

The signature reading lives in ``signature`` and the flavor (saving and
logging) in ``flavor``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlflow_best_export import frames
from mlflow_best_export.flavor import FLAVOR_NAME
from mlflow_best_export.signature import (
    Feature,
    ServingSignature,
    node_name,
    parse_node_fed_by,
    serving_meta_graph,
    signature_in,
)

logger = logging.getLogger(__name__)

# -- loading and predicting ------------------------------------------------------------------


class ServingModel:
    """A loaded Estimator SavedModel that predicts from columns.

    Built once and reused: the signature function is loaded a single time and
    every :meth:`predict` call only converts data and runs it.

    Args:
      export_dir: the SavedModel directory.
      signature_key: the signature to serve; see :func:`signature_of`.
    """

    def __init__(self, export_dir: str | os.PathLike, signature_key: str | None = None):
        import tensorflow as tf

        self.export_dir = os.fspath(export_dir)
        # Read once (saved_model.pb can be large, and remote): the signature and the
        # vectorized input path both come from it.
        meta_graph = serving_meta_graph(self.export_dir)
        self.signature = signature_in(meta_graph, signature_key, self.export_dir)
        # Keeping the loaded object alive keeps the function's variables alive.
        self._loaded = tf.saved_model.load(self.export_dir, tags=["serve"])
        self._function = self._loaded.signatures[self.signature.key]
        self._specs = self._function.structured_input_signature[1]
        self._parsed = _ParsedFeed.build(self._loaded, meta_graph, self.signature, self.export_dir)
        if self.signature.parses_examples and self._parsed is None:
            logger.info(
                "%s: serializing one tf.Example per row (the slow path): the parse spec has "
                "sparse, ragged or partly unknown features, or cannot be read from the graph.",
                self.export_dir,
            )

    @property
    def vectorized(self) -> bool:
        """True when columns go to the graph as whole arrays (no per-row work)."""
        return not self.signature.parses_examples or self._parsed is not None

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Predict a batch of examples.

        Args:
          model_input: a pandas DataFrame with one column per input (raw
            receiver) or per feature (parsing receiver); a dict of columns or a
            list of row dicts is taken as such a DataFrame; a numpy array feeds
            a model with a single raw input.
          params: unused; accepted for MLflow's pyfunc protocol.

        Returns:
          One row per example and one column per signature output.

        Raises:
          ValueError: if a required input or feature is missing.
        """
        import tensorflow as tf

        if self._parsed is not None:
            frame = frames.as_frame(model_input)
            outputs = self._parsed.run(frame)
            return frames.to_frame(
                {name: value.numpy() for name, value in outputs.items()},
                self.signature.outputs,
                len(frame),
            )
        if self.signature.parses_examples:
            frame = frames.as_frame(model_input)
            serialized = frames.examples_from_frame(frame, self.signature.features)
            feeds = {self.signature.examples_input: tf.constant(serialized, dtype=tf.string)}
            rows = len(serialized)
        else:
            columns = frames.as_columns(model_input, [t.name for t in self.signature.inputs])
            feeds = {}
            rows = None
            for info in self.signature.inputs:
                if info.name not in columns:
                    raise ValueError(
                        f"The model needs the input {info.name!r}; got {sorted(columns)}."
                    )
                array = frames.to_array(columns[info.name], info)
                feeds[info.name] = tf.constant(array, dtype=self._specs[info.name].dtype)
                rows = len(array) if array.ndim else 1
        outputs = self._function(**feeds)
        return frames.to_frame(
            {name: value.numpy() for name, value in outputs.items()},
            self.signature.outputs,
            rows,
        )


class _ParsedFeed:
    """The serving graph fed below its ParseExample op: columns in, no tf.Example built.

    For a parsing receiver whose features are dense with known shapes or
    variable-length (sparse), the function is pruned at the ParseExample op's
    outputs, and each column becomes what ParseExample would have produced
    (for a sparse feature: indices, values and dense shape): values cast as a
    ``tf.Example`` would carry them (float32, int64, bytes), the graph's
    default where a value or the whole column is missing, and the same
    refusals (a required feature missing, a wrong number of values, a
    non-integral value for an integer feature).
    """

    def __init__(
        self,
        function: Any,
        dense: Sequence[Feature],
        defaults: Sequence[Any],
        sparse: Sequence[Feature] = (),
    ):
        self._function = function
        self._features = tuple(dense)
        self._defaults = tuple(defaults)
        self._sparse = tuple(sparse)

    @classmethod
    def build(
        cls, loaded: Any, meta_graph: Any, signature: ServingSignature, export_dir: str
    ) -> _ParsedFeed | None:
        """The fast path for this signature, or None where it does not apply."""
        features = signature.features
        if not signature.parses_examples or not features or not hasattr(loaded, "prune"):
            return None
        dense = [f for f in features if f.kind == "dense"]
        sparse = [f for f in features if f.kind == "sparse"]
        if len(dense) + len(sparse) != len(features) or any(None in f.shape for f in dense):
            return None  # ragged features, or dense ones of unknown shape
        try:
            signature_def = meta_graph.signature_def[signature.key]
            serialized = signature_def.inputs[signature.examples_input].name
            node = parse_node_fed_by(meta_graph.graph_def, serialized)
            if node is None:
                return None
            n_sparse = _sparse_count(node)
            defaults = _dense_defaults(meta_graph.graph_def, node)
            # ParseExample's outputs: sparse indices, values and shapes, then dense values.
            feeds = [f"{node.name}:{3 * n_sparse + j}" for j in range(len(dense))]
            for k in range(n_sparse):
                feeds += [f"{node.name}:{k}", f"{node.name}:{n_sparse + k}"]
                feeds += [f"{node.name}:{2 * n_sparse + k}"]
            fetches = {name: info.name for name, info in signature_def.outputs.items()}
            function = loaded.prune(feeds, fetches)
        except Exception as err:  # noqa: BLE001 - any failure means: use the exact slow path
            logger.info("%s: no vectorized input path (%s).", export_dir, err)
            return None
        return cls(function, dense, defaults, sparse)

    def run(self, frame: pd.DataFrame) -> Mapping[str, Any]:
        """Run the pruned graph on the columns of ``frame``."""
        import tensorflow as tf

        missing = [
            f.name
            for f, default in zip(self._features, self._defaults, strict=True)
            if default is None and f.name not in frame.columns
        ]
        if missing:
            raise ValueError(
                f"The model needs the features {missing}; the input has {list(frame.columns)}."
            )
        rows = len(frame)
        batches = [
            tf.constant(_dense_batch(frame.get(f.name), f, default, rows))
            for f, default in zip(self._features, self._defaults, strict=True)
        ]
        for feature in self._sparse:
            batches.extend(
                tf.constant(a) for a in _sparse_batch(frame.get(feature.name), feature, rows)
            )
        return self._function(*batches)


def _sparse_count(node: Any) -> int:
    if node.op == "ParseExampleV2":
        return int(node.attr["num_sparse"].i)
    return int(node.attr["Nsparse"].i)


def _dense_defaults(graph_def: Any, node: Any) -> list[np.ndarray | None]:
    """Per dense feature of a ParseExample(V2) node: its default as an array, None if required."""
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}
    inputs = [i for i in node.input if not i.startswith("^")]
    if node.op == "ParseExampleV2":
        n_dense = len(node.attr["Tdense"].list.type)
        defaults = inputs[5 : 5 + n_dense]
    else:
        n_sparse, n_dense = int(node.attr["Nsparse"].i), int(node.attr["Ndense"].i)
        defaults = inputs[2 + n_sparse + n_dense : 2 + n_sparse + 2 * n_dense]
    found: list[np.ndarray | None] = []
    for name in defaults:
        current = nodes[node_name(name)]
        # tf.io.parse_example reshapes each default to the feature's shape.
        while current.op in ("Identity", "Reshape"):
            current = nodes[node_name(current.input[0])]
        if current.op != "Const":
            raise ValueError(f"the default of a dense feature ({name}) is not constant")
        value = tf.make_ndarray(current.attr["value"].tensor)
        found.append(None if value.size == 0 else value)
    return found


_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64, "string": object}


def _dense_batch(
    column: pd.Series | None, feature: Feature, default: np.ndarray | None, rows: int
) -> np.ndarray:
    """One dense feature for a batch, exactly as ParseExample would give it."""
    dtype = _NUMPY_DTYPES[feature.dtype]
    shape = tuple(int(d) for d in feature.shape)
    size = math.prod(shape)
    fill = None
    if default is not None:
        fill = (
            default.reshape(shape) if default.size == size else np.broadcast_to(default, shape)
        ).astype(dtype)
    if column is None:
        return np.broadcast_to(fill, (rows, *shape)).copy()
    values = column.to_numpy()
    if values.dtype.kind in "fiub" and size == 1 and values.ndim == 1:
        return _scalar_batch(values, feature, fill, shape)
    batch = np.empty((rows, *shape), dtype=dtype)
    for row, cell in enumerate(values):
        if frames.is_missing(cell):
            if fill is None:
                raise _required_missing(feature, row)
            batch[row] = fill if fill.ndim else fill[()]
            continue
        flat = np.ravel(np.asarray(cell, dtype=object if frames.is_text(cell) else None))
        if flat.size != size:
            raise ValueError(
                f"The feature {feature.name!r} takes {size} value(s) per example (shape "
                f"{list(shape)}); row {row} has {flat.size}."
            )
        value = _cast(flat, feature).reshape(shape)
        # A 0-d object array would be stored as an element itself: store its content.
        batch[row] = value if value.ndim else value[()]
    return batch


def _sparse_batch(
    column: pd.Series | None, feature: Feature, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One variable-length feature for a batch: ParseExample's indices, values and shape.

    A missing cell (None, NaN) or column gives the row no values; a scalar cell
    one value; a list cell its values, in order.
    """
    cells = [] if column is None else column.tolist()
    flats = []
    for cell in cells:
        if frames.is_missing(cell):
            flats.append(None)
            continue
        flats.append(np.ravel(np.asarray(cell, dtype=object if frames.is_text(cell) else None)))
    lengths = np.array([0 if f is None else f.size for f in flats] or [0] * rows, dtype=np.int64)
    present = [f for f in flats if f is not None and f.size]
    if present:
        values = _cast(
            np.concatenate([f.astype(object) if f.dtype == object else f for f in present]), feature
        )
    else:
        values = np.empty(0, dtype=_NUMPY_DTYPES[feature.dtype])
    row_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    indices = np.stack([row_of, position], axis=1) if len(row_of) else np.zeros((0, 2), np.int64)
    shape = np.array([rows, int(lengths.max()) if len(lengths) else 0], dtype=np.int64)
    return indices, values, shape


def _scalar_batch(
    values: np.ndarray, feature: Feature, fill: np.ndarray | None, shape: tuple[int, ...]
) -> np.ndarray:
    """A numeric column of one value per example, without a loop over the rows."""
    missing = np.isnan(values) if values.dtype.kind == "f" else None
    if missing is not None and missing.any():
        if fill is None:
            raise _required_missing(feature, int(np.argmax(missing)))
        values = np.where(missing, 0, values)
    batch = _cast(values, feature)
    if missing is not None and missing.any():
        batch[missing] = fill.reshape(()) if fill.ndim else fill
    return batch.reshape((len(values), *shape))


def _cast(flat: np.ndarray, feature: Feature) -> np.ndarray:
    """Values as a tf.Example's list of the feature's type would hold them."""
    if feature.dtype == "string":
        return np.array(
            [v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist()], dtype=object
        )
    if feature.dtype == "int64":
        integers = flat.astype(np.int64)
        if flat.dtype.kind == "f" and not np.array_equal(integers, flat):
            raise ValueError(f"The feature {feature.name!r} takes integers; got {flat!r}.")
        return integers
    return flat.astype(np.float32)


def _required_missing(feature: Feature, row: int) -> ValueError:
    return ValueError(
        f"The feature {feature.name!r} has no default and is missing in row {row}; give a "
        f"value in every row."
    )


def load_serving_model(
    export_dir: str | os.PathLike, signature_key: str | None = None
) -> ServingModel:
    """Load an export directory for prediction, without an MLflow model around it."""
    return ServingModel(export_dir, signature_key)


def _load_pyfunc(data_path: str, model_config: Mapping[str, Any] | None = None) -> ServingModel:
    """The pyfunc loader protocol: ``data_path`` is the model's ``data/saved_model``."""
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME

    signature_key = None
    root = os.path.dirname(os.path.dirname(os.path.abspath(data_path)))  # above data/
    mlmodel = os.path.join(root, MLMODEL_FILE_NAME)
    if os.path.exists(mlmodel):
        flavor = Model.load(mlmodel).flavors.get(FLAVOR_NAME, {})
        signature_key = flavor.get("signature_key")
    return ServingModel(data_path, signature_key)
