"""The compiled part of the event reader: TFRecord framing, CRC32C and the Event walk.

``scan`` goes over the framed records in a buffer, checks both CRCs and walks
each ``Event`` field by field (Event -> Summary -> Value -> TensorProto /
SummaryMetadata), writing what it found into preallocated columns. It accepts
only the encodings it understands completely: the fields TensorFlow's writers
write, each once, with their own wire type, ASCII strings, well-formed varints
and lengths. Anything else (another field, a duplicate, a group, a string that
is not ASCII, a dtype it does not read, an impossible length) marks the record
``FALLBACK``, and the caller decodes that record with protobuf, which is then
the judge of whether it is an Event at all. So what ``scan`` decodes, protobuf
would decode the same way; the mutation fuzz tests in ``tests/test_events.py``
hold it to that.

Compiled with numba (``cache=True``: a process after the first loads the
machine code from ``__pycache__``). With ``NUMBA_DISABLE_JIT=1`` the same code
runs as Python, slowly.
"""

from __future__ import annotations

import threading

import numpy as np

# Columns of the record table.
R_STATUS, R_START, R_STOP, R_STEP, R_SIG, R_V0, R_V1, R_CRC = range(8)
RECORD_COLUMNS = 8
# Record status.
NOTHING, VALUES, FALLBACK = 0, 1, 2

# Columns of the value table.
V_KIND, V_TAG, V_TAG_END, V_PLUGIN, V_PLUGIN_END, V_TEXT, V_TEXT_END = range(7)
VALUE_COLUMNS = 7
# What a Summary.Value holds.
K_OTHER, K_SIMPLE, K_NUMBER, K_STRING, K_TENSOR = range(5)

# Why a scan returned.
MORE, FULL, BAD_LENGTH_CRC, BAD_DATA_CRC = range(4)

# How a TensorProto dtype is read (an index into the table ``dtype_classes`` builds).
D_OTHER, D_FLOAT, D_DOUBLE, D_INT32, D_INT64, D_STRING, D_PROTOBUF = range(7)

#: Records with more data than this have their data CRC checked by the caller
#: (``crc32c`` uses the CPU's CRC instruction; the table code here does ~1 GB/s).
DEFERRED_CRC = 2048
#: Distinct value layouts per scan; more and the scan returns ``FULL``.
MAX_SIGNATURES = 512
SLOTS = 2048  # hash table of the signatures: a power of two, > 2 * MAX_SIGNATURES

_BAD = -1

# The functions to compile, in definition order; compiled on the first scan, so that
# importing the reader does not import numba.
_COMPILED: list[str] = []
_lock = threading.Lock()


def _compiled(function):
    _COMPILED.append(function.__name__)
    return function


def compile_all() -> None:
    """Compile the walk (or load it from numba's cache); later calls do nothing."""
    with _lock:
        if not _COMPILED:
            return
        from numba import njit

        namespace = globals()
        for name in _COMPILED:
            # No function allocates (``scan`` gets all its tables), so none needs numba's
            # reference counting. Without it numba 0.66+ (LLVM 22) still counts references
            # to every array handed to a helper, which made the walk 1.5x slower.
            namespace[name] = njit(cache=True, nogil=True, _nrt=False)(namespace[name])
        _COMPILED.clear()


def crc_tables() -> np.ndarray:
    """The slice-by-8 tables of CRC32C (Castagnoli), as int64 for overflow-free math."""
    table = np.zeros((8, 256), np.int64)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table[0, byte] = crc
    for k in range(1, 8):
        table[k] = (table[k - 1] >> 8) ^ table[0][table[k - 1] & 0xFF]
    return table


def scratch_views() -> tuple[np.ndarray, ...]:
    """8 scratch bytes and their float32, float64, int32 and int64 views, for ``scan``."""
    scratch = np.zeros(8, np.uint8)
    return (
        scratch,
        scratch[:4].view(np.float32),
        scratch.view(np.float64),
        scratch[:4].view(np.int32),
        scratch.view(np.int64),
    )


@_compiled
def _u32(buf, pos):
    return (
        np.int64(buf[pos])
        | np.int64(buf[pos + 1]) << 8
        | np.int64(buf[pos + 2]) << 16
        | (np.int64(buf[pos + 3]) << 24)
    )


@_compiled
def _masked_crc(buf, start, stop, table):
    crc = np.int64(0xFFFFFFFF)
    pos = start
    while stop - pos >= 8:
        crc ^= _u32(buf, pos)
        crc = (
            table[7, crc & 0xFF]
            ^ table[6, (crc >> 8) & 0xFF]
            ^ table[5, (crc >> 16) & 0xFF]
            ^ table[4, crc >> 24]
            ^ table[3, buf[pos + 4]]
            ^ table[2, buf[pos + 5]]
            ^ table[1, buf[pos + 6]]
            ^ table[0, buf[pos + 7]]
        )
        pos += 8
    while pos < stop:
        crc = table[0, (crc ^ buf[pos]) & 0xFF] ^ (crc >> 8)
        pos += 1
    crc ^= 0xFFFFFFFF
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF


@_compiled
def _varint(buf, pos, end):
    """(value, next position) of the varint at ``pos``; next position _BAD if malformed."""
    result = np.int64(0)
    shift = 0
    while pos < end:
        byte = np.int64(buf[pos])
        pos += 1
        if shift == 63 and byte > 1:
            return result, _BAD
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    return result, _BAD


@_compiled
def _span(buf, pos, end):
    """(start, stop) of the payload of the length-delimited field whose length is at ``pos``."""
    size, start = _varint(buf, pos, end)
    if start == _BAD or size < 0 or size > end - start:
        return _BAD, _BAD
    return start, start + size


@_compiled
def _ascii(buf, start, stop):
    for pos in range(start, stop):
        if buf[pos] >= 0x80:
            return False
    return True


@_compiled
def _int32(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


@_compiled
def _plugin(buf, pos, end):
    """(start, stop) of ``SummaryMetadata.plugin_data.plugin_name`` (empty if none); _BAD."""
    name_start = name_stop = 0
    seen = 0
    while pos < end:
        key = buf[pos]
        pos += 1
        bit = 1 << (key >> 3)
        if seen & bit:
            return _BAD, _BAD
        seen |= bit
        if key == 0x0A:  # plugin_data
            start, pos = _span(buf, pos, end)
            if start == _BAD:
                return _BAD, _BAD
            inner = 0
            at = start
            while at < pos:
                field = buf[at]
                at += 1
                if field != 0x0A and field != 0x12 or inner & (1 << (field >> 3)):
                    return _BAD, _BAD
                inner |= 1 << (field >> 3)
                first, at = _span(buf, at, pos)
                if first == _BAD:
                    return _BAD, _BAD
                if field == 0x0A:  # plugin_name; 0x12 is content: any bytes
                    if not _ascii(buf, first, at):
                        return _BAD, _BAD
                    name_start, name_stop = first, at
        elif key == 0x12 or key == 0x1A:  # display_name, summary_description
            start, pos = _span(buf, pos, end)
            if start == _BAD or not _ascii(buf, start, pos):
                return _BAD, _BAD
        elif key == 0x20:  # data_class
            _, pos = _varint(buf, pos, end)
            if pos == _BAD:
                return _BAD, _BAD
        else:
            return _BAD, _BAD
    return name_start, name_stop


@_compiled
def _is_scalar_shape(buf, pos, end):
    """1 if the TensorShapeProto in ``buf[pos:end]`` has rank 0, 0 if not, _BAD."""
    scalar = 1
    seen_rank = False
    while pos < end:
        key = buf[pos]
        pos += 1
        if key == 0x12:  # dim
            start, pos = _span(buf, pos, end)
            if start == _BAD:
                return _BAD
            scalar = 0
            seen = 0
            at = start
            while at < pos:
                field = buf[at]
                at += 1
                if field != 0x08 and field != 0x12 or seen & (1 << (field >> 3)):
                    return _BAD
                seen |= 1 << (field >> 3)
                if field == 0x08:  # size
                    _, at = _varint(buf, at, pos)
                    if at == _BAD:
                        return _BAD
                else:  # name
                    first, at = _span(buf, at, pos)
                    if first == _BAD or not _ascii(buf, first, at):
                        return _BAD
        elif key == 0x18 and not seen_rank:  # unknown_rank
            seen_rank = True
            flag, pos = _varint(buf, pos, end)
            if pos == _BAD:
                return _BAD
            if flag:
                scalar = 0
        else:
            return _BAD
    return scalar


@_compiled
def _fixed(buf, pos, size, scratch):
    """Copy ``size`` little-endian bytes to ``scratch`` (whose views reinterpret them)."""
    for i in range(size):
        scratch[i] = buf[pos + i]


@_compiled
def _tensor(buf, pos, end, classes, scratch, f4, f8, i4, i8):
    """(kind, number, text start, text stop) of the TensorProto in ``buf[pos:end]``.

    kind is _BAD when the tensor uses something this walk does not read.
    """
    dtype = 0
    seen = 0
    shape = 1
    content_start = content_stop = 0
    # Count and last value of each repeated *_val field: which one counts depends
    # on the dtype, which may come after them.
    floats = doubles = ints = longs = texts = 0
    float_value = double_value = 0.0
    int_value = long_value = np.int64(0)
    text_start = text_stop = 0
    while pos < end:
        key = buf[pos]
        pos += 1
        if key == 0x08 or key == 0x12 or key == 0x18 or key == 0x22:
            bit = 1 << (key >> 3)
            if seen & bit:
                return _BAD, 0.0, 0, 0
            seen |= bit
            if key == 0x08:  # dtype
                value, pos = _varint(buf, pos, end)
                dtype = _int32(value)
            elif key == 0x18:  # version_number
                _, pos = _varint(buf, pos, end)
            else:
                start, pos = _span(buf, pos, end)
                if start == _BAD:
                    return _BAD, 0.0, 0, 0
                if key == 0x12:  # tensor_shape
                    shape = _is_scalar_shape(buf, start, pos)
                    if shape == _BAD:
                        return _BAD, 0.0, 0, 0
                else:  # tensor_content
                    content_start, content_stop = start, pos
        elif key == 0x2A or key == 0x32:  # float_val, double_val: packed
            width = 4 if key == 0x2A else 8
            start, pos = _span(buf, pos, end)
            if start == _BAD or (pos - start) % width:
                return _BAD, 0.0, 0, 0
            count = (pos - start) // width
            if count:
                _fixed(buf, pos - width, width, scratch)
                if width == 4:
                    floats += count
                    float_value = np.float64(f4[0])
                else:
                    doubles += count
                    double_value = f8[0]
        elif key == 0x2D or key == 0x31:  # float_val, double_val: one value
            width = 4 if key == 0x2D else 8
            if end - pos < width:
                return _BAD, 0.0, 0, 0
            _fixed(buf, pos, width, scratch)
            pos += width
            if width == 4:
                floats += 1
                float_value = np.float64(f4[0])
            else:
                doubles += 1
                double_value = f8[0]
        elif key == 0x3A or key == 0x52:  # int_val, int64_val: packed
            start, pos = _span(buf, pos, end)
            if start == _BAD:
                return _BAD, 0.0, 0, 0
            while start < pos:
                value, start = _varint(buf, start, pos)
                if start == _BAD:
                    return _BAD, 0.0, 0, 0
                if key == 0x3A:
                    ints += 1
                    int_value = value
                else:
                    longs += 1
                    long_value = value
        elif key == 0x38 or key == 0x50:  # int_val, int64_val: one value
            value, pos = _varint(buf, pos, end)
            if key == 0x38:
                ints += 1
                int_value = value
            else:
                longs += 1
                long_value = value
        elif key == 0x42:  # string_val
            text_start, pos = _span(buf, pos, end)
            text_stop = pos
            texts += 1
        else:
            return _BAD, 0.0, 0, 0
        if pos == _BAD:
            return _BAD, 0.0, 0, 0
    kind = classes[dtype] if 0 <= dtype < classes.shape[0] else D_OTHER
    if kind == D_PROTOBUF:
        return _BAD, 0.0, 0, 0
    if not shape or kind == D_OTHER:
        return K_TENSOR, 0.0, 0, 0
    if kind == D_STRING:
        if texts > 1:
            return K_TENSOR, 0.0, 0, 0
        return K_STRING, 0.0, text_start, text_stop
    width = 4 if kind == D_FLOAT or kind == D_INT32 else 8
    if content_stop > content_start:
        if content_stop - content_start != width:
            return K_TENSOR, 0.0, 0, 0
        _fixed(buf, content_start, width, scratch)
        if kind == D_FLOAT:
            return K_NUMBER, np.float64(f4[0]), 0, 0
        if kind == D_DOUBLE:
            return K_NUMBER, f8[0], 0, 0
        if kind == D_INT32:
            return K_NUMBER, np.float64(i4[0]), 0, 0
        return K_NUMBER, np.float64(i8[0]), 0, 0
    if kind == D_FLOAT:
        count, number = floats, float_value
    elif kind == D_DOUBLE:
        count, number = doubles, double_value
    elif kind == D_INT32:
        count, number = ints, np.float64(_int32(int_value))
    else:
        count, number = longs, np.float64(long_value)
    if count > 1:
        return K_TENSOR, 0.0, 0, 0
    return K_NUMBER, number if count else 0.0, 0, 0


@_compiled
def _value(buf, pos, end, row, values, numbers, classes, scratch, f4, f8, i4, i8):
    """Walk the Summary.Value in ``buf[pos:end]`` into ``values[row]``; False if not read."""
    seen = 0
    oneof = 0
    kind = K_OTHER
    number = 0.0
    tag_start = tag_stop = plugin_start = plugin_stop = text_start = text_stop = 0
    while pos < end:
        key = buf[pos]
        pos += 1
        if key == 0x15:  # simple_value
            if end - pos < 4:
                return False
            _fixed(buf, pos, 4, scratch)
            number = np.float64(f4[0])
            pos += 4
            kind = K_SIMPLE
            oneof += 1
            continue
        if key != 0x0A and key != 0x1A and key != 0x22 and key != 0x42 and key != 0x4A:
            return False  # node_name, histo, audio, another field or wire type
        bit = 1 << (key >> 3)
        if seen & bit:
            return False
        seen |= bit
        start, pos = _span(buf, pos, end)
        if start == _BAD:
            return False
        if key == 0x0A:  # tag
            if not _ascii(buf, start, pos):
                return False
            tag_start, tag_stop = start, pos
        elif key == 0x4A:  # metadata
            plugin_start, plugin_stop = _plugin(buf, start, pos)
            if plugin_start == _BAD:
                return False
        elif key == 0x42:  # tensor
            kind, number, text_start, text_stop = _tensor(
                buf, start, pos, classes, scratch, f4, f8, i4, i8
            )
            if kind == _BAD:
                return False
            oneof += 1
        elif key == 0x22:  # image: height, width, colorspace, encoded bytes
            fields = 0
            at = start
            while at < pos:
                field = buf[at]
                at += 1
                if field != 0x08 and field != 0x10 and field != 0x18 and field != 0x22:
                    return False
                if fields & (1 << (field >> 3)):
                    return False
                fields |= 1 << (field >> 3)
                if field == 0x22:
                    _, at = _span(buf, at, pos)
                else:
                    _, at = _varint(buf, at, pos)
                if at == _BAD:
                    return False
            kind = K_OTHER
            oneof += 1
        else:  # obsolete_old_style_histogram: any bytes
            kind = K_OTHER
            oneof += 1
    if oneof > 1:
        return False  # protobuf keeps the last one of the oneof; left to it
    values[row, V_KIND] = kind
    values[row, V_TAG] = tag_start
    values[row, V_TAG_END] = tag_stop
    values[row, V_PLUGIN] = plugin_start
    values[row, V_PLUGIN_END] = plugin_stop
    values[row, V_TEXT] = text_start
    values[row, V_TEXT_END] = text_stop
    numbers[row] = number
    return True


@_compiled
def _event(
    buf,
    start,
    stop,
    record,
    records,
    walls,
    values,
    numbers,
    first,
    classes,
    scratch,
    f4,
    f8,
    i4,
    i8,
):
    """Walk one Event into ``records[record]`` and ``values[first:]``.

    Returns:
        The end of its values in the value table, or _BAD when protobuf must decode it.
    """
    seen = 0
    row = first
    wall_time = 0.0
    step = np.int64(0)
    pos = start
    while pos < stop:
        key = buf[pos]
        pos += 1
        bit = 1 << (key >> 3)
        if seen & bit:
            return _BAD
        seen |= bit
        if key == 0x09:  # wall_time
            if stop - pos < 8:
                return _BAD
            _fixed(buf, pos, 8, scratch)
            wall_time = f8[0]
            pos += 8
        elif key == 0x10:  # step
            step, pos = _varint(buf, pos, stop)
            if pos == _BAD:
                return _BAD
        elif key == 0x2A:  # summary
            begin, pos = _span(buf, pos, stop)
            if begin == _BAD:
                return _BAD
            while begin < pos:
                if buf[begin] != 0x0A or row >= values.shape[0]:
                    return _BAD
                value, begin = _span(buf, begin + 1, pos)
                if value == _BAD:
                    return _BAD
                if not _value(
                    buf, value, begin, row, values, numbers, classes, scratch, f4, f8, i4, i8
                ):
                    return _BAD
                row += 1
        else:
            return _BAD  # file_version, graph_def, session_log, ...: protobuf decodes those
    records[record, R_STATUS] = VALUES if seen & (1 << 5) else NOTHING
    records[record, R_STEP] = step
    walls[record] = wall_time
    return row


@_compiled
def _signature_hash(buf, values, first, last):
    digest = np.int64(1469598103934665603)
    for row in range(first, last):
        digest = (digest ^ values[row, V_KIND]) * 1099511628211
        for pos in range(values[row, V_TAG], values[row, V_TAG_END]):
            digest = (digest ^ buf[pos]) * 1099511628211
        digest = (digest ^ 0xFF) * 1099511628211
        for pos in range(values[row, V_PLUGIN], values[row, V_PLUGIN_END]):
            digest = (digest ^ buf[pos]) * 1099511628211
    return digest


@_compiled
def _same_bytes(buf, a, a_end, b, b_end):
    if a_end - a != b_end - b:
        return False
    for i in range(a_end - a):
        if buf[a + i] != buf[b + i]:
            return False
    return True


@_compiled
def _same_signature(buf, values, first, last, other, other_last):
    if last - first != other_last - other:
        return False
    for i in range(last - first):
        mine, theirs = first + i, other + i
        if values[mine, V_KIND] != values[theirs, V_KIND]:
            return False
        if not _same_bytes(
            buf,
            values[mine, V_TAG],
            values[mine, V_TAG_END],
            values[theirs, V_TAG],
            values[theirs, V_TAG_END],
        ):
            return False
        if not _same_bytes(
            buf,
            values[mine, V_PLUGIN],
            values[mine, V_PLUGIN_END],
            values[theirs, V_PLUGIN],
            values[theirs, V_PLUGIN_END],
        ):
            return False
    return True  # fmt: skip


@_compiled
def scan(
    buf,
    pos,
    end,
    table,
    classes,
    records,
    walls,
    values,
    numbers,
    exemplars,
    slots,
    hashes,
    successors,
    scratch,
    f4,
    f8,
    i4,
    i8,
):
    """Frame, check and walk the records of ``buf[pos:end]`` into the tables.

    Args:
        buf: the bytes (uint8).
        pos: where the first record starts.
        end: the end of the valid bytes.
        table: ``crc_tables()``.
        classes: the D_* of each dtype number.
        records, walls: the record table (RECORD_COLUMNS int64 columns) and wall times.
        values, numbers: the value table (VALUE_COLUMNS int64 columns) and the numbers.
        exemplars: out: per signature, the first record that has it.
        slots, hashes, successors: work space: two int64 arrays of ``SLOTS`` entries
            (the hash table of the signatures) and one of ``MAX_SIGNATURES``.
        scratch, f4, f8, i4, i8: 8 bytes (uint8) and views of them as float32, float64,
            int32 and int64, for reinterpreting fixed-width numbers (``scratch_views``).

    Returns:
        ``(records, signatures, pos, why)``: how many records and signatures were
        written, where scanning stopped (a record boundary) and why (MORE: the record
        at ``pos`` is incomplete; FULL: a table is full, scan again from ``pos``;
        BAD_LENGTH_CRC / BAD_DATA_CRC: the record at ``pos`` is damaged).
    """
    slots[:] = -1
    successors[:] = -1
    previous = -1
    count = 0
    signatures = 0
    row = 0
    while True:
        if end - pos < 12:
            return count, signatures, pos, MORE
        if count == records.shape[0] or signatures == MAX_SIGNATURES:
            return count, signatures, pos, FULL
        length = np.int64(0)
        for i in range(8):
            length |= np.int64(buf[pos + i]) << (8 * i)
        if _masked_crc(buf, pos, pos + 8, table) != _u32(buf, pos + 8):
            return count, signatures, pos, BAD_LENGTH_CRC
        start = pos + 12
        if length < 0 or length > end - start - 4:
            return count, signatures, pos, MORE
        stop = start + length
        deferred = length > DEFERRED_CRC
        if not deferred and _masked_crc(buf, start, stop, table) != _u32(buf, stop):
            return count, signatures, pos, BAD_DATA_CRC
        if row + length // 2 + 1 > values.shape[0] and count:
            return count, signatures, pos, FULL  # this record's values might not fit
        records[count, R_START] = start
        records[count, R_STOP] = stop
        records[count, R_CRC] = deferred
        last = _event(
            buf,
            start,
            stop,
            count,
            records,
            walls,
            values,
            numbers,
            row,
            classes,
            scratch,
            f4,
            f8,
            i4,
            i8,
        )
        if last == _BAD:
            records[count, R_STATUS] = FALLBACK
            last = row
        elif records[count, R_STATUS] == VALUES:
            # Writers repeat a cycle of layouts: try the one that followed the last one.
            guess = successors[previous] if previous >= 0 else -1
            if guess >= 0:
                other = exemplars[guess]
                if _same_signature(
                    buf, values, row, last, records[other, R_V0], records[other, R_V1]
                ):
                    records[count, R_SIG] = guess
                    previous = guess
                    records[count, R_V0] = row
                    records[count, R_V1] = last
                    row = last
                    count += 1
                    pos = stop + 4
                    continue
            digest = _signature_hash(buf, values, row, last)
            slot = digest & (SLOTS - 1)
            while True:
                known = slots[slot]
                if known < 0:
                    slots[slot] = signatures
                    hashes[slot] = digest
                    exemplars[signatures] = count
                    records[count, R_SIG] = signatures
                    signatures += 1
                    break
                other = exemplars[known]
                if hashes[slot] == digest and _same_signature(
                    buf, values, row, last, records[other, R_V0], records[other, R_V1]
                ):
                    records[count, R_SIG] = known
                    break
                slot = (slot + 1) & (SLOTS - 1)
            if previous >= 0:
                successors[previous] = records[count, R_SIG]
            previous = records[count, R_SIG]
        records[count, R_V0] = row
        records[count, R_V1] = last
        row = last
        count += 1
        pos = stop + 4
