"""Eval event files -> EvalHistory: one EvalRecord per evaluated global step.

The Estimator writes each evaluation into ``<model_dir>/eval/`` as two events
at the same step: one with the metrics and one with the ``checkpoint_path``
that was evaluated. ``HistoryReader`` merges the events of all files that
match a pattern into one record per step and keeps its place in every file,
so that each ``poll()`` reads only what was appended since the last one.

When a step was evaluated more than once (a restarted job evaluates the same
checkpoint again), the value with the latest wall time wins, key by key.

This module imports neither TensorFlow nor MLflow (pandas only in ``to_pandas``).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import gc
import itertools
import logging
import math
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlflow_best_export import fs
from mlflow_best_export.events import TAIL_SIZE, EventColumns, EventFileReader, RawEvent

if TYPE_CHECKING:
    import pandas

logger = logging.getLogger(__name__)

__all__ = ["EvalHistory", "EvalRecord", "HistoryReader", "read_eval_history"]

DEFAULT_EVENT_FILE_PATTERN = "eval/*.tfevents.*"
CHECKPOINT_PATH_TAG = "checkpoint_path"

# What tells a file from another one written over it in place: its first bytes and
# the last ones read (the data CRC of the last record, and some of its data). The first
# alone do not: TensorFlow writers begin every file with a `file_version` event
# stamped with its creation time in whole seconds, the same for files made together.
_HEAD_SIZE = 64
_TAIL_SIZE = TAIL_SIZE
# Above this many steps arriving out of order in one poll, sorting everything
# is cheaper than inserting them one by one.
_MAX_INSERTS = 64

_step_of = operator.attrgetter("step")
_NONES = itertools.repeat(None)


def _consume(iterator: Iterator[object]) -> None:
    collections.deque(iterator, maxlen=0)


def _metrics(
    tags: list[tuple[str, ...]], values: Iterable[Sequence[float]]
) -> list[dict[str, float]]:
    """``[dict(zip(t, v)) for t, v in zip(tags, values)]``, at three quarters of the cost.

    Events of one layout share their tags tuple, and each layout gets a function that
    builds its dict from a display with constant keys, CPython's fastest way to build one.
    """
    layouts = dict(zip(map(id, tags), tags, strict=True))
    makers = {key: _maker(keys) for key, keys in layouts.items()}
    if len(makers) == 1:
        return list(map(next(iter(makers.values())), values))
    return [makers[id(keys)](row) for keys, row in zip(tags, values)]  # noqa: B905


# The dict makers of the layouts seen, as the standard library's dataclasses and
# namedtuple make their methods: from source with each key written as its repr().
_MAKERS: dict[tuple[str, ...], Callable[[Sequence[float]], dict[str, float]]] = {}
_MAX_MAKERS = 4096
_MAX_MAKER_KEYS = 1024


def _maker(tags: tuple[str, ...]) -> Callable[[Sequence[float]], dict[str, float]]:
    """``lambda v: {tags[0]: v[0], tags[1]: v[1], ...}``, made once per tags tuple."""
    maker = _MAKERS.get(tags)
    if maker is None:
        if len(tags) > _MAX_MAKER_KEYS:
            return functools.partial(_zip_dict, tags)
        entries = ", ".join(f"{tag!r}: v[{index}]" for index, tag in enumerate(tags))
        maker = eval(f"lambda v: {{{entries}}}", {})  # noqa: S307 - literals only
        if len(_MAKERS) >= _MAX_MAKERS:
            _MAKERS.clear()
        _MAKERS[tags] = maker
    return maker


def _zip_dict(tags: tuple[str, ...], values: Sequence[float]) -> dict[str, float]:
    return dict(zip(tags, values))  # noqa: B905 - the same length by construction


@dataclass(frozen=True, slots=True)
class EvalRecord:
    """The result of evaluating one checkpoint.

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

    __slots__ = ("_records",)

    def __init__(self, records: Iterable[EvalRecord] = ()) -> None:
        ordered = sorted(records, key=_step_of)
        for earlier, later in itertools.pairwise(ordered):
            if earlier.step == later.step:
                raise ValueError(f"Two eval records have the step {later.step}.")
        self._records = ordered

    @classmethod
    def _from_sorted(cls, records: list[EvalRecord]) -> EvalHistory:
        # For records known to be sorted and unique, without checking them again.
        history = cls.__new__(cls)
        history._records = records
        return history

    @property
    def records(self) -> list[EvalRecord]:
        """The records, ascending by step."""
        return self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[EvalRecord]:
        return iter(self._records)

    def __bool__(self) -> bool:
        return bool(self._records)

    def __repr__(self) -> str:
        if not self._records:
            return "EvalHistory([])"
        first, last = self._records[0].step, self._records[-1].step
        return f"EvalHistory(<{len(self._records)} records, steps {first}..{last}>)"

    def get(self, step: int) -> EvalRecord | None:
        """The record of ``step``.

        Args:
            step: a global step.

        Returns:
            The record, or None if that step was not evaluated.
        """
        index = bisect.bisect_left(self._records, step, key=_step_of)
        if index < len(self._records) and self._records[index].step == step:
            return self._records[index]
        return None

    def before(self, step: int) -> EvalHistory:
        """The records of the steps before ``step``.

        Args:
            step: a global step (excluded).

        Returns:
            A new history with the records whose step is smaller than ``step``.
        """
        index = bisect.bisect_left(self._records, step, key=_step_of)
        return EvalHistory._from_sorted(self._records[:index])

    def to_pandas(self) -> pandas.DataFrame:
        """The history as a table, one row per step.

        Returns:
            A DataFrame with the columns ``step``, ``wall_time``,
            ``checkpoint_path`` (None where unknown), then one float column per
            metric, sorted by name, NaN where a record lacks the metric.
        """
        import pandas

        records = self._records
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


@dataclass
class _TrackedFile:
    reader: EventFileReader
    identity: tuple[int, int] | None  # (st_dev, st_ino); None on object stores
    fingerprint: bytes = b""  # see _fingerprint(), at the offset below
    fingerprint_offset: int = 0
    # The file's size when it was last read: a file still this size has nothing new,
    # even when it ends in a record still being written.
    size: int = 0


# The key under which the time of a step's checkpoint_path is kept among its metrics'.
_CHECKPOINT = object()

_NEW = object.__new__
_SET_STEP = EvalRecord.step.__set__  # type: ignore[attr-defined]
_SET_WALL_TIME = EvalRecord.wall_time.__set__  # type: ignore[attr-defined]
_SET_METRICS = EvalRecord.metrics.__set__  # type: ignore[attr-defined]
_SET_CHECKPOINT_PATH = EvalRecord.checkpoint_path.__set__  # type: ignore[attr-defined]


def _new_record(
    step: int, wall_time: float, metrics: Mapping[str, float], checkpoint_path: str | None
) -> EvalRecord:
    # EvalRecord(...) at 60% of the cost, for the one record per step of a full read:
    # the __init__ of a frozen dataclass sets each field through object.__setattr__.
    record = _NEW(EvalRecord)
    _SET_STEP(record, step)
    _SET_WALL_TIME(record, wall_time)
    _SET_METRICS(record, metrics)
    _SET_CHECKPOINT_PATH(record, checkpoint_path)
    return record


class _Merge:
    """The values of one step being merged: per key, the latest wall time wins."""

    __slots__ = ("metrics", "times", "wall_time", "checkpoint_path")

    def __init__(self, record: EvalRecord | None, times: dict[object, float] | None) -> None:
        if record is None:
            self.metrics: dict[str, float] = {}
            self.times: dict[object, float] = {}
            self.wall_time = -math.inf
            self.checkpoint_path: str | None = None
            return
        # Copies: the record may already be in a returned history.
        self.metrics = dict(record.metrics)
        if times is None:
            times = dict.fromkeys(self.metrics, record.wall_time)
            if record.checkpoint_path is not None:
                times[_CHECKPOINT] = record.wall_time
        else:
            times = dict(times)
        self.times = times
        self.wall_time = record.wall_time
        self.checkpoint_path = record.checkpoint_path

    def add(
        self,
        wall_time: float,
        tags: tuple[str, ...],
        values: tuple[float, ...],
        checkpoint: str | None,
    ) -> None:
        """Merge one event's values; at equal wall times this event wins."""
        times = self.times
        if wall_time >= self.wall_time:
            # Not older than anything merged before (the usual order): all of it wins.
            self.metrics.update(zip(tags, values))  # noqa: B905 - the same length
            for key in tags:
                times[key] = wall_time
            if checkpoint is not None:
                self.checkpoint_path = checkpoint
                times[_CHECKPOINT] = wall_time
            self.wall_time = wall_time
            return
        for key, value in zip(tags, values):  # noqa: B905 - the same length by construction
            known = times.get(key)
            if known is None or wall_time >= known:
                self.metrics[key] = value
                times[key] = wall_time
        if checkpoint is not None:
            known = times.get(_CHECKPOINT)
            if known is None or wall_time >= known:
                self.checkpoint_path = checkpoint
                times[_CHECKPOINT] = wall_time

    def record(self, step: int) -> EvalRecord | None:
        """The merged record, or None if no event had a metric or a checkpoint_path."""
        if not self.metrics and self.checkpoint_path is None:
            return None
        return _new_record(step, self.wall_time, self.metrics, self.checkpoint_path)

    def varying_times(self) -> dict[object, float] | None:
        """The per-key times, or None if every value has the record's wall time."""
        wall_time = self.wall_time
        if all(t == wall_time for t in self.times.values()):
            return None
        return self.times


class HistoryReader:
    """Reads the eval history of a model directory incrementally.

    Every ``poll()`` looks for event files matching the pattern, reads the
    bytes appended to each since the previous poll, and returns the whole
    history. A file that shrank, was replaced or vanished makes the reader
    read all files again (rare: TensorFlow only ever appends).

    Args:
        model_dir: the Estimator's model directory.
        event_file_pattern: a glob relative to ``model_dir`` (the meaning of
            ``tf.estimator.BestExporter``'s argument of the same name).
    """

    # Bytes of events decoded at a time: bounds the memory of reading a large file.
    READ_SIZE = 1 << 23

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        event_file_pattern: str = DEFAULT_EVENT_FILE_PATTERN,
    ) -> None:
        self._model_dir = os.fspath(model_dir)
        fs.check_filesystem(self._model_dir)
        self._pattern = event_file_pattern
        self._glob = fs.join(fs.glob_escape(self._model_dir), event_file_pattern)
        self._reset()

    def _reset(self) -> None:
        self._files: dict[str, _TrackedFile] = {}
        self._by_step: dict[int, EvalRecord] = {}
        self._records: list[EvalRecord] = []  # ascending; copied into each returned history
        # Per-key wall times of the steps whose values do not all have the record's.
        # Kept as such, as the events that set them, or as the time of all metrics.
        self._times: dict[int, dict[object, float] | list[RawEvent] | float] = {}
        self._history = EvalHistory._from_sorted([])

    @property
    def model_dir(self) -> str:
        """The model directory."""
        return self._model_dir

    @property
    def event_file_pattern(self) -> str:
        """The glob of the event files, relative to the model directory."""
        return self._pattern

    def poll(self) -> EvalHistory:
        """Read what was appended since the last poll.

        Returns:
            The whole history so far. Histories returned earlier are not changed.
        """
        found = self._find_files()
        if self._changed(found):
            logger.info(
                "Event files under %s shrank, were replaced or removed; reading them again.",
                self._model_dir,
            )
            self._reset()
        changed = False
        with _gc_paused():
            for path, status in found.items():
                changed |= self._read(path, status)
        if changed:
            self._history = EvalHistory._from_sorted(list(self._records))
        return self._history

    def _read(self, path: str, status: fs.FileStatus) -> bool:
        """Read what was appended to one file; True if a record was added or changed."""
        tracked = self._files.get(path)
        if tracked is None:
            tracked = _TrackedFile(EventFileReader(path), status.identity)
            self._files[path] = tracked
        reader = tracked.reader
        changed = False
        if status.size == tracked.size:
            return changed
        tracked.size = status.size
        while status.size > reader.offset and not reader.damaged:
            offset = reader.offset
            changed |= self._add(reader.read_columns(self.READ_SIZE))
            if reader.offset - offset < self.READ_SIZE:
                # At the end, or at a record still being written: another read would
                # open the file again to find nothing new.
                break
        if tracked.fingerprint_offset != reader.offset:
            head = tracked.fingerprint[:_HEAD_SIZE]
            if tracked.fingerprint_offset >= _HEAD_SIZE and len(reader.last_bytes) == min(
                reader.offset, _TAIL_SIZE
            ):
                # The head is known and the reader holds the new tail: no read needed.
                tracked.fingerprint = head + reader.last_bytes
            else:
                tracked.fingerprint = _fingerprint(path, reader.offset)
            tracked.fingerprint_offset = reader.offset
        return changed

    def _find_files(self) -> dict[str, fs.FileStatus]:
        found = {}
        for path in fs.glob(self._glob):
            try:
                status = fs.stat(path)
            except OSError:
                continue  # unreadable or gone since the glob
            if status is not None and not status.is_dir:
                found[path] = status
        return found

    def _changed(self, found: dict[str, fs.FileStatus]) -> bool:
        """True if a file read before is gone, shorter than what was read, or another file."""
        for path, tracked in self._files.items():
            status = found.get(path)
            if status is None or status.identity != tracked.identity:
                return True
            offset = tracked.reader.offset
            if status.size < offset:
                return True
            # A file deleted and written again can get the inode number back, and object
            # stores have none: what was read must still be there.
            if status.size > offset and status.size != tracked.size and offset:
                if _fingerprint(path, tracked.fingerprint_offset) != tracked.fingerprint:
                    return True
        return False

    def _add(self, columns: EventColumns) -> bool:
        """Merge events into the records; True if any record was added or changed."""
        # A read that ends inside a step (the Estimator's metrics, and its checkpoint_path
        # in the next read) continues that step first; the rest usually comes in order.
        steps = columns.steps
        head = 0
        if self._records:
            last = self._records[-1].step
            while head < len(steps) and steps[head] == last:
                head += 1
        if head:
            changed = self._add_events(
                list(zip(*(column[:head] for column in columns), strict=True))
            )
            return self._add(EventColumns(*(column[head:] for column in columns))) or changed
        changed = self._add_in_order(columns)
        if changed is None:
            changed = self._add_events(list(zip(*columns, strict=True)))
        return changed

    def _add_events(self, events: list[RawEvent]) -> bool:
        """Merge events one by one; True if any record was added or changed."""
        # The usual event is the only one of a step above all steps so far: it
        # becomes a record at once.
        by_step = self._by_step
        records = self._records
        inserted: dict[int, EvalRecord] = {}
        changed = False
        count = len(events)
        index = 0
        while index < count:
            wall_time, step, tags, values, strings = events[index]
            index += 1
            if index < count and events[index][1] == step or step in by_step:
                # Several events of one step (TF2 writes one scalar per event, the
                # Estimator its metrics and then its checkpoint_path), or a step seen before.
                end = index
                while end < count and events[end][1] == step:
                    end += 1
                changed |= self._merge(step, events[index - 1 : end], inserted)
                index = end
                continue
            checkpoint = strings.get(CHECKPOINT_PATH_TAG) if strings else None
            if not tags and checkpoint is None:
                continue  # nothing of it goes into a record
            # The same length by construction; strict=True costs 30%.
            metrics = dict(zip(tags, values))  # noqa: B905
            record = _new_record(step, wall_time, metrics, checkpoint)
            by_step[step] = record
            if not records or step > records[-1].step:
                records.append(record)
            else:
                inserted[step] = record
            changed = True
        if len(inserted) > _MAX_INSERTS:
            records.extend(inserted.values())
            records.sort(key=_step_of)
        else:
            for step in sorted(inserted):
                bisect.insort(records, inserted[step], key=_step_of)
        return changed

    def _add_in_order(self, columns: EventColumns) -> bool | None:
        """Add events that come the usual way, column by column.

        The usual way: every step above all steps so far, in ascending order, with one
        event, or two in time order of which the second holds only a checkpoint_path
        (the Estimator). This is what ``_add_events`` would make of them, built in bulk.

        Returns:
            Whether a record was added, or None (nothing done) if they do not come so.
        """
        walls, steps, tags, values, strings = columns
        count = len(steps)
        if count < 2:
            return None
        step_array = np.fromiter(steps, np.int64, count)
        gaps = np.diff(step_array)
        records = self._records
        if gaps.min() < 0 or (records and steps[0] <= records[-1].step):
            return None
        # Groups of one or two events of the same step.
        starts = np.flatnonzero(np.concatenate(([True], gaps > 0)))
        sizes = np.diff(np.append(starts, count))
        if sizes.max() > 2:
            return None
        checkpoints = [found.get(CHECKPOINT_PATH_TAG) if found else None for found in strings]
        has_checkpoint = np.fromiter(map(operator.is_not, checkpoints, _NONES), bool, count)
        has_tags = np.fromiter(map(bool, tags), bool, count)
        pairs = starts[sizes == 2]
        if len(pairs):
            later = pairs + 1
            wall_array = np.fromiter(walls, np.float64, count)
            usual = (
                has_checkpoint[later]
                & ~has_tags[later]
                & (has_tags[pairs] | has_checkpoint[pairs])
                & (wall_array[pairs] <= wall_array[later])
            )
            if not usual.all():
                return None
            varying = pairs[wall_array[pairs] != wall_array[later]]
            # The metrics' time; the checkpoint_path's is the record's.
            self._times.update(
                zip(step_array[varying].tolist(), wall_array[varying].tolist(), strict=True)
            )
        lasts = starts + sizes - 1
        kept = has_tags[starts] | has_checkpoint[lasts]  # the others make no record
        firsts = starts[kept].tolist()
        lasts = lasts[kept].tolist()
        if not firsts:
            return False
        metrics = _metrics(list(map(tags.__getitem__, firsts)), map(values.__getitem__, firsts))
        made = list(map(_NEW, itertools.repeat(EvalRecord, len(firsts))))
        new_steps = list(map(steps.__getitem__, firsts))
        _consume(map(_SET_STEP, made, new_steps))
        _consume(map(_SET_WALL_TIME, made, map(walls.__getitem__, lasts)))
        _consume(map(_SET_METRICS, made, metrics))
        _consume(map(_SET_CHECKPOINT_PATH, made, map(checkpoints.__getitem__, lasts)))
        self._by_step.update(zip(new_steps, made, strict=True))
        records.extend(made)
        return True

    def _merge(self, step: int, events: list[RawEvent], inserted: dict[int, EvalRecord]) -> bool:
        """Merge the events of one step into its record; True if the record changed."""
        old = self._by_step.get(step)
        used = [e for e in events if e[2] or (e[4] and CHECKPOINT_PATH_TAG in e[4])]
        if not used:
            return False
        if old is None and all(a[0] <= b[0] for a, b in itertools.pairwise(used)):
            # A new step written in order (the Estimator: its metrics, then its
            # checkpoint_path): every event wins over the ones before it.
            metrics: dict[str, float] = {}
            checkpoint = None
            for _, _, tags, values, strings in used:
                metrics.update(zip(tags, values))  # noqa: B905 - the same length
                if strings and CHECKPOINT_PATH_TAG in strings:
                    checkpoint = strings[CHECKPOINT_PATH_TAG]
            record = _new_record(step, used[-1][0], metrics, checkpoint)
            if used[0][0] != used[-1][0]:
                # Per-key times differ; worked out from the events if the step comes again.
                self._times[step] = used
        else:
            merge = _Merge(old, _times_of(self._times.get(step), old))
            for wall_time, _, tags, values, strings in used:
                checkpoint = strings.get(CHECKPOINT_PATH_TAG) if strings else None
                merge.add(wall_time, tags, values, checkpoint)
            record = merge.record(step)
            times = merge.varying_times()
            if times is None:
                self._times.pop(step, None)
            else:
                self._times[step] = times
        self._by_step[step] = record
        records = self._records
        if step in inserted:
            inserted[step] = record
        elif old is not None:
            records[bisect.bisect_left(records, step, key=_step_of)] = record
        elif not records or step > records[-1].step:
            records.append(record)
        else:
            inserted[step] = record
        return True


def _times_of(
    entry: dict[object, float] | list[RawEvent] | float | None, record: EvalRecord | None
) -> dict[object, float] | None:
    """The per-key wall times of a step, from what ``HistoryReader._times`` keeps of it."""
    if entry is None or isinstance(entry, dict):
        return entry
    times: dict[object, float] = {}
    if isinstance(entry, float):
        # The Estimator's pair: the metrics at `entry`, the checkpoint_path at the record's time.
        times = dict.fromkeys(record.metrics, entry)
        times[_CHECKPOINT] = record.wall_time
        return times
    for wall_time, _, tags, _, strings in entry:
        times.update(dict.fromkeys(tags, wall_time))
        if strings and CHECKPOINT_PATH_TAG in strings:
            times[_CHECKPOINT] = wall_time
    return times


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a poll builds its records.

    A full read makes one long-lived object per eval, and CPython runs a full
    collection whenever long-lived objects grew by a quarter. Each of those
    walks the whole heap (TensorFlow alone is ~300,000 objects) and finds
    nothing, as records hold no reference cycles: that was a third of the time
    of reading 200,000 evals. Mercurial pauses it the same way (``util.nogc``).
    Reference counting still frees everything else; a collector that someone
    else disabled stays disabled.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _fingerprint(path: str, offset: int) -> bytes:
    """The first bytes of a file and the last ones before ``offset``, or b"" if unreadable."""
    try:
        with fs.open_read(path) as file:
            head = file.read(min(offset, _HEAD_SIZE))
            file.seek(max(offset - _TAIL_SIZE, 0))
            return head + file.read(min(offset, _TAIL_SIZE))
    except OSError:
        return b""


def read_eval_history(
    model_dir: str | os.PathLike[str], event_file_pattern: str = DEFAULT_EVENT_FILE_PATTERN
) -> EvalHistory:
    """Read the eval history of a model directory.

    Args:
        model_dir: the Estimator's model directory.
        event_file_pattern: a glob relative to ``model_dir``; all matching
            files are read and merged.

    Returns:
        One record per evaluated step, ascending.
    """
    return HistoryReader(model_dir, event_file_pattern).poll()
