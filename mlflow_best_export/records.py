"""The eval history as values: ``EvalRecord`` (one evaluated step) and ``EvalHistory``.

``history.HistoryReader`` builds them from event files; the keeper, the mirror
and the command line read them. This module imports neither TensorFlow nor MLflow
(pandas only in ``to_pandas``).
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pandas

__all__ = ["EvalHistory", "EvalRecord"]

_step_of = operator.itemgetter(0)  # of an EvalRecord


class EvalRecord(NamedTuple):
    """The result of evaluating one checkpoint (a named tuple: a full read makes one
    per eval, at a fraction of a dataclass's cost).

    Attributes:
        step: the global step of the evaluated checkpoint.
        wall_time: when the eval was written (seconds since the epoch); the
            latest of the events merged into this record.
        metrics: ``{name: value}`` of the eval; treat it as read-only.
        checkpoint_path: the checkpoint that was evaluated, if the eval said so.
    """

    step: int
    wall_time: float
    metrics: Mapping[str, float]
    checkpoint_path: str | None


class EvalHistory:
    """The eval records of a model directory, one per global step, ascending.

    Args:
        records: the records, in any order, at most one per step.

    Raises:
        ValueError: two records have the same step.
    """

    # The history is the first `_size` of `_records`: a reader may append to that list
    # after handing it out (nothing else changes it), so a poll copies nothing.
    __slots__ = ("_list", "_records", "_size")

    def __init__(self, records: Iterable[EvalRecord] = ()) -> None:
        ordered = sorted(records, key=_step_of)
        for earlier, later in itertools.pairwise(ordered):
            if earlier.step == later.step:
                raise ValueError(f"Two eval records have the step {later.step}.")
        self._records = self._list = ordered
        self._size = len(ordered)

    @classmethod
    def from_sorted(cls, records: list[EvalRecord], size: int | None = None) -> EvalHistory:
        """A history of ``records`` known to be ascending and one per step (not checked,
        not copied: a reader building many histories pays nothing per record).

        Args:
            records: the records.
            size: the history is the first ``size`` of them (all if None); the list
                may grow past them later, but they must never change.
        """
        history = cls.__new__(cls)
        history._records, history._list = records, records if size is None else None
        history._size = len(records) if size is None else size
        return history

    @property
    def records(self) -> list[EvalRecord]:
        """The records, ascending by step (a list of this history's own)."""
        if self._list is None:
            self._list = self._records[: self._size]
        return self._list

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[EvalRecord]:
        return itertools.islice(self._records, self._size)

    def __bool__(self) -> bool:
        return self._size > 0

    def __repr__(self) -> str:
        if not self._size:
            return "EvalHistory([])"
        first, last = self._records[0].step, self._records[self._size - 1].step
        return f"EvalHistory(<{self._size} records, steps {first}..{last}>)"

    def get(self, step: int) -> EvalRecord | None:
        """The record of ``step``, or None if that step was not evaluated."""
        index = bisect.bisect_left(self._records, step, hi=self._size, key=_step_of)
        if index < self._size and self._records[index].step == step:
            return self._records[index]
        return None

    def before(self, step: int) -> EvalHistory:
        """A new history with the records of the steps before ``step``."""
        index = bisect.bisect_left(self._records, step, hi=self._size, key=_step_of)
        return EvalHistory.from_sorted(self._records, index)

    def to_pandas(self) -> pandas.DataFrame:
        """The history as a table, one row per step.

        Returns:
            A DataFrame with the columns ``step``, ``wall_time``,
            ``checkpoint_path`` (None where unknown), then one float column per
            metric, sorted by name, NaN where a record lacks the metric.
        """
        import pandas

        records = self.records
        keys = sorted({key for record in records for key in record.metrics})
        columns = [
            pandas.Series([r.step for r in records], dtype="int64"),
            pandas.Series([r.wall_time for r in records], dtype="float64"),
            pandas.Series([r.checkpoint_path for r in records], dtype=object),
        ]
        columns.extend(
            pandas.Series([r.metrics.get(key, math.nan) for r in records], dtype="float64")
            for key in keys
        )
        # Positional columns, so that a metric named like a fixed column is kept too.
        frame = pandas.concat(columns, axis=1, ignore_index=True)
        frame.columns = ["step", "wall_time", "checkpoint_path", *keys]
        return frame
