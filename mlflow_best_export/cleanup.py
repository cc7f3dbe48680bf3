"""Registry retention on demand, and storage that crashes or earlier code left behind.

``mlflow-best-export gc`` ranks each exporter's versions of a registered model by
the comparison their exporter recorded, plans the deletion of those the retention
policy does not keep, and carries the plan out with ``reconcile.apply``, like the
exporter does. ``find_leftovers`` finds the artifacts of deleted LoggedModels of
this package still in the artifact store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_best_export import retention
from mlflow_best_export.keeper import Keeper
from mlflow_best_export.ranking import Comparison
from mlflow_best_export.reconcile import Plan
from mlflow_best_export.registry import (
    VersionEntry,
    all_pages,
    info_of,
    model_entry,
    quote,
    version_entry,
)
from mlflow_best_export.retention import Candidate, RetentionPolicy
from mlflow_best_export.staging import staging_dir
from mlflow_best_export.tags import TAG_KEY, TAG_METRIC_PREFIX, TAG_MODEL_ID, TAG_STEP

logger = logging.getLogger(__name__)


def all_versions(client: MlflowClient, name: str) -> list[tuple[VersionEntry, dict[str, str]]]:
    """Every live version of ``name`` with its tags, aliases filled in from the model."""
    registered = client.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    found = []
    for mv in all_pages(client.search_model_versions, filter_string=f"name = '{quote(name)}'"):
        entry = version_entry(mv)
        merged = tuple(sorted(set(entry.aliases) | set(aliases.get(entry.version, ()))))
        found.append((replace(entry, aliases=merged), dict(mv.tags or {})))
    return sorted(found, key=lambda item: int(item[0].version))


def gc_plan(
    client: MlflowClient, name: str, policy: RetentionPolicy | int
) -> tuple[Plan, dict[str, str]]:
    """The deletions that apply ``policy`` to each exporter's versions of ``name``.

    Only versions this package created and whose tags say how they rank (the
    ``Comparison`` their exporter recorded) are considered; each exporter's
    versions are ranked by that comparison and given to ``policy`` (an int N
    means ``KeepBestN(N)``). A version with any alias is never deleted (it is in
    the plan's ``protected``); a deleted version's LoggedModel goes with it unless
    a version that stays was made from it.

    Returns:
      ``(plan, reasons)``: a Plan of deletions only, and why each version goes.
    """
    policy = retention.retention_policy(policy)
    groups: dict[str, list[Candidate]] = {}
    comparisons: dict[str, Comparison] = {}
    every = all_versions(client, name)
    for entry, tags in every:
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
    delete: list[VersionEntry] = []
    protected: list[VersionEntry] = []
    reasons: dict[str, str] = {}
    for key, members in groups.items():
        keeper = Keeper(comparisons[key], policy)
        for doomed in keeper.retire(members):
            entry, tags = doomed.source
            if entry.aliases:
                protected.append(entry)
                continue
            metric = comparisons[key].key
            delete.append(entry)
            reasons[entry.version] = (
                f"step {doomed.step}, {metric}={tags[TAG_METRIC_PREFIX + metric]}: not kept "
                f"by {policy!r} for exporter {info_of(tags).get('exporter', '?')}"
            )
    delete.sort(key=lambda e: int(e.version))
    staying = {e.model_id for e, _ in every if e not in delete}
    models = []
    for model_id in dict.fromkeys(e.model_id for e in delete if e.model_id):
        if model_id in staying:
            continue
        try:
            models.append(model_entry(client.get_logged_model(model_id)))
        except MlflowException as err:
            logger.info("LoggedModel %s is not there to delete: %s", model_id, err)
    plan = Plan(
        delete_versions=tuple(delete), delete_models=tuple(models), protected=tuple(protected)
    )
    return plan, reasons


def experiments_of(client: MlflowClient, name: str) -> list[str]:
    """The experiments of the runs behind the live versions of ``name``."""
    experiments: set[str] = set()
    runs: set[str] = set()
    for mv in all_pages(client.search_model_versions, filter_string=f"name = '{quote(name)}'"):
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

    from mlflow_best_export.flavor import FLAVOR_NAME

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
            filter_string=f"tags.`{TAG_MODEL_ID}` = '{quote(model_id)}'", max_results=1
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
