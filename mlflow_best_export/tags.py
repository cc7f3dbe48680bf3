"""Every MLflow tag name this package writes, and the checks of names MLflow will refuse.

A leaf: it imports nothing of this package (nor MLflow), so that every module
that reads or writes a tag, and every test, takes its names from here.
"""

from __future__ import annotations

import posixpath
import re

#: The prefix of this package's own tags.
TAG_PREFIX = "mlflow_best_export."

# -- runs -------------------------------------------------------------------------------------

#: A short hash of (model directory, exporter name): how runs, LoggedModels and versions of
#: one exporter are found (no path ever has to be quoted inside a filter string).
TAG_KEY = TAG_PREFIX + "key"
#: The model directory of a run the exporter created.
TAG_MODEL_DIR = TAG_PREFIX + "model_dir"
#: The exporter name of a run the exporter created.
TAG_EXPORTER = TAG_PREFIX + "exporter"
#: Set on runs the exporter created (it marks them finished at the final export).
TAG_CREATED_RUN = TAG_PREFIX + "created_run"

# -- LoggedModels and model versions ---------------------------------------------------------

#: Our bookkeeping, one JSON object: exporter, export_dir, and how the export ranks
#: (``Comparison.to_metadata``: compare_key, compare_mode, min_delta).
TAG_INFO = TAG_PREFIX.rstrip(".")
#: The global step of the export (what users filter by).
TAG_STEP = "global_step"
#: ``metric.<name>``: each eval metric of the export.
TAG_METRIC_PREFIX = "metric."
#: The checkpoint the export was made from.
TAG_CHECKPOINT = "checkpoint_path"
#: On a version: the LoggedModel it was made from (not every store fills model_id).
TAG_MODEL_ID = TAG_PREFIX + "model_id"
#: MLflow's own LoggedModel tag listing its registry versions (what the Models tab reads):
#: a JSON list of ``{"name": ..., "version": ...}``.
TAG_MODEL_VERSIONS = "mlflow.modelVersions"

# -- registered models -------------------------------------------------------------------------

#: ``alias_history.<alias>.<id>`` on a registered model: one recorded move of an alias.
TAG_ALIAS_HISTORY_PREFIX = TAG_PREFIX + "alias_history."

_RESERVED_ALIASES = ("latest",)


def validate_alias(alias: object, argument: str = "alias") -> str:
    """Check a registry alias name as MLflow will, before training starts.

    Args:
      alias: the alias name.
      argument: the argument's name, for the message.

    Returns:
      ``alias``.

    Raises:
      ValueError: naming ``argument`` when the alias is empty, has characters
        other than letters, digits, ``_`` and ``-``, or is reserved
        (``latest``, ``v<digits>``).
    """
    if not isinstance(alias, str) or not alias:
        raise ValueError(f"`{argument}` must be a non-empty alias name, got {alias!r}.")
    if not re.fullmatch(r"[\w\-]+", alias, flags=re.ASCII):
        raise ValueError(
            f"`{argument}` {alias!r} is not a valid alias: use only letters, digits, '_' and '-'."
        )
    if alias.lower() in _RESERVED_ALIASES or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(
            f"`{argument}` {alias!r} is reserved by MLflow ('latest' and 'v<number>' name "
            f"versions); choose another, e.g. 'best'."
        )
    if len(alias) > 255:
        raise ValueError(f"`{argument}` is longer than 255 characters.")
    return alias


def validate_registered_model_name(name: object) -> str | None:
    """Check a registered model name as MLflow will, before training starts.

    Args:
      name: the registered model name, or None for none.

    Returns:
      ``name``.

    Raises:
      ValueError: naming ``registered_model_name`` when it is empty or has
        '/' or ':' or is not a normalized relative name.
    """
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"`registered_model_name` must be a non-empty string (or None), got {name!r}."
        )
    if "/" in name or ":" in name:
        raise ValueError(
            f"`registered_model_name` {name!r} must not contain '/' or ':' (MLflow uses them in "
            f"model URIs)."
        )
    if posixpath.normpath(name) != name or name.startswith(".."):
        raise ValueError(f"`registered_model_name` {name!r} is not a valid model name.")
    return name
