"""An MLflow model flavor and pyfunc loader for Estimator SavedModels.

MLflow 3's ``mlflow.tensorflow`` no longer logs a SavedModel directory, so this
module does it: :func:`save_model` writes an MLflow model directory holding the
whole export (``assets.extra/`` included), with a model signature read from
the SavedModel's serving signature, and :func:`log_model` turns that into a
READY LoggedModel through an explicit ``MlflowClient``. The MLmodel file names
this module as the pyfunc loader, so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` work on what it logs.

Both kinds of serving input receiver are served from plain columns:

- raw tensors (``build_raw_serving_input_receiver_fn``): each column feeds the
  signature input of the same name;
- parsing (``build_parsing_serving_input_receiver_fn``): the single string
  input takes serialized ``tf.Example`` protos; the loader builds them from the
  columns, with the feature spec it reads from the graph's ``ParseExample`` op.
  The MLflow signature then lists those features, not the string input.

Predictions come back as a DataFrame with one column per signature output: a
scalar when the output has one value per example (shape ``[batch]`` or
``[batch, 1]``), a (nested) list per row otherwise; strings are decoded.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlflow_best_export import fs
from mlflow_best_export._version import __version__

if TYPE_CHECKING:
    import mlflow
    from mlflow.entities import LoggedModel
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

FLAVOR_NAME = "mlflow_best_export"
"""The MLmodel flavor entry written next to ``python_function``."""

SAVED_MODEL_SUBPATH = "data/saved_model"
"""Where the SavedModel is copied inside the MLflow model directory (``pyfunc.save_model``
puts its data path under ``data/``; models of the first release have ``saved_model/``)."""

MODEL_TYPE = "tensorflow-estimator"
"""The ``model_type`` of the LoggedModels :func:`log_model` creates."""

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
    return _signature_in(_serving_meta_graph(export_dir), signature_key, export_dir)


def _signature_in(meta_graph: Any, signature_key: str | None, export_dir: str) -> ServingSignature:
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
        parse_node = _parse_node_fed_by(graph, tensor_name)
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


def _serving_meta_graph(export_dir: str):
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


def _node_name(input_name: str) -> str:
    return input_name.lstrip("^").split(":")[0]


def _parse_node_fed_by(graph_def: Any, tensor_name: str):
    """The ParseExample op reading ``tensor_name``, looking through Identity ops."""
    fed = {_node_name(tensor_name)}
    changed = True
    while changed:
        changed = False
        for node in graph_def.node:
            if node.name in fed:
                continue
            if node.op in ("Identity", "PlaceholderWithDefault") and node.input:
                if _node_name(node.input[0]) in fed:
                    fed.add(node.name)
                    changed = True
    for node in graph_def.node:
        if node.op in _PARSE_OPS and node.input and _node_name(node.input[0]) in fed:
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
        current = nodes[_node_name(input_name)]
        while current.op == "Identity":
            current = nodes[_node_name(current.input[0])]
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
    if _one_value_per_row(row_shape):
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


def _one_value_per_row(row_shape: tuple[int | None, ...]) -> bool:
    return None not in row_shape and math.prod(row_shape) == 1


# -- the MLflow model directory --------------------------------------------------------------


def get_default_pip_requirements() -> list[str]:
    """What a fresh environment needs to load the model: TensorFlow and this loader."""
    import tensorflow as tf

    return [
        f"tensorflow=={tf.__version__}",
        "pandas",
        "numpy<2",
        f"{PACKAGE_NAME}=={__version__}",
    ]


def save_model(
    export_dir: str | os.PathLike,
    path: str | os.PathLike,
    *,
    mlflow_model: mlflow.models.Model | None = None,
    signature_key: str | None = None,
    pip_requirements: Sequence[str] | str | None = None,
    extra_pip_requirements: Sequence[str] | str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write an MLflow model directory that serves an Estimator SavedModel.

    The whole export directory (variables, assets, ``assets.extra/``, text or
    binary proto) is copied under ``saved_model/``; the MLmodel file gets a
    ``python_function`` flavor loaded by this module, a ``mlflow_best_export``
    flavor describing the SavedModel, and the signature MLflow shows.

    Args:
      export_dir: the SavedModel directory the Estimator exported.
      path: the MLflow model directory to create; must not exist or be empty.
      mlflow_model: the ``mlflow.models.Model`` to fill in (carrying model id,
        run id and artifact path when logging); a new one by default.
      signature_key: the signature to serve; see :func:`signature_of`.
      pip_requirements: replaces the default requirements
        (:func:`get_default_pip_requirements`).
      extra_pip_requirements: added to the default requirements.
      metadata: free-form metadata recorded in the MLmodel file.

    Raises:
      ValueError: if ``export_dir`` is not a usable SavedModel, or both
        requirement arguments are given.
      mlflow.exceptions.MlflowException: if ``path`` exists and is not empty.
    """
    import tensorflow as tf
    from mlflow import pyfunc
    from mlflow.models import Model

    export_dir = os.fspath(export_dir)
    if pip_requirements is not None and extra_pip_requirements is not None:
        raise ValueError(
            "Pass either `pip_requirements` or `extra_pip_requirements`, not both "
            "(pip_requirements replaces the defaults, extra_pip_requirements adds to them)."
        )
    signature = signature_of(export_dir, signature_key)
    path = os.path.abspath(os.fspath(path))
    if mlflow_model is None:
        mlflow_model = Model()
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        saved_model_dir=SAVED_MODEL_SUBPATH,
        tensorflow_version=tf.__version__,
        package_version=__version__,
        **signature.to_dict(),
    )
    # Explicit requirements: without them MLflow would load the model to infer them.
    requirements = _requirement_list(pip_requirements)
    if requirements is None:
        requirements = get_default_pip_requirements() + (
            _requirement_list(extra_pip_requirements) or []
        )
    with tempfile.TemporaryDirectory(prefix="mlflow_best_export-") as tmp:
        # MLflow copies data_path to data/<its name>: the name must be "saved_model". A local
        # export is linked under that name (copied once, by MLflow); a remote one is fetched.
        staged = os.path.join(tmp, os.path.basename(SAVED_MODEL_SUBPATH))
        if fs.is_url(export_dir):
            fs.copy_tree_to_local(export_dir, staged)
        else:
            os.symlink(os.path.abspath(export_dir), staged, target_is_directory=True)
        with warnings.catch_warnings():
            # The signature comes from the SavedModel itself; an example adds nothing.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            pyfunc.save_model(
                path,
                loader_module=__name__,
                data_path=staged,
                mlflow_model=mlflow_model,
                signature=signature.to_model_signature(),
                pip_requirements=requirements,
                metadata=metadata,
            )


def _requirement_list(requirements: Sequence[str] | str | None) -> list[str] | None:
    """Requirements as a list; a string is a requirements file (MLflow's convention)."""
    if requirements is None:
        return None
    if isinstance(requirements, str):
        with open(requirements, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return list(requirements)


# -- LoggedModels ----------------------------------------------------------------------------


def log_model(
    client: MlflowClient,
    export_dir: str | os.PathLike,
    *,
    experiment_id: str,
    run_id: str | None,
    name: str,
    step: int | None = None,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    signature_key: str | None = None,
) -> LoggedModel:
    """Log an export as a READY LoggedModel, the way ``mlflow.<flavor>.log_model`` does.

    The LoggedModel is created PENDING, linked to the run as one of its model
    outputs (at ``step``), its artifacts are the MLflow model directory of
    :func:`save_model`, and it is finalized READY. If anything fails after it
    was created it is marked FAILED (when the server still answers) and the
    error is raised.

    Metrics are not linked here: log them with ``model_id`` set (or copy the
    run's metrics at ``step``, as MLflow's ``log_model`` does) to show them on
    the model.

    Args:
      client: the client to log with (its tracking URI is used throughout).
      export_dir: the SavedModel directory.
      experiment_id: the experiment the LoggedModel belongs to.
      run_id: the run that produced the model, or None for none.
      name: the LoggedModel's name.
      step: the global step of the export, recorded on the run's model output.
      params: LoggedModel params.
      tags: LoggedModel tags (MLflow's context tags such as ``mlflow.user``
        are added, as the fluent API does).
      signature_key: the signature to serve; see :func:`signature_of`.

    Returns:
      The finalized LoggedModel (``models:/<model_id>`` loads it).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model
    from mlflow.tracking.context import registry as context_registry

    model = client.create_logged_model(
        experiment_id=experiment_id,
        name=name,
        source_run_id=run_id,
        tags=context_registry.resolve_tags({k: str(v) for k, v in (tags or {}).items()}),
        params={k: str(v) for k, v in (params or {}).items()},
        model_type=MODEL_TYPE,
    )
    logger.debug("Created LoggedModel %s (%s) for %s.", model.model_id, name, export_dir)
    try:
        if run_id is not None:
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step or 0)])
        with tempfile.TemporaryDirectory(prefix="mlflow_best_export-") as tmp:
            local_path = os.path.join(tmp, "model")
            mlflow_model = Model(
                artifact_path=model.artifact_location,
                model_uuid=model.model_id,
                run_id=run_id,
                model_id=model.model_id,
            )
            save_model(
                export_dir, local_path, mlflow_model=mlflow_model, signature_key=signature_key
            )
            client.log_model_artifacts(model.model_id, local_path)
    except BaseException:
        try:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        except Exception as err:  # the original error is the one worth raising
            from mlflow_best_export.tracking import redact_text

            # No traceback: MLflow's messages hold the tracking URI, credentials included.
            logger.warning(
                "Could not mark LoggedModel %s FAILED: %s", model.model_id, redact_text(err)
            )
        raise
    return client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


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
        meta_graph = _serving_meta_graph(self.export_dir)
        self.signature = _signature_in(meta_graph, signature_key, self.export_dir)
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
            frame = _as_frame(model_input)
            outputs = self._parsed.run(frame)
            return _to_frame(
                {name: value.numpy() for name, value in outputs.items()},
                self.signature.outputs,
                len(frame),
            )
        if self.signature.parses_examples:
            frame = _as_frame(model_input)
            serialized = examples_from_frame(frame, self.signature.features)
            feeds = {self.signature.examples_input: tf.constant(serialized, dtype=tf.string)}
            rows = len(serialized)
        else:
            columns = _as_columns(model_input, [t.name for t in self.signature.inputs])
            feeds = {}
            rows = None
            for info in self.signature.inputs:
                if info.name not in columns:
                    raise ValueError(
                        f"The model needs the input {info.name!r}; got {sorted(columns)}."
                    )
                array = _to_array(columns[info.name], info)
                feeds[info.name] = tf.constant(array, dtype=self._specs[info.name].dtype)
                rows = len(array) if array.ndim else 1
        outputs = self._function(**feeds)
        return _to_frame(
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
            node = _parse_node_fed_by(meta_graph.graph_def, serialized)
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
        current = nodes[_node_name(name)]
        # tf.io.parse_example reshapes each default to the feature's shape.
        while current.op in ("Identity", "Reshape"):
            current = nodes[_node_name(current.input[0])]
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
        if _is_missing(cell):
            if fill is None:
                raise _required_missing(feature, row)
            batch[row] = fill if fill.ndim else fill[()]
            continue
        flat = np.ravel(np.asarray(cell, dtype=object if _is_text(cell) else None))
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
        if _is_missing(cell):
            flats.append(None)
            continue
        flats.append(np.ravel(np.asarray(cell, dtype=object if _is_text(cell) else None)))
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
    """The pyfunc loader protocol: ``data_path`` is the model's ``saved_model/`` directory."""
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME

    signature_key = None
    mlmodel = os.path.join(os.path.dirname(os.path.abspath(data_path)), MLMODEL_FILE_NAME)
    if os.path.exists(mlmodel):
        flavor = Model.load(mlmodel).flavors.get(FLAVOR_NAME, {})
        signature_key = flavor.get("signature_key")
    return ServingModel(data_path, signature_key)


def _as_frame(model_input: Any) -> pd.DataFrame:
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


def _as_columns(model_input: Any, names: Sequence[str]) -> Mapping[str, Any]:
    if isinstance(model_input, np.ndarray) and not model_input.dtype.names:
        if len(names) != 1:
            raise ValueError(
                f"A numpy array can feed a model with a single input; this one takes {list(names)}."
            )
        return {names[0]: model_input}
    if isinstance(model_input, Mapping):
        return {k: v for k, v in model_input.items()}
    frame = _as_frame(model_input)
    return {name: frame[name] for name in frame.columns}


def _to_array(values: Any, info: TensorInfo) -> np.ndarray:
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
            if _is_missing(value):
                continue
            feature[str(name)] = _to_feature(value, dtype, name)
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        serialized.append(example.SerializeToString())
    return serialized


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return False


def _to_feature(value: Any, dtype: str | None, name: Any):
    import tensorflow as tf

    flat = np.ravel(np.asarray(value, dtype=object if _is_text(value) else None))
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


def _is_text(value: Any) -> bool:
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


def _to_frame(
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
            scalar = _one_value_per_row(info.row_shape)
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
