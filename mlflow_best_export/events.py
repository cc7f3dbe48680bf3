"""TensorBoard event files -> scalar events, without TensorFlow.

An event file is a sequence of TFRecord-framed ``Event`` protocol buffers::

    uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)

``EventFileReader`` reads a file incrementally from a byte offset, a buffer at
a time, through three steps, each over all the records of the buffer at once:

1. framing (``_frame``): record boundaries with ``struct``, both CRCs with ``crc32c``;
2. decoding (``_decode``): each value of each record as (tag, kind, plugin,
   number or text). A record in the canonical encoding of a scalar summary
   (what any protobuf serializer writes for wall time, step and values that are
   simple values, rank-0 float, double, int32, int64 or string tensors or
   images, with their plugin metadata) is read by ``_Wire`` with numpy, for all
   such records together; every other record (``file_version`` and graph
   events, histograms, any other encoding) is parsed by protobuf (upb). Each
   canonical form parses only one way, so both read a record alike; the fuzz
   tests hold them to it.
3. roles (``_Plugins``): which values are scalars (simple values, numeric
   tensors) and which are strings (the Estimator's ``checkpoint_path``), by the
   plugin named in their tag's last metadata. Images, histograms, audio and
   tensors of rank 1 or more are skipped.

Damage never raises: a record still being written is left for a later read; a
CRC mismatch or a payload that is not an ``Event`` logs one warning naming the
file and byte offset, keeps every whole record before it and ends reading of
that file. This module imports neither TensorFlow nor MLflow; it parses with
the protos ``tensorboard`` ships and reads files through ``fs``.
"""

from __future__ import annotations

import logging
import operator
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import crc32c
import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

from mlflow_best_export import fs

logger = logging.getLogger(__name__)

__all__ = ["TAIL_SIZE", "EventBatch", "EventFileReader", "ScalarEvent", "read_events"]

#: How many of the last bytes consumed ``EventFileReader.last_bytes`` keeps.
TAIL_SIZE = 16

_LENGTH = struct.Struct("<Q")
_HEADER, _FOOTER = 12, 4
# The first buffer of a read; later ones hold about _RECORDS_PER_BUFFER records of the
# sizes met: enough for numpy's work per call to outweigh its cost per call, few enough
# to stay in the CPU's caches. A record larger than the buffer gets one of its size.
_BUFFER = 1 << 20
_RECORDS_PER_BUFFER = 1 << 13
_MAX_BUFFER = 1 << 24
# Bytes past the data that vectorized reads may touch (a 10-byte varint, a double).
_PAD = 32

K_OTHER, K_SIMPLE, K_NUMBER, K_STRING, K_TENSOR = range(5)  # what a Summary.Value holds


class ScalarEvent(NamedTuple):
    """One ``Event`` that carried at least one scalar or string value.

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


class EventBatch(NamedTuple):
    """The events of one buffer, by column, in file order; only events with a scalar
    or a string are in it.

    Event ``i`` was written at ``wall_times[i]`` for ``steps[i]``; its scalars are
    ``zip(names[starts[i]:starts[i + 1]], numbers[starts[i]:starts[i + 1]])``.
    String ``j`` is ``{text_tags[j]: texts[j]}`` of event ``text_events[j]``.
    """

    wall_times: np.ndarray  # float64
    steps: np.ndarray  # int64
    starts: np.ndarray  # int64, one more than there are events
    names: list[str]
    numbers: list[float]
    text_events: np.ndarray  # int64, ascending
    text_tags: list[str]
    texts: list[str]

    def events(self) -> list[ScalarEvent]:
        """The events one by one."""
        strings: dict[int, dict[str, str]] = {}
        for event, tag, text in zip(
            self.text_events.tolist(), self.text_tags, self.texts, strict=True
        ):
            strings.setdefault(event, {})[tag] = text
        bounds, names, numbers = self.starts.tolist(), self.names, self.numbers
        rows = zip(self.wall_times.tolist(), self.steps.tolist(), bounds, bounds[1:], strict=False)
        return [
            ScalarEvent(
                wall, step, dict(zip(names[a:b], numbers[a:b], strict=True)), strings.get(i, {})
            )
            for i, (wall, step, a, b) in enumerate(rows)
        ]


class EventFileReader:
    """Reads one event file incrementally, from a byte offset to its last whole record.

    Each read returns the events of the records appended since the last one. It
    never raises for damaged data: a truncated last record is read once it is
    complete; a CRC mismatch or an undecodable payload logs one warning (file
    and byte offset) and ends reading of this file.

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
        self._plugins = _Plugins()
        self._last_bytes = b""
        self._buffer = _BUFFER

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
        """The last bytes consumed (up to ``TAIL_SIZE``), so that a caller can tell later
        that the file still holds them."""
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
        return [event for batch in self.batches(max_bytes) for event in batch.events()]

    def batches(self, max_bytes: int | None = None) -> Iterator[EventBatch]:
        """Like ``read()``, with the events by column: one batch per buffer, as it is read.

        Args:
            max_bytes: as for ``read()``.
        """
        if self._damaged:
            return
        try:
            with fs.open_read(self._path) as file:
                if file.size > self._offset:
                    file.seek(self._offset)
                    budget = file.size if max_bytes is None else max_bytes
                    yield from self._read_buffers(file, file.size - self._offset, budget)
        except FileNotFoundError:
            logger.debug("Event file %s does not exist (yet, or any more).", self._path)
        except OSError as error:
            # Once per kind of error: a file that stays unreadable is polled again and again.
            if error.errno not in self._warned_errors:
                self._warned_errors.add(error.errno)
                logger.warning("Cannot read event file %s: %s", self._path, error)

    def _read_buffers(self, file: fs.ReadFile, available: int, budget: int) -> Iterator[EventBatch]:
        # Only what existed when the read started: bytes appended meanwhile are read by
        # the next call, so every call ends.
        capacity = min(available, self._buffer, budget)
        buf = bytearray(capacity + _PAD)
        filled, start = 0, self._offset
        while available > 0 and self._offset - start < budget:
            with memoryview(buf) as view:
                count = file.readinto(view[filled : filled + min(capacity - filled, available)])
            if not count:
                return
            available -= count
            filled += count
            frames = _frame(buf, filled)
            used, needed, damage = frames.used, frames.needed, frames.damage
            batch = None
            if len(frames.starts):
                values = _decode(buf, used, frames.starts, frames.stops)
                if values.damage is not None:  # the records before it count, none after
                    used = int(frames.starts[values.damage]) - _HEADER
                    needed, damage = 0, (used, "its data is not an Event protocol buffer")
                batch = self._plugins.events(values)
                size = used // len(frames.starts) * _RECORDS_PER_BUFFER
                self._buffer = min(_MAX_BUFFER, max(_BUFFER, size))
            if used:
                tail = self._last_bytes + bytes(buf[max(0, used - TAIL_SIZE) : used])
                self._offset, self._last_bytes = self._offset + used, tail[-TAIL_SIZE:]
                buf[: filled - used] = buf[used:filled]
                filled -= used
            if damage is not None:
                self._stop(damage[0] - used, damage[1])
            if batch is not None:
                yield batch
            if damage is not None:
                return
            wanted = max(needed, min(self._buffer, budget, available + filled))
            if wanted > capacity:
                if needed - filled > available:
                    return  # a record larger than the buffer, not complete in the file yet
                buf += bytes(wanted - capacity)
                capacity = wanted

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
    """Read every whole record of one event file (see ``EventFileReader`` for damage).

    Args:
        path: the event file.

    Returns:
        The events that carried a scalar or string value, in file order.
    """
    return EventFileReader(path).read()


# -- 1. framing -------------------------------------------------------------------------------


class _Frames(NamedTuple):
    """The whole, undamaged records of a buffer: payload ``k`` is ``buf[starts[k]:stops[k]]``."""

    starts: np.ndarray
    stops: np.ndarray
    used: int  # bytes of those records
    needed: int  # size of the record that is incomplete at `used` (or of its header); 0: none
    damage: tuple[int, str] | None  # (offset, reason) of a damaged record at `used`


def _frame(buf: bytearray, end: int) -> _Frames:
    """Find the whole records of ``buf[:end]`` and check both CRCs of each."""
    heads: list[int] = []
    append, unpack = heads.append, _LENGTH.unpack_from
    pos, limit = 0, end - _HEADER
    while pos <= limit:
        append(pos)
        pos += unpack(buf, pos)[0] + _HEADER + _FOOTER
    incomplete = bool(heads) and pos > end  # only the last record can run past the end
    data = np.frombuffer(buf, np.uint8)  # the buffer has _PAD bytes after `end`
    u32 = np.ndarray((len(buf) - 3,), "<u4", data, strides=(1,))
    at = np.array(heads, np.int64)
    lengths = np.ndarray((len(buf) - 7,), "<u8", data, strides=(1,))[at]
    # The last header's CRC too: a damaged length must not read as a record being written.
    bad = np.flatnonzero(_length_crcs(lengths) != u32[at + 8])
    if incomplete:
        pos = heads.pop()
    needed = int(lengths[-1]) + _HEADER + _FOOTER if incomplete else _HEADER if pos < end else 0
    starts = at[: len(heads)] + _HEADER
    stops = starts + lengths[: len(heads)].astype(np.int64)
    footers = u32[stops]
    del data, u32
    # Large payloads are read in place; small ones are cheaper to copy than to view.
    with memoryview(buf) as view:
        source = view if end > len(heads) * 4096 else buf
        slices = map(slice, starts.tolist(), stops.tolist())
        crcs = np.fromiter(
            map(crc32c.crc32c, map(source.__getitem__, slices)), np.uint32, len(heads)
        )
    bad_data = np.flatnonzero(_masked(crcs) != footers)
    if len(bad) or len(bad_data):
        first, what = (int(bad[0]), "length") if len(bad) else (len(heads), "")
        if len(bad_data) and bad_data[0] < first:
            first, what = int(bad_data[0]), "data"
        pos = int(at[first])
        damage = (pos, f"the CRC of its {what} does not match")
        return _Frames(starts[:first], stops[:first], pos, 0, damage)
    return _Frames(starts, stops, pos, needed, None)


# The masked CRCs of the record lengths below 2**16 met so far (0: not yet).
_LENGTH_CRCS = np.zeros(1 << 16, np.uint32)


def _length_crcs(lengths: np.ndarray) -> np.ndarray:
    """The masked CRCs of record lengths; each distinct length is computed once."""
    table = _LENGTH_CRCS
    if len(lengths) and lengths.max() >= len(table):
        return np.array([_mask(crc32c.crc32c(_LENGTH.pack(n))) for n in lengths.tolist()], "u4")
    index = lengths.astype(np.int64)
    seen = np.bincount(index) > 0
    for length in np.flatnonzero(seen & (table[: len(seen)] == 0)).tolist():
        table[length] = _mask(crc32c.crc32c(_LENGTH.pack(length)))
    return table[index]


def _mask(crc: int) -> int:
    """TFRecord's masked CRC of a raw crc32c value."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _masked(crcs: np.ndarray) -> np.ndarray:
    """``_mask`` of uint32 arrays."""
    return ((crcs >> 15) | (crcs << 17)) + np.uint32(0xA282EAD8)


# -- 2. decoding ------------------------------------------------------------------------------


@dataclass
class _Values:
    """The values of a buffer's records, in file order.

    Value ``v`` belongs to record ``record[v]``, has the tag ``tags[v]``, the kind
    ``kinds[v]`` and, if it is a number, ``numbers[v]``. Of the tensor values
    (``tensors``: their indexes, ascending), ``plugins`` has the plugin their
    metadata names ("" for none) and ``texts`` the text of each string (else None).
    """

    wall_times: np.ndarray  # per record
    steps: np.ndarray  # per record
    record: np.ndarray
    tags: np.ndarray  # of str
    kinds: np.ndarray
    numbers: np.ndarray
    tensors: np.ndarray
    plugins: np.ndarray  # of str
    texts: list[str | None]
    damage: int | None = None  # the first record that is not an Event

    def take(self, keep: np.ndarray) -> _Values:
        """The values where ``keep`` (a mask over the values) holds."""
        kept, at = np.flatnonzero(keep), np.flatnonzero(keep[self.tensors])
        index = np.cumsum(keep) - 1
        return _Values(
            self.wall_times,
            self.steps,
            self.record[kept],
            self.tags[kept],
            self.kinds[kept],
            self.numbers[kept],
            index[self.tensors[at]],
            self.plugins[at],
            [self.texts[i] for i in at.tolist()],
        )


def _decode(buf: bytearray, size: int, starts: np.ndarray, stops: np.ndarray) -> _Values:
    """The values of the records ``buf[starts[k]:stops[k]]``, all in ``buf[:size]``."""
    ok, values = _Wire(buf, size).decode(starts, stops)
    slow = np.flatnonzero(~ok).tolist()
    if not slow:
        return values
    # The other records, by protobuf; their values join the others in record order.
    found: list[tuple[int, str, int, str, float | str]] = []
    damage = None
    for k in slow:
        with memoryview(buf) as view:
            payload = bytes(view[starts[k] : stops[k]])
        try:
            event = event_pb2.Event.FromString(payload)
        except DecodeError:
            damage = k
            break
        values.wall_times[k], values.steps[k] = event.wall_time, event.step
        if event.WhichOneof("what") == "summary":
            found.extend((k, *_classify(value)) for value in event.summary.value)
    if found:
        tensors = [i for i, f in enumerate(found) if f[2] >= K_NUMBER]
        record = np.concatenate([values.record, [f[0] for f in found]]).astype(np.int64)
        order = np.argsort(record, kind="stable")
        place = np.argsort(order)
        first = len(values.record)
        tensor_at = place[np.concatenate([values.tensors, first + np.array(tensors, np.int64)])]
        by_place = np.argsort(tensor_at).tolist()
        plugins = np.concatenate([values.plugins, _objects(found[i][3] for i in tensors)])
        texts = values.texts + [found[i][4] if found[i][2] == K_STRING else None for i in tensors]
        values = _Values(
            values.wall_times,
            values.steps,
            record[order],
            np.concatenate([values.tags, _objects(f[1] for f in found)])[order],
            np.concatenate([values.kinds, [f[2] for f in found]]).astype(np.int8)[order],
            np.concatenate([values.numbers, [0.0 if f[2] == K_STRING else f[4] for f in found]])[
                order
            ],
            tensor_at[by_place],
            plugins[by_place],
            [texts[i] for i in by_place],
        )
    if damage is not None:
        values = values.take(values.record < damage)
        values.damage = damage
    return values


def _spread(payload, idx: np.ndarray, empty: np.ndarray | None, size: int):
    """A field's payload read at ``idx``, over all messages: spans are empty (at
    ``empty``) where the field is absent, numbers zero."""
    if isinstance(payload, tuple):
        spans = empty.copy(), empty.copy()
        spans[0][idx], spans[1][idx] = payload
        return spans
    full = np.zeros(size, payload.dtype)
    full[idx] = payload
    return full


def _objects(items: Iterable[str | None]) -> np.ndarray:
    """A numpy array of the given Python objects."""
    found = list(items)
    array = np.empty(len(found), object)
    array[:] = found
    return array


# Field kinds of the canonical forms; a form lists (key, kind) in field-number order.
_F32, _F64, _VARINT, _BYTES = range(4)
_EVENT = ((0x09, _F64), (0x10, _VARINT), (0x2A, _BYTES))  # wall_time, step, summary
# tag, simple_value, image, tensor, metadata
_VALUE = ((0x0A, _BYTES), (0x15, _F32), (0x22, _BYTES), (0x42, _BYTES), (0x4A, _BYTES))
# dtype, tensor_shape, tensor_content, string_val
_TENSOR = ((0x08, _VARINT), (0x12, _BYTES), (0x22, _BYTES), (0x42, _BYTES))
_IMAGE = ((0x08, _VARINT), (0x10, _VARINT), (0x18, _VARINT), (0x22, _BYTES))
_METADATA = ((0x0A, _BYTES), (0x20, _VARINT))  # plugin_data, data_class
_PLUGIN_DATA = ((0x0A, _BYTES), (0x12, _BYTES))  # plugin_name, content
#: A ``string_val`` (protobuf ``bytes``) as text, invalid UTF-8 replaced.
_TEXT = operator.methodcaller("decode", "utf-8", "replace")


class _Wire:
    """Reads the records that hold a scalar summary in canonical form, all at once.

    The forms (``_EVENT``, ``_VALUE``, ...) list the fields a message may have,
    each at most once and in field-number order, as every protobuf serializer
    writes them; a Summary is a run of values. A record in form has the values
    protobuf would read from it; any other record is left to protobuf.
    """

    _NUMERIC = {
        types_pb2.DT_FLOAT: (4, "f32"),
        types_pb2.DT_DOUBLE: (8, "f64"),
        types_pb2.DT_INT32: (4, "i32"),
        types_pb2.DT_INT64: (8, "i64"),
    }

    def __init__(self, buf: bytearray, size: int) -> None:
        self.buf, self.size = buf, size
        self.u8 = np.frombuffer(buf, np.uint8)
        # Unaligned views: element i is the number whose bytes start at i.
        for name, width in (("f32", 4), ("i32", 4), ("f64", 8), ("i64", 8), ("u64", 8)):
            code = f"<{name[0]}{width}"
            setattr(self, name, np.ndarray((len(buf) - width + 1,), code, buf, strides=(1,)))

    def varint(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(value, position after)`` of the varints at ``at`` (after == at: malformed)."""
        byte = self.u8[at]
        value = byte.astype(np.uint64)
        if (byte < 0x80).all():
            return value, at + 1
        value &= np.uint64(0x7F)
        after, going = at + 1, np.flatnonzero(byte >= 0x80)
        for shift in range(7, 70, 7):
            if not len(going):
                return value, after
            byte = self.u8[at[going] + shift // 7]
            value[going] |= (byte & 0x7F).astype(np.uint64) << np.uint64(shift)
            after[going] += 1
            going = going[byte >= 0x80]
        after[going] = at[going]  # longer than 10 bytes
        return value, after

    def fields(self, at: np.ndarray, end: np.ndarray, form: tuple) -> tuple[np.ndarray, dict]:
        """Read the messages ``[at, end)`` as ``form``.

        Returns:
            ``(ok, fields)``: which messages are in form, and per key ``(has,
            payload)``: where the field is and its start (fixed), value (varint) or
            ``(start, stop)`` (bytes; empty where absent).
        """
        ok = np.ones(len(at), bool)
        found = {}
        for key, kind in form:
            has = (at < end) & (self.u8[at] == key)
            # Only the messages that have the field are read (optional ones are rare).
            idx = None if has.all() else np.flatnonzero(has)
            if idx is not None and not len(idx):
                found[key] = (has, (at, at) if kind == _BYTES else at)
                continue
            a, e = (at, end) if idx is None else (at[idx], end[idx])
            if kind in (_F32, _F64):
                payload = a + 1
                after = payload + (4 if kind == _F32 else 8)
                bad = after > e
            else:
                value, payload = self.varint(a + 1)
                bad = (payload == a + 1) | (payload > e)
                after = payload
                if kind == _VARINT:
                    payload = value
                else:
                    bad |= value > (e - np.minimum(payload, e)).astype(np.uint64)
                    after = payload + np.minimum(value, 1 << 40).astype(np.int64)
            after = np.minimum(after, e)
            if kind == _BYTES:
                payload = (np.minimum(payload, e), after)
            if idx is None:
                ok &= ~bad
                at = after
            else:
                ok[idx[bad]] = False
                at = at.copy()
                at[idx] = after
                payload = _spread(payload, idx, at if kind == _BYTES else None, len(has))
            found[key] = (has, payload)
        return ok & (at == end), found

    def values(self, start: np.ndarray, stop: np.ndarray, ok: np.ndarray) -> tuple:
        """``(record, start, stop)`` of every Summary.Value, in record order (value j of
        record r after r's first j), and ``ok`` without the records that are no run of
        values."""
        ok = ok.copy()
        rows = np.flatnonzero(ok & (start < stop))
        at, end, found = start[rows], stop[rows], []
        while len(rows):
            length, begin = self.varint(at + 1)
            fine = (self.u8[at] == 0x0A) & (begin > at + 1) & (begin <= end)
            fine &= length <= (end - begin).astype(np.uint64)
            fin = begin + length.astype(np.int64)
            if not fine.all():
                ok[rows[~fine]] = False
                rows, begin, fin, end = rows[fine], begin[fine], fin[fine], end[fine]
            found.append((rows, begin, fin))
            going = fin < end
            rows, at, end = rows[going], fin[going], end[going]
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), ok
        record = np.concatenate([f[0] for f in found])
        counts = np.bincount(record, minlength=len(ok))
        nth = np.repeat(np.arange(len(found)), [len(f[0]) for f in found])
        order = np.empty(len(record), np.int64)
        order[(np.cumsum(counts) - counts)[record] + nth] = np.arange(len(record))
        spans = [np.concatenate([f[i] for f in found])[order] for i in (1, 2)]
        return record[order], spans[0], spans[1], ok

    def decode(self, starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, _Values]:
        """``(ok, values)``: which records are in form, and their values."""
        ok, event = self.fields(starts, stops, _EVENT)
        (wall, wall_at), (step, steps), (summary, spans) = event[0x09], event[0x10], event[0x2A]
        wall_times = np.where(wall, self.f64[wall_at], 0.0)
        steps = np.where(step, steps, np.uint64(0)).view(np.int64)
        record, start, stop, ok = self.values(*spans, ok & summary)
        good, value = self.fields(start, stop, _VALUE)
        tag_span, (simple, number_at) = value[0x0A][1], value[0x15]
        image, tensor, meta = value[0x22][0], value[0x42][0], value[0x4A][0]
        good &= (simple.astype(np.int8) + image + tensor) == 1
        numbers = np.where(simple, self.f32[number_at].astype(np.float64), 0.0)
        kinds = np.where(simple, K_SIMPLE, np.where(tensor, K_NUMBER, K_OTHER)).astype(np.int8)
        i = np.flatnonzero(image)
        if len(i):
            good[i] &= self.fields(*(span[i] for span in value[0x22][1]), _IMAGE)[0]
        t = np.flatnonzero(tensor)
        texts: list[str | None] = [None] * len(t)
        if len(t):
            tensor_ok, kinds[t], numbers[t], texts = self._tensors(*(s[t] for s in value[0x42][1]))
            good[t] &= tensor_ok
        plugins = np.full(len(t), "", object)
        m = np.flatnonzero(meta)
        if len(m):
            meta_ok, (names, utf8) = self._plugin_names(*(span[m] for span in value[0x4A][1]))
            good[m] &= meta_ok & utf8
            mine = np.isin(m, t)  # only a tensor's plugin matters
            plugins[np.searchsorted(t, m[mine])] = names[mine]
        tags, utf8 = self._strings(*tag_span)
        good &= utf8
        values = _Values(wall_times, steps, record, tags, kinds, numbers, t, plugins, texts)
        if not good.all():
            ok[record[~good]] = False
            values = values.take(ok[record])
        return ok, values

    def _tensors(self, start: np.ndarray, stop: np.ndarray) -> tuple:
        """``(ok, kind, number, texts)`` of rank-0 tensors in canonical form."""
        ok, tensor = self.fields(start, stop, _TENSOR)
        (dtype_at, dtype), (_, shape), (content, span), (text, text_span) = (
            tensor[k] for k in (0x08, 0x12, 0x22, 0x42)
        )
        dtype = np.where(dtype_at, dtype, np.uint64(0)).astype(np.int64)
        ok &= shape[0] == shape[1]  # a scalar's shape is empty, or absent
        number = np.zeros(len(start))
        numeric = np.zeros(len(start), bool)
        for code, (size, view) in self._NUMERIC.items():
            where = (dtype == code) & content & (span[1] - span[0] == size) & ~text
            number = np.where(where, getattr(self, view)[span[0]], number)
            numeric |= where
        string = (dtype == types_pb2.DT_STRING) & text & ~content
        ok &= numeric | string
        raw = map(self.buf.__getitem__, map(slice, *(s[string].tolist() for s in text_span)))
        if string.all():  # the Estimator's checkpoint paths
            texts = list(map(_TEXT, raw))
        else:
            found = np.full(len(start), None, object)
            found[string] = _objects(map(_TEXT, raw))
            texts = found.tolist()
        return ok, np.where(string, K_STRING, K_NUMBER), number, texts

    def _plugin_names(self, start: np.ndarray, stop: np.ndarray) -> tuple:
        """``(ok, (plugin names, which are UTF-8))`` of SummaryMetadata in canonical form."""
        ok, meta = self.fields(start, stop, _METADATA)
        data_ok, data = self.fields(*meta[0x0A][1], _PLUGIN_DATA)
        return ok & data_ok, self._strings(*data[0x0A][1])

    def _strings(self, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The protobuf strings at the spans (None where not UTF-8), and where they are.

        Each distinct string is decoded once: strings are grouped in a table of up
        to 2**16 slots by a hash of their length and first and last 8 bytes (all of
        a string up to 16 bytes); one that differs from its slot's first string in
        those, or in the bytes between, is decoded on its own.
        """
        if not len(start):
            return np.zeros(0, object), np.ones(0, bool)
        length = stop - start
        head, tail = self.u64[start], self.u64[np.maximum(stop - 8, start)]
        short = np.flatnonzero(length < 8)
        head[short] &= (
            np.uint64(1) << (length[short].astype(np.uint64) * np.uint64(8))
        ) - np.uint64(1)
        tail[short] = head[short]
        key = (head * np.uint64(0x9E3779B97F4A7C15)) ^ (tail * np.uint64(0xC2B2AE3D27D4EB4F))
        bits = min(16, max(4, 2 * len(key)).bit_length())
        slot = ((key ^ length.astype(np.uint64)) >> np.uint64(64 - bits)).astype(np.int64)
        lead = np.empty(1 << bits, np.int64)
        lead[slot] = np.arange(len(key))
        used = np.bincount(slot, minlength=1 << bits) > 0
        group = (np.cumsum(used) - 1)[slot]
        leaders = lead[used]
        leader = leaders[group]
        differs = (length != length[leader]) | (head != head[leader]) | (tail != tail[leader])
        long = np.flatnonzero((length > 16) & ~differs)
        for word in range(8, int(length.max(initial=0)) - 8, 8):  # the bytes in between
            long = long[length[long] - 8 > word]
            same = self.u64[start[long] + word] == self.u64[start[leader[long]] + word]
            differs[long[~same]] = True
        pairs = zip(start[leaders].tolist(), stop[leaders].tolist(), strict=True)
        decoded = [self._utf8(a, b) for a, b in pairs]
        found = _objects(decoded)[group]
        for v in np.flatnonzero(differs).tolist():
            found[v] = self._utf8(int(start[v]), int(stop[v]))
            decoded.append(found[v])
        return found, found != None if None in decoded else np.ones(len(found), bool)  # noqa: E711

    def _utf8(self, start: int, stop: int) -> str | None:
        try:
            return self.buf[start:stop].decode("utf-8")
        except UnicodeDecodeError:
            return None


# -- protobuf, for every other record -----------------------------------------------------------


def _unpacker(code: str) -> Callable[[bytes], float]:
    unpack = struct.Struct("<" + code).unpack
    return lambda content: float(unpack(content)[0])


def _half(bits: int | float) -> float:  # half_val holds the uint16 bit patterns
    return struct.unpack("<e", struct.pack("<H", int(bits) & 0xFFFF))[0]


def _bfloat16(bits: int | float) -> float:
    return struct.unpack("<f", struct.pack("<I", (int(bits) & 0xFFFF) << 16))[0]


# dtype: (bytes in tensor_content, reader of it, the *_val field, reader of one of its values)
_DTYPES: dict[int, tuple[int, Callable[[bytes], float], str, Callable]] = {
    types_pb2.DT_FLOAT: (4, _unpacker("f"), "float_val", float),
    types_pb2.DT_DOUBLE: (8, _unpacker("d"), "double_val", float),
    types_pb2.DT_INT32: (4, _unpacker("i"), "int_val", float),
    types_pb2.DT_INT64: (8, _unpacker("q"), "int64_val", float),
    types_pb2.DT_INT16: (2, _unpacker("h"), "int_val", float),
    types_pb2.DT_INT8: (1, _unpacker("b"), "int_val", float),
    types_pb2.DT_UINT8: (1, _unpacker("B"), "int_val", float),
    types_pb2.DT_UINT16: (2, _unpacker("H"), "int_val", float),
    types_pb2.DT_UINT32: (4, _unpacker("I"), "uint32_val", float),
    types_pb2.DT_UINT64: (8, _unpacker("Q"), "uint64_val", float),
    types_pb2.DT_HALF: (2, _unpacker("e"), "half_val", _half),
    types_pb2.DT_BFLOAT16: (
        2,
        lambda c: _bfloat16(struct.unpack("<H", c)[0]),
        "half_val",
        _bfloat16,
    ),
}


def _number(tensor: tensor_pb2.TensorProto) -> float | None:
    """The value of a rank-0 numeric tensor, as ``tf.make_ndarray`` reads it, or None if
    it has no numeric dtype or not exactly one value."""
    if tensor.dtype not in _DTYPES:
        return None
    size, from_content, field, from_value = _DTYPES[tensor.dtype]
    if tensor.tensor_content:
        return from_content(tensor.tensor_content) if len(tensor.tensor_content) == size else None
    values = getattr(tensor, field)
    if len(values) > 1:
        return None
    return from_value(values[0]) if values else 0.0  # no value at all means zero


def _classify(value: summary_pb2.Summary.Value) -> tuple[str, int, str, float | str]:
    """``(tag, kind, plugin, number or text)`` of one protobuf Summary.Value."""
    tag, plugin = value.tag, value.metadata.plugin_data.plugin_name
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return tag, K_SIMPLE, plugin, value.simple_value
    if kind != "tensor":
        return tag, K_OTHER, plugin, 0.0
    tensor = value.tensor
    if tensor.tensor_shape.unknown_rank or len(tensor.tensor_shape.dim):
        return tag, K_TENSOR, plugin, 0.0
    if tensor.dtype == types_pb2.DT_STRING:
        if len(tensor.string_val) > 1:
            return tag, K_TENSOR, plugin, 0.0
        return tag, K_STRING, plugin, _TEXT(tensor.string_val[0] if tensor.string_val else b"")
    number = _number(tensor)
    return (tag, K_TENSOR, plugin, 0.0) if number is None else (tag, K_NUMBER, plugin, number)


# -- 3. roles -----------------------------------------------------------------------------------


class _Plugins:
    """Which values are scalars and which strings, by the plugin that wrote their tag.

    Writers put a value's metadata (which plugin wrote it) only on the first
    occurrence of its tag, so the plugin is remembered per tag, from the last
    tensor value whose metadata named one; numeric tensors are scalars unless a
    plugin other than ``scalars`` wrote them, string tensors strings unless one
    other than ``text`` did.
    """

    def __init__(self) -> None:
        self._known: dict[str, str] = {}

    def events(self, values: _Values) -> EventBatch:
        """The scalar and string events of ``values``."""
        tensors = values.tensors
        plugins = self._effective(values.tags[tensors], values.plugins)
        kinds = values.kinds[tensors]
        scalar = values.kinds == K_SIMPLE
        scalar[tensors] = (kinds == K_NUMBER) & ((plugins == "") | (plugins == "scalars"))
        chosen = np.flatnonzero((kinds == K_STRING) & ((plugins == "") | (plugins == "text")))
        text, kept = tensors[chosen], np.flatnonzero(scalar)
        # The events: the records with a scalar or a string, in order.
        counts = np.bincount(values.record[kept], minlength=len(values.steps))
        has = counts > 0
        has[values.record[text]] = True
        events = np.flatnonzero(has)
        return EventBatch(
            values.wall_times[events],
            values.steps[events],
            np.concatenate(([0], np.cumsum(counts[events]))),
            values.tags[kept].tolist(),
            values.numbers[kept].tolist(),
            (np.cumsum(has) - 1)[values.record[text]],
            values.tags[text].tolist(),
            values.texts if len(chosen) == len(values.texts) else [values.texts[i] for i in chosen],
        )

    def _effective(self, tags: np.ndarray, plugins: np.ndarray) -> np.ndarray:
        """The plugin of each tensor value (in file order): its own, else its tag's."""
        known = self._known
        own = plugins != ""
        if own.all():  # TF2 writes it on every value
            known.update(zip(tags.tolist(), plugins.tolist(), strict=True))
            return plugins
        if not own.any() and not known.keys() & set(tags.tolist()):
            return plugins
        effective = plugins.copy()
        for v, (tag, plugin) in enumerate(zip(tags.tolist(), plugins.tolist(), strict=True)):
            if plugin:
                known[tag] = plugin
            else:
                effective[v] = known.get(tag, "")
        return effective
