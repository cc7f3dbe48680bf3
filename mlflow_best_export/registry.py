"""LoggedModels and Model Registry versions that mirror the kept exports.

The exporter's kept exports are the truth. For each one this module makes sure
there is one READY LoggedModel (whose artifacts are the whole SavedModel) and,
when a registered model name is given, one model version, with the alias on the
best. What falls out of the kept set is deleted, except what this exporter did
not create and any version that carries another alias (a promotion script's
``champion``, say): those are kept and logged.

Deciding (:func:`plan`) is pure and separate from doing (:func:`apply`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_best_export import retention
from mlflow_best_export.exports import Export
from mlflow_best_export.keeper import Keeper
from mlflow_best_export.ranking import Comparison
from mlflow_best_export.retention import Candidate, RetentionPolicy
from mlflow_best_export.staging import staging_dir
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
    pages = _all_pages(
        client.search_logged_models,
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_KEY}` = '{key}'",
    )
    return [_model_entry(model) for model in pages]


def info_of(tags: Mapping[str, str] | None) -> dict[str, str]:
    """Our bookkeeping of a LoggedModel or version (the JSON tag ``TAG_INFO``)."""
    try:
        info = json.loads((tags or {})[TAG_INFO])
    except (KeyError, ValueError):
        return {}
    return {str(k): str(v) for k, v in info.items()} if isinstance(info, dict) else {}


def _model_entry(model: LoggedModel) -> ModelEntry:
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
    pages = _all_pages(
        client.search_model_versions,
        filter_string=f"name = '{_quote(name)}' and tags.`{TAG_KEY}` = '{key}'",
    )
    return sorted((_version_entry(mv) for mv in pages), key=lambda e: int(e.version))


def _all_pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every result of a paged MLflow search."""
    page_token = None
    while True:
        page = search(page_token=page_token, **kwargs)
        yield from page
        page_token = page.token
        if not page_token:
            return


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _version_entry(mv: ModelVersion) -> VersionEntry:
    return VersionEntry(
        version=str(mv.version),
        export_dir=info_of(mv.tags).get("export_dir", ""),
        # Not every store fills ModelVersion.model_id (SQLite does not); the tag always is.
        model_id=getattr(mv, "model_id", None) or (mv.tags or {}).get(TAG_MODEL_ID),
        aliases=tuple(getattr(mv, "aliases", None) or ()),
        step=_step_of(mv.tags),
    )


# -- what to do ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What reconciliation will change, in the order it is done.

    New models and versions come first and the alias moves before anything
    is deleted, so the alias always points at a live version.
    """

    log: tuple[Export, ...] = ()
    register: tuple[Export, ...] = ()
    alias_to: Export | None = None
    delete_versions: tuple[VersionEntry, ...] = ()
    delete_models: tuple[ModelEntry, ...] = ()
    protected: tuple[VersionEntry, ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing needs to change."""
        return not (
            self.log or self.register or self.alias_to or self.delete_versions or self.delete_models
        )


def plan(
    kept: Sequence[Export],
    models: Iterable[ModelEntry],
    versions: Iterable[VersionEntry] | None,
    *,
    alias: str | None,
    alias_on: tuple[str, int | None] | None,
) -> Plan:
    """Decide how to bring MLflow in line with the kept exports.

    Args:
      kept: the kept exports, best first.
      models: this exporter's live LoggedModels.
      versions: this exporter's live versions, or None without a registered model.
      alias: the alias to put on the best version (None: no registry).
      alias_on: the export (``identity``) of the version the alias is on now, if any.

    Returns:
      The :class:`Plan`.
    """
    kept_ids = [identity(e) for e in kept]
    by_id = dict(zip(kept_ids, kept, strict=True))
    # New models and versions are made in ascending global step (then export time), so
    # that version numbers follow training even when one sync catches up several exports.
    ascending = sorted(kept_ids, key=lambda i: _training_order(by_id[i]))
    models = list(models)
    versions = list(versions) if versions is not None else None

    ready = {m.mirrors for m in models if m.ready}
    log = tuple(by_id[i] for i in ascending if i not in ready)

    delete_versions: list[VersionEntry] = []
    protected: list[VersionEntry] = []
    register: tuple[Export, ...] = ()
    alias_to = None
    protected_ids: set[tuple[str, int | None]] = set()
    if versions is not None:
        seen: set[tuple[str, int | None]] = set()
        for v in versions:
            other_aliases = [a for a in v.aliases if a != alias]
            wanted = v.mirrors in by_id and v.mirrors not in seen
            if wanted:
                seen.add(v.mirrors)
            elif other_aliases:
                protected.append(v)
                protected_ids.add(v.mirrors)
            else:
                delete_versions.append(v)
        register = tuple(by_id[i] for i in ascending if i not in seen)
        if kept and alias is not None and alias_on != kept_ids[0]:
            alias_to = kept[0]

    # A model goes when its export is gone and no protected version needs it, and a
    # model that never became READY (a crash mid-upload) is replaced.
    keep_models = set(kept_ids) | protected_ids
    delete_models = tuple(m for m in models if not m.ready or (m.mirrors not in keep_models))
    return Plan(
        log=log,
        register=register,
        alias_to=alias_to,
        delete_versions=tuple(delete_versions),
        delete_models=delete_models,
        protected=tuple(protected),
    )


def _training_order(export: Export) -> tuple[bool, int, int]:
    """Ascending global step; an export without a known step after those with one."""
    return (export.step is None, export.step or 0, export.version)


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


@dataclass
class Registry:
    """Applies plans for one exporter; all state is passed in explicitly."""

    client: MlflowClient
    experiment_id: str
    run_id: str
    key: str
    exporter_name: str
    registered_model_name: str | None
    alias: str | None
    compare_key: str | None = None
    _models: dict[tuple[str, int | None], ModelEntry] = field(default_factory=dict)

    def current(
        self,
    ) -> tuple[list[ModelEntry], list[VersionEntry] | None, tuple[str, int | None] | None]:
        """This exporter's models and versions, and the export the alias is on."""
        models = find_models(self.client, self.experiment_id, self.key)
        self._models = {m.mirrors: m for m in models if m.ready}
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
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        try:
            self.client.create_registered_model(
                self.registered_model_name,
                description="Best exports of an Estimator, kept in step by mlflow-best-export.",
            )
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise

    def log_model(self, export: Export, link_metrics) -> str:
        """Log one export as a LoggedModel; return its id."""
        from mlflow_best_export import serving

        tags = model_tags(export, self.key, self.exporter_name)
        params = {
            "global_step": str(export.step),
            "export_dir": normalize_dir(export.path),
            "checkpoint_path": str(export.checkpoint_path),
            "exporter_name": self.exporter_name,
        }
        model = serving.log_model(
            self.client,
            export.path,
            experiment_id=self.experiment_id,
            run_id=self.run_id,
            name=f"{self.exporter_name}-step-{export.step}",
            step=export.step,
            params=params,
            tags=tags,
        )
        link_metrics(export, model.model_id)
        export_dir = normalize_dir(export.path)
        self._models[identity(export)] = ModelEntry(
            model.model_id, export_dir, True, model.artifact_location, step=export.step
        )
        return model.model_id

    def register(self, export: Export) -> ModelVersion:
        """Create the model version of a logged export."""
        model = self._models[identity(export)]
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
        return version

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

    def set_alias(self, export: Export, versions: Mapping[tuple[str, int | None], str]) -> None:
        """Point the alias at the version of ``export`` (``versions`` by ``identity``)."""
        version = versions[identity(export)]
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


# -- retention on demand (``mlflow-best-export gc``) -----------------------------------------


@dataclass(frozen=True)
class GcPlan:
    """Versions ``gc`` deletes (with the reason) and those it keeps for their aliases."""

    delete: tuple[tuple[VersionEntry, str], ...] = ()
    protected: tuple[VersionEntry, ...] = ()


def all_versions(client: MlflowClient, name: str) -> list[tuple[VersionEntry, dict[str, str]]]:
    """Every live version of ``name`` with its tags, aliases filled in from the model."""
    registered = client.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    found = []
    for mv in _all_pages(client.search_model_versions, filter_string=f"name = '{_quote(name)}'"):
        entry = _version_entry(mv)
        merged = tuple(sorted(set(entry.aliases) | set(aliases.get(entry.version, ()))))
        found.append((replace(entry, aliases=merged), dict(mv.tags or {})))
    return sorted(found, key=lambda item: int(item[0].version))


def gc_plan(client: MlflowClient, name: str, policy: RetentionPolicy | int) -> GcPlan:
    """Which versions of ``name`` the retention policy does not keep, per exporter.

    Only versions this package created and whose tags say how they rank (the
    ``Comparison`` their exporter recorded) are considered; each exporter's
    versions are ranked by that comparison and given to ``policy`` (an int N
    means ``KeepBestN(N)``). A version with any alias is never deleted.
    """
    policy = retention.retention_policy(policy)
    groups: dict[str, list[Candidate]] = {}
    comparisons: dict[str, Comparison] = {}
    for entry, tags in all_versions(client, name):
        key = tags.get(TAG_KEY)
        comparison = Comparison.from_metadata(info_of(tags))
        raw = tags.get(TAG_METRIC_PREFIX + comparison.key) if comparison else None
        if not key or raw is None:
            continue
        comparisons[key] = comparison
        groups.setdefault(key, []).append(
            Candidate(
                step=int(tags.get(TAG_STEP, 0)),
                metrics={comparison.key: float(raw)},
                time=float(entry.version),  # versions are numbered in creation order
                source=(entry, tags),
            )
        )
    delete: list[tuple[VersionEntry, str]] = []
    protected: list[VersionEntry] = []
    for key, members in groups.items():
        keeper = Keeper(comparisons[key], policy)
        for doomed in keeper.retire(members):
            entry, tags = doomed.source
            if entry.aliases:
                protected.append(entry)
                continue
            metric = comparisons[key].key
            delete.append(
                (
                    entry,
                    f"step {doomed.step}, {metric}={tags[TAG_METRIC_PREFIX + metric]}: not kept "
                    f"by {policy!r} for exporter {info_of(tags).get('exporter', '?')}",
                )
            )
    return GcPlan(delete=tuple(delete), protected=tuple(protected))


def delete_version_and_model(client: MlflowClient, name: str, entry: VersionEntry) -> None:
    """Delete a version, the LoggedModel it was made from and that model's artifacts."""
    client.delete_model_version(name, entry.version)
    if entry.model_id:
        try:
            model = client.get_logged_model(entry.model_id)
            reclaim_storage(client, model.artifact_location, model.model_id)
            client.delete_logged_model(entry.model_id)
        except MlflowException as err:
            logger.info("LoggedModel %s of version %s: %s", entry.model_id, entry.version, err)


def experiments_of(client: MlflowClient, name: str) -> list[str]:
    """The experiments of the runs behind the live versions of ``name``."""
    experiments: set[str] = set()
    runs: set[str] = set()
    for mv in _all_pages(client.search_model_versions, filter_string=f"name = '{_quote(name)}'"):
        if mv.run_id and mv.run_id not in runs:
            runs.add(mv.run_id)
            try:
                experiments.add(client.get_run(mv.run_id).info.experiment_id)
            except MlflowException:
                continue
    return sorted(experiments)


@dataclass(frozen=True)
class Leftover:
    """The artifacts of a deleted LoggedModel of ours still in the artifact store."""

    model_id: str
    location: str
    size: int


def find_leftovers(client: MlflowClient, experiment_ids: Iterable[str]) -> list[Leftover]:
    """Artifacts of deleted LoggedModels that this package logged, in the given experiments.

    Releases before storage was reclaimed only marked retired models deleted.
    A directory counts only when no live LoggedModel has its id and its
    ``MLmodel`` carries this package's flavor: anyone else's stays.
    """
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from mlflow_best_export.serving import FLAVOR_NAME

    found = []
    for experiment_id in experiment_ids:
        experiment = client.get_experiment(experiment_id)
        root = f"{experiment.artifact_location.rstrip('/')}/models"
        repo = get_artifact_repository(root, tracking_uri=client.tracking_uri)
        try:
            entries = repo.list_artifacts()
        except (OSError, MlflowException):
            continue
        for entry in entries:
            model_id = entry.path.rstrip("/").rsplit("/", 1)[-1]
            if not entry.is_dir or not model_id.startswith("m-"):
                continue
            try:
                client.get_logged_model(model_id)
                continue  # live: not a leftover
            except MlflowException as err:
                if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    raise
            location = f"{root}/{model_id}"
            model_repo = get_artifact_repository(location, tracking_uri=client.tracking_uri)
            if not _is_ours(model_repo, FLAVOR_NAME) or _backs_a_version(client, model_id):
                continue
            found.append(Leftover(model_id, location, _size(model_repo, "")))
    return found


def _backs_a_version(client: MlflowClient, model_id: str) -> bool:
    """True if a live version was made from ``model_id`` (its source is those artifacts),
    or if that cannot be ruled out."""
    try:
        page = client.search_model_versions(
            filter_string=f"tags.`{TAG_MODEL_ID}` = '{_quote(model_id)}'", max_results=1
        )
    except MlflowException as err:
        logger.info("Keeping the artifacts of %s: cannot search its versions (%s).", model_id, err)
        return True
    return bool(list(page))


def _is_ours(repo: Any, flavor: str) -> bool:
    import yaml

    with staging_dir() as tmp:
        try:
            path = repo.download_artifacts("artifacts/MLmodel", tmp)
        except Exception:  # noqa: BLE001 - no MLmodel (or unreadable): not provably ours
            return False
        with open(path) as f:
            mlmodel = yaml.safe_load(f) or {}
    return flavor in (mlmodel.get("flavors") or {})


def _size(repo: Any, path: str) -> int:
    total = 0
    for entry in repo.list_artifacts(path or None):
        total += _size(repo, entry.path) if entry.is_dir else int(entry.file_size or 0)
    return total


def reclaim_leftover(client: MlflowClient, leftover: Leftover) -> None:
    """Delete the artifacts of one :class:`Leftover`."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(leftover.location, tracking_uri=client.tracking_uri).delete_artifacts()
