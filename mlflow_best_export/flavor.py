"""The MLflow model flavor of an export: save_model and log_model through MLflow's pyfunc API.

MLflow 3's ``mlflow.tensorflow`` no longer logs a SavedModel directory, so this
module does it: :func:`save_model` writes an MLflow model directory holding the
whole export (``assets.extra/`` included), with a model signature read from
the SavedModel's serving signature (``signature``), and :func:`log_model` turns
that into a READY LoggedModel through an explicit ``MlflowClient``. The MLmodel
file names ``mlflow_best_export.serving`` as the pyfunc loader, so
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work on what it logs.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlflow_best_export import fs
from mlflow_best_export._version import __version__
from mlflow_best_export.signature import signature_of
from mlflow_best_export.staging import staging_dir

if TYPE_CHECKING:
    import mlflow
    from mlflow.entities import LoggedModel
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

FLAVOR_NAME = "mlflow_best_export"
"""The MLmodel flavor entry written next to ``python_function``."""

SAVED_MODEL_SUBPATH = "data/saved_model"
"""Where the SavedModel is copied inside the MLflow model directory (``pyfunc.save_model``
puts its data path under ``data/``)."""

MODEL_TYPE = "tensorflow-estimator"
"""The ``model_type`` of the LoggedModels :func:`log_model` creates."""

PACKAGE_NAME = "mlflow-best-export"

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
    with staging_dir() as tmp:
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
                loader_module="mlflow_best_export.serving",  # where _load_pyfunc lives
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
        with staging_dir() as tmp:
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
