"""Promotion: move an alias by metric requirements, with an audit trail and rollback.

The exporter keeps ``best`` on the best export; a promotion script moves a
second alias (``champion``) to that version only when it meets requirements on
the metrics recorded with it. Every move is recorded on the registered model,
one tag per move, ``mlflow_best_export.alias_history.<alias>.<id>`` (JSON: from
which version to which, the requirements, when, who, and why; the id sorts by
time), so that two promotions at the same moment cannot overwrite each other's
record (one tag holding a list would be a read-modify-write), and so that
``rollback`` can move the alias back to the version that held it before,
checking the same requirements, and ``alias_history`` can show what happened.
"""

from __future__ import annotations

import getpass
import json
import logging
import operator
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_best_export.tags import TAG_ALIAS_HISTORY_PREFIX, TAG_METRIC_PREFIX, validate_alias

logger = logging.getLogger(__name__)

#: Moves kept per alias (the oldest are dropped beyond this).
HISTORY_LIMIT = 200

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_REQUIREMENT = re.compile(r"^\s*([^<>=!\s]+)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")


class PromotionRefused(ValueError):
    """A promotion that was refused: the source alias is missing or a requirement fails."""


@dataclass(frozen=True)
class Requirement:
    """A metric requirement such as ``loss<0.3``, checked against a version's metric tags."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Requirement:
        """Parse ``METRIC OP NUMBER`` (OP one of < <= > >= == !=).

        Raises:
          ValueError: for anything else.
        """
        match = _REQUIREMENT.match(text)
        if not match:
            raise ValueError(
                f"{text!r} is not METRIC OP NUMBER, e.g. 'loss<0.3' (OP: < <= > >= == !=)."
            )
        try:
            value = float(match.group(3))
        except ValueError:
            raise ValueError(f"{match.group(3)!r} in {text!r} is not a number.") from None
        return cls(match.group(1), match.group(2), value)

    def check(self, tags: Mapping[str, str]) -> str | None:
        """None when met, else the reason it is not (a NaN never meets a requirement)."""
        raw = tags.get(TAG_METRIC_PREFIX + self.metric)
        if raw is None:
            have = sorted(
                k[len(TAG_METRIC_PREFIX) :] for k in tags if k.startswith(TAG_METRIC_PREFIX)
            )
            return f"it has no metric {self.metric!r} (it has {have})"
        value = float(raw)
        if not _OPS[self.op](value, self.value):
            return f"{self.metric}={value:.6g} fails {self.metric}{self.op}{self.value:g}"
        return None

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did (or, in a dry run, would do)."""

    name: str
    to_alias: str
    from_alias: str
    version: str
    previous: str | None
    moved: bool
    dry_run: bool

    def summary(self) -> str:
        """One line for logs and the command line."""
        if not self.moved:
            return f"{self.name}@{self.to_alias} is already version {self.version}."
        verb = "would move" if self.dry_run else "moved"
        return (
            f"{verb} {self.name}@{self.to_alias} from version {self.previous or '-'} to "
            f"{self.version} ({self.from_alias})."
        )


def promote(
    client: MlflowClient,
    name: str,
    *,
    from_alias: str = "best",
    to_alias: str = "champion",
    requirements: Sequence[Requirement | str] = (),
    dry_run: bool = False,
) -> Promotion:
    """Move ``to_alias`` to the version ``from_alias`` is on, if it meets ``requirements``.

    Requirements are checked against the version's ``metric.<name>`` tags,
    which the exporter sets from the eval result that earned the export.

    Raises:
      ValueError: for invalid alias names or requirements.
      PromotionRefused: when ``from_alias`` is missing or a requirement fails.
      MlflowException: when the registered model does not exist or MLflow fails.
    """
    validate_alias(from_alias, "from_alias")
    validate_alias(to_alias, "to_alias")
    parsed = [r if isinstance(r, Requirement) else Requirement.parse(r) for r in requirements]
    model = client.get_registered_model(name)
    aliases = {a: str(v) for a, v in (model.aliases or {}).items()}
    if from_alias not in aliases:
        raise PromotionRefused(
            f"Registered model {name!r} has no alias {from_alias!r} "
            f"(aliases: {sorted(aliases) or 'none'})."
        )
    version = client.get_model_version(name, aliases[from_alias])
    _require(parsed, version.tags, f"promoting {name} version {version.version} ({from_alias})")
    previous = aliases.get(to_alias)
    moved = previous != str(version.version)
    if moved and not dry_run:
        _move(
            client,
            name,
            alias=to_alias,
            from_version=previous,
            to_version=str(version.version),
            action="promote",
            source_alias=from_alias,
            requirements=tuple(str(r) for r in parsed),
        )
        logger.info("Moved %s@%s to version %s.", name, to_alias, version.version)
    return Promotion(name, to_alias, from_alias, str(version.version), previous, moved, dry_run)


def _require(requirements: Sequence[Requirement], tags: Mapping[str, str] | None, doing: str):
    """Raise PromotionRefused naming every requirement the version's tags fail."""
    failures = [reason for r in requirements if (reason := r.check(tags or {}))]
    if failures:
        raise PromotionRefused(f"Not {doing}: " + "; ".join(failures) + ".")


@dataclass(frozen=True)
class AliasMove:
    """One recorded move of an alias.

    Attributes:
      alias: the alias that moved.
      from_version: the version it was on before (None: it was not set).
      to_version: the version it was moved to.
      action: ``"promote"`` or ``"rollback"``.
      source_alias: for a promotion, the alias it promoted from (``best``).
      requirements: the requirements checked, as text (``loss<0.3``).
      time: seconds since the epoch.
      user: who moved it (``MLFLOW_TRACKING_USERNAME``, else the login name).
      undoes: for a rollback, the id of the promotion it undid.
      id: the record's id (nanoseconds since the epoch and a random suffix).
    """

    alias: str
    from_version: str | None
    to_version: str
    action: str
    source_alias: str | None = None
    requirements: tuple[str, ...] = ()
    time: float = 0.0
    user: str = ""
    undoes: str | None = None
    id: str = ""

    def summary(self) -> str:
        """One line for the command line."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        what = f"{self.from_version or '-'} -> {self.to_version}"
        via = f" from @{self.source_alias}" if self.source_alias else ""
        needs = f" requiring {', '.join(self.requirements)}" if self.requirements else ""
        return f"{when}  {self.action:8s} @{self.alias} {what}{via}{needs}  by {self.user}"


def _user() -> str:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _history_prefix(alias: str) -> str:
    return f"{TAG_ALIAS_HISTORY_PREFIX}{alias}."


def alias_history(client: MlflowClient, name: str, alias: str | None = None) -> list[AliasMove]:
    """The recorded moves of one alias of ``name`` (or of every alias), oldest first.

    Raises:
      MlflowException: when the registered model does not exist.
    """
    prefix = TAG_ALIAS_HISTORY_PREFIX if alias is None else _history_prefix(alias)
    tags = client.get_registered_model(name).tags or {}
    moves = [_parse_move(key, value) for key, value in tags.items() if key.startswith(prefix)]
    return sorted((m for m in moves if m is not None), key=lambda m: (m.time, m.id))


def _parse_move(key: str, value: str) -> AliasMove | None:
    """The move a tag records, or None if the tag is not a record."""
    alias, _, record_id = key[len(TAG_ALIAS_HISTORY_PREFIX) :].partition(".")
    try:
        entry = dict(json.loads(value))
        entry["requirements"] = tuple(entry.get("requirements") or ())
        return AliasMove(**{**entry, "alias": alias, "id": record_id})
    except (TypeError, ValueError):
        return None


def _move(client: MlflowClient, name: str, **move: Any) -> None:
    """Move the alias and record the move (now, by this user)."""
    now = time.time_ns()
    recorded = AliasMove(
        time=now / 1e9, user=_user(), id=f"{now:020d}-{secrets.token_hex(4)}", **move
    )
    client.set_registered_model_alias(name, recorded.alias, recorded.to_version)
    _record(client, name, recorded)


def _record(client: MlflowClient, name: str, move: AliasMove) -> None:
    """Add the record of ``move`` as a tag of its own; drop the oldest beyond the limit."""
    from mlflow.exceptions import MlflowException

    entry = {k: v for k, v in asdict(move).items() if k not in ("alias", "id")}
    client.set_registered_model_tag(name, _history_prefix(move.alias) + move.id, json.dumps(entry))
    for old in alias_history(client, name, move.alias)[:-HISTORY_LIMIT]:
        try:
            client.delete_registered_model_tag(name, _history_prefix(old.alias) + old.id)
        except MlflowException:  # a concurrent promotion dropped it first
            continue


@dataclass(frozen=True)
class Rollback:
    """What :func:`rollback` did (or, in a dry run, would do)."""

    name: str
    alias: str
    from_version: str
    to_version: str
    requirements: tuple[str, ...]
    dry_run: bool

    def summary(self) -> str:
        """One line for logs and the command line."""
        verb = "would move" if self.dry_run else "moved"
        checked = f" ({', '.join(self.requirements)} met)" if self.requirements else ""
        return (
            f"{verb} {self.name}@{self.alias} back from version {self.from_version} to "
            f"{self.to_version}{checked}."
        )


def rollback(
    client: MlflowClient, name: str, *, alias: str = "champion", dry_run: bool = False
) -> Rollback:
    """Move ``alias`` back to the version that held it before the last promotion to it.

    The promotion undone is the newest one not yet rolled back that put the
    alias on its current version; successive rollbacks walk further back.
    The requirements recorded with that promotion are checked against the
    version the alias goes back to.

    Raises:
      ValueError: for an invalid alias name.
      PromotionRefused: when the alias is not set, no recorded promotion put it
        where it is, the promotion had no earlier version, or the earlier
        version no longer exists or fails the requirements.
      MlflowException: when the registered model does not exist or MLflow fails.
    """
    from mlflow.exceptions import MlflowException

    validate_alias(alias, "alias")
    model = client.get_registered_model(name)
    current = (model.aliases or {}).get(alias)
    if current is None:
        raise PromotionRefused(f"Registered model {name!r} has no alias {alias!r} to roll back.")
    current = str(current)
    moves = alias_history(client, name, alias)
    undone = {m.undoes for m in moves if m.action == "rollback"}
    candidates = [
        m for m in moves if m.action == "promote" and m.id not in undone and m.to_version == current
    ]
    if not candidates:
        raise PromotionRefused(
            f"No recorded promotion put {name}@{alias} on version {current}: nothing to roll "
            f"back (see `mlflow-best-export aliases {name}`)."
        )
    promotion = candidates[-1]
    if promotion.from_version is None:
        raise PromotionRefused(
            f"{name}@{alias} had no version before version {current} was promoted; nothing to "
            f"roll back to."
        )
    try:
        target = client.get_model_version(name, promotion.from_version)
    except MlflowException as err:
        raise PromotionRefused(
            f"Cannot roll {name}@{alias} back to version {promotion.from_version}: it no longer "
            f"exists ({err.message.splitlines()[0] if err.message else err})."
        ) from None
    parsed = [Requirement.parse(r) for r in promotion.requirements]
    _require(parsed, target.tags, f"rolling {name}@{alias} back to version {target.version}")
    if not dry_run:
        _move(
            client,
            name,
            alias=alias,
            from_version=current,
            to_version=str(target.version),
            action="rollback",
            requirements=promotion.requirements,
            undoes=promotion.id,
        )
        logger.info("Rolled %s@%s back to version %s.", name, alias, target.version)
    return Rollback(name, alias, current, str(target.version), promotion.requirements, dry_run)
