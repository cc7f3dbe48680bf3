"""Compare functions, the NaN rules, and best-first ordering of eval results.

A compare function has exactly the parameters ``best_eval_result`` and
``current_eval_result`` and returns True when the current result is better,
which is the contract ``tf.estimator.BestExporter`` checks at construction.
The ones made here also carry the metric key they compare (``metric_key``),
so the exporter can apply the NaN rules and order exports without guessing.

This module imports neither TensorFlow nor MLflow.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

CompareFn = Callable[..., bool]
T = TypeVar("T")

#: The parameters every compare function must have, and nothing else.
COMPARE_FN_ARGS = ("best_eval_result", "current_eval_result")


def _value(eval_result: Mapping[str, Any] | None, key: str, which: str) -> float:
    if not eval_result or key not in eval_result:
        keys = sorted(eval_result) if eval_result else []
        raise ValueError(
            f"{which} has no {key!r} to compare; it has the keys {keys}. "
            f"Pass a compare_fn for a metric it has, e.g. metric_smaller('<key>')."
        )
    return float(eval_result[key])


def _finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


def _make_compare_fn(key: str, min_delta: float, bigger: bool) -> CompareFn:
    def compare_fn(best_eval_result, current_eval_result):  # noqa: ANN001 - contract names
        current = _value(current_eval_result, key, "current_eval_result")
        best = _value(best_eval_result, key, "best_eval_result")
        # A NaN or infinite candidate never wins, and a NaN best never blocks a finite one:
        # with plain float comparisons a NaN best would make every comparison False forever.
        if not _finite(current):
            return False
        if math.isnan(best):
            return True
        return current > best + min_delta if bigger else current < best - min_delta

    direction = "bigger" if bigger else "smaller"
    compare_fn.__name__ = f"metric_{direction}_{key}"
    compare_fn.__qualname__ = compare_fn.__name__
    compare_fn.__doc__ = f"True when {key!r} is {direction} by more than {min_delta}."
    compare_fn.metric_key = key  # type: ignore[attr-defined]
    compare_fn.higher_is_better = bigger  # type: ignore[attr-defined]
    compare_fn.min_delta = min_delta  # type: ignore[attr-defined]
    return compare_fn


def _check_min_delta(min_delta: float) -> float:
    if isinstance(min_delta, bool) or not isinstance(min_delta, int | float):
        raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}.")
    if not _finite(float(min_delta)) or min_delta < 0:
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}.")
    return float(min_delta)


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty metric name, got {key!r}.")
    return key


def metric_smaller(key: str, min_delta: float = 0.0) -> CompareFn:
    """Make a compare function under which a smaller ``key`` is better.

    Args:
      key: the eval metric to compare, e.g. ``"loss"`` or ``"average_loss"``.
      min_delta: how much smaller the current value must be to count as better.

    Returns:
      A function of ``(best_eval_result, current_eval_result)`` for
      ``MLflowBestExporter(compare_fn=...)``. A NaN or infinite current value is
      never better; a NaN best value is beaten by any finite current value.

    Raises:
      ValueError: if ``key`` is empty or ``min_delta`` is negative or not finite.
      The returned function raises ValueError, naming the keys present, when an
      eval result lacks ``key``.
    """
    return _make_compare_fn(_check_key(key), _check_min_delta(min_delta), bigger=False)


def metric_bigger(key: str, min_delta: float = 0.0) -> CompareFn:
    """Make a compare function under which a bigger ``key`` is better.

    Args:
      key: the eval metric to compare, e.g. ``"accuracy"`` or ``"auc"``.
      min_delta: how much bigger the current value must be to count as better.

    Returns:
      A function of ``(best_eval_result, current_eval_result)`` with the same
      NaN rules as :func:`metric_smaller`.

    Raises:
      ValueError: if ``key`` is empty or ``min_delta`` is negative or not finite.
    """
    return _make_compare_fn(_check_key(key), _check_min_delta(min_delta), bigger=True)


_loss_smaller = _make_compare_fn("loss", 0.0, bigger=False)


def loss_smaller(best_eval_result, current_eval_result) -> bool:  # noqa: ANN001 - contract names
    """True when the current ``loss`` is smaller: the default ``compare_fn``.

    The same contract as ``tf.estimator.BestExporter``'s default, plus the NaN
    rules of :func:`metric_smaller`.

    Args:
      best_eval_result: eval metrics of the best model so far.
      current_eval_result: eval metrics of the candidate.

    Returns:
      True if the candidate's loss is smaller (and finite).

    Raises:
      ValueError: if either result is empty or has no ``loss``; the message
        names the keys it has.
    """
    return _loss_smaller(best_eval_result=best_eval_result, current_eval_result=current_eval_result)


loss_smaller.metric_key = "loss"  # type: ignore[attr-defined]
loss_smaller.higher_is_better = False  # type: ignore[attr-defined]
loss_smaller.min_delta = 0.0  # type: ignore[attr-defined]


def compared_key(compare_fn: CompareFn) -> str | None:
    """The metric key a compare function compares, when it can be known.

    Known for the functions of this module and for TensorFlow's own default
    (``_loss_smaller``, which compares ``loss``); ``None`` for any other
    user function.
    """
    key = getattr(compare_fn, "metric_key", None)
    if isinstance(key, str):
        return key
    if getattr(compare_fn, "__name__", "") == "_loss_smaller" and "tensorflow_estimator" in (
        getattr(compare_fn, "__module__", "") or ""
    ):
        return "loss"
    return None


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


def is_finite_in(eval_result: Mapping[str, Any], key: str | None) -> bool:
    """True when ``eval_result[key]`` is a finite number (or the key is unknown)."""
    if key is None:
        return True
    try:
        return _finite(float(eval_result[key]))
    except (KeyError, TypeError, ValueError):
        return False


def is_better(
    compare_fn: CompareFn,
    best: Mapping[str, Any] | None,
    candidate: Mapping[str, Any],
) -> bool:
    """Decide whether ``candidate`` beats ``best`` under ``compare_fn``.

    Applies the NaN rules for any compare function whose key is known: a
    candidate that is NaN or infinite in the key never wins, and a best that
    is NaN there never blocks a finite candidate. With no best, any candidate
    that passes the finiteness rule wins. ``compare_fn`` is called by keyword.

    Raises:
      ValueError: if the candidate lacks the compared key (the message names
        the keys it has), or whatever ``compare_fn`` raises.
    """
    key = compared_key(compare_fn)
    if key is not None and key not in candidate:
        raise ValueError(
            f"the eval result has no {key!r} to compare; it has the keys {sorted(candidate)}. "
            f"Pass a compare_fn for a metric it has, e.g. metric_smaller('<key>')."
        )
    if not is_finite_in(candidate, key):
        return False
    if best is None:
        return True
    if key is not None and not is_finite_in(best, key):
        return True
    return bool(compare_fn(best_eval_result=best, current_eval_result=candidate))


def comparable(compare_fn: CompareFn, eval_result: Mapping[str, Any]) -> bool:
    """True when ``eval_result`` can take part in a ranking under ``compare_fn``.

    Records that lack the compared key (a foreign scalar in the eval
    directory, say) are skipped in history rather than failing training.
    """
    key = compared_key(compare_fn)
    return key is None or key in eval_result


def _sort_value(compare_fn: CompareFn, metrics: Mapping[str, Any]) -> tuple[int, float] | None:
    key = compared_key(compare_fn)
    if key is None or not hasattr(compare_fn, "higher_is_better"):
        return None
    try:
        value = float(metrics[key])
    except (KeyError, TypeError, ValueError):
        return (2, 0.0)
    if math.isnan(value):
        return (2, 0.0)
    if math.isinf(value):
        return (1, 0.0)
    return (0, -value if compare_fn.higher_is_better else value)


def rank_best_first(
    items: Iterable[T],
    compare_fn: CompareFn,
    metrics_of: Callable[[T], Mapping[str, Any]],
    step_of: Callable[[T], int],
) -> list[T]:
    """Order items best first under ``compare_fn``.

    The metrics of this module sort by value (min_delta plays no part in an
    ordering; it only decides whether a new result is worth exporting). Any
    other compare function is used pairwise. Ties, and pairs the function
    cannot tell apart, go to the later step: it is the model trained longer.
    Non-finite values sort last.

    Args:
      items: what to order (exports, eval records).
      compare_fn: the exporter's compare function.
      metrics_of: the eval metrics of an item.
      step_of: the global step of an item.

    Returns:
      A new list, best first.
    """
    items = list(items)
    if all(_sort_value(compare_fn, metrics_of(item)) is not None for item in items):
        return sorted(items, key=lambda i: (_sort_value(compare_fn, metrics_of(i)), -step_of(i)))

    def cmp(a: T, b: T) -> int:
        if is_better(compare_fn, metrics_of(b), metrics_of(a)):
            return -1
        if is_better(compare_fn, metrics_of(a), metrics_of(b)):
            return 1
        return step_of(b) - step_of(a)

    return sorted(items, key=functools.cmp_to_key(cmp))


def new_bests(
    items: Iterable[T],
    baseline: Mapping[str, Any] | None,
    compare_fn: CompareFn,
    metrics_of: Callable[[T], Mapping[str, Any]],
) -> list[T]:
    """The items, in the order given, that each beat everything before them.

    Starting from ``baseline`` (None: nothing yet), an item is a new best when
    :func:`is_better` says it beats the best so far. Items lacking the compared
    key are skipped, so a foreign scalar in the eval directory never stops
    training. This is the sequence an uninterrupted exporter would have exported.
    """
    best = baseline
    chain = []
    for item in items:
        metrics = metrics_of(item)
        if not comparable(compare_fn, metrics):
            continue
        try:
            better = is_better(compare_fn, best, metrics)
        except (KeyError, TypeError, ValueError) as err:
            # A user compare_fn whose key we cannot know fails on foreign records.
            logger.debug("Skipping an eval result that %r cannot compare: %s", compare_fn, err)
            continue
        if better:
            chain.append(item)
            best = metrics
    return chain


@dataclass(frozen=True)
class KeepAll:
    """Retention that keeps every export (``exports_to_keep=None``)."""

    def select(self, ranked: Sequence[T]) -> list[T]:
        """Everything is kept."""
        return list(ranked)


@dataclass(frozen=True)
class KeepBestN:
    """Retention that keeps the ``n`` best exports of a best-first ranking."""

    n: int

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n <= 0:
            raise ValueError(
                f"`exports_to_keep`, if provided, must be a positive integer; got {self.n!r}. "
                f"Use None to keep every export."
            )

    def select(self, ranked: Sequence[T]) -> list[T]:
        """The first ``n`` of a best-first ranking."""
        return list(ranked[: self.n])


RetentionPolicy = KeepAll | KeepBestN


def retention_policy(exports_to_keep: int | None) -> RetentionPolicy:
    """The retention policy for BestExporter's ``exports_to_keep`` argument."""
    return KeepAll() if exports_to_keep is None else KeepBestN(exports_to_keep)
