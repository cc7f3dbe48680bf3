"""The serving signature of an Estimator SavedModel, read without running it.

``signature_of`` reads ``saved_model.pb`` (local or remote, through ``fs``) and
says what a caller feeds and gets back: the signature's input and output
tensors and, for a parsing serving input receiver, the ``tf.Example`` features
its ``ParseExample`` op expects (dtype, shape, default). ``flavor`` turns that
into an MLflow model signature; ``serving`` feeds columns by it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_best_export import fs

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE_KEY = "serving_default"
PREDICT_SIGNATURE_KEY = "predict"
PACKAGE_NAME = "mlflow-best-export"

_PARSE_OPS = ("ParseExampleV2", "ParseExample")
# Canned Estimators' classify/regress signatures take serialized tf.Examples by contract.
_EXAMPLE_METHODS = ("tensorflow/serving/classify", "tensorflow/serving/regress")

# -- the signature of a SavedModel -----------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a serving signature.

    Attributes:
      name: the key in the signature (the column name).
      dtype: TensorFlow dtype name, e.g. ``"float32"``, ``"int64"``, ``"string"``.
      shape: dimensions with None for unknown ones, batch first; None when the
        rank itself is unknown.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None

    @property
    def row_shape(self) -> tuple[int | None, ...] | None:
        """The shape of one example (the shape without the batch dimension)."""
        return None if self.shape is None else self.shape[1:]


@dataclass(frozen=True)
class Feature:
    """One feature a parsing receiver reads from each ``tf.Example``.

    Attributes:
      name: the feature key (the column name).
      dtype: ``"float32"``, ``"int64"`` or ``"string"``.
      kind: ``"dense"`` (``FixedLenFeature``), ``"sparse"`` (``VarLenFeature``)
        or ``"ragged"``.
      shape: the per-example shape of a dense feature, None for unknown
        dimensions; ``()`` for sparse and ragged features.
      required: False when the graph supplies a default or the feature may be
        absent.
    """

    name: str
    dtype: str
    kind: str
    shape: tuple[int | None, ...]
    required: bool


@dataclass(frozen=True)
class ServingSignature:
    """What a SavedModel's serving signature takes and gives.

    Attributes:
      key: the signature key used (``serving_default`` unless told otherwise).
      method_name: e.g. ``tensorflow/serving/predict``.
      inputs: the signature's inputs, by name.
      outputs: the signature's outputs, by name.
      examples_input: the name of the string input holding serialized
        ``tf.Example`` protos, for parsing receivers; None for raw receivers.
      features: the features parsed from those examples, when the graph tells
        them; None otherwise (columns are then encoded by their dtype).
    """

    key: str
    method_name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    examples_input: str | None = None
    features: tuple[Feature, ...] | None = None

    @property
    def parses_examples(self) -> bool:
        """True for a parsing receiver (inputs are serialized ``tf.Example``s)."""
        return self.examples_input is not None

    def to_model_signature(self) -> ModelSignature:
        """The MLflow signature: the columns clients send and the columns they get.

        Input types are what a JSON or pandas client naturally sends (double for
        any float, long for any integer); the loader casts to the tensor's dtype.
        """
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        if self.parses_examples:
            if self.features is None:
                inputs = None  # the columns are whatever the client sends
            else:
                inputs = Schema([_feature_column(f) for f in self.features])
        else:
            inputs = Schema(
                [ColSpec(_column_type(t.dtype, t.row_shape), t.name) for t in self.inputs]
            )
        outputs = Schema(
            [ColSpec(_column_type(t.dtype, t.row_shape, exact=True), t.name) for t in self.outputs]
        )
        return ModelSignature(inputs=inputs, outputs=outputs)

    def to_dict(self) -> dict[str, Any]:
        """A YAML-friendly description, recorded in the MLmodel flavor entry."""

        def tensors(infos: Sequence[TensorInfo]) -> list[dict[str, Any]]:
            return [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": None if t.shape is None else [-1 if d is None else d for d in t.shape],
                }
                for t in infos
            ]

        described: dict[str, Any] = {
            "signature_key": self.key,
            "method_name": self.method_name,
            "receiver": "parsing" if self.parses_examples else "raw",
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
        }
        if self.features is not None:
            described["features"] = [
                {
                    "name": f.name,
                    "dtype": f.dtype,
                    "kind": f.kind,
                    "shape": [-1 if d is None else d for d in f.shape],
                    "required": f.required,
                }
                for f in self.features
            ]
        return described


def signature_of(
    export_dir: str | os.PathLike, signature_key: str | None = None
) -> ServingSignature:
    """Read the serving signature of an Estimator SavedModel without loading it.

    Args:
      export_dir: the SavedModel directory (``saved_model.pb`` or
        ``saved_model.pbtxt``), local or any filesystem ``tf.io.gfile`` reads.
      signature_key: the signature to read; by default ``serving_default``,
        else ``predict`` (canned Estimators exported with a raw receiver have
        only that), else the only signature there is.

    Returns:
      The :class:`ServingSignature`.

    Raises:
      ValueError: if there is no SavedModel with a ``serve`` graph, or the
        signature cannot be chosen.
    """
    export_dir = os.fspath(export_dir)
    return signature_in(serving_meta_graph(export_dir), signature_key, export_dir)


def signature_in(meta_graph: Any, signature_key: str | None, export_dir: str) -> ServingSignature:
    """:func:`signature_of` for a meta graph already read."""
    key = _choose_signature_key(meta_graph.signature_def, signature_key, export_dir)
    signature_def = meta_graph.signature_def[key]
    inputs = tuple(
        _tensor_info(name, signature_def.inputs[name]) for name in sorted(signature_def.inputs)
    )
    outputs = tuple(
        _tensor_info(name, signature_def.outputs[name]) for name in sorted(signature_def.outputs)
    )
    examples_input = None
    features = None
    if len(inputs) == 1 and inputs[0].dtype == "string":
        graph = meta_graph.graph_def
        tensor_name = signature_def.inputs[inputs[0].name].name
        parse_node = parse_node_fed_by(graph, tensor_name)
        if parse_node is not None:
            examples_input = inputs[0].name
            try:
                features = _features_of(graph, parse_node)
            except (ValueError, KeyError, IndexError) as err:
                logger.warning(
                    "Could not read the feature spec of %s's %s op (%s); columns will be encoded "
                    "by their dtype.",
                    export_dir,
                    parse_node.op,
                    err,
                )
        elif signature_def.method_name in _EXAMPLE_METHODS or _has_parse_op(graph):
            examples_input = inputs[0].name
    return ServingSignature(
        key=key,
        method_name=signature_def.method_name,
        inputs=inputs,
        outputs=outputs,
        examples_input=examples_input,
        features=features,
    )


def serving_meta_graph(export_dir: str):
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    pb = fs.join(export_dir, "saved_model.pb")
    pbtxt = fs.join(export_dir, "saved_model.pbtxt")
    if fs.exists(pb):
        saved_model.ParseFromString(fs.read_bytes(pb))
    elif fs.exists(pbtxt):
        text_format.Parse(fs.read_bytes(pbtxt).decode("utf-8"), saved_model)
    else:
        raise ValueError(
            f"{export_dir!r} is not a SavedModel directory: it has neither saved_model.pb "
            f"nor saved_model.pbtxt."
        )
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [list(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ValueError(f"The SavedModel in {export_dir!r} has no 'serve' graph; its tags: {tags}.")


def _choose_signature_key(signature_defs: Mapping[str, Any], wanted: str | None, where: str) -> str:
    if wanted is not None:
        if wanted not in signature_defs:
            raise ValueError(
                f"The SavedModel in {where!r} has no signature {wanted!r}; it has "
                f"{sorted(signature_defs)}."
            )
        return wanted
    for key in (DEFAULT_SIGNATURE_KEY, PREDICT_SIGNATURE_KEY):
        if key in signature_defs:
            return key
    if len(signature_defs) == 1:
        return next(iter(signature_defs))
    raise ValueError(
        f"The SavedModel in {where!r} has no {DEFAULT_SIGNATURE_KEY!r} signature and several "
        f"others {sorted(signature_defs)}; pass signature_key."
    )


def _tensor_info(name: str, proto: Any) -> TensorInfo:
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(proto.dtype).name
    if proto.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(None if d.size < 0 else int(d.size) for d in proto.tensor_shape.dim)
    return TensorInfo(name=name, dtype=dtype, shape=shape)


def node_name(input_name: str) -> str:
    return input_name.lstrip("^").split(":")[0]


def parse_node_fed_by(graph_def: Any, tensor_name: str):
    """The ParseExample op reading ``tensor_name``, looking through Identity ops."""
    fed = {node_name(tensor_name)}
    changed = True
    while changed:
        changed = False
        for node in graph_def.node:
            if node.name in fed:
                continue
            if node.op in ("Identity", "PlaceholderWithDefault") and node.input:
                if node_name(node.input[0]) in fed:
                    fed.add(node.name)
                    changed = True
    for node in graph_def.node:
        if node.op in _PARSE_OPS and node.input and node_name(node.input[0]) in fed:
            return node
    return None


def _has_parse_op(graph_def: Any) -> bool:
    parse_ops = (*_PARSE_OPS, "ParseSingleExample")
    if any(node.op in parse_ops for node in graph_def.node):
        return True
    return any(
        node.op in parse_ops
        for function in graph_def.library.function
        for node in function.node_def
    )


def _features_of(graph_def: Any, node: Any) -> tuple[Feature, ...]:
    """The feature spec of a ParseExample(V2) node, from its constant inputs and attrs."""
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}

    def const(input_name: str) -> np.ndarray | None:
        current = nodes[node_name(input_name)]
        while current.op == "Identity":
            current = nodes[node_name(current.input[0])]
        if current.op != "Const":
            return None
        return tf.make_ndarray(current.attr["value"].tensor)

    def keys(input_name: str) -> list[str]:
        value = const(input_name)
        if value is None:
            raise ValueError(f"the feature keys {input_name!r} are not constant")
        return [k.decode() if isinstance(k, bytes) else str(k) for k in np.ravel(value)]

    def dtypes(attr: str) -> list[str]:
        return [tf.dtypes.as_dtype(t).name for t in node.attr[attr].list.type]

    inputs = [i for i in node.input if not i.startswith("^")]
    dense_types = dtypes("Tdense")
    dense_shapes = [
        tuple(None if d.size < 0 else int(d.size) for d in s.dim)
        for s in node.attr["dense_shapes"].list.shape
    ]
    sparse_types = dtypes("sparse_types")
    ragged_keys: list[str] = []
    ragged_types: list[str] = []
    if node.op == "ParseExampleV2":
        # serialized, names, sparse_keys, dense_keys, ragged_keys, dense_defaults...
        sparse_keys = keys(inputs[2])
        dense_keys = keys(inputs[3])
        ragged_keys = keys(inputs[4])
        ragged_types = dtypes("ragged_value_types")
        defaults = inputs[5 : 5 + len(dense_keys)]
    else:
        # serialized, names, sparse_keys * Nsparse, dense_keys * Ndense, dense_defaults...
        n_sparse = int(node.attr["Nsparse"].i)
        n_dense = int(node.attr["Ndense"].i)
        sparse_keys = [keys(i)[0] for i in inputs[2 : 2 + n_sparse]]
        dense_keys = [keys(i)[0] for i in inputs[2 + n_sparse : 2 + n_sparse + n_dense]]
        defaults = inputs[2 + n_sparse + n_dense : 2 + n_sparse + 2 * n_dense]

    features = []
    for name, dtype, shape, default in zip(
        dense_keys, dense_types, dense_shapes, defaults, strict=True
    ):
        value = const(default)
        # tf.io.parse_example encodes "no default" as an empty constant.
        required = value is not None and value.size == 0 and None not in shape
        features.append(Feature(name, dtype, "dense", shape, required))
    for name, dtype in zip(sparse_keys, sparse_types, strict=True):
        features.append(Feature(name, dtype, "sparse", (), False))
    for name, dtype in zip(ragged_keys, ragged_types, strict=True):
        features.append(Feature(name, dtype, "ragged", (), False))
    return tuple(features)


def _feature_column(feature: Feature):
    from mlflow.types.schema import ColSpec

    if feature.kind != "dense":
        return ColSpec(_column_type(feature.dtype, (None,)), feature.name, required=False)
    return ColSpec(
        _column_type(feature.dtype, feature.shape), feature.name, required=feature.required
    )


def _column_type(dtype: str, row_shape: tuple[int | None, ...] | None, exact: bool = False):
    """The MLflow column type of a tensor with this dtype and per-example shape."""
    from mlflow.types.schema import AnyType, Array

    element = _data_type(dtype, exact)
    if element is None or row_shape is None:
        return AnyType()
    if one_value_per_row(row_shape):
        return element
    column: Any = element
    for _ in row_shape:
        column = Array(column)
    return column


def _data_type(dtype: str, exact: bool):
    from mlflow.types.schema import DataType

    if dtype == "string":
        return DataType.string
    if dtype == "bool":
        return DataType.boolean
    if dtype in ("float16", "bfloat16", "float32", "float64"):
        if exact and dtype != "float64":
            return DataType.float
        return DataType.double
    if dtype.startswith(("int", "uint")):
        if exact and dtype in ("int8", "int16", "int32", "uint8", "uint16"):
            return DataType.integer
        return DataType.long
    return None


def one_value_per_row(row_shape: tuple[int | None, ...]) -> bool:
    return None not in row_shape and math.prod(row_shape) == 1
