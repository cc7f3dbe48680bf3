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

Speed: a full read decodes every record, so the per-value Python work
dominates. Event files repeat the same few layouts over and over (the same
tags, dtypes and metadata, only the numbers change), so the decoder learns the
byte layout of an event it has decoded with protobuf and afterwards decodes
events with the same layout with one regular expression match (which checks
every byte that is not a number) and one ``struct`` unpack. The layouts are
sound by construction: everything but fixed-width numbers and opaque image or
audio bytes must be identical, so protobuf would decode the event the same way.

This module imports neither TensorFlow nor MLflow; it parses with the protos
that ``tensorboard`` ships, and reads files through ``fs`` (TensorFlow is
imported there only for a ``scheme://`` path).
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import crc32c
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

from mlflow_best_export import fs

logger = logging.getLogger(__name__)

__all__ = ["TAIL_SIZE", "EventFileReader", "RawEvent", "ScalarEvent", "read_events"]

#: How many of the last bytes consumed ``EventFileReader.last_bytes`` keeps.
TAIL_SIZE = 16

_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")
_HEADER_SIZE = 12
_FOOTER_SIZE = 4
# Large enough for few system calls, small enough that the events decoded from one
# buffer stay in the CPU caches; a record larger than this gets a buffer of its size.
_CHUNK_SIZE = 1 << 20

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
        # Masked CRCs of record lengths already verified: the length CRC is a pure
        # function of the length, and records of one file share a few lengths.
        self._length_crcs: dict[int, int] = {}
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
        events: list[RawEvent] = []
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
        self, file: io.RawIOBase, available: int, budget: int, events: list[RawEvent]
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
        self, buf: bytearray, view: memoryview, end: int, events: list[RawEvent]
    ) -> tuple[int, int]:
        """Decode the whole records in ``buf[:end]``.

        Returns:
            ``(used, needed)``: bytes of whole records consumed, and the size of
            the record that is incomplete at ``used`` (or of its header).
        """
        # The hot loop of a full read: everything it touches is a local name, and
        # the learned-layout fast path is inlined. Writers repeat a cycle of layouts
        # (TF2: one per tag), so the layout that followed the last one is tried first.
        unpack_header = _HEADER.unpack_from
        unpack_u32 = _U32.unpack_from
        crc = crc32c.crc32c
        length_crcs = self._length_crcs
        layouts_of = self._decoder.layouts.get
        decode_other = self._decoder.decode_other
        append = events.append
        previous = expected = None
        pos = 0
        while end - pos >= _HEADER_SIZE:
            length, length_crc = unpack_header(buf, pos)
            if length_crcs.get(length) != length_crc:
                if _masked_crc(view[pos : pos + 8]) != length_crc:
                    self._stop(pos, "the CRC of its length does not match")
                    return pos, 0
                length_crcs[length] = length_crc
            start = pos + _HEADER_SIZE
            stop = start + length
            if stop + _FOOTER_SIZE > end:
                return pos, _HEADER_SIZE + length + _FOOTER_SIZE
            value = crc(view[start:stop])
            if ((value >> 15 | value << 17) + 0xA282EAD8) & 0xFFFFFFFF != unpack_u32(buf, stop)[0]:
                self._stop(pos, "the CRC of its data does not match")
                return pos, 0
            pos = stop + _FOOTER_SIZE
            layout = expected
            if layout is None or layout.size != length or not layout.fullmatch(buf, start, stop):
                layout = None
                for candidate in layouts_of(length, ()):
                    if candidate.fullmatch(buf, start, stop):
                        layout = candidate
                        break
                if previous is not None:
                    previous.successor = layout
            if layout is not None:
                append(layout.decode(buf, start))
                previous = layout
                expected = layout.successor
                if expected is layout:
                    # The same layout again and again: one match for the whole run.
                    pos, damaged = layout.decode_run(buf, view, pos, end, append)
                    if damaged:
                        self._stop(pos, "the CRC of its data does not match")
                        return pos, 0
                continue
            # Learning a layout may forget the others: predict nothing from here.
            previous = expected = None
            try:
                event = decode_other(buf, view, start, stop)
            except DecodeError:
                pos = start - _HEADER_SIZE
                self._stop(pos, "its data is not an Event protocol buffer")
                return pos, 0
            if event is not None:
                append(event)
        return pos, _HEADER_SIZE

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


@dataclass(frozen=True)
class _Dtype:
    """How to read the value of a rank-0 tensor of one numeric dtype."""

    code: str | None  # struct code of `tensor_content` for learned layouts; None: no fast path
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
    return _Dtype(code, struct.calcsize("<" + code), field, _unpacker(code))


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
    types_pb2.DT_HALF: _Dtype("e", 2, "half_val", _unpacker("e"), _half_from_bits),
    types_pb2.DT_BFLOAT16: _Dtype(None, 2, "half_val", _bfloat16_from_content, _bfloat16_from_bits),
}

# How a value was read, for learning the layout of its event (or a _Dtype, or None).
_SIMPLE = "simple"
_STRING = "string"
_MEDIA = "media"


class _Decoder:
    """Decodes the Events of one file, remembering what each tag holds.

    Writers put a value's ``metadata`` (which plugin wrote it) only on the
    first occurrence of its tag, so the plugin is remembered per tag and the
    later values of the tag are treated the same way.
    """

    # Bounds on layout learning, so that a file whose events never repeat a
    # layout costs little more than decoding them with protobuf alone.
    MAX_ATTEMPTS = 256
    MAX_PER_SIZE = 4
    MAX_STRETCHY = 8

    def __init__(self) -> None:
        self._plugins: dict[str, str] = {}
        #: Learned layouts by event size; cleared in place, never replaced.
        self.layouts: dict[int, list[_Layout]] = {}
        # Layouts of events with image or audio bytes, which change size from event to event.
        self._stretchy: list[_StretchyLayout] = []
        self._seen_sizes: set[int] = set()
        self._attempts = 0
        self._plugin_changes = 0

    def decode_other(
        self, buf: bytearray, view: memoryview, start: int, stop: int
    ) -> RawEvent | None:
        """Decode the Event in ``buf[start:stop]`` that no layout of its size matched.

        Returns:
            The event's scalars and strings, or None if it has neither.

        Raises:
            DecodeError: the bytes are not an Event.
        """
        for layout in self._stretchy:
            event = layout.decode(buf, start, stop)
            if event is not None:
                return event
        return self.decode_event(view[start:stop])

    def decode_event(self, data: bytes | memoryview) -> RawEvent | None:
        """Decode one serialized Event with protobuf, and learn its layout.

        Returns:
            The event's scalars and strings, or None if it has neither.

        Raises:
            DecodeError: the bytes are not an Event.
        """
        event = event_pb2.Event.FromString(data)
        if event.WhichOneof("what") != "summary":
            return None
        scalars: dict[str, float] = {}
        strings: dict[str, str] = {}
        roles: list[tuple[str, object]] = []
        changes = self._plugin_changes
        for value in event.summary.value:
            roles.append((value.tag, self._decode_value(value, scalars, strings)))
        if not scalars and not strings:
            return None
        # If a tag's plugin changed within this event, its earlier values were read
        # under the old plugin, which the next event with these bytes would not do.
        if scalars and not strings and changes == self._plugin_changes:
            self._learn(data, roles)
        return (
            event.wall_time,
            event.step,
            tuple(scalars),
            tuple(scalars.values()),
            strings or None,
        )

    def _decode_value(
        self, value: summary_pb2.Summary.Value, scalars: dict[str, float], strings: dict[str, str]
    ) -> object:
        """Put one value into ``scalars`` or ``strings``; return how it was read."""
        kind = value.WhichOneof("value")
        tag = value.tag
        if kind == "simple_value":
            scalars[tag] = value.simple_value
            return _SIMPLE
        if kind != "tensor":
            return _MEDIA if kind in ("image", "audio") else None
        plugin = value.metadata.plugin_data.plugin_name
        if plugin:
            if self._plugins.get(tag) != plugin:
                self._plugins[tag] = plugin
                self._plugin_changes += 1
                # Layouts of values without metadata embed the decision of the old plugin.
                self.layouts.clear()
                self._stretchy.clear()
        else:
            plugin = self._plugins.get(tag, "")
        if plugin not in ("", _SCALARS_PLUGIN, _TEXT_PLUGIN):
            return None  # images, histograms, audio, ... whatever their dtype
        tensor = value.tensor
        shape = tensor.tensor_shape
        if shape.unknown_rank or len(shape.dim):
            return None
        if tensor.dtype == types_pb2.DT_STRING:
            if plugin == _SCALARS_PLUGIN or len(tensor.string_val) > 1:
                return None
            text = tensor.string_val[0] if tensor.string_val else b""
            strings[tag] = text.decode("utf-8", errors="replace")
            return _STRING
        dtype = _DTYPES.get(tensor.dtype)
        if dtype is None or plugin == _TEXT_PLUGIN:
            return None
        number = dtype.value(tensor)
        if number is None:
            return None
        scalars[tag] = number
        return dtype

    def _learn(self, data: bytes | memoryview, roles: Sequence[tuple[str, object]]) -> None:
        size = len(data)
        has_media = any(role is _MEDIA for _, role in roles)
        # A layout pays off only if it repeats: learn on the second event of a size,
        # or at once for events with media, whose size differs every time.
        if not has_media and size not in self._seen_sizes:
            if len(self._seen_sizes) > 4096:
                self._seen_sizes.clear()
            self._seen_sizes.add(size)
            return
        if self._attempts >= self.MAX_ATTEMPTS:
            return
        self._attempts += 1
        layout = _learn_layout(bytes(data), roles)
        if layout is None:
            return
        if isinstance(layout, _StretchyLayout):
            if len(self._stretchy) >= self.MAX_STRETCHY:
                del self._stretchy[0]
            self._stretchy.append(layout)
            return
        bucket = self.layouts.setdefault(size, [])
        if len(bucket) >= self.MAX_PER_SIZE:
            del bucket[0]
        bucket.append(layout)


# -- learned layouts ----------------------------------------------------------------------


class _NotALayout(Exception):
    """The event has a shape that the layout fast path does not handle."""


# Kinds of the variable regions of a layout besides numbers (which are struct codes).
_STEP = "step"  # the step varint, of the template's byte size
_OPAQUE = "opaque"  # bytes of an image or audio: any content
_LENGTH = "length"  # the length varint of a message that holds opaque bytes

# Field numbers of the `value` oneof of Summary.Value.
_VALUE_ONEOF = frozenset({2, 3, 4, 5, 6, 8})
_VAL_NUMBERS = {f.name: f.number for f in tensor_pb2.TensorProto.DESCRIPTOR.fields}
# (struct code, wire type) of float_val and double_val, unpacked and packed.
_FIXED_VALS = frozenset({("f", 5), ("f", 2), ("d", 1), ("d", 2)})


class _Field(NamedTuple):
    number: int
    wire: int
    head: int  # first byte after the key: the length varint of a length-delimited field
    start: int  # first byte of the payload
    end: int


class _Region(NamedTuple):
    """Bytes of an event that may differ between events of one layout."""

    offset: int
    size: int
    kind: str  # a struct code, _STEP, _OPAQUE or _LENGTH
    # _OPAQUE: the length regions of the fields around it, innermost last.
    # _LENGTH: unused.
    lengths: tuple[_Region, ...] = ()
    tail: int = 0  # _LENGTH: bytes after the end of its field up to the end of the event


def _read_varint(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _NotALayout


def _fields(data: bytes, pos: int, end: int) -> list[_Field]:
    """The fields of the message in ``data[pos:end]``, in wire order."""
    fields = []
    while pos < end:
        key, head = _read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            start = head
            _, pos = _read_varint(data, head, end)
        elif wire == 1:
            start, pos = head, head + 8
        elif wire == 2:
            size, start = _read_varint(data, head, end)
            pos = start + size
        elif wire == 5:
            start, pos = head, head + 4
        else:
            raise _NotALayout  # groups
        if pos > end:
            raise _NotALayout
        fields.append(_Field(number, wire, head, start, pos))
    return fields


def _one(fields: list[_Field], number: int) -> _Field | None:
    found = [f for f in fields if f.number == number]
    if len(found) > 1:
        raise _NotALayout
    return found[0] if found else None


def _length_of(field: _Field, data_size: int) -> _Region:
    return _Region(field.head, field.start - field.head, _LENGTH, tail=data_size - field.end)


class _Walk:
    """Finds the variable regions of one decoded event, given how each value was read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.regions: list[_Region] = []
        self.keys: list[str] = []

    def event(self, roles: Sequence[tuple[str, object]]) -> None:
        data = self.data
        fields = _fields(data, 0, len(data))
        # Exactly wall_time, an optional step and the summary, in this order.
        if [(f.number, f.wire) for f in fields] not in ([(1, 1), (2, 0), (5, 2)], [(1, 1), (5, 2)]):
            raise _NotALayout
        self.regions.append(_Region(fields[0].start, 8, "d"))
        if len(fields) == 3:
            size = fields[1].end - fields[1].start
            if size > 9:  # a negative step takes ten bytes: rare, left to protobuf
                raise _NotALayout
            self.regions.append(_Region(fields[1].start, size, _STEP))
        summary = fields[-1]
        values = _fields(data, summary.start, summary.end)
        if len(values) != len(roles) or any(f.number != 1 or f.wire != 2 for f in values):
            raise _NotALayout
        for field, (tag, role) in zip(values, roles, strict=True):
            self.value(field, tag, role, (summary, field))

    def value(self, field: _Field, tag: str, role: object, around: tuple[_Field, ...]) -> None:
        fields = _fields(self.data, field.start, field.end)
        oneof = [f for f in fields if f.number in _VALUE_ONEOF]
        if len(oneof) > 1:
            raise _NotALayout  # protobuf keeps the last one; leave that to protobuf
        chosen = oneof[0] if oneof else None
        if role is _SIMPLE:
            if chosen is None or chosen.number != 2 or chosen.wire != 5:
                raise _NotALayout
            self.number(chosen.start, 4, "f", tag)
        elif isinstance(role, _Dtype):
            if chosen is None or chosen.number != 8 or chosen.wire != 2:
                raise _NotALayout
            self.tensor(chosen, tag, role)
        elif role is _MEDIA:
            if chosen is None or chosen.number not in (4, 6) or chosen.wire != 2:
                raise _NotALayout
            self.media(chosen, (*around, chosen))
        elif role is not None:
            raise _NotALayout  # strings: the layout would match only the same text

    def number(self, offset: int, size: int, code: str, tag: str) -> None:
        self.regions.append(_Region(offset, size, code))
        self.keys.append(tag)

    def tensor(self, field: _Field, tag: str, dtype: _Dtype) -> None:
        if dtype.code is None:
            raise _NotALayout
        fields = _fields(self.data, field.start, field.end)
        content = _one(fields, 4)
        values = _one(fields, _VAL_NUMBERS[dtype.field])
        if content is not None and values is None:
            if content.wire == 2 and content.end - content.start == dtype.size:
                return self.number(content.start, dtype.size, dtype.code, tag)
        # float_val / double_val hold fixed-width numbers, packed or not; the varint
        # *_val fields change size with their value, so they stay with protobuf.
        if content is None and values is not None and (dtype.code, values.wire) in _FIXED_VALS:
            if values.end - values.start == dtype.size:
                return self.number(values.start, dtype.size, dtype.code, tag)
        raise _NotALayout

    def media(self, field: _Field, around: tuple[_Field, ...]) -> None:
        # Image and Audio keep their encoded bytes in field 4, a plain `bytes`
        # field: any content parses, so only the lengths around it have to agree.
        for inner in _fields(self.data, field.start, field.end):
            if inner.number == 4 and inner.wire == 2:
                lengths = tuple(_length_of(f, len(self.data)) for f in (*around, inner))
                self.regions.append(_Region(inner.start, inner.end - inner.start, _OPAQUE, lengths))


def _part(
    data: bytes, regions: Sequence[_Region], begin: int, end: int
) -> tuple[bytes, str, list[int]]:
    """The regex and struct format of ``data[begin:end]``, whose ``regions`` may vary.

    Returns:
        ``(pattern, format, tails)``: ``tails[i]`` belongs to the length region
        captured by group ``i + 1``.
    """
    pattern = []
    fmt = ["<"]
    tails = []
    fixed_from = struct_at = begin
    for region in sorted(regions):
        offset, size, kind = region.offset, region.size, region.kind
        pattern.append(re.escape(data[fixed_from:offset]))
        if kind in (_STEP, _LENGTH):
            # A varint of the same byte size as in the template.
            varint = b"[\\x80-\\xff]{%d}[\\x00-\\x7f]" % (size - 1)
            if kind == _LENGTH:
                tails.append(region.tail)
                varint = b"(" + varint + b")"
            pattern.append(varint)
        else:
            pattern.append(b".{%d}" % size)
            if kind != _OPAQUE:
                fmt.append(f"{offset - struct_at}x{kind}")
                struct_at = offset + size
        fixed_from = offset + size
    pattern.append(re.escape(data[fixed_from:end]))
    return b"".join(pattern), "".join(fmt), tails


def _compile(pattern: bytes) -> re.Pattern[bytes]:
    return re.compile(pattern, re.DOTALL)


def _needs_float(regions: Sequence[_Region]) -> bool:
    return any(r.kind not in ("f", "d", "e", _STEP, _OPAQUE, _LENGTH) for r in regions)


def _step_region(regions: Sequence[_Region]) -> tuple[int, int]:
    steps = [(r.offset, r.size) for r in regions if r.kind == _STEP]
    return steps[0] if steps else (0, 0)


def _read_step(buf: bytearray, pos: int, size: int) -> int:
    """The step varint of ``size`` bytes at ``pos`` (0 bytes: the step was 0)."""
    # Unrolled for steps below 2**21, the usual ones.
    if size == 3:
        return (buf[pos] & 0x7F) | (buf[pos + 1] & 0x7F) << 7 | buf[pos + 2] << 14
    if size == 2:
        return (buf[pos] & 0x7F) | buf[pos + 1] << 7
    if size == 1:
        return buf[pos]
    if size == 0:
        return 0
    return _read_varint(buf, pos, pos + size)[0]


def _learn_layout(
    data: bytes, roles: Sequence[tuple[str, object]]
) -> _Layout | _StretchyLayout | None:
    """The layout of ``data``, an Event decoded with ``roles``; None if unsupported."""
    walk = _Walk(data)
    try:
        walk.event(roles)
    except _NotALayout:
        return None
    opaque = [r for r in walk.regions if r.kind == _OPAQUE]
    if len(opaque) == 1:
        return _StretchyLayout(data, walk.regions, walk.keys, opaque[0])
    return _Layout(data, walk.regions, walk.keys)


class _Layout:
    """The byte layout of one kind of event: fixed bytes, and where its numbers are.

    ``fullmatch`` checks every fixed byte (tags, dtypes, shapes, metadata,
    lengths) and the form of the step varint; ``decode`` then reads the
    numbers with one ``struct`` unpack. Any event that matches decodes exactly
    as the event the layout was learned from, except for the numbers.

    Writers often write one layout many times in a row (TF1 evals: the same
    metrics every time); ``decode_run`` checks such a run of whole framed
    records with one match and unpacks it with one ``iter_unpack``.
    """

    __slots__ = ("size", "successor", "fullmatch", "_unpack", "_tags", "_as_float", "_step")
    __slots__ += ("_run", "_run_unpack")

    def __init__(self, data: bytes, regions: list[_Region], keys: list[str]) -> None:
        pattern, fmt, _ = _part(data, regions, 0, len(data))
        #: The size of the events of this layout.
        self.size = len(data)
        #: The layout of the record that followed the last one of this layout.
        self.successor: _Layout | None = None
        self.fullmatch = _compile(pattern).fullmatch
        self._unpack = struct.Struct(fmt).unpack_from
        self._tags = tuple(keys)
        self._as_float = _needs_float(regions)
        self._step = _step_region(regions)
        # A framed record: its header is fixed by the size, its footer is the data CRC.
        header = _HEADER.pack(self.size, _masked_crc(struct.pack("<Q", self.size)))
        self._run = _compile(b"(?:%s%s.{4})+" % (re.escape(header), pattern)).match
        padding = self.size - struct.calcsize(fmt)
        self._run_unpack = struct.Struct(f"<{_HEADER_SIZE}x{fmt[1:]}{padding}xI").iter_unpack

    def decode(self, buf: bytearray, start: int) -> RawEvent:
        """The event in ``buf`` at ``start``, which ``fullmatch`` accepted."""
        numbers = self._unpack(buf, start)
        pos, size = self._step
        step = _read_step(buf, start + pos, size)
        values = tuple(map(float, numbers[1:])) if self._as_float else numbers[1:]
        return (numbers[0], step, self._tags, values, None)

    def decode_run(
        self, buf: bytearray, view: memoryview, pos: int, end: int, append: Callable
    ) -> tuple[int, bool]:
        """Decode the framed records from ``pos`` on that have this layout.

        Returns:
            ``(pos, damaged)``: where the run ends, or the record whose data CRC
            does not match.
        """
        match = self._run(buf, pos, end)
        if match is None:
            return pos, False
        crc = crc32c.crc32c
        tags = self._tags
        as_float = self._as_float
        step_at, step_size = self._step
        size = self.size
        framed = _HEADER_SIZE + size + _FOOTER_SIZE
        start = pos + _HEADER_SIZE  # of the data of the record at `pos`
        for numbers in self._run_unpack(view[pos : match.end()]):
            value = crc(view[start : start + size])
            if ((value >> 15 | value << 17) + 0xA282EAD8) & 0xFFFFFFFF != numbers[-1]:
                return start - _HEADER_SIZE, True
            at = start + step_at
            if step_size == 3:  # _read_step, inlined for the usual case
                step = (buf[at] & 0x7F) | (buf[at + 1] & 0x7F) << 7 | buf[at + 2] << 14
            else:
                step = _read_step(buf, at, step_size)
            values = tuple(map(float, numbers[1:-1])) if as_float else numbers[1:-1]
            append((numbers[0], step, tags, values, None))
            start += framed
        return start - _HEADER_SIZE, False


class _StretchyLayout:
    """The layout of events with one image or audio value whose bytes vary in size.

    The event splits into a prefix (up to the encoded bytes), the bytes, and a
    suffix of fixed size. Both parts are checked like a ``_Layout``; the
    lengths of the messages around the bytes are captured in the prefix and
    must agree with where the suffix begins, so the event has the template's
    structure with only the size and content of the bytes changed.
    """

    __slots__ = ("_prefix", "_suffix", "_suffix_size", "_tails", "_head", "_tail", "_tags")
    __slots__ += ("_as_float", "_step")

    def __init__(
        self, data: bytes, regions: list[_Region], keys: list[str], opaque: _Region
    ) -> None:
        suffix_at = opaque.offset + opaque.size
        head = [r for r in regions if r.offset < opaque.offset]
        tail = [r for r in regions if r.offset >= suffix_at]
        pattern, head_fmt, self._tails = _part(data, head + list(opaque.lengths), 0, opaque.offset)
        self._prefix = _compile(pattern).match
        pattern, tail_fmt, _ = _part(data, tail, suffix_at, len(data))
        self._suffix = _compile(pattern).fullmatch
        self._suffix_size = len(data) - suffix_at
        self._head = struct.Struct(head_fmt).unpack_from
        self._tail = struct.Struct(tail_fmt).unpack_from
        self._tags = tuple(keys)
        self._as_float = _needs_float(regions)
        self._step = _step_region(regions)

    def decode(self, buf: bytearray, start: int, stop: int) -> RawEvent | None:
        """The event in ``buf[start:stop]``, or None if it does not have this layout."""
        suffix_at = stop - self._suffix_size
        if suffix_at < start:
            return None
        match = self._prefix(buf, start, suffix_at)
        if match is None or self._suffix(buf, suffix_at, stop) is None:
            return None
        for group, tail in enumerate(self._tails, 1):
            raw = match.group(group)
            if _read_varint(raw, 0, len(raw))[0] != stop - tail - match.end(group):
                return None
        numbers = self._head(buf, start) + self._tail(buf, suffix_at)
        pos, size = self._step
        step = _read_step(buf, start + pos, size)
        values = tuple(map(float, numbers[1:])) if self._as_float else numbers[1:]
        return (numbers[0], step, self._tags, values, None)
