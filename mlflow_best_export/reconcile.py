"""Bringing one exporter's LoggedModels and versions in line with its kept exports.

Two steps, and this module is the only place either happens:

- :func:`plan` decides, purely, from the kept exports and what MLflow holds now;
- :func:`apply` carries a plan out, in the one order that is safe to kill at any
  point (the order :class:`Plan` lists its fields in), and says what it changed.

The exporter's worker, ``mlflow-best-export sync`` and ``gc`` all go through them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mlflow_best_export import fs
from mlflow_best_export.exports import Export
from mlflow_best_export.registry import ModelEntry, Registry, VersionEntry, identity

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Plan:
    """What reconciliation changes, field by field in the order :func:`apply` does it.

    A model that never became READY (a crash mid-upload) goes first, so that it
    can be logged again. New models and versions come next, in ascending global
    step, so that version numbers follow training. The alias moves before anything
    is deleted, so that it always points at a live version. Versions go before
    their models, so that no live version loses its artifacts.

    Attributes:
      models: the live LoggedModels the plan was made against.
      versions: the live versions it was made against (None: no registry).
      protected: versions whose export is gone but that carry another alias; kept.
    """

    delete_unready: tuple[ModelEntry, ...] = ()
    log: tuple[Export, ...] = ()
    register: tuple[Export, ...] = ()
    alias_to: Export | None = None
    delete_versions: tuple[VersionEntry, ...] = ()
    delete_models: tuple[ModelEntry, ...] = ()
    protected: tuple[VersionEntry, ...] = ()
    models: tuple[ModelEntry, ...] = ()
    versions: tuple[VersionEntry, ...] | None = None


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
    """
    kept_ids = [identity(e) for e in kept]
    by_id = dict(zip(kept_ids, kept, strict=True))
    ascending = sorted(kept_ids, key=lambda i: _training_order(by_id[i]))
    models = tuple(models)
    versions = tuple(versions) if versions is not None else None

    ready = {m.mirrors for m in models if m.ready}
    log = tuple(by_id[i] for i in ascending if i not in ready)

    delete_versions: list[VersionEntry] = []
    protected: list[VersionEntry] = []
    register: tuple[Export, ...] = ()
    alias_to = None
    if versions is not None:
        seen: set[tuple[str, int | None]] = set()
        for v in versions:
            if v.mirrors in by_id and v.mirrors not in seen:
                seen.add(v.mirrors)
            elif any(a != alias for a in v.aliases):
                protected.append(v)
            else:
                delete_versions.append(v)
        register = tuple(by_id[i] for i in ascending if i not in seen)
        if kept and alias is not None and alias_on != kept_ids[0]:
            alias_to = kept[0]

    # A model goes when its export is gone and no protected version needs it.
    keep_models = set(kept_ids) | {v.mirrors for v in protected}
    return Plan(
        delete_unready=tuple(m for m in models if not m.ready),
        log=log,
        register=register,
        alias_to=alias_to,
        delete_versions=tuple(delete_versions),
        delete_models=tuple(m for m in models if m.ready and m.mirrors not in keep_models),
        protected=tuple(protected),
        models=models,
        versions=versions,
    )


def _training_order(export: Export) -> tuple[bool, int, int]:
    """Ascending global step; an export without a known step after those with one."""
    return (export.step is None, export.step or 0, export.version)


@dataclass
class SyncReport:
    """What one reconciliation changed."""

    run_id: str | None = None
    metrics_logged: int = 0
    models_logged: list[int] = field(default_factory=list)
    versions_created: list[int] = field(default_factory=list)
    versions_deleted: list[str] = field(default_factory=list)
    models_deleted: list[str] = field(default_factory=list)
    protected_versions: list[str] = field(default_factory=list)
    alias_moved_to: int | None = None
    storage_reclaimed: list[str] = field(default_factory=list)
    #: Kept exports that vanished while they were logged (retention after the snapshot).
    gone: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when anything in MLflow changed."""
        return bool(
            self.metrics_logged
            or self.models_logged
            or self.versions_created
            or self.versions_deleted
            or self.models_deleted
            or self.alias_moved_to is not None
            or self.storage_reclaimed
        )

    def summary(self) -> str:
        """One line for logs and the command line."""
        if not self.changed:
            return "MLflow is in step with the model directory; nothing to change."
        parts = []
        if self.metrics_logged:
            parts.append(f"{self.metrics_logged} eval steps mirrored")
        # Numbers that name things (steps, versions) are listed; counts stand alone.
        if self.models_logged:
            parts.append(f"models logged for steps {_listed(self.models_logged)}")
        if self.versions_created:
            parts.append(f"versions created for steps {_listed(self.versions_created)}")
        if self.versions_deleted:
            parts.append(f"versions {_listed(self.versions_deleted)} deleted")
        if self.models_deleted:
            parts.append(f"{len(self.models_deleted)} logged models deleted")
        if self.alias_moved_to is not None:
            parts.append(f"alias moved to step {self.alias_moved_to}")
        if self.storage_reclaimed:
            parts.append(
                f"artifacts of {len(self.storage_reclaimed)} deleted logged models reclaimed"
            )
        return "; ".join(parts) + "."


def _listed(items: list) -> str:
    return ", ".join(map(str, items))


def apply(
    the_plan: Plan,
    registry: Registry,
    *,
    on_logged: Callable[[Export, str], None] | None = None,
    progress: ProgressFn | None = None,
    report: SyncReport | None = None,
) -> SyncReport:
    """Carry out ``the_plan``, in the order of its fields; see :class:`Plan` for why.

    Args:
      the_plan: from :func:`plan` (or any Plan; ``gc`` makes one of deletions only).
      registry: the exporter's registered model and run.
      on_logged: called with each export logged and its model id (to link metrics).
      progress: called with ("logged" or "registered", done, total).
      report: a report to add to (a new one by default).

    Raises:
      MlflowException or OSError: on any failure; what succeeded stays done and
        the next plan, made from what MLflow then holds, carries on from there.
    """
    report = report if report is not None else SyncReport()
    total, done = len(the_plan.log) + len(the_plan.register), 0
    for entry in the_plan.delete_unready:
        registry.delete_model(entry)
        report.models_deleted.append(entry.model_id)
    models = {m.mirrors: m for m in the_plan.models if m.ready}
    for export in the_plan.log:
        try:
            model = registry.log_model(export)
        except Exception:
            if fs.isdir(export.path):
                raise
            # Retention deleted it after the snapshot was taken; a newer snapshot
            # follows, and the unfinished LoggedModel is cleaned up then.
            logger.debug("Export %s went away while it was logged.", export.path)
            report.gone.append(identity(export))
            continue
        models[identity(export)] = model
        if on_logged is not None:
            on_logged(export, model.model_id)
        report.models_logged.append(export.step)
        done += 1
        if progress:
            progress("logged", done, total)
    live = [v for v in the_plan.versions or () if v not in the_plan.delete_versions]
    version_of = {v.mirrors: v.version for v in live}
    if the_plan.versions is not None:
        # Before registering: each new version links itself on a fresh read.
        registry.link(the_plan.models, live)
    for export in the_plan.register:
        if identity(export) in report.gone:
            continue
        version_of[identity(export)] = registry.register(export, models[identity(export)])
        report.versions_created.append(export.step)
        done += 1
        if progress:
            progress("registered", done, total)
    if the_plan.alias_to is not None and identity(the_plan.alias_to) in version_of:
        registry.set_alias(the_plan.alias_to, version_of[identity(the_plan.alias_to)])
        report.alias_moved_to = the_plan.alias_to.step
    for entry in the_plan.delete_versions:
        registry.delete_version(entry)
        report.versions_deleted.append(entry.version)
    for entry in the_plan.delete_models:
        registry.delete_model(entry)
        report.models_deleted.append(entry.model_id)
    for entry in the_plan.protected:
        logger.info(
            "Keeping version %s of %s although its export is gone: it carries the alias %s.",
            entry.version,
            registry.registered_model_name,
            ", ".join(a for a in entry.aliases if a != registry.alias),
        )
    report.protected_versions = [v.version for v in the_plan.protected]
    return report
