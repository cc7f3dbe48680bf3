"""How eval results compare: one ``Comparison`` value, the NaN rules, best-first order.

A compare function has exactly the parameters ``best_eval_result`` and
``current_eval_result`` and returns True when the current result is better,
which is the contract ``tf.estimator.BestExporter`` checks at construction.
``Comparison`` is such a function and also says what it compares (metric key,
direction, ``min_delta``), so the NaN rules, the ordering of exports and the
metadata recorded with each export all come from the same value:

    >>> metric_bigger("auc", min_delta=0.001)
    Comparison(key='auc', direction='max', min_delta=0.001)

Any other function with the contract's parameters is used pairwise.

This module imports neither TensorFlow nor MLflow.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

logger = logging.getLogger(__name__)

CompareFn = Callable[..., bool]
Direction = Literal["min", "max"]
T = TypeVar("T")

#: The parameters every compare function must have, and nothing else.
COMPARE_FN_ARGS = ("best_eval_result", "current_eval_result")
DIRECTIONS = ("min", "max")


def _finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


def _missing_key(key: str, eval_result: Mapping[str, Any] | None, which: str) -> ValueError:
    keys = sorted(eval_result) if eval_result else []
    return ValueError(
        f"{which} has no {key!r} to compare; it has the keys {keys}. "
        f"Pass a compare_fn for a metric it has, e.g. metric_smaller('<key>')."
    )


@dataclass(frozen=True)
class Comparison:
    """The metric that decides, which way is better, and by how much it must be.

    A ``Comparison`` is itself a compare function for
    ``MLflowBestExporter(compare_fn=...)``: ``comparison(best_eval_result=...,
    current_eval_result=...)`` is True when the current result is better by
    more than ``min_delta``. A NaN or infinite current value never wins; a NaN or
    infinite best is beaten by any finite current value (with plain float comparisons a
    NaN best would block every later export).

    Attributes:
      key: the eval metric compared, e.g. ``"loss"`` or ``"auc"``.
      direction: ``"min"`` (smaller is better) or ``"max"``.
      min_delta: how much better the current value must be (>= 0). It decides
        whether a new result is worth exporting; orderings ignore it.

    Raises:
      ValueError: for an empty key, an unknown direction or a negative or
        non-finite ``min_delta``.
    """

    key: str = "loss"
    direction: Direction = "min"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"key must be a non-empty metric name, got {self.key!r}.")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'min' or 'max', got {self.direction!r}.")
        delta = self.min_delta
        if isinstance(delta, bool) or not isinstance(delta, int | float):
            raise ValueError(f"min_delta must be a number >= 0, got {delta!r}.")
        if not _finite(float(delta)) or delta < 0:
            raise ValueError(f"min_delta must be a finite number >= 0, got {delta!r}.")
        object.__setattr__(self, "min_delta", float(delta))

    @property
    def higher_is_better(self) -> bool:
        """True for ``direction="max"``."""
        return self.direction == "max"

    def __call__(self, best_eval_result, current_eval_result) -> bool:  # noqa: ANN001 - contract
        """True when ``current_eval_result`` is better than ``best_eval_result``.

        Raises:
          ValueError: if either result lacks ``key``; the message names its keys.
        """
        current = self.value_of(current_eval_result, "current_eval_result")
        best = self.value_of(best_eval_result, "best_eval_result")
        if not _finite(current):
            return False
        if not _finite(best):
            return True
        if self.higher_is_better:
            return current > best + self.min_delta
        return current < best - self.min_delta

    def value_of(self, eval_result: Mapping[str, Any] | None, which: str = "eval_result") -> float:
        """``eval_result[key]`` as a float.

        Raises:
          ValueError: if the result lacks ``key``; the message names its keys.
        """
        if not eval_result or self.key not in eval_result:
            raise _missing_key(self.key, eval_result, which)
        return float(eval_result[self.key])

    def sort_key(self, eval_result: Mapping[str, Any]) -> tuple[int, float]:
        """Best first: finite values by goodness, then infinite, then NaN or missing."""
        try:
            value = float(eval_result[self.key])
        except (KeyError, TypeError, ValueError):
            return (2, 0.0)
        if math.isnan(value):
            return (2, 0.0)
        if math.isinf(value):
            return (1, 0.0)
        return (0, -value if self.higher_is_better else value)

    def to_metadata(self) -> dict[str, Any]:
        """What an export and a registry version record about how they were ranked."""
        return {
            "compare_key": self.key,
            "compare_mode": self.direction,
            "min_delta": self.min_delta,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Comparison | None:
        """The comparison ``to_metadata`` recorded, or None when none was (a custom compare_fn)."""
        key, direction = metadata.get("compare_key"), metadata.get("compare_mode")
        if not key or direction not in DIRECTIONS:
            return None
        try:
            return cls(str(key), direction, float(metadata.get("min_delta") or 0.0))
        except (TypeError, ValueError):
            return cls(str(key), direction)

    @classmethod
    def of(cls, compare_fn: Any) -> Comparison | None:
        """The comparison a compare function makes, when it can be known.

        Known for a ``Comparison`` and for ``tf.estimator.BestExporter``'s own default
        (the function itself, when its module is loaded); None for any other
        function, which is used pairwise.
        """
        if isinstance(compare_fn, Comparison):
            return compare_fn
        estimator = sys.modules.get("tensorflow_estimator.python.estimator.exporter")
        if compare_fn is not None and compare_fn is getattr(estimator, "_loss_smaller", None):
            return loss_smaller
        return None


def metric_smaller(key: str, min_delta: float = 0.0) -> Comparison:
    """A compare function under which a smaller ``key`` is better.

    Args:
      key: the eval metric to compare, e.g. ``"loss"`` or ``"average_loss"``.
      min_delta: how much smaller the current value must be to count as better.

    Returns:
      ``Comparison(key, "min", min_delta)``, for ``MLflowBestExporter(compare_fn=...)``.

    Raises:
      ValueError: if ``key`` is empty or ``min_delta`` is negative or not finite.
    """
    return Comparison(key, "min", min_delta)


def metric_bigger(key: str, min_delta: float = 0.0) -> Comparison:
    """A compare function under which a bigger ``key`` is better.

    Args:
      key: the eval metric to compare, e.g. ``"accuracy"`` or ``"auc"``.
      min_delta: how much bigger the current value must be to count as better.

    Returns:
      ``Comparison(key, "max", min_delta)``.

    Raises:
      ValueError: if ``key`` is empty or ``min_delta`` is negative or not finite.
    """
    return Comparison(key, "max", min_delta)


#: The default compare function: a smaller ``loss`` is better (as in
#: ``tf.estimator.BestExporter``), with the NaN rules of ``Comparison``.
loss_smaller = Comparison("loss", "min")


def compared_key(compare_fn: CompareFn) -> str | None:
    """The metric key a compare function compares, or None for a user function."""
    comparison = Comparison.of(compare_fn)
    return comparison.key if comparison else None


def check_compare_fn(compare_fn: Any) -> CompareFn:
    """Check that ``compare_fn`` is callable with exactly the contract's parameters.

    Mirrors the check of ``tf.estimator.BestExporter`` (which looks at the
    parameter names), with messages that say how to fix it.

    Raises:
      ValueError: if ``compare_fn`` is None, not callable, or its parameters
        are not exactly ``best_eval_result`` and ``current_eval_result``.
    """
    import inspect

    if compare_fn is None:
        raise ValueError("`compare_fn` must not be None; use loss_smaller or metric_smaller(key).")
    if not callable(compare_fn):
        raise ValueError(f"`compare_fn` must be callable, got {compare_fn!r}.")
    target = compare_fn.func if isinstance(compare_fn, functools.partial) else compare_fn
    try:
        params = inspect.signature(compare_fn).parameters
    except (TypeError, ValueError) as err:
        raise ValueError(f"`compare_fn` {target!r} has no inspectable signature: {err}") from err
    # Parameters with a default (e.g. bound by functools.partial) need no argument.
    names = [
        name
        for name, p in params.items()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and (p.default is inspect.Parameter.empty or name in COMPARE_FN_ARGS)
    ]
    if sorted(names) != sorted(COMPARE_FN_ARGS):
        raise ValueError(
            f"`compare_fn` must take exactly the parameters best_eval_result and "
            f"current_eval_result (it is called by keyword); {target!r} takes {names}."
        )
    return compare_fn


@dataclass(frozen=True)
class Ranking:
    """How eval results rank under one compare function, worked out once.

    The keeper, the export listing, the mirror's snapshot and the command line
    all rank through this value. A :class:`Comparison` (or TensorFlow's own
    default) ranks by value; any other function is used pairwise. Either way:

    - a result lacking the compared key cannot be ranked: it is skipped where
      history is read (a foreign scalar in the eval directory must not stop
      training) and an error where a candidate is judged;
    - a NaN or infinite candidate never wins, and a NaN or infinite best never blocks a
      finite candidate;
    - ties, and pairs a function cannot tell apart, go to the later step (the
      model trained longer); non-finite values rank last.

    Attributes:
      compare_fn: the function, as given.
      comparison: what it compares, when that can be known (else None).
    """

    compare_fn: CompareFn
    comparison: Comparison | None

    @classmethod
    def of(cls, compare_fn: CompareFn) -> Ranking:
        """The ranking of ``compare_fn``."""
        return cls(compare_fn, Comparison.of(compare_fn))

    @property
    def key(self) -> str | None:
        """The compared metric, or None for a user function."""
        return self.comparison.key if self.comparison else None

    def require(
        self,
        metrics: Mapping[str, Any],
        which: str = "The eval result",
        shown: Mapping[str, Any] | None = None,
    ) -> None:
        """Raise the error that says how to fix it when ``metrics`` lacks the compared key.

        Args:
          shown: whose keys the message lists (default: ``metrics``'), e.g. the whole eval
            result that ``metrics`` were taken from.
        """
        if self.key is not None and self.key not in metrics:
            raise _missing_key(self.key, metrics if shown is None else shown, which)

    def comparable(self, metrics: Mapping[str, Any]) -> bool:
        """True when ``metrics`` can take part in a ranking (it has the compared key)."""
        return self.key is None or self.key in metrics

    def better(self, best: Mapping[str, Any] | None, candidate: Mapping[str, Any]) -> bool:
        """True when ``candidate`` beats ``best`` (None: nothing yet), under the NaN rules.

        Raises:
          ValueError: if the candidate lacks the compared key, or whatever a user
            ``compare_fn`` raises.
        """
        self.require(candidate)
        if best is None:
            return self._finite_in(candidate)
        # A known comparison judges by its own NaN rules, also for TensorFlow's default.
        judge = self.comparison or self.compare_fn
        return bool(judge(best_eval_result=best, current_eval_result=candidate))

    def beats(self, best: Mapping[str, Any] | None, metrics: Mapping[str, Any]) -> bool:
        """:meth:`better` for history records: False for one that cannot be compared
        (it lacks the key, or a user compare_fn fails on it) instead of an error."""
        if not self.comparable(metrics):
            return False
        try:
            return self.better(best, metrics)
        except (KeyError, TypeError, ValueError) as err:
            logger.debug("Skipping an eval result that %r cannot compare: %s", self.compare_fn, err)
            return False

    def rank(
        self,
        items: Iterable[T],
        metrics_of: Callable[[T], Mapping[str, Any]] = operator.attrgetter("metrics"),
        step_of: Callable[[T], int] = operator.attrgetter("step"),
    ) -> list[T]:
        """The items that can be ranked, best first (``min_delta`` plays no part in an
        order: it only decides whether a new result is worth exporting)."""
        items = [i for i in items if self.comparable(metrics_of(i))]
        if self.comparison is not None:
            sort_key = self.comparison.sort_key
            return sorted(items, key=lambda i: (sort_key(metrics_of(i)), -step_of(i)))

        def cmp(a: T, b: T) -> int:
            if self.beats(metrics_of(b), metrics_of(a)):
                return -1
            if self.beats(metrics_of(a), metrics_of(b)):
                return 1
            return step_of(b) - step_of(a)

        return sorted(items, key=functools.cmp_to_key(cmp))

    def best(
        self,
        items: Iterable[T],
        metrics_of: Callable[[T], Mapping[str, Any]] = operator.attrgetter("metrics"),
        step_of: Callable[[T], int] = operator.attrgetter("step"),
    ) -> T | None:
        """The best item with a finite value of the compared key, or None."""
        for item in self.rank(items, metrics_of, step_of):
            return item if self._finite_in(metrics_of(item)) else None
        return None

    def new_bests(
        self,
        items: Iterable[T],
        baseline: Mapping[str, Any] | None = None,
        metrics_of: Callable[[T], Mapping[str, Any]] = operator.attrgetter("metrics"),
    ) -> list[T]:
        """The items, in the order given, that each beat ``baseline`` and everything before
        them: what an uninterrupted exporter would have exported."""
        best, chain = baseline, []
        for item in items:
            metrics = metrics_of(item)
            if self.beats(best, metrics):
                chain.append(item)
                best = metrics
        return chain

    def _finite_in(self, metrics: Mapping[str, Any]) -> bool:
        if self.key is None:
            return True
        try:
            return _finite(float(metrics[self.key]))
        except (KeyError, TypeError, ValueError):
            return False
