"""LoggedModels and Model Registry versions that mirror the kept exports.

The exporter's kept exports are the truth. For each one this module makes sure
there is one READY LoggedModel (whose artifacts are the whole SavedModel) and,
when a registered model name is given, one model version, with the alias on the
best. What falls out of the kept set is deleted, except what this exporter did
not create and any version that carries another alias (a promotion script's
``champion``, say): those are kept and logged.

What to change and in which order is decided in ``reconcile``; this module reads
what MLflow holds and makes the single changes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mlflow_best_export.exports import Export
from mlflow_best_export.ranking import Comparison
from mlflow_best_export.tags import (
    TAG_CHECKPOINT,
    TAG_INFO,
    TAG_KEY,
    TAG_METRIC_PREFIX,
    TAG_MODEL_ID,
    TAG_MODEL_VERSIONS,
    TAG_STEP,
)
from mlflow_best_export.tracking import normalize_dir

if TYPE_CHECKING:
    from mlflow.entities import LoggedModel
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)


# -- what is there ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """A LoggedModel this exporter created.

    Attributes:
      linked: the ``(registered model name, version)`` pairs its
        ``mlflow.modelVersions`` tag lists.
    """

    model_id: str
    export_dir: str
    ready: bool
    artifact_location: str = ""
    linked: tuple[tuple[str, str], ...] = ()
    step: int | None = None

    @property
    def mirrors(self) -> tuple[str, int | None]:
        """The export it mirrors: its directory and global step (see :func:`identity`)."""
        return (self.export_dir, self.step)


@dataclass(frozen=True)
class VersionEntry:
    """A model version this exporter created."""

    version: str
    export_dir: str
    model_id: str | None
    aliases: tuple[str, ...]
    step: int | None = None

    @property
    def mirrors(self) -> tuple[str, int | None]:
        """The export it mirrors: its directory and global step (see :func:`identity`)."""
        return (self.export_dir, self.step)


def identity(export: Export) -> tuple[str, int | None]:
    """What MLflow objects are matched to an export by: its directory and its global step.

    The directory alone is not enough: a name freed by retention can be given to a
    later export, and a logged model of the earlier one must not pass for it.
    """
    return (normalize_dir(export.path), export.step)


def _step_of(tags: Mapping[str, str] | None) -> int | None:
    try:
        return int((tags or {})[TAG_STEP])
    except (KeyError, ValueError):
        return None


def find_models(client: MlflowClient, experiment_id: str, key: str) -> list[ModelEntry]:
    """The live LoggedModels of one exporter (by its key tag)."""
    pages = all_pages(
        client.search_logged_models,
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_KEY}` = '{key}'",
    )
    return [model_entry(model) for model in pages]


def info_of(tags: Mapping[str, str] | None) -> dict[str, str]:
    """Our bookkeeping of a LoggedModel or version (the JSON tag ``TAG_INFO``)."""
    try:
        info = json.loads((tags or {})[TAG_INFO])
    except (KeyError, ValueError):
        return {}
    return {str(k): str(v) for k, v in info.items()} if isinstance(info, dict) else {}


def model_entry(model: LoggedModel) -> ModelEntry:
    from mlflow.entities import LoggedModelStatus

    return ModelEntry(
        model_id=model.model_id,
        export_dir=info_of(model.tags).get("export_dir", ""),
        ready=model.status == LoggedModelStatus.READY,
        artifact_location=model.artifact_location,
        linked=tuple(_links(model.tags.get(TAG_MODEL_VERSIONS))),
        step=_step_of(model.tags),
    )


def _links(raw: str | None) -> list[tuple[str, str]]:
    try:
        entries = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [
        (str(e["name"]), str(e["version"]))
        for e in entries
        if isinstance(e, dict) and "name" in e and "version" in e
    ]


def link_version(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """Record a version on its LoggedModel as MLflow's ``register_model`` does, so the
    Models tab shows the model as registered."""

    model = client.get_logged_model(model_id)
    links = _links(model.tags.get(TAG_MODEL_VERSIONS))
    if (name, str(version)) in links:
        return
    links.append((name, str(version)))
    client.set_logged_model_tags(model_id, {TAG_MODEL_VERSIONS: _links_value(links)})


def _links_value(links: Iterable[tuple[str, str]]) -> str:
    # Versions as numbers, as MLflow's own stores write them.
    return json.dumps([{"name": n, "version": int(v) if v.isdigit() else v} for n, v in links])


def unlink_version(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """Drop a deleted version from its LoggedModel's ``mlflow.modelVersions`` tag."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_logged_model(model_id)
    except MlflowException:
        return  # the model is gone too
    links = [
        link for link in _links(model.tags.get(TAG_MODEL_VERSIONS)) if link != (name, str(version))
    ]
    if links:
        client.set_logged_model_tags(model_id, {TAG_MODEL_VERSIONS: _links_value(links)})
    elif TAG_MODEL_VERSIONS in model.tags:
        client.delete_logged_model_tag(model_id, TAG_MODEL_VERSIONS)


def model_root(artifact_location: str, model_id: str) -> str:
    """The directory of a LoggedModel in the artifact store (``.../models/<id>``).

    MLflow puts a LoggedModel's artifacts in ``<root>/models/<id>/artifacts``;
    anything else is taken as it is.
    """
    location = artifact_location.rstrip("/")
    suffix = f"/models/{model_id}/artifacts"
    return location[: -len("/artifacts")] if location.endswith(suffix) else location


def reclaim_storage(client: MlflowClient, artifact_location: str, model_id: str) -> None:
    """Delete a LoggedModel's artifacts from its artifact store (local, proxied ``mlflow-
    artifacts:`` or direct S3), through MLflow's artifact repository for that location.
    Deleting what is already gone is no error."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if not artifact_location:
        return
    root = model_root(artifact_location, model_id)
    repo = get_artifact_repository(root, tracking_uri=client.tracking_uri)
    try:
        repo.delete_artifacts()
    except FileNotFoundError:
        pass
    except MlflowException as err:
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

        if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise


def find_versions(client: MlflowClient, name: str, key: str) -> list[VersionEntry]:
    """The live versions of ``name`` that one exporter created (by its key tag)."""
    pages = all_pages(
        client.search_model_versions,
        filter_string=f"name = '{quote(name)}' and tags.`{TAG_KEY}` = '{key}'",
    )
    return sorted((version_entry(mv) for mv in pages), key=lambda e: int(e.version))


def all_pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every result of a paged MLflow search."""
    page_token = None
    while True:
        page = search(page_token=page_token, **kwargs)
        yield from page
        page_token = page.token
        if not page_token:
            return


def quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def version_entry(mv: ModelVersion) -> VersionEntry:
    return VersionEntry(
        version=str(mv.version),
        export_dir=info_of(mv.tags).get("export_dir", ""),
        # Not every store fills ModelVersion.model_id (SQLite does not); the tag always is.
        model_id=getattr(mv, "model_id", None) or (mv.tags or {}).get(TAG_MODEL_ID),
        aliases=tuple(getattr(mv, "aliases", None) or ()),
        step=_step_of(mv.tags),
    )


# -- doing it -------------------------------------------------------------------------------


def model_tags(export: Export, key: str, exporter_name: str) -> dict[str, str]:
    """Tags of a LoggedModel or model version for one export.

    What users filter and read stands alone (``global_step``,
    ``checkpoint_path``, ``metric.<name>``); the key (searched by) stands
    alone too, and the rest of the bookkeeping is one JSON tag, ``TAG_INFO``.
    """
    info: dict[str, Any] = {"exporter": exporter_name, "export_dir": normalize_dir(export.path)}
    comparison = Comparison.from_metadata(export.metadata)
    if comparison is not None:
        info.update(comparison.to_metadata())
    tags = {
        TAG_KEY: key,
        TAG_INFO: json.dumps(info, sort_keys=True),
        TAG_STEP: str(export.step),
    }
    if export.checkpoint_path:
        tags[TAG_CHECKPOINT] = export.checkpoint_path
    for name, value in sorted((export.metrics or {}).items()):
        tags[TAG_METRIC_PREFIX + name] = _format(value)
    return tags


def _format(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else str(value)


def model_card(export: Export, run_id: str, compare_key: str | None) -> str:
    """A short Markdown description of a version, readable on the registry page."""
    lines = [
        f"**Global step {export.step}**, exported by mlflow-best-export "
        f"from `{export.checkpoint_path}`.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, value in sorted((export.metrics or {}).items()):
        marker = " (compared)" if name == compare_key else ""
        lines.append(f"| {name}{marker} | {value:.6g} |")
    lines += ["", f"Run: `{run_id}` · export: `{export.path}`"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Registry:
    """One exporter's LoggedModels and versions: reads what MLflow holds, and the single
    writes that :func:`mlflow_best_export.reconcile.apply` puts in order.

    ``gc`` deletes across exporters of one registered model and fills only ``client``
    and ``registered_model_name``.
    """

    client: MlflowClient
    registered_model_name: str | None
    experiment_id: str = ""
    run_id: str = ""
    key: str = ""
    exporter_name: str = ""
    alias: str | None = None
    compare_key: str | None = None

    def current(
        self,
    ) -> tuple[list[ModelEntry], list[VersionEntry] | None, tuple[str, int | None] | None]:
        """This exporter's models and versions, and the export the alias is on."""
        models = find_models(self.client, self.experiment_id, self.key)
        if self.registered_model_name is None:
            return models, None, None
        self.ensure_registered_model()
        versions = find_versions(self.client, self.registered_model_name, self.key)
        # Version searches do not return aliases on every store; the registered model has them.
        aliases: dict[str, list[str]] = {}
        registered = self.client.get_registered_model(self.registered_model_name)
        for alias, version in (registered.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = [
            replace(v, aliases=tuple(sorted(set(v.aliases) | set(aliases.get(v.version, ())))))
            for v in versions
        ]
        alias_on = None
        if self.alias is not None:
            holder = next((v for v in versions if self.alias in v.aliases), None)
            if holder is not None:
                alias_on = holder.mirrors
        return models, versions, alias_on

    def ensure_registered_model(self) -> None:
        """Create the registered model if it does not exist yet."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        try:
            self.client.create_registered_model(
                self.registered_model_name,
                description="Best exports of an Estimator, kept in step by mlflow-best-export.",
            )
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise

    def log_model(self, export: Export) -> ModelEntry:
        """Log one export as a LoggedModel (READY once its artifacts are all uploaded)."""
        from mlflow_best_export import flavor

        tags = model_tags(export, self.key, self.exporter_name)
        params = {
            "global_step": str(export.step),
            "export_dir": normalize_dir(export.path),
            "checkpoint_path": str(export.checkpoint_path),
            "exporter_name": self.exporter_name,
        }
        model = flavor.log_model(
            self.client,
            export.path,
            experiment_id=self.experiment_id,
            run_id=self.run_id,
            name=f"{self.exporter_name}-step-{export.step}",
            step=export.step,
            params=params,
            tags=tags,
        )
        export_dir = normalize_dir(export.path)
        return ModelEntry(
            model.model_id, export_dir, True, model.artifact_location, step=export.step
        )

    def register(self, export: Export, model: ModelEntry) -> str:
        """Create the model version of ``export`` from its LoggedModel; return its number."""
        tags = model_tags(export, self.key, self.exporter_name)
        tags[TAG_MODEL_ID] = model.model_id
        # The source is the LoggedModel's artifact location rather than models:/<id>, which
        # not every registry resolves when the client is not the global one (local SQLite).
        version = self.client.create_model_version(
            name=self.registered_model_name,
            source=model.artifact_location,
            run_id=self.run_id,
            tags=tags,
            description=model_card(export, self.run_id, self.compare_key),
            model_id=model.model_id,
        )
        link_version(self.client, model.model_id, self.registered_model_name, str(version.version))
        return str(version.version)

    def link(self, models: Iterable[ModelEntry], versions: Iterable[VersionEntry]) -> int:
        """Make each LoggedModel's ``mlflow.modelVersions`` list exactly its live versions
        of this registered model (stores written before versions were linked, versions
        deleted behind the exporter's back); return how many models changed."""
        name = self.registered_model_name
        wanted: dict[str, set[tuple[str, str]]] = {}
        for v in versions:
            if v.model_id:
                wanted.setdefault(v.model_id, set()).add((name, v.version))
        changed = 0
        for model in models:
            ours = {link for link in model.linked if link[0] == name}
            should = wanted.get(model.model_id, set())
            if ours == should:
                continue
            others = [link for link in model.linked if link[0] != name]
            links = others + sorted(should, key=lambda link: int(link[1]))
            if links:
                self.client.set_logged_model_tags(
                    model.model_id, {TAG_MODEL_VERSIONS: _links_value(links)}
                )
            else:
                self.client.delete_logged_model_tag(model.model_id, TAG_MODEL_VERSIONS)
            changed += 1
        return changed

    def set_alias(self, export: Export, version: str) -> None:
        """Point the alias at ``version``, the version of ``export``."""
        logger.debug("Moving %s to version %s (step %s).", self.alias, version, export.step)
        self.client.set_registered_model_alias(self.registered_model_name, self.alias, version)

    def delete_version(self, entry: VersionEntry) -> None:
        """Delete one of this exporter's versions, and its link on the LoggedModel."""
        self.client.delete_model_version(self.registered_model_name, entry.version)
        if entry.model_id:
            unlink_version(self.client, entry.model_id, self.registered_model_name, entry.version)

    def delete_model(self, entry: ModelEntry) -> None:
        """Delete one of this exporter's LoggedModels and its artifacts.

        The artifacts go first: a crash in between leaves a live model whose
        export is gone, which the next reconciliation deletes again.
        """
        reclaim_storage(self.client, entry.artifact_location, entry.model_id)
        self.client.delete_logged_model(entry.model_id)
