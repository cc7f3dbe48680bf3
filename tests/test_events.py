"""events.py on event files written by TensorFlow: scalars out, damage never raises."""

from __future__ import annotations

import logging
import math
import os
import random
import subprocess
import sys

import eventfiles as ef
import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2

from mlflow_best_export.events import EventFileReader, ScalarEvent, read_events

LOGGER = "mlflow_best_export.events"


def as_tuples(events) -> list[tuple]:
    """(step, scalars, strings) of events, NaN made comparable."""
    return [(e.step, _nan_free(e.scalars), dict(e.strings)) for e in events]


def as_full_tuples(events) -> list[tuple]:
    """(wall_time, step, scalars, strings), NaN made comparable."""
    return [(e.wall_time, e.step, _nan_free(e.scalars), dict(e.strings)) for e in events]


def _nan_free(scalars: dict[str, float]) -> dict[str, object]:
    return {k: "nan" if math.isnan(v) else v for k, v in scalars.items()}


def reference(path) -> list[tuple]:
    return [
        (wall_time, step, _nan_free(scalars), strings)
        for wall_time, step, scalars, strings in ef.reference_events(path)
    ]


def damage_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# -- values ---------------------------------------------------------------------------------


def test_simple_values_as_tensorflow_reads_them(tmp_path):
    evals = [(s, {"loss": 1 / s, "accuracy": s / 10, "auc": -s}) for s in range(1, 8)]
    path = ef.write_summaries(tmp_path, evals)
    events = read_events(path)
    assert as_tuples(events) == ef.tf_scalar_events(path)
    assert [e.scalars["loss"] for e in events] == [ef.f32(1 / s) for s in range(1, 8)]
    assert all(isinstance(e, ScalarEvent) and e.wall_time > 1e9 for e in events)


def test_tags_that_differ_only_in_the_middle(tmp_path):
    # Tags are decoded once per distinct string, grouped by length and first and last 8
    # bytes: these agree in all of those and differ in one byte in between.
    tags = [f"eval/metric_{c}{'x' * n}_end/value" for n in (0, 1, 7, 8, 9, 30) for c in "ab"]
    tags += ["a" * 17, "a" * 8 + "b" + "a" * 8, "a" * 24 + "é"]
    evals = [(s, {tag: s * 10 + i for i, tag in enumerate(tags)}) for s in range(1, 6)]
    path = ef.write_summaries(tmp_path, evals)
    assert as_tuples(read_events(path)) == ef.tf_scalar_events(path)


@pytest.mark.parametrize("encoding", ["val", "content"])
@pytest.mark.parametrize("dtype", ef.SCALAR_DTYPES)
def test_rank0_tensors_of_every_dtype(tmp_path, dtype, encoding):
    tf = ef.tensorflow()
    values = [0, 1, -3, 7, 100, 2**15 - 1, 5, 6]
    if dtype.startswith("float"):
        values = [v / 3 for v in values] + [math.inf, -math.inf]
    evals = []
    for step, value in enumerate(values, 1):
        tensor = ef.scalar_tensor(value, dtype, encoding)
        evals.append((step, ef.tensor_summary({"t": tensor, "u": tensor})))
    path = ef.write_summaries(tmp_path, evals)
    events = read_events(path)
    expected = [float(tf.make_ndarray(ef.scalar_tensor(v, dtype, encoding))) for v in values]
    assert [e.scalars for e in events] == [{"t": v, "u": v} for v in expected]
    assert [e.step for e in events] == list(range(1, len(values) + 1))
    assert as_tuples(events) == ef.tf_scalar_events(path)


def test_nan_tensor_and_simple_value(tmp_path):
    evals = [
        (s, ef.tensor_summary({"t": ef.scalar_tensor(math.nan, "float32", "content")}))
        for s in range(1, 4)
    ] + [(s, {"v": math.nan}) for s in range(4, 7)]
    events = read_events(ef.write_summaries(tmp_path, evals))
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(math.isnan(v) for e in events for v in e.scalars.values())


def test_tf2_summary_scalar_and_write(tmp_path):
    tf = ef.tensorflow()
    metadata = ef.scalars_metadata()

    def write():
        for step in range(1, 6):
            tf.summary.scalar("loss", step / 3, step=step)
            for dtype in (tf.float64, tf.float16, tf.int32, tf.int64):
                value = tf.constant(step * 7 / 3 if dtype.is_floating else step * 7, dtype)
                tf.summary.write(dtype.name, value, step=step, metadata=metadata)
            tf.summary.write("bare_int", tf.constant(-step, tf.int64), step=step)
            tf.summary.histogram("weights", tf.range(5.0) * step, step=step)
            tf.summary.image("picture", tf.zeros([1, 3, 3, 3]) + step / 10, step=step)
            tf.summary.write("vector", tf.constant([1.0, 2.0]), step=step)

    path = ef.write_tf2(tmp_path, write)
    events = read_events(path)
    assert as_tuples(events) == ef.tf_scalar_events(path)
    assert [e.step for e in events] == [s for s in range(1, 6) for _ in range(6)]
    by_step = {}
    for e in events:
        by_step.setdefault(e.step, {}).update(e.scalars)
    assert by_step[3] == {
        "loss": ef.f32(1.0),
        "float64": 7.0,
        "float16": float(np.float16(7.0)),
        "int32": 21.0,
        "int64": 21.0,
        "bare_int": -3.0,
    }


def test_string_tensors_like_the_estimators_checkpoint_path(tmp_path):
    events = [ef.event(step, 100.0 + step, {"loss": step / 2}) for step in (2, 4, 6)] + [
        ef.event(step, 100.5 + step, strings={"checkpoint_path": f"/m/model.ckpt-{step}"})
        for step in (2, 4, 6)
    ]
    path = ef.write_events(tmp_path, events)
    found = read_events(path)
    assert as_tuples(found) == ef.tf_scalar_events(path)
    assert [(e.step, e.wall_time, e.strings) for e in found[3:]] == [
        (s, 100.5 + s, {"checkpoint_path": f"/m/model.ckpt-{s}"}) for s in (2, 4, 6)
    ]


def test_metadata_is_remembered_per_tag_once_the_writer_strips_it(tmp_path):
    steps = list(range(1, 9))
    path = ef.write_graph_summaries(tmp_path, steps)
    # The file is as claimed: later values of a tag carry no metadata.
    protos = [event_pb2.Event.FromString(r[12:-4]) for r in ef.records(path)]
    with_metadata = [
        sum(v.HasField("metadata") for v in p.summary.value) for p in protos if p.summary.value
    ]
    assert with_metadata[0] > 0 and not any(with_metadata[1:])
    events = read_events(path)
    assert [e.step for e in events] == steps
    for event, s in zip(events, steps, strict=True):
        # other_plugin is a custom plugin's tensor, picture an image, weights a histogram.
        assert event.scalars == {
            "loss": ef.f32(s / 2),
            "acc": ef.f32(1 / (s + 1)),
            "scalars_plugin": float(s),
            "no_plugin": float(2 * s),
        }
        assert event.strings == {}


def test_a_tag_that_changes_plugin_is_read_under_its_latest_metadata(tmp_path):
    tensor = ef.scalar_tensor
    evals = []
    for step in range(1, 13):
        value = tensor(step, "float32", "content")
        # Steps 1-4: no metadata; 5: a custom plugin; 9: the scalars plugin again.
        plugin = {5: "custom", 9: "scalars"}.get(step)
        evals.append((step, ef.tensor_summary({"x": value, "y": value}, plugin)))
    path = ef.write_events(
        tmp_path, [ef.tensorflow().compat.v1.Event(step=s, summary=p) for s, p in evals]
    )
    events = read_events(path)
    assert [(e.step, e.scalars) for e in events] == [
        (s, {"x": float(s), "y": float(s)}) for s in (1, 2, 3, 4, 9, 10, 11, 12)
    ]
    assert as_full_tuples(events) == reference(path)


def test_graph_images_histograms_and_vectors_are_skipped(tmp_path):
    tf = ef.tensorflow()
    with tf.Graph().as_default() as graph:
        tf.constant(np.arange(1000, dtype=np.float32), name="weights")
        writer = tf.compat.v1.summary.FileWriter(str(tmp_path), graph=graph)
        for step in range(1, 5):
            proto = tf.compat.v1.Summary()
            proto.value.add(tag="loss", simple_value=step)
            proto.value.add(
                tag="img",
                image=tf.compat.v1.Summary.Image(
                    height=1, width=1, colorspace=1, encoded_image_string=b"x" * step
                ),
            )
            proto.value.add(tag="histo", histo=tf.compat.v1.HistogramProto(min=0, max=step))
            proto.value.add(tag="vec", tensor=tf.make_tensor_proto([1.0, float(step)]))
            writer.add_summary(proto, step)
            only_images = tf.compat.v1.Summary()
            only_images.value.add(tag="img", image=proto.value[1].image)
            writer.add_summary(only_images, step)
        writer.close()
    path = ef.event_file(tmp_path)
    protos = [event_pb2.Event.FromString(r[12:-4]) for r in ef.records(path)]
    assert any(p.HasField("graph_def") for p in protos)
    events = read_events(path)
    assert [(e.step, e.scalars) for e in events] == [(s, {"loss": s}) for s in range(1, 5)]


def test_reading_imports_neither_tensorflow_nor_mlflow_nor_a_compiler(mixed_file):
    """A whole read in a fresh process loads no TensorFlow, MLflow or runtime compiler."""
    code = (
        "import sys, mlflow_best_export; "
        f"history = mlflow_best_export.read_eval_history({os.path.dirname(mixed_file)!r}, "
        f"{os.path.basename(mixed_file)!r}); "
        "assert len(history) > 50, history; "
        "bad = [m for m in ('tensorflow', 'mlflow', 'numba', 'llvmlite', 'Cython') "
        "if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- offsets and incremental reads -----------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory) -> str:
    """A real file of many kinds of event: TF1 scalars, images, strings, a graph; TF2 tensors."""
    tmp = tmp_path_factory.mktemp("mixed")
    tf = ef.tensorflow()
    graph_path = ef.write_graph_summaries(tmp / "graph", list(range(1, 7)))
    # Steps of 1, 2, 3 and 6 varint bytes (and step 0), so every step width is read.
    steps = [0, *range(1, 25), *range(5000, 125000, 5000), 2**40, 2**40 + 1, 2**40 + 2]
    evals = []
    for index, step in enumerate(steps):
        values = {"loss": 1 / (step + 1), "accuracy": step / 30, "auc": math.sin(step)}
        if index % 5 == 0:
            values["extra"] = step
        evals.append((step, values))
        if 10 <= index < 30:
            # Scalars and an image whose encoded bytes change size (as real images do).
            image = tf.compat.v1.Summary.Image(
                height=2, width=2, colorspace=3, encoded_image_string=bytes(range(index * 7 % 256))
            )
            proto = ef.summary({"loss": index / 7, "auc": -index})
            proto.value.add(tag="image", image=image)
            evals.append((step, proto))
        if index % 3 == 0:
            strings = {"checkpoint_path": f"/model/model.ckpt-{step}"}
            evals.append((step, ef.summary(strings=strings)))
        if index % 4 == 0:
            tensor = ef.scalar_tensor(step * 1.5, "float64", "content")
            evals.append((step, ef.tensor_summary({"d": tensor}, "scalars")))
    tf1_path = ef.write_summaries(tmp / "tf1", evals)

    def write():
        for step in range(100, 1200, 100):
            tf.summary.scalar("loss", 1 / step, step=step)
            tf.summary.scalar("auc", step / 11, step=step)
            tf.summary.write("n", tf.constant(step, tf.int64), step=step)
            tf.summary.write("c", tf.constant(step / 3, tf.float64), step=step)

    tf2_path = ef.write_tf2(tmp / "tf2", write)
    # One file of all three, cut at record boundaries by their own framing.
    combined = tmp / "combined.tfevents.1"
    with open(combined, "wb") as target:
        for source in (tf1_path, graph_path, tf2_path):
            with open(source, "rb") as file:
                target.write(file.read())
    return str(combined)


def test_mixed_file_matches_the_reference(mixed_file):
    events = read_events(mixed_file)
    assert as_full_tuples(events) == reference(mixed_file)
    assert len(events) > 60


def test_reading_at_every_cut_point_then_the_rest(mixed_file, tmp_path, caplog):
    data = open(mixed_file, "rb").read()
    spans = ef.record_spans(mixed_file)
    full = reference(mixed_file)  # summary_iterator's reading
    target = str(tmp_path / "growing.tfevents.1")
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(len(data)), 150)) + [e for _, e in spans[:20]]
    for cut in cuts:
        with open(target, "wb") as file:
            file.write(data[:cut])
        reader = EventFileReader(target)
        first = reader.read()
        # The offset stops at the last record boundary at or before the cut.
        assert reader.offset == max([e for _, e in spans if e <= cut], default=0)
        assert reader.read() == []
        with open(target, "ab") as file:
            file.write(data[cut:])
        rest = reader.read()
        assert as_full_tuples(first + rest) == full
        assert reader.offset == len(data) and not reader.damaged
    assert damage_warnings(caplog) == []


def test_start_offset_and_bounded_reads(mixed_file):
    spans = ef.record_spans(mixed_file)
    full = reference(mixed_file)  # summary_iterator's reading
    middle = spans[len(spans) // 2][0]
    later = EventFileReader(mixed_file, offset=middle).read()
    assert as_full_tuples(later) == full[len(full) - len(later) :]
    assert len(later) < len(full)
    for max_bytes in (1, 100, 5000):
        reader = EventFileReader(mixed_file)
        pieces = []
        while True:
            offset = reader.offset
            pieces.extend(reader.read(max_bytes))
            if reader.offset == offset:
                break
        assert as_full_tuples(pieces) == full
        assert reader.offset == os.path.getsize(mixed_file)
    with pytest.raises(ValueError):
        EventFileReader(mixed_file, offset=-1)


def test_missing_and_empty_files_read_as_nothing(tmp_path, caplog):
    missing = EventFileReader(tmp_path / "nope.tfevents.1")
    assert missing.read() == [] and missing.offset == 0 and missing.path.endswith("nope.tfevents.1")
    empty = tmp_path / "empty.tfevents.1"
    empty.write_bytes(b"")
    assert read_events(empty) == []
    assert damage_warnings(caplog) == []


# -- damage ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf1_file(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("tf1")
    return ef.write_summaries(tmp, [(s, {"loss": 1 / s, "auc": s / 10}) for s in range(1, 11)])


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (0, "length"),  # the length
        (8, "length"),  # the CRC of the length
        (12, "data"),  # the first byte of the data
        (-5, "data"),  # the last byte of the data
        (-1, "data"),  # the CRC of the data
    ],
)
def test_a_crc_mismatch_keeps_the_records_before_and_warns_once(
    tf1_file, tmp_path, caplog, where, reason
):
    spans = ef.record_spans(tf1_file)
    start, end = spans[5]
    path = ef.copy_file(tf1_file, str(tmp_path / "damaged.tfevents.1"))
    ef.flip_byte(path, start + where if where >= 0 else end + where)
    reader = EventFileReader(path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        events = reader.read()
        # Neither another read nor more bytes bring the warning back or read past it.
        with open(path, "ab") as file:
            file.write(open(tf1_file, "rb").read()[spans[1][0] :])
        assert reader.read() == []
    assert as_full_tuples(events) == as_full_tuples(read_events(tf1_file))[:4]
    assert reader.damaged and reader.offset == start
    (warning,) = damage_warnings(caplog)
    message = warning.getMessage()
    assert path in message and f"byte offset {start}" in message and reason in message


def test_an_undecodable_payload_keeps_the_records_before_and_warns_once(tf1_file, tmp_path, caplog):
    path = ef.copy_file(tf1_file, str(tmp_path / "garbage.tfevents.1"))
    size = os.path.getsize(path)
    # Summary (field 5) announced as 100 bytes long, with 3 bytes: not an Event.
    ef.write_garbage_record(path, b"\x2a\x64abc")
    with open(tf1_file, "rb") as file:
        tail = file.read()[ef.record_spans(tf1_file)[1][0] :]
    with open(path, "ab") as file:
        file.write(tail)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reader = EventFileReader(path)
        events = reader.read()
        assert reader.read() == []
    assert as_full_tuples(events) == as_full_tuples(read_events(tf1_file))
    assert reader.damaged and reader.offset == size
    (warning,) = damage_warnings(caplog)
    assert path in warning.getMessage() and f"byte offset {size}" in warning.getMessage()


def test_a_decodable_foreign_payload_is_skipped(tf1_file, tmp_path, caplog):
    path = ef.copy_file(tf1_file, str(tmp_path / "foreign.tfevents.1"))
    ef.write_garbage_record(path, b"")  # an empty Event
    ef.write_garbage_record(path, event_pb2.Event(step=3, file_version="x").SerializeToString())
    with open(path, "ab") as file:
        file.write(open(tf1_file, "rb").read()[ef.record_spans(tf1_file)[1][0] :])
    events = read_events(path)
    assert len(events) == 20 and damage_warnings(caplog) == []


# -- fuzz ------------------------------------------------------------------------------------


def _first_damaged(spans, flip: int | None, cut: int) -> tuple[int, int | None]:
    """(bytes of whole good records, offset of the expected warning or None)."""
    good = 0
    for start, end in spans:
        if flip is not None and start <= flip < end:
            complete = end <= cut or (flip < start + 12 <= cut)
            return good, start if complete else None
        if end > cut:
            return good, None
        good = end
    return good, None


def test_fuzz_truncated_and_flipped_files(mixed_file, tmp_path, caplog):
    """1,500 damaged copies: never raises, returns exactly the whole records before the damage."""
    data = open(mixed_file, "rb").read()
    spans = ef.record_spans(mixed_file)
    rng = random.Random(20240611)
    # Events of every prefix that ends at a record boundary, read once.
    events = read_events(mixed_file)
    prefix_events = {}
    scratch = str(tmp_path / "prefix.tfevents.1")
    for _, end in [(0, 0), *spans]:
        ef.copy_prefix(mixed_file, scratch, end)
        prefix_events[end] = as_full_tuples(read_events(scratch))
    assert prefix_events[len(data)] == as_full_tuples(events)
    path = str(tmp_path / "fuzz.tfevents.1")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for case in range(1500):
        cut = len(data) if case % 3 == 0 else rng.randrange(len(data) + 1)
        flips = rng.randrange(3)
        damaged = bytearray(data[:cut])
        first_flip = None
        for _ in range(flips if cut else 0):
            at = rng.randrange(cut)
            damaged[at] ^= rng.randrange(1, 256)
            first_flip = at if first_flip is None else min(first_flip, at)
        with open(path, "wb") as file:
            file.write(damaged)
        caplog.clear()
        reader = EventFileReader(path)
        found = as_full_tuples(reader.read())
        good, warned_at = _first_damaged(spans, first_flip, cut)
        assert found == prefix_events[good], (case, cut, first_flip)
        assert reader.offset == good
        warnings = damage_warnings(caplog)
        if warned_at is None:
            assert warnings == [] and not reader.damaged, (case, cut, first_flip)
        else:
            assert len(warnings) == 1 and reader.damaged, (case, cut, first_flip)
            assert f"{path} is damaged at byte offset {warned_at} " in warnings[0].getMessage()


def test_fuzz_mutated_payloads_with_valid_crcs(mixed_file, tmp_path):
    """1,000 records whose payload was changed and framed again by TFRecordWriter.

    The CRCs are right, so the reader must decode whatever the bytes say: exactly what
    protobuf and tf.make_ndarray make of them, up to the first payload that is not an
    Event. This is what keeps the canonical forms (``wire._Wire``) honest: whatever
    they accept, protobuf must decode the same way.
    """
    tf = ef.tensorflow()
    payloads = list(tf.compat.v1.io.tf_record_iterator(mixed_file))
    rng = random.Random(99)
    path = str(tmp_path / "mutated.tfevents.1")
    for case in range(1000):
        # Mutate records late in the file, after their plans are known.
        index = rng.randrange(len(payloads) // 4, len(payloads))
        mutated = bytearray(payloads[index])
        for _ in range(rng.choice((1, 1, 2, 3))):
            if not mutated:
                break
            at = rng.randrange(len(mutated))
            op = rng.randrange(4)
            if op == 0:
                mutated[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                mutated[at] = rng.randrange(256)
            elif op == 2:
                del mutated[at]
            else:
                mutated.insert(at, rng.randrange(256))
        # Three times: once planned, the same values are read by the plan.
        records = payloads[:index] + [bytes(mutated)] * 3 + payloads[index + 1 : index + 8]
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
        assert as_full_tuples(read_events(path)) == reference(path), case


# -- the canonical forms ---------------------------------------------------------------------


def _canonical(path) -> list[bool]:
    """Per record: whether the numpy path decoded it (else protobuf did)."""
    from mlflow_best_export import events, wire

    data = open(path, "rb").read()
    buf = bytearray(data + bytes(wire.PAD))
    frames = events._frame(buf, len(data))
    assert frames.used == len(data) and frames.damage is None
    return wire._Wire(buf, frames.used).decode(frames.starts, frames.stops)[0].tolist()


def test_one_crc32c_pass_checks_the_data_of_a_whole_buffer(mixed_file):
    """``_all_data_crcs_match`` checks every payload's CRC in one pass over the buffer.

    A wrong restart constant would send every buffer to the one-call-per-record
    fallback, which reads the same records: only this test sees it. The expected
    CRCs are computed here, one ``crc32c`` call per payload found by TensorFlow.
    """
    import crc32c

    from mlflow_best_export import events, wire

    tf = ef.tensorflow()
    data = open(mixed_file, "rb").read()
    payloads = list(tf.compat.v1.io.tf_record_iterator(mixed_file))
    buf = bytearray(data + bytes(wire.PAD))
    frames = events._frame(buf, len(data))
    starts, stops = frames.starts, frames.stops
    assert [data[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)] == payloads
    crcs = np.array([crc32c.crc32c(p) for p in payloads], "u4")
    before = bytes(buf)
    assert events._all_data_crcs_match(buf, starts, stops, crcs)
    assert bytes(buf) == before  # the footers and headers are put back
    wrong = crcs.copy()
    wrong[len(wrong) // 2] ^= 1
    assert not events._all_data_crcs_match(buf, starts, stops, wrong)
    buf[int(starts[-1])] ^= 0x40  # the last payload's first byte
    assert not events._all_data_crcs_match(buf, starts, stops, crcs)


def test_the_canonical_forms_cover_what_tensorflows_writers_write(mixed_file):
    """Only the file_version events and the graph's histograms go to protobuf.

    A writer whose events all went to protobuf would be read correctly, but slowly.
    """
    tf = ef.tensorflow()
    slow = []
    for index, payload in enumerate(tf.compat.v1.io.tf_record_iterator(mixed_file)):
        event = event_pb2.Event.FromString(payload)
        if event.WhichOneof("what") != "summary" or any(
            v.WhichOneof("value") == "histo" for v in event.summary.value
        ):
            slow.append(index)
    decoded = _canonical(mixed_file)
    assert len(decoded) == 156
    assert [i for i, fast in enumerate(decoded) if not fast] == slow
    assert len(slow) == 9  # 3 file_version events, 6 graphs with a histogram


def test_many_tags_and_tags_alike_at_both_ends(tmp_path):
    """70,000 distinct tags (more than the string table's slots) and tags that share
    their length and first and last 8 bytes: each one must keep its own name."""
    protos = [
        ef.event(step, 1000.0 + step, {f"t{step}": step / 7, f"metrics/{step:06d}/ss_value": 1.0})
        for step in range(70_000)
    ]
    path = ef.write_events(tmp_path, protos)
    assert all(_canonical(path)[1:])
    assert as_full_tuples(read_events(path)) == reference(path)


def test_a_large_record_with_a_bad_crc_is_found_in_its_place(tmp_path, caplog):
    """Large records (their CRCs read in place) are checked in order like small ones."""
    tf = ef.tensorflow()
    protos = []
    for step in range(1, 9):
        proto = ef.summary({"loss": 1 / step})
        image = tf.compat.v1.Summary.Image(encoded_image_string=bytes(64 * 1024))
        proto.value.add(tag="image", image=image)
        protos.append(tf.compat.v1.Event(wall_time=50.0 + step, step=step, summary=proto))
    path = ef.write_events(tmp_path, protos)
    start, end = ef.record_spans(path)[5]
    ef.flip_byte(path, end - 100)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reader = EventFileReader(path)
        found = reader.read()
    assert [e.step for e in found] == [1, 2, 3, 4]
    assert reader.damaged and reader.offset == start
    (warning,) = damage_warnings(caplog)
    assert f"byte offset {start} " in warning.getMessage() and "data" in warning.getMessage()
