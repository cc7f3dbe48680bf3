"""Retention policies as values: which of the candidates to keep.

A policy is a small frozen object with one method, ``keep(ranked)``, over the
candidates (step, metrics, time) ordered best first; it returns one bool per
candidate. Policies compose instead of growing flags, and the same value
decides on disk (the exporter's ``exports_to_keep``), in the registry (the
exporter's mirror, and ``mlflow-best-export gc``) and in tests::

    >>> AnyOf(KeepBestN(3), KeepLatestN(1))
    AnyOf(policies=(KeepBestN(n=3), KeepLatestN(n=1)))

This module imports neither TensorFlow nor MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Candidate:
    """What a policy knows of an export or a registry version.

    Attributes:
      step: the global step that was evaluated.
      metrics: the eval result.
      time: when the export or version was made (seconds since the epoch).
      source: the caller's object (an export, a version); policies ignore it.
    """

    step: int
    metrics: Mapping[str, float]
    time: float = 0.0
    source: Any = field(default=None, compare=False, repr=False)


@runtime_checkable
class RetentionPolicy(Protocol):
    """Anything with ``keep(ranked) -> list[bool]`` is a retention policy."""

    def keep(self, ranked: Sequence[Candidate]) -> list[bool]:
        """One bool per candidate of ``ranked`` (best first): True to keep it."""
        ...


@dataclass(frozen=True)
class KeepAll:
    """Keep everything (``exports_to_keep=None``)."""

    def keep(self, ranked: Sequence[Candidate]) -> list[bool]:
        """True for every candidate."""
        return [True] * len(ranked)


def _check_count(n: Any, policy: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{policy}(n) needs a positive integer n, got {n!r}.")


@dataclass(frozen=True)
class KeepBestN:
    """Keep the ``n`` best candidates under the exporter's comparison."""

    n: int

    def __post_init__(self) -> None:
        _check_count(self.n, "KeepBestN")

    def keep(self, ranked: Sequence[Candidate]) -> list[bool]:
        """True for the first ``n`` of the best-first ranking."""
        return [i < self.n for i in range(len(ranked))]


@dataclass(frozen=True)
class KeepLatestN:
    """Keep the ``n`` candidates of the highest global steps (the model trained longest)."""

    n: int

    def __post_init__(self) -> None:
        _check_count(self.n, "KeepLatestN")

    def keep(self, ranked: Sequence[Candidate]) -> list[bool]:
        """True for the ``n`` latest by step (then by time)."""
        latest = sorted(range(len(ranked)), key=lambda i: (ranked[i].step, ranked[i].time))
        chosen = set(latest[-self.n :])
        return [i in chosen for i in range(len(ranked))]


@dataclass(frozen=True, init=False)
class AnyOf:
    """Keep a candidate that any of the policies keeps."""

    policies: tuple[RetentionPolicy, ...]

    def __init__(self, *policies: RetentionPolicy) -> None:
        if not policies:
            raise ValueError("AnyOf needs at least one policy, e.g. AnyOf(KeepBestN(3)).")
        for policy in policies:
            _check_policy(policy, "AnyOf")
        object.__setattr__(self, "policies", tuple(policies))

    def keep(self, ranked: Sequence[Candidate]) -> list[bool]:
        """True where any policy says True."""
        votes = [policy.keep(ranked) for policy in self.policies]
        return [any(column) for column in zip(*votes, strict=True)] if ranked else []


def _check_policy(policy: Any, where: str) -> None:
    if not isinstance(policy, RetentionPolicy):
        raise ValueError(
            f"{where} takes retention policies (KeepBestN, KeepLatestN, AnyOf, KeepAll), "
            f"got {policy!r}."
        )


def retention_policy(exports_to_keep: Any) -> RetentionPolicy:
    """The policy for an ``exports_to_keep`` argument: an int N, None, or a policy.

    ``N`` means ``KeepBestN(N)`` and None means ``KeepAll()``, as
    ``tf.estimator.BestExporter``'s argument (whose N newest become our N best).

    Raises:
      ValueError: naming ``exports_to_keep`` and what it accepts.
    """
    if exports_to_keep is None:
        return KeepAll()
    if isinstance(exports_to_keep, RetentionPolicy) and not isinstance(exports_to_keep, type):
        return exports_to_keep
    if isinstance(exports_to_keep, bool) or not isinstance(exports_to_keep, int):
        raise ValueError(
            "`exports_to_keep` must be a positive integer, a retention policy such as "
            "KeepBestN(5) or AnyOf(KeepBestN(3), KeepLatestN(1)), or None to keep every "
            f"export; got {exports_to_keep!r}."
        )
    if exports_to_keep <= 0:
        raise ValueError(
            "`exports_to_keep`, if provided, must be a positive number (or None to keep every "
            f"export). Got {exports_to_keep}"
        )
    return KeepBestN(exports_to_keep)


def kept(policy: RetentionPolicy, ranked: Sequence[Candidate]) -> list[Candidate]:
    """The candidates ``policy`` keeps, best first."""
    votes = policy.keep(ranked)
    if len(votes) != len(ranked):
        raise ValueError(
            f"{policy!r}.keep returned {len(votes)} votes for {len(ranked)} candidates."
        )
    return [candidate for candidate, keep in zip(ranked, votes, strict=True) if keep]
