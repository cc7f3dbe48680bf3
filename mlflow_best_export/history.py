"""Eval event files -> EvalHistory: one EvalRecord per evaluated global step.

The Estimator writes each evaluation into ``<model_dir>/eval/`` as two events
at the same step: one with the metrics and one with the ``checkpoint_path``
that was evaluated. ``HistoryReader`` merges the events of all files that
match a pattern into one record per step and keeps its place in every file,
so that each ``poll()`` reads only what was appended since the last one.

When a step was evaluated more than once (a restarted job evaluates the same
checkpoint again), the value with the latest wall time wins, key by key; at
equal wall times the event read later wins. This module imports neither
TensorFlow nor MLflow (pandas only in ``to_pandas``).
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import itertools
import logging
import math
import operator
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mlflow_best_export import fs, wire
from mlflow_best_export.events import TAIL_SIZE, EventBatch, EventFileReader
from mlflow_best_export.records import EvalHistory, EvalRecord

logger = logging.getLogger(__name__)

__all__ = ["HistoryReader", "read_eval_history"]

DEFAULT_EVENT_FILE_PATTERN = "eval/*.tfevents.*"
CHECKPOINT_PATH_TAG = "checkpoint_path"

# What tells a file from another one written over it in place: its first bytes and the
# last ones read. The first alone do not: TensorFlow writers begin every file with a
# `file_version` event stamped in whole seconds, the same for files made together.
_HEAD_SIZE = 64
_step_of = operator.itemgetter(0)  # of an EvalRecord, or of a row that starts with the step
# Young objects after a poll above which they are moved to the oldest generation at once.
_MANY_NEW_OBJECTS = 10_000
# The key under which the time of a step's checkpoint_path is kept among its metrics'.
_CHECKPOINT = object()


@dataclass
class _TrackedFile:
    reader: EventFileReader
    identity: tuple[int, int] | None  # (st_dev, st_ino); None on object stores
    fingerprint: bytes = b""  # see _fingerprint(), at the offset below
    fingerprint_offset: int = 0
    size: int = 0  # when last read: a file still this size has nothing new


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
        # Ascending. Returned histories share it: the reader only appends to it once it
        # was handed out, and copies it before it changes a record in it.
        self._records: list[EvalRecord] = []
        self._handed_out = False
        # When each record's keys were written, for merging its step again: a float is
        # the time of all its metrics (its checkpoint path has the record's); a dict has
        # the time of each key.
        self._key_times: list[float | dict[object, float]] = []
        self._history = EvalHistory.from_sorted([])

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
                for batch in self._read(path, status):
                    changed |= self._merge(batch)
        if changed:
            self._history = EvalHistory.from_sorted(self._records, len(self._records))
            self._handed_out = True
        return self._history

    def _read(self, path: str, status: fs.FileStatus) -> Iterator[EventBatch]:
        """The events appended to one file since it was last read, a buffer at a time."""
        tracked = self._files.get(path)
        if tracked is None:
            tracked = self._files[path] = _TrackedFile(EventFileReader(path), status.identity)
        reader = tracked.reader
        if status.size == tracked.size:
            return
        tracked.size = status.size
        yield from reader.batches()
        if tracked.fingerprint_offset != reader.offset:
            head = tracked.fingerprint[:_HEAD_SIZE]
            if tracked.fingerprint_offset >= _HEAD_SIZE and len(reader.last_bytes) == min(
                reader.offset, TAIL_SIZE
            ):
                tracked.fingerprint = head + reader.last_bytes  # no read needed
            else:
                tracked.fingerprint = _fingerprint(path, reader.offset)
            tracked.fingerprint_offset = reader.offset

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

    # -- merging events into records --------------------------------------------------------

    def _merge(self, batch: EventBatch) -> bool:
        """Merge one buffer's events into the records; True if any record changed.

        The steps seen for the first time whose events come in time order are
        built in one go (each event wins over the ones before it); any other step
        is merged key by key against what is known of it.
        """
        events = _Events.of(batch)
        if events is None:
            return False
        last = self._records[-1].step if self._records else None
        regular = events.regular(last, self._get)
        if not regular.all():
            for step, group in events.groups(np.flatnonzero(~regular)):
                self._merge_step(step, group)
        if regular.any():
            records, times = events.build(np.flatnonzero(regular))
            if not self._records or records[0].step > self._records[-1].step:
                self._records.extend(records)
                self._key_times.extend(times)
            else:
                pairs = zip(self._records + records, self._key_times + times, strict=True)
                self._records, self._key_times = map(
                    list, zip(*sorted(pairs, key=lambda pair: pair[0].step), strict=True)
                )
                self._handed_out = False
        return True

    def _get(self, step: int) -> EvalRecord | None:
        return EvalHistory.from_sorted(self._records).get(step)

    def _merge_step(self, step: int, events: list[tuple]) -> None:
        """Merge events ``(wall_time, names, numbers, checkpoint path)`` into one step."""
        index = bisect.bisect_left(self._records, step, key=_step_of)
        found = index < len(self._records) and self._records[index].step == step
        old = self._records[index] if found else None
        metrics = dict(old.metrics) if old is not None else {}
        times = _times_of(old, self._key_times[index]) if old is not None else {}
        checkpoint, wall_time = (old.checkpoint_path, old.wall_time) if old else (None, -math.inf)
        for wall, names, numbers, path in events:
            for name, number in zip(names, numbers, strict=True):
                if wall >= times.get(name, -math.inf):
                    metrics[name], times[name] = number, wall
            if path is not None and wall >= times.get(_CHECKPOINT, -math.inf):
                checkpoint, times[_CHECKPOINT] = path, wall
            wall_time = max(wall_time, wall)
        record = EvalRecord(step, wall_time, metrics, checkpoint)
        kept = wall_time if all(t == wall_time for t in times.values()) else times
        if self._handed_out and index < len(self._records):
            self._records, self._handed_out = list(self._records), False
        if old is None:
            self._records.insert(index, record)
            self._key_times.insert(index, kept)
        else:
            self._records[index], self._key_times[index] = record, kept


def _times_of(record: EvalRecord, kept: float | dict[object, float]) -> dict[object, float]:
    """The wall time of each key of a record (a new dict), from what was kept of it."""
    if isinstance(kept, dict):
        return dict(kept)
    times: dict[object, float] = dict.fromkeys(record.metrics, kept)
    if record.checkpoint_path is not None:
        times[_CHECKPOINT] = record.wall_time
    return times


class _Events(NamedTuple):
    """The events of a buffer that make records (scalars or a checkpoint path), by column.

    Event ``e`` has the scalars ``names[starts[e]:starts[e + 1]]`` (with ``numbers``
    alike); checkpoint path ``j`` is ``path_texts[j]`` of event ``path_events[j]``
    (ascending; an event's last one counts). ``steps`` never descend (``of`` sorts
    them if they do, keeping the read order within a step).
    """

    wall_times: np.ndarray
    steps: np.ndarray
    starts: np.ndarray
    names: list[str]
    numbers: list[float]
    path_events: np.ndarray
    path_texts: list[str]

    @classmethod
    def of(cls, batch: EventBatch) -> _Events | None:
        is_path = batch.text_tags == CHECKPOINT_PATH_TAG
        path_events = batch.text_events[is_path]
        texts = batch.texts if is_path.all() else list(itertools.compress(batch.texts, is_path))
        counts = np.diff(batch.starts)
        used = counts > 0
        used[path_events] = True
        order = np.flatnonzero(used)
        if not len(order):
            return None
        if (np.diff(batch.steps[order]) < 0).any():
            order = order[np.argsort(batch.steps[order], kind="stable")]
        if len(order) == len(used) and (np.diff(order) == 1).all():
            return cls(
                batch.wall_times,
                batch.steps,
                batch.starts,
                batch.names,
                batch.numbers,
                path_events,
                texts,
            )
        counts = counts[order]
        starts = np.concatenate(([0], np.cumsum(counts)))
        picked = (
            np.repeat(batch.starts[order] - starts[:-1], counts) + np.arange(starts[-1])
        ).tolist()
        place = np.empty(len(used), np.int64)
        place[order] = np.arange(len(order))
        moved = np.argsort(place[path_events], kind="stable")
        return cls(
            batch.wall_times[order],
            batch.steps[order],
            starts,
            list(map(batch.names.__getitem__, picked)),
            list(map(batch.numbers.__getitem__, picked)),
            place[path_events][moved],
            [texts[j] for j in moved.tolist()],
        )

    def _bounds(self, events: np.ndarray) -> np.ndarray:
        """Where each step's run of ``events`` begins, and the end."""
        steps = self.steps[events]
        return np.concatenate(([0], np.flatnonzero(steps[1:] != steps[:-1]) + 1, [len(steps)]))

    def regular(self, last: int | None, get: Callable[[int], object]) -> np.ndarray:
        """Per event: its step is new (above ``last``, or not found by ``get``) and the
        step's events come in time order."""
        bounds = self._bounds(np.arange(len(self.steps)))
        steps = self.steps[bounds[:-1]]
        new = np.ones(len(steps), bool) if last is None else steps > last
        for g in np.flatnonzero(~new).tolist():
            new[g] = get(int(steps[g])) is None
        backwards = np.flatnonzero(np.diff(self.wall_times) < 0) + 1
        late = backwards[self.steps[backwards] == self.steps[backwards - 1]]
        new[np.searchsorted(bounds, late, side="right") - 1] = False
        return np.repeat(new, np.diff(bounds))

    def groups(self, events: np.ndarray) -> Iterator[tuple[int, list[tuple]]]:
        """``(step, [(wall_time, names, numbers, checkpoint path), ...])`` of ``events``."""
        known = np.append(self.path_events, -1)  # -1: none
        path = np.searchsorted(self.path_events, events, side="right") - 1  # an event's last
        has_path = known[path] == events
        paths = [
            self.path_texts[j] if has else None
            for j, has in zip(path.tolist(), has_path.tolist(), strict=True)
        ]
        rows = zip(
            self.steps[events].tolist(),
            self.wall_times[events].tolist(),
            self.starts[events].tolist(),
            self.starts[events + 1].tolist(),
            paths,
            strict=True,
        )
        for step, group in itertools.groupby(rows, key=_step_of):
            yield (
                step,
                [
                    (wall, self.names[begin:end], self.numbers[begin:end], path)
                    for _, wall, begin, end, path in group
                ],
            )

    def build(self, events: np.ndarray) -> tuple[list[EvalRecord], list[float | dict]]:
        """The records of ``events`` (new steps, in time order), and when the keys of
        each were written (see ``HistoryReader._key_times``).

        Each event wins over the ones before it: the metrics are one dict of the
        scalars in order, the checkpoint path the last one, the time the last event's.
        """
        bounds = self._bounds(events)
        firsts, lasts = events[bounds[:-1]], events[bounds[1:] - 1]
        begins, ends = self.starts[firsts], self.starts[lasts + 1]
        # One pass over the scalars: each step's dict takes the next ones, after skipping
        # those of steps merged one by one.
        scalars = zip(self.names, self.numbers, strict=True)
        skips = begins - np.concatenate(([0], ends[:-1]))
        slices = map(
            itertools.islice, itertools.repeat(scalars), skips.tolist(), ends - begins + skips
        )
        metrics = list(map(dict, slices))
        walls = self.wall_times[lasts]
        paths = np.full(len(firsts), None, object)
        path_times = walls.copy()
        if len(self.path_events):
            keys = self.path_events
            at = np.minimum(np.searchsorted(events, keys), len(events) - 1)
            inside = np.flatnonzero(events[at] == keys)
            group = np.searchsorted(bounds, at[inside], side="right") - 1
            last = np.append(group[1:] != group[:-1], True)[: len(group)]  # a step's last path
            where, chosen = group[last], inside[last]
            path_times[where] = self.wall_times[keys[chosen]]
            paths[where] = wire.object_array(self.path_texts)[chosen]
        steps = self.steps[firsts]
        rows = zip(steps.tolist(), walls.tolist(), metrics, paths.tolist(), strict=True)
        records = list(map(tuple.__new__, itertools.repeat(EvalRecord), rows))
        # The metrics' times: the events are in time order, so the first scalar's is the
        # earliest. The Estimator's way -- its metrics, then its checkpoint path -- is one
        # time for all metrics; anything else is kept key by key.
        scalar_walls = np.append(np.repeat(self.wall_times, np.diff(self.starts)), np.nan)
        has = ends > begins
        low = np.where(has, scalar_walls[begins], walls)
        high = np.where(has, scalar_walls[ends - 1], walls)
        together = (low == high) & (path_times == walls)
        times: list[float | dict] = low.tolist()
        for g in np.flatnonzero(~together).tolist():
            part = slice(int(begins[g]), int(ends[g]))
            keyed = dict(zip(self.names[part], scalar_walls[part].tolist(), strict=True))
            if paths[g] is not None:
                keyed[_CHECKPOINT] = float(path_times[g])
            times[g] = keyed
        return records, times


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a poll builds its records.

    A full read makes long-lived objects per eval, and CPython runs a full
    collection whenever those grew by a quarter, walking the whole heap
    (TensorFlow alone is ~300,000 objects) to find nothing: records hold no
    cycles. After a large read the new objects go straight to the oldest
    generation (``gc.freeze()`` then ``gc.unfreeze()``), where the records would
    end up anyway, instead of being walked by the next young collections (10 ms
    for 100,000 records). A collector that someone else disabled stays disabled;
    objects that someone else froze stay frozen.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_count()[0] > _MANY_NEW_OBJECTS and not gc.get_freeze_count():
            gc.freeze()
            gc.unfreeze()
        gc.enable()


def _fingerprint(path: str, offset: int) -> bytes:
    """The first bytes of a file and the last ones before ``offset``, or b"" if unreadable."""
    try:
        with fs.open_read(path) as file:
            head = file.read(min(offset, _HEAD_SIZE))
            file.seek(max(offset - TAIL_SIZE, 0))
            return head + file.read(min(offset, TAIL_SIZE))
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
