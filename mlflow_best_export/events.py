"""TensorBoard event files -> scalar events, without TensorFlow.

An event file is a sequence of TFRecord-framed ``Event`` protocol buffers::

    uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)

``EventFileReader`` reads a file incrementally from a byte offset, a buffer at
a time, through three steps, each over all the records of the buffer at once:

1. framing (``_frame``): record boundaries with ``struct``; the length CRCs from a
   table, the data CRCs of all records by one ``crc32c`` pass;
2. decoding (``wire.decode``): each value of each record as (tag, kind, plugin,
   number or text), with numpy for the records in a canonical form and protobuf
   (upb) for every other one (see ``wire``);
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
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

import crc32c
import numpy as np

from mlflow_best_export import fs, wire

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
    text_tags: np.ndarray  # of str
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
        buf = bytearray(capacity + wire.PAD)
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
                values = wire.decode(buf, used, frames.starts, frames.stops)
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
    pos, limit, framing = 0, end - _HEADER, _HEADER + _FOOTER
    while pos <= limit:
        append(pos)
        pos += unpack(buf, pos)[0] + framing
    incomplete = bool(heads) and pos > end  # only the last record can run past the end
    data = np.frombuffer(buf, np.uint8)  # the buffer has wire.PAD bytes after `end`
    u32 = np.ndarray((len(buf) - 3,), "<u4", data, strides=(1,))
    at = np.array(heads, np.int64)
    lengths = np.ndarray((len(buf) - 7,), "<u8", data, strides=(1,))[at]
    # The last header's CRC too: a damaged length must not read as a record being written.
    bad = np.flatnonzero(_length_crcs(lengths) != u32[at + 8])
    if incomplete:
        pos = heads.pop()
    needed = int(lengths[-1]) + framing if incomplete else _HEADER if pos < end else 0
    starts = at[: len(heads)] + _HEADER
    stops = starts + lengths[: len(heads)].astype(np.int64)
    crcs = _unmasked(u32[stops])
    del data, u32
    bad_data = np.zeros(0, np.int64)
    if len(heads) and not _all_data_crcs_match(buf, starts, stops, crcs):
        with memoryview(buf) as view:
            slices = map(slice, starts.tolist(), stops.tolist())
            found = np.fromiter(map(crc32c.crc32c, map(view.__getitem__, slices)), "u4", len(heads))
        bad_data = np.flatnonzero(found != crcs)
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


# CRC32C's residue: the CRC of any data followed by its own CRC (little-endian).
_RESIDUE = 0x48674BC7
# Eight zero bytes, then four that take a CRC32C computation from the residue back to
# its start (as if no byte had been read): the little-endian high half of this word.
_RESTART = np.uint64(0xB0802EF6 << 32)


def _all_data_crcs_match(buf: bytearray, starts: np.ndarray, stops: np.ndarray, crcs) -> bool:
    """Whether every payload ``buf[starts[k]:stops[k]]`` has the CRC ``crcs[k]``, by one
    CRC32C pass over all of them instead of one call per record.

    Between two payloads lie 16 bytes, a footer and the next header. With them
    replaced by the payload's expected CRC and ``_RESTART``, the pass ends at
    ``_RESIDUE`` exactly when every payload matches (a mismatch moves the end away
    from it: each step of CRC32C is invertible). The bytes are put back afterwards.
    """
    words = np.ndarray((len(buf) - 7,), "<u8", np.frombuffer(buf, np.uint8), strides=(1,))
    after = stops + 8
    saved = words[stops], words[after]
    # Each CRC fills the footer and the header's first 4 bytes (zero) -- past the last
    # payload, these 16 bytes are whatever follows it, restored as well.
    words[stops], words[after] = crcs, _RESTART
    with memoryview(buf) as view:
        found = crc32c.crc32c(view[starts[0] : stops[-1] + 4])
    words[stops], words[after] = saved
    return found == _RESIDUE


def _mask(crc: int) -> int:
    """TFRecord's masked CRC of a raw crc32c value."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _unmasked(masked: np.ndarray) -> np.ndarray:
    """The raw crc32c values of TFRecord's masked CRCs (uint32 arrays)."""
    crcs = masked - np.uint32(0xA282EAD8)
    return (crcs << 15) | (crcs >> 17)


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

    def events(self, values: wire.Values) -> EventBatch:
        """The scalar and string events of ``values``."""
        tensors = values.tensors
        plugins = self._effective(values.tags[tensors], values.plugins)
        kinds = values.kinds[tensors]
        scalar = values.kinds == wire.K_SIMPLE
        scalar[tensors] = (kinds == wire.K_NUMBER) & ((plugins == "") | (plugins == "scalars"))
        chosen = np.flatnonzero((kinds == wire.K_STRING) & ((plugins == "") | (plugins == "text")))
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
            values.tags[text],
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
