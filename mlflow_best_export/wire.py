"""Decoding TensorBoard ``Event`` records: each value of each record as (tag, kind,
plugin, number or text), for a whole buffer of records at once.

A record in the canonical encoding of a scalar summary (what any protobuf
serializer writes for wall time, step and values that are simple values,
rank-0 float, double, int32, int64 or string tensors or images, with their
plugin metadata) is read by ``_Wire`` with numpy, for all such records together;
every other record (``file_version`` and graph events, histograms, any other
encoding) is parsed by protobuf (upb). Each canonical form parses only one way,
so both read a record alike; the fuzz tests hold them to it. ``events`` frames
the records and gives the values their roles.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

#: Bytes past the data that vectorized reads may touch (a 10-byte varint, a double).
PAD = 32

K_OTHER, K_SIMPLE, K_NUMBER, K_STRING, K_TENSOR = range(5)  # what a Summary.Value holds


class Values(NamedTuple):
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

    def take(self, keep: np.ndarray) -> Values:
        """The values where ``keep`` (a mask over the values) holds."""
        kept, at = np.flatnonzero(keep), np.flatnonzero(keep[self.tensors])
        index = np.cumsum(keep) - 1
        return Values(
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


def decode(buf: bytearray, size: int, starts: np.ndarray, stops: np.ndarray) -> Values:
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
        plugins = np.concatenate([values.plugins, object_array(found[i][3] for i in tensors)])
        texts = values.texts + [found[i][4] if found[i][2] == K_STRING else None for i in tensors]
        values = Values(
            values.wall_times,
            values.steps,
            record[order],
            np.concatenate([values.tags, object_array(f[1] for f in found)])[order],
            np.concatenate([values.kinds, [f[2] for f in found]]).astype(np.int8)[order],
            np.concatenate([values.numbers, [0.0 if f[2] == K_STRING else f[4] for f in found]])[
                order
            ],
            tensor_at[by_place],
            plugins[by_place],
            [texts[i] for i in by_place],
        )
    if damage is not None:
        values = values.take(values.record < damage)._replace(damage=damage)
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


def object_array(items: Iterable[str | None]) -> np.ndarray:
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
        keys = self._key(at, end)  # the key each message is at (0: at its end)
        for key, kind in form:
            has = keys == key
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
                value, stop = self.varint(a + 1)
                if kind == _VARINT:
                    payload, after = value, stop
                else:  # the value is the length of the bytes after it
                    payload, after = stop, stop + np.minimum(value, 1 << 40).astype(np.int64)
                bad = (stop == a + 1) | (after > e)  # a varint of over 10 bytes, or too long
            after = np.minimum(after, e)
            if kind == _BYTES:
                payload = (np.minimum(payload, e), after)
            if idx is None:
                ok &= ~bad
                at = after
                keys = self._key(at, end)
            else:
                ok[idx[bad]] = False
                at, keys = at.copy(), keys.copy()
                at[idx], keys[idx] = after, self._key(after, e)
                payload = _spread(payload, idx, at if kind == _BYTES else None, len(has))
            found[key] = (has, payload)
        return ok & (at == end), found

    def _key(self, at: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The byte at each ``at`` before ``end``; 0 (no key) at ``end``."""
        return np.where(at < end, self.u8[at], 0)

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

    def decode(self, starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, Values]:
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
        values = Values(wall_times, steps, record, tags, kinds, numbers, t, plugins, texts)
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
        buf, spans = self.buf, zip(*(s[string].tolist() for s in text_span), strict=True)
        decoded = [buf[a:b].decode("utf-8", "replace") for a, b in spans]
        if string.all():  # the Estimator's checkpoint paths
            texts = decoded
        else:
            found = np.full(len(start), None, object)
            found[string] = object_array(decoded)
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
        a string up to 16 bytes); one that differs from the string standing for its
        slot in those, or in the bytes between, is decoded on its own.
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
        lead, index = np.empty(1 << bits, np.int64), np.arange(len(key))
        lead[slot] = index
        leader = lead[slot]  # the string that stands for each slot
        leaders = np.flatnonzero(leader == index)
        group = np.empty(len(key), np.int64)
        group[leaders] = np.arange(len(leaders))
        group = group[leader]
        differs = (length != length[leader]) | (head != head[leader]) | (tail != tail[leader])
        long = np.flatnonzero((length > 16) & ~differs)
        for word in range(8, int(length.max(initial=0)) - 8, 8):  # the bytes in between
            long = long[length[long] - 8 > word]
            same = self.u64[start[long] + word] == self.u64[start[leader[long]] + word]
            differs[long[~same]] = True
        pairs = zip(start[leaders].tolist(), stop[leaders].tolist(), strict=True)
        decoded = [self._utf8(a, b) for a, b in pairs]
        found = object_array(decoded)[group]
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
        text = tensor.string_val[0] if tensor.string_val else b""
        return tag, K_STRING, plugin, text.decode("utf-8", "replace")
    number = _number(tensor)
    return (tag, K_TENSOR, plugin, 0.0) if number is None else (tag, K_NUMBER, plugin, number)
