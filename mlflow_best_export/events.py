"""TensorBoard event files -> scalar records, without TensorFlow.

An event file is a sequence of TFRecord-framed ``Event`` protocol buffers::

    uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)

``EventFileReader`` reads one file incrementally from a byte offset, checks
both CRCs of every record and decodes each ``Event`` into a ``ScalarEvent``:
its scalars (``simple_value`` and rank-0 numeric tensors, as TF2's
``tf.summary.scalar`` writes them) and its rank-0 string tensors (the
Estimator's ``checkpoint_path``). Images, histograms, audio, tensors of rank 1
or more, graphs and the ``file_version`` event are skipped.

Damage never raises: a record that is still being written (the file ends
inside it) is left for a later ``read()``; a CRC mismatch or a payload that is
not an ``Event`` logs one warning naming the file and byte offset, keeps every
whole record before it and stops reading that file for good.

Speed: the framing, both CRCs and the walk over each Event's fields are compiled
(``_wire``, with numba); the walk reads what TensorFlow's writers write and hands
every other record to protobuf, which decides whether it is an Event at all. No
path depends on one writer's byte layout. What a list of (tag, kind, plugin)
values yields is planned once per list, and the events of one plan are built
together, column by column (``EventColumns``).

This module imports neither TensorFlow nor MLflow; it parses with the protos
that ``tensorboard`` ships, and reads files through ``fs`` (TensorFlow is
imported there only for a ``scheme://`` path).
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import crc32c
import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

from mlflow_best_export import _wire, fs

logger = logging.getLogger(__name__)

__all__ = ["TAIL_SIZE", "EventColumns", "EventFileReader", "RawEvent", "ScalarEvent", "read_events"]

#: How many of the last bytes consumed ``EventFileReader.last_bytes`` keeps.
TAIL_SIZE = 16

_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")
_HEADER_SIZE = 12
_FOOTER_SIZE = 4
# Large enough for few system calls, small enough that the events decoded from one
# buffer stay in the CPU caches; a record larger than this gets a buffer of its size.
_CHUNK_SIZE = 1 << 22

_CHECKPOINT_PATH_TAG = "checkpoint_path"
_SCALARS_PLUGIN = "scalars"
_TEXT_PLUGIN = "text"


class ScalarEvent(NamedTuple):
    """One ``Event`` that carried at least one scalar or string value.

    A named tuple rather than a dataclass because a full read creates one per
    record, and the tuple is about twice as cheap to build.

    Attributes:
        wall_time: seconds since the epoch when the event was written.
        step: the global step of the event.
        scalars: ``{tag: value}`` for ``simple_value`` and rank-0 numeric tensors.
        strings: ``{tag: text}`` for rank-0 string tensors (e.g. ``checkpoint_path``).
    """

    wall_time: float
    step: int
    scalars: dict[str, float]
    strings: dict[str, str]


#: An event as ``EventFileReader.read_raw`` returns it: ``(wall_time, step, tags, values,
#: strings)``, where the scalars are ``zip(tags, values)`` and ``strings`` is None when
#: there are none. A plain tuple of tuples, which the garbage collector stops tracking:
#: millions of ScalarEvents alive at once slow every collection down.
RawEvent = tuple[float, int, tuple[str, ...], tuple[float, ...], "dict[str, str] | None"]


class EventColumns(NamedTuple):
    """Events by column, in file order: event ``i`` is the ``RawEvent``
    ``(wall_times[i], steps[i], tags[i], values[i], strings[i])``, whose values may be
    a list. ``zip(*columns)`` gives the events."""

    wall_times: list[float]
    steps: list[int]
    tags: list[tuple[str, ...]]
    values: list[Sequence[float]]
    strings: list[dict[str, str] | None]

    @classmethod
    def empty(cls) -> EventColumns:
        return cls([], [], [], [], [])

    def append(self, event: RawEvent) -> None:
        for column, item in zip(self, event, strict=True):
            column.append(item)


def _scalar_event(raw: RawEvent) -> ScalarEvent:
    wall_time, step, tags, values, strings = raw
    # Keys and values have the same length by construction; strict=True costs 30%.
    return ScalarEvent(wall_time, step, dict(zip(tags, values)), strings or {})  # noqa: B905


class EventFileReader:
    """Reads one event file incrementally, from a byte offset to its last whole record.

    Each ``read()`` returns the events of the records appended since the last
    call. The reader never raises for damaged data: a truncated last record
    is read once it is complete; a CRC mismatch or an undecodable payload logs
    one warning (file and byte offset) and ends reading of this file.

    Args:
        path: the event file.
        offset: where to start, at a record boundary (0 for the whole file).
    """

    def __init__(self, path: str | os.PathLike[str], offset: int = 0) -> None:
        if offset < 0:
            raise ValueError(f"`offset` must be >= 0, got {offset}.")
        self._path = os.fspath(path)
        self._offset = offset
        self._damaged = False
        self._warned_errors: set[int | None] = set()
        self._decoder = _Decoder()
        self._last_bytes = b""

    @property
    def path(self) -> str:
        """The event file this reader reads."""
        return self._path

    @property
    def offset(self) -> int:
        """Bytes consumed so far; always at a record boundary."""
        return self._offset

    @property
    def last_bytes(self) -> bytes:
        """The last bytes consumed by this reader (up to ``TAIL_SIZE``; fewer before that
        many were read), so a caller can tell later that the file still holds them."""
        return self._last_bytes

    @property
    def damaged(self) -> bool:
        """True once a damaged record was found; the reader then reads nothing more."""
        return self._damaged

    def read(self, max_bytes: int | None = None) -> list[ScalarEvent]:
        """Read the whole records appended since the last call.

        Args:
            max_bytes: stop after about this many bytes (whole records), to
                bound memory on a large file; call again until ``offset`` stops
                moving. None reads to the end.

        Returns:
            The events that carried a scalar or string value, in file order.
            Empty when nothing new is complete, when the file is missing, or
            once the file was found damaged.
        """
        return list(map(_scalar_event, self.read_raw(max_bytes)))

    def read_raw(self, max_bytes: int | None = None) -> list[RawEvent]:
        """Like ``read()``, with each event as a ``RawEvent``, for bulk readers.

        Args:
            max_bytes: as for ``read()``.

        Returns:
            The events, in file order.
        """
        return list(zip(*self.read_columns(max_bytes), strict=True))

    def read_columns(self, max_bytes: int | None = None) -> EventColumns:
        """Like ``read_raw()``, with the events by column, for bulk readers.

        Args:
            max_bytes: as for ``read()``.

        Returns:
            The events, in file order.
        """
        events = EventColumns.empty()
        if self._damaged:
            return events
        try:
            with fs.open_read(self._path) as file:
                size = file.size
                if size > self._offset:
                    file.seek(self._offset)
                    budget = size if max_bytes is None else max_bytes
                    self._read_records(file, size - self._offset, budget, events)
        except FileNotFoundError:
            logger.debug("Event file %s does not exist (yet, or any more).", self._path)
        except OSError as error:
            # Once per kind of error: a file that stays unreadable is polled again and again.
            if error.errno not in self._warned_errors:
                self._warned_errors.add(error.errno)
                logger.warning("Cannot read event file %s: %s", self._path, error)
        return events

    def _read_records(
        self, file: io.RawIOBase, available: int, budget: int, events: EventColumns
    ) -> None:
        # Read only what existed when the read started: bytes appended meanwhile
        # are picked up by the next call, so every call ends.
        buf = bytearray(min(available, _CHUNK_SIZE, budget))
        view = memoryview(buf)
        filled = needed = 0
        start = self._offset
        try:
            while available > 0 and self._offset - start < budget:
                if filled == len(buf):
                    # A record larger than the buffer, at its start.
                    if needed - filled > available:
                        return  # not complete in the file yet
                    view.release()
                    buf += bytes(needed - filled)
                    view = memoryview(buf)
                count = file.readinto(view[filled : filled + min(len(buf) - filled, available)])
                if not count:
                    return
                available -= count
                filled += count
                used, needed = self._scan(buf, view, filled, events)
                self._offset += used
                if used:
                    self._last_bytes = (self._last_bytes + buf[max(0, used - TAIL_SIZE) : used])[
                        -TAIL_SIZE:
                    ]
                if self._damaged:
                    return
                if used:
                    # Same-size slice assignment: allowed while `view` is exported.
                    buf[: filled - used] = view[used:filled]
                    filled -= used
        finally:
            view.release()

    def _scan(
        self, buf: bytearray, view: memoryview, end: int, events: EventColumns
    ) -> tuple[int, int]:
        """Decode the whole records in ``buf[:end]``.

        Returns:
            ``(used, needed)``: bytes of whole records consumed, and the size of
            the record that is incomplete at ``used`` (or of its header).
        """
        tables = _tables()
        data = np.frombuffer(buf, np.uint8, end)
        pos = 0
        try:
            while True:
                count, signatures, after, why = tables.scan(data, pos, end)
                damage = self._decoder.collect(buf, view, data, tables, count, signatures, events)
                if damage is not None:
                    self._stop(*damage)
                    return damage[0], 0
                pos = after
                if why == _wire.FULL:
                    continue
                if why == _wire.MORE:
                    if end - pos < _HEADER_SIZE:
                        return pos, _HEADER_SIZE
                    return pos, _HEADER_SIZE + _HEADER.unpack_from(buf, pos)[0] + _FOOTER_SIZE
                reason = "length" if why == _wire.BAD_LENGTH_CRC else "data"
                self._stop(pos, f"the CRC of its {reason} does not match")
                return pos, 0
        finally:
            del data

    def _stop(self, pos: int, reason: str) -> None:
        self._damaged = True
        logger.warning(
            "Event file %s is damaged at byte offset %d (%s); the records before it are "
            "used and the rest of the file is ignored.",
            self._path,
            self._offset + pos,
            reason,
        )


def read_events(path: str | os.PathLike[str]) -> list[ScalarEvent]:
    """Read every whole record of one event file.

    Args:
        path: the event file.

    Returns:
        The events that carried a scalar or string value, in file order (see
        ``EventFileReader`` for what happens with damaged files).
    """
    return EventFileReader(path).read()


def _masked_crc(data: bytes | memoryview) -> int:
    value = crc32c.crc32c(data)
    return ((value >> 15 | value << 17) + 0xA282EAD8) & 0xFFFFFFFF


# -- decoding ---------------------------------------------------------------------------


class _Tables:
    """The compiled scan's output tables, reused from one buffer to the next."""

    RECORDS = 4096
    VALUES = 32768

    def __init__(self) -> None:
        self.records = np.zeros((self.RECORDS, _wire.RECORD_COLUMNS), np.int64)
        self.walls = np.zeros(self.RECORDS, np.float64)
        self.values = np.zeros((self.VALUES, _wire.VALUE_COLUMNS), np.int64)
        self.numbers = np.zeros(self.VALUES, np.float64)
        self.exemplars = np.zeros(_wire.MAX_SIGNATURES, np.int64)
        self._work = (
            np.zeros(_wire.SLOTS, np.int64),
            np.zeros(_wire.SLOTS, np.int64),
            np.zeros(_wire.MAX_SIGNATURES, np.int64),
        )
        self._scratch = _wire.scratch_views()

    def scan(self, data: np.ndarray, pos: int, end: int) -> tuple[int, int, int, int]:
        """``_wire.scan`` of ``data[pos:end]`` into these tables."""
        _wire.compile_all()
        return _wire.scan(
            data, pos, end, _CRC_TABLE, _DTYPE_CLASSES, self.records, self.walls,
            self.values, self.numbers, self.exemplars, *self._work, *self._scratch,
        )  # fmt: skip


_local = threading.local()


def _tables() -> _Tables:
    # One set per thread: readers run in training's thread and in the sync worker.
    tables = getattr(_local, "tables", None)
    if tables is None:
        tables = _local.tables = _Tables()
    return tables


@dataclass(frozen=True)
class _Dtype:
    """How to read the value of a rank-0 tensor of one numeric dtype."""

    size: int  # bytes in `tensor_content`
    field: str  # the repeated `*_val` field of TensorProto
    from_content: Callable[[bytes], float]
    from_val: Callable[[int | float], float] = float

    def value(self, tensor: tensor_pb2.TensorProto) -> float | None:
        """The tensor's value, or None if it does not hold exactly one."""
        content = tensor.tensor_content
        if content:
            return self.from_content(content) if len(content) == self.size else None
        values = getattr(tensor, self.field)
        if len(values) > 1:
            return None
        # No value at all means zero, as in tf.make_ndarray.
        return self.from_val(values[0]) if values else 0.0


def _unpacker(code: str) -> Callable[[bytes], float]:
    unpack = struct.Struct("<" + code).unpack

    def from_content(content: bytes) -> float:
        return float(unpack(content)[0])

    return from_content


def _half_from_bits(bits: int | float) -> float:
    return struct.unpack("<e", struct.pack("<H", int(bits) & 0xFFFF))[0]


def _bfloat16_from_bits(bits: int | float) -> float:
    return struct.unpack("<f", struct.pack("<I", (int(bits) & 0xFFFF) << 16))[0]


def _bfloat16_from_content(content: bytes) -> float:
    return _bfloat16_from_bits(struct.unpack("<H", content)[0])


def _numeric(code: str, field: str) -> _Dtype:
    return _Dtype(struct.calcsize("<" + code), field, _unpacker(code))


_DTYPES: dict[int, _Dtype] = {
    types_pb2.DT_FLOAT: _numeric("f", "float_val"),
    types_pb2.DT_DOUBLE: _numeric("d", "double_val"),
    types_pb2.DT_INT32: _numeric("i", "int_val"),
    types_pb2.DT_INT64: _numeric("q", "int64_val"),
    types_pb2.DT_INT16: _numeric("h", "int_val"),
    types_pb2.DT_INT8: _numeric("b", "int_val"),
    types_pb2.DT_UINT8: _numeric("B", "int_val"),
    types_pb2.DT_UINT16: _numeric("H", "int_val"),
    types_pb2.DT_UINT32: _numeric("I", "uint32_val"),
    types_pb2.DT_UINT64: _numeric("Q", "uint64_val"),
    # half_val holds the uint16 bit patterns of the values.
    types_pb2.DT_HALF: _Dtype(2, "half_val", _unpacker("e"), _half_from_bits),
    types_pb2.DT_BFLOAT16: _Dtype(2, "half_val", _bfloat16_from_content, _bfloat16_from_bits),
}


def _dtype_classes() -> np.ndarray:
    classes = np.full(256, _wire.D_OTHER, np.int64)
    classes[list(_DTYPES)] = _wire.D_PROTOBUF  # read by protobuf: the rarer numeric dtypes
    classes[types_pb2.DT_FLOAT] = _wire.D_FLOAT
    classes[types_pb2.DT_DOUBLE] = _wire.D_DOUBLE
    classes[types_pb2.DT_INT32] = _wire.D_INT32
    classes[types_pb2.DT_INT64] = _wire.D_INT64
    classes[types_pb2.DT_STRING] = _wire.D_STRING
    return classes


_CRC_TABLE = _wire.crc_tables()
_DTYPE_CLASSES = _dtype_classes()

# One value of an event as the decoder sees it: (tag, kind, plugin name).
_Entry = tuple[str, int, str]
# What to make of the values of one signature: (scalar tags, the indexes of their
# values, None for all in order; (tag, value index) of the strings); or _NOTHING.
_Plan = tuple[tuple[str, ...], "tuple[int, ...] | None", "tuple[tuple[str, int], ...]"]
_NOTHING = ((), None, ())


def _texts(buf: bytearray, rows: np.ndarray) -> Iterator[str]:
    """The text of each value row, decoded as protobuf's users do (invalid UTF-8 replaced)."""
    spans = rows[:, _wire.V_TEXT : _wire.V_TEXT_END + 1].tolist()
    chunks = map(buf.__getitem__, itertools.starmap(slice, spans))
    return map(bytearray.decode, chunks, itertools.repeat("utf-8"), itertools.repeat("replace"))


def _span(places: np.ndarray) -> slice | None:
    """``places`` (ascending) as a slice, or None if they are not evenly spaced."""
    first, last = int(places[0]), int(places[-1])
    if len(places) == 1:
        return slice(first, first + 1)
    stride = int(places[1] - places[0])
    if not (np.diff(places) == stride).all():
        return None
    return slice(first, last + 1, stride)


class _Decoder:
    """Turns the values of one file's events into scalars and strings.

    Writers put a value's ``metadata`` (which plugin wrote it) only on the
    first occurrence of its tag, so the plugin is remembered per tag and the
    later values of the tag are treated the same way. What a list of
    (tag, kind, plugin) entries yields is worked out once and kept, until a
    tag's plugin changes.
    """

    MAX_PLANS = 4096

    def __init__(self) -> None:
        self._plugins: dict[str, str] = {}
        self._plans: dict[tuple[_Entry, ...], _Plan] = {}
        self._changes = 0

    def roles(self, entries: Sequence[_Entry]) -> tuple[dict[str, int], dict[str, int]]:
        """``({tag: value index} of the scalars, {tag: value index} of the strings)``."""
        scalars: dict[str, int] = {}
        strings: dict[str, int] = {}
        for index, (tag, kind, plugin) in enumerate(entries):
            if kind == _wire.K_SIMPLE:
                scalars[tag] = index
                continue
            if kind < _wire.K_NUMBER:
                continue  # images, audio, histograms, or no value at all
            if plugin:
                if self._plugins.get(tag) != plugin:
                    self._plugins[tag] = plugin
                    self._changes += 1
                    self._plans.clear()  # they embed the decision of the old plugin
            else:
                plugin = self._plugins.get(tag, "")
            if plugin not in ("", _SCALARS_PLUGIN, _TEXT_PLUGIN):
                continue  # images, histograms, audio, ... whatever their dtype
            if kind == _wire.K_STRING and plugin != _SCALARS_PLUGIN:
                strings[tag] = index
            elif kind == _wire.K_NUMBER and plugin != _TEXT_PLUGIN:
                scalars[tag] = index
        return scalars, strings

    def plan(self, entries: tuple[_Entry, ...]) -> tuple[_Plan, bool]:
        """The plan of ``entries``, and whether it holds for later events (no plugin changed)."""
        plan = self._plans.get(entries)
        if plan is not None:
            return plan, True
        changes = self._changes
        scalars, strings = self.roles(entries)
        if scalars or strings:
            slots = tuple(scalars.values())
            plan = (
                tuple(scalars),
                None if slots == tuple(range(len(entries))) else slots,
                tuple(strings.items()),
            )
        else:
            plan = _NOTHING
        if changes != self._changes:
            return plan, False
        if len(self._plans) >= self.MAX_PLANS:
            self._plans.clear()
        self._plans[entries] = plan
        return plan, True

    def collect(
        self,
        buf: bytearray,
        view: memoryview,
        data: np.ndarray,
        tables: _Tables,
        count: int,
        signatures: int,
        events: EventColumns,
    ) -> tuple[int, str] | None:
        """Append the events of the ``count`` records ``tables`` holds.

        Returns:
            None, or ``(offset, reason)`` of the first damaged record.
        """
        records = tables.records[:count]
        damage = None
        # Data CRCs left to crc32c (large records): the first mismatch ends the records.
        deferred = np.flatnonzero(records[:, _wire.R_CRC])
        if len(deferred):
            spans = records[deferred, _wire.R_START : _wire.R_STOP + 1]
            footers = data[spans[:, 1:] + np.arange(4)].view("<u4")[:, 0]
            for index, (start, stop), footer in zip(
                deferred.tolist(), spans.tolist(), footers.tolist(), strict=True
            ):
                if _masked_crc(view[start:stop]) != footer:
                    damage = (start - _HEADER_SIZE, "the CRC of its data does not match")
                    count = index
                    break
        # Records protobuf decodes, in file order: they may change a tag's plugin.
        begin = 0
        fallback = records[:count, _wire.R_STATUS] == _wire.FALLBACK
        for index in (*np.flatnonzero(fallback).tolist(), count):
            self._values(buf, tables, begin, index, events)
            if index == count:
                break
            begin = index + 1
            start, stop = records[index, _wire.R_START : _wire.R_STOP + 1].tolist()
            try:
                event = self.decode_event(view[start:stop])
            except DecodeError:
                return start - _HEADER_SIZE, "its data is not an Event protocol buffer"
            if event is not None:
                events.append(event)
        return damage

    def _values(
        self, buf: bytearray, tables: _Tables, begin: int, end: int, events: EventColumns
    ) -> None:
        """Append the events of the records ``begin:end`` that the scan decoded.

        Column-wise: the events of one signature are built together. A plan that
        changed a tag's plugin holds for its own record only; the records after it
        are planned again.
        """
        while begin < end:
            records = tables.records[begin:end]
            decoded = np.flatnonzero(records[:, _wire.R_STATUS] == _wire.VALUES)
            if not len(decoded):
                return
            signature_of = records[decoded, _wire.R_SIG]
            found, firsts = np.unique(signature_of, return_index=True)
            plans: dict[int, _Plan] = {}
            cut = end
            for first, signature in sorted(zip(firsts.tolist(), found.tolist(), strict=True)):
                plan, lasting = self.plan(self._entries(buf, tables, signature))
                if not lasting:
                    cut = begin + int(decoded[first])
                    self._emit(buf, tables, begin, cut, plans, events)
                    self._emit(buf, tables, cut, cut + 1, {signature: plan}, events)
                    break
                plans[signature] = plan
            else:
                self._emit(buf, tables, begin, end, plans, events)
                return
            begin = cut + 1

    @staticmethod
    def _emit(
        buf: bytearray,
        tables: _Tables,
        begin: int,
        end: int,
        plans: dict[int, _Plan],
        events: EventColumns,
    ) -> None:
        """Append the events of the decoded records ``begin:end``, whose plans are known."""
        records = tables.records[begin:end]
        decoded = np.flatnonzero(records[:, _wire.R_STATUS] == _wire.VALUES)
        signature_of = records[decoded, _wire.R_SIG]
        wanted = [signature for signature, plan in plans.items() if plan is not _NOTHING]
        if len(wanted) < len(plans):
            keep = np.isin(signature_of, wanted)
            decoded, signature_of = decoded[keep], signature_of[keep]
        count = len(decoded)
        if not count:
            return
        # Per signature: where its events go among these, and their columns.
        parts = []
        for signature in wanted:
            tags, slots, texts = plans[signature]
            places = np.flatnonzero(signature_of == signature) if len(wanted) > 1 else None
            rows = decoded if places is None else decoded[places]
            firsts = records[rows, _wire.R_V0]
            if slots is None:
                slots = range(int(records[rows[0], _wire.R_V1] - firsts[0]))
            if slots:
                numbers = tables.numbers[firsts[:, None] + np.asarray(slots, np.int64)]
                values: list[Sequence[float]] = numbers.tolist()
            else:
                values = [()] * len(rows)  # e.g. the Estimator's checkpoint_path
            strings: list[dict[str, str] | None] | None = None
            if len(texts) == 1:
                strings = list(
                    map(
                        dict.fromkeys,
                        itertools.repeat((texts[0][0],)),
                        _texts(buf, tables.values[firsts + texts[0][1]]),
                    )
                )
            elif texts:
                columns = [_texts(buf, tables.values[firsts + slot]) for _, slot in texts]
                names = itertools.repeat([tag for tag, _ in texts])
                strings = list(map(dict, map(zip, names, zip(*columns, strict=True))))
            parts.append((places, tags, values, strings))
        events.wall_times.extend(tables.walls[begin:end][decoded].tolist())
        events.steps.extend(records[decoded, _wire.R_STEP].tolist())
        if len(parts) == 1:
            _, tags, values, strings = parts[0]
            events.tags.extend(itertools.repeat(tags, count))
            events.values.extend(values)
            events.strings.extend(itertools.repeat(None, count) if strings is None else strings)
            return
        spans = [_span(places) for places, *_ in parts]
        if None in spans:
            # Signatures that do not take turns evenly: each record takes the next item of its own.
            part_of = np.zeros(int(signature_of.max()) + 1, np.int64)
            part_of[wanted] = np.arange(len(wanted))
            order = part_of[signature_of].tolist()
            tags_of = [tags for _, tags, _, _ in parts]
            values_of = [iter(values) for _, _, values, _ in parts]
            strings_of = [
                itertools.repeat(None) if strings is None else iter(strings)
                for *_, strings in parts
            ]
            events.tags.extend(map(tags_of.__getitem__, order))
            events.values.extend(map(next, map(values_of.__getitem__, order)))
            events.strings.extend(map(next, map(strings_of.__getitem__, order)))
            return
        # The usual way: the signatures of a step take turns, and every column is filled
        # by one slice assignment per signature.
        tag_column: list[tuple[str, ...] | None] = [None] * count
        value_column: list[Sequence[float] | None] = [None] * count
        string_column: list[dict[str, str] | None] = [None] * count
        for span, (_, tags, values, strings) in zip(spans, parts, strict=True):
            tag_column[span] = itertools.repeat(tags, len(values))
            value_column[span] = values
            if strings is not None:
                string_column[span] = strings
        events.tags.extend(tag_column)
        events.values.extend(value_column)
        events.strings.extend(string_column)

    @staticmethod
    def _entries(buf: bytearray, tables: _Tables, signature: int) -> tuple[_Entry, ...]:
        record = tables.records[tables.exemplars[signature]]
        rows = tables.values[record[_wire.R_V0] : record[_wire.R_V1]].tolist()
        return tuple(
            (
                buf[row[_wire.V_TAG] : row[_wire.V_TAG_END]].decode("ascii"),
                row[_wire.V_KIND],
                buf[row[_wire.V_PLUGIN] : row[_wire.V_PLUGIN_END]].decode("ascii"),
            )
            for row in rows
        )

    def decode_event(self, data: bytes | memoryview) -> RawEvent | None:
        """Decode one serialized Event with protobuf.

        Returns:
            The event's scalars and strings, or None if it has neither.

        Raises:
            DecodeError: the bytes are not an Event.
        """
        event = event_pb2.Event.FromString(data)
        if event.WhichOneof("what") != "summary":
            return None
        entries = []
        found = []
        for value in event.summary.value:
            kind, found_value = _classify(value)
            entries.append((value.tag, kind, value.metadata.plugin_data.plugin_name))
            found.append(found_value)
        scalars, strings = self.roles(entries)
        if not scalars and not strings:
            return None
        return (
            event.wall_time,
            event.step,
            tuple(scalars),
            tuple(found[i] for i in scalars.values()),
            {tag: found[i] for tag, i in strings.items()} or None,
        )


def _classify(value: summary_pb2.Summary.Value) -> tuple[int, float | str | None]:
    """What one protobuf Summary.Value holds: ``(kind, number or text)``, kinds as in _wire."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return _wire.K_SIMPLE, value.simple_value
    if kind != "tensor":
        return _wire.K_OTHER, None
    tensor = value.tensor
    shape = tensor.tensor_shape
    if shape.unknown_rank or len(shape.dim):
        return _wire.K_TENSOR, None
    if tensor.dtype == types_pb2.DT_STRING:
        if len(tensor.string_val) > 1:
            return _wire.K_TENSOR, None
        text = tensor.string_val[0] if tensor.string_val else b""
        return _wire.K_STRING, text.decode("utf-8", errors="replace")
    dtype = _DTYPES.get(tensor.dtype)
    number = None if dtype is None else dtype.value(tensor)
    if number is None:
        return _wire.K_TENSOR, None
    return _wire.K_NUMBER, number
