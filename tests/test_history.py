"""history.py on eval directories written by TensorFlow: one record per step."""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import shutil
from pathlib import Path

import eventfiles as ef
import pytest
from oracles import eval_records

from mlflow_best_export import read_eval_history
from mlflow_best_export.events import EventFileReader
from mlflow_best_export.history import HistoryReader
from mlflow_best_export.records import EvalHistory, EvalRecord

CKPT = "checkpoint_path"


def eval_dir(model_dir: Path) -> Path:
    path = model_dir / "eval"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write(model_dir: Path, events, suffix: str | None = None) -> str:
    """Write Event protos (explicit wall times) into ``model_dir/eval``; the file."""
    return ef.write_events(eval_dir(model_dir), events, suffix)


def as_rows(history: EvalHistory) -> list[tuple]:
    return [(r.step, r.wall_time, dict(r.metrics), r.checkpoint_path) for r in history]


def without_time(history: EvalHistory) -> list[tuple]:
    return [(r.step, dict(r.metrics), r.checkpoint_path) for r in history]


def oracle_rows(model_dir) -> list[tuple]:
    """(step, metrics, checkpoint path) per step, by summary_iterator (``oracles``)."""
    return [(d["step"], d["metrics"], d["checkpoint_path"]) for d in eval_records(str(model_dir))]


def warnings_of(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def expected_history(events) -> list[tuple]:
    """The merge rules, the obvious way: per step and key, the value of the latest wall time.

    ``events`` are ``(wall_time, step, scalars, strings)``; wall times must be distinct.
    """
    steps: dict[int, dict] = {}
    for wall_time, step, scalars, strings in sorted(events, key=lambda e: e[0]):
        checkpoint = strings.get(CKPT)
        if not scalars and checkpoint is None:
            continue
        entry = steps.setdefault(step, {"wall_time": wall_time, "metrics": {}, "ckpt": None})
        entry["wall_time"] = wall_time
        entry["metrics"].update(scalars)
        if checkpoint is not None:
            entry["ckpt"] = checkpoint
    return [(step, e["wall_time"], e["metrics"], e["ckpt"]) for step, e in sorted(steps.items())]


# -- merging -------------------------------------------------------------------------------


def test_the_events_of_one_step_make_one_record(tmp_path):
    write(
        tmp_path,
        [
            ef.event(10, 100.0, {"loss": 0.5, "auc": 0.75}),
            ef.event(10, 101.0, strings={CKPT: "/m/model.ckpt-10"}),
            ef.event(20, 200.0, {"loss": 0.25}),
            ef.event(20, 201.0, strings={CKPT: "/m/model.ckpt-20"}),
            ef.event(30, 300.0, strings={"other": "text"}),  # no metric, no checkpoint
        ],
    )
    history = read_eval_history(tmp_path)
    assert as_rows(history) == [
        (10, 101.0, {"loss": 0.5, "auc": 0.75}, "/m/model.ckpt-10"),
        (20, 201.0, {"loss": 0.25}, "/m/model.ckpt-20"),
    ]
    assert all(isinstance(r, EvalRecord) for r in history.records)


def test_a_step_evaluated_twice_takes_the_later_wall_time_key_by_key(tmp_path):
    write(
        tmp_path,
        [
            ef.event(10, 500.0, {"loss": 2.0}),
            ef.event(10, 501.0, strings={CKPT: "/new/model.ckpt-10"}),
            # Written later, but older: a restarted job's copy, or a clock that went back.
            ef.event(10, 100.0, {"loss": 1.0, "auc": 0.5}),
            ef.event(10, 101.0, strings={CKPT: "/old/model.ckpt-10"}),
            ef.event(10, 600.0, {"auc": 0.875}),
        ],
    )
    assert as_rows(read_eval_history(tmp_path)) == [
        (10, 600.0, {"loss": 2.0, "auc": 0.875}, "/new/model.ckpt-10")
    ]


def test_histories_returned_earlier_do_not_see_later_records(tmp_path):
    """A poll shares the reader's records with the history it returns instead of copying
    them: the records appended later, or changed later, must not show in it."""
    events = [ef.event(s, 100.0 + s, {"loss": 1 / s}) for s in range(1, 11)]
    write(tmp_path, events[:5])
    reader = HistoryReader(tmp_path)
    first = reader.poll()
    listed = first.records
    write(tmp_path, events[5:], suffix=".more")  # new steps: appended to the shared list
    second = reader.poll()
    write(tmp_path, [ef.event(3, 500.0, {"loss": 7.0})], suffix=".again")  # changes step 3
    third = reader.poll()
    for history, steps in ((first, range(1, 6)), (second, range(1, 11)), (third, range(1, 11))):
        assert [r.step for r in history] == [r.step for r in history.records] == list(steps)
        assert len(history) == len(steps) and history.get(max(steps) + 1) is None
    assert listed == first.records and len(listed) == 5
    assert first.get(3).metrics == second.get(3).metrics == {"loss": ef.f32(1 / 3)}
    assert third.get(3).metrics == {"loss": 7.0}
    assert [r.step for r in second.before(4)] == [1, 2, 3] and repr(first).endswith("1..5>)")


def test_re_evaluation_in_another_file_and_a_later_poll(tmp_path):
    write(tmp_path, [ef.event(10, 100.0, {"loss": 1.0}), ef.event(20, 110.0, {"loss": 0.5})])
    reader = HistoryReader(tmp_path)
    first = reader.poll()
    write(
        tmp_path,
        [ef.event(10, 300.0, {"loss": 3.0}), ef.event(20, 50.0, {"loss": 9.0, "auc": 0.125})],
        suffix=".second",
    )
    second = reader.poll()
    assert as_rows(second) == [
        (10, 300.0, {"loss": 3.0}, None),
        (20, 110.0, {"loss": 0.5, "auc": 0.125}, None),
    ]
    assert without_time(second) == oracle_rows(tmp_path)
    # A history returned earlier does not change.
    assert as_rows(first) == [(10, 100.0, {"loss": 1.0}, None), (20, 110.0, {"loss": 0.5}, None)]


def test_several_files_are_read_and_steps_come_out_ascending(tmp_path):
    write(tmp_path, [ef.event(s, 1000.0 + s, {"loss": s}) for s in (50, 10, 30)], ".a")
    write(tmp_path, [ef.event(s, 2000.0 + s, {"auc": s}) for s in range(200, 0, -2)], ".b")
    # Another directory and a non-matching name are not eval files.
    ef.write_events(tmp_path / "train", [ef.event(5, 1.0, {"loss": 5})])
    history = read_eval_history(tmp_path)
    assert [r.step for r in history] == sorted({10, 30, 50, *range(2, 201, 2)})
    assert history.get(30).metrics == {"loss": 30.0, "auc": 30.0}
    assert history.get(31) is None and history.get(500) is None
    assert [r.step for r in history.before(7)] == [2, 4, 6]
    assert len(history) == 100 and history and "100 records, steps 2..200" in repr(history)
    assert [r.step for r in read_eval_history(tmp_path, "train/*.tfevents.*")] == [5]


def test_to_pandas_one_row_per_step(tmp_path):
    write(
        tmp_path,
        [
            ef.event(1, 10.0, {"loss": 0.5, "auc": 0.25}),
            ef.event(1, 11.0, strings={CKPT: "/m/model.ckpt-1"}),
            ef.event(2, 20.0, {"loss": 0.125, "accuracy": 1.0}),
        ],
    )
    frame = read_eval_history(tmp_path).to_pandas()
    assert list(frame.columns) == ["step", "wall_time", CKPT, "accuracy", "auc", "loss"]
    assert frame["step"].tolist() == [1, 2] and str(frame["step"].dtype) == "int64"
    assert frame["wall_time"].tolist() == [11.0, 20.0]
    assert frame[CKPT].tolist() == ["/m/model.ckpt-1", None]
    assert frame["loss"].tolist() == [0.5, 0.125]
    assert math.isnan(frame["accuracy"][0]) and math.isnan(frame["auc"][1])
    empty = EvalHistory().to_pandas()
    assert list(empty.columns) == ["step", "wall_time", CKPT] and len(empty) == 0


def test_empty_or_missing_directories_have_an_empty_history(tmp_path, caplog):
    assert len(read_eval_history(tmp_path / "missing")) == 0
    assert not read_eval_history(tmp_path)
    eval_dir(tmp_path)
    assert as_rows(read_eval_history(tmp_path)) == []
    # Events without a summary: the writer's file_version and an empty one.
    write(tmp_path, [ef.tensorflow().compat.v1.Event(step=3, wall_time=5.0)])
    assert as_rows(read_eval_history(tmp_path)) == []
    assert repr(EvalHistory()) == "EvalHistory([])"
    assert warnings_of(caplog) == []


def test_two_records_of_one_step_are_refused():
    record = EvalRecord(1, 1.0, {"loss": 1.0}, None)
    with pytest.raises(ValueError, match="step 1"):
        EvalHistory([record, record])


# -- incremental polls -----------------------------------------------------------------------


def _spy_reads(monkeypatch) -> list[tuple[str, int, int]]:
    """(file name, offset before, offset after) of every read the readers make."""
    calls = []
    original = EventFileReader.batches

    def batches(self, max_bytes=None):
        before = self.offset
        result = list(original(self, max_bytes))
        calls.append((os.path.basename(self.path), before, self.offset))
        return iter(result)

    monkeypatch.setattr(EventFileReader, "batches", batches)
    return calls


def test_polls_read_only_what_was_appended(tmp_path, monkeypatch, caplog):
    source_dir = tmp_path / "source"
    events = [ef.event(s, 100.0 + s, {"loss": 1 / s}) for s in range(1, 21)]
    events += [ef.event(s, 100.5 + s, strings={CKPT: f"ck-{s}"}) for s in range(1, 21)]
    source = write(source_dir, events)
    spans = ef.record_spans(source)
    data = Path(source).read_bytes()
    model_dir = tmp_path / "model"
    target = eval_dir(model_dir) / os.path.basename(source)
    calls = _spy_reads(monkeypatch)
    reader = HistoryReader(model_dir)
    assert reader.model_dir == str(model_dir) and reader.event_file_pattern == "eval/*.tfevents.*"
    assert len(reader.poll()) == 0

    # The file appears, its last record half written.
    cut = spans[11][0] + 7  # spans[0] is the file_version event
    target.write_bytes(data[:cut])
    first = reader.poll()
    assert [r.step for r in first] == list(range(1, 11))
    assert calls[-1] == (target.name, 0, spans[11][0])
    # Nothing new: nothing is read.
    calls.clear()
    assert reader.poll() is first and calls == []
    # The rest of the record, and more.
    cut = spans[25][1]
    with open(target, "ab") as file:
        file.write(data[len(target.read_bytes()) : cut])
    second = reader.poll()
    assert calls[0][1:] == (spans[11][0], cut)
    assert [r.step for r in second] == list(range(1, 21))
    assert [r.checkpoint_path for r in second][:5] == ["ck-1", "ck-2", "ck-3", "ck-4", "ck-5"]
    assert len(first) == 10  # unchanged
    # Everything: only the bytes after the last poll are read (what was read is still there).
    calls.clear()
    target.write_bytes(data)
    assert without_time(reader.poll()) == oracle_rows(source_dir)
    assert calls == [(target.name, cut, len(data))]
    # A new file is picked up; the first is not read again.
    calls.clear()
    write(model_dir, [ef.event(99, 999.0, {"loss": 0.01})], suffix=".new")
    assert reader.poll().get(99).metrics == {"loss": ef.f32(0.01)}
    assert [c for c in calls if c[0] == target.name and c[1] != c[2]] == []
    assert warnings_of(caplog) == []


def test_a_file_that_shrank_or_was_replaced_is_read_again(tmp_path):
    model_dir = tmp_path / "model"
    path = write(model_dir, [ef.event(s, 10.0 + s, {"loss": s}) for s in range(1, 11)])
    other = write(model_dir, [ef.event(100, 5.0, {"auc": 1.0})], suffix=".other")
    spans = ef.record_spans(path)
    reader = HistoryReader(model_dir)
    assert len(reader.poll()) == 11
    # Shrank (e.g. restored from an older copy): what remains is the history.
    os.truncate(path, spans[5][1])
    assert [r.step for r in reader.poll()] == [1, 2, 3, 4, 5, 100]
    # Replaced by another file under the same name.
    os.remove(path)
    replacement = write(tmp_path / "elsewhere", [ef.event(7, 1.0, {"loss": 70})])
    shutil.copyfile(replacement, path)
    assert as_rows(reader.poll()) == [
        (7, 1.0, {"loss": 70.0}, None),
        (100, 5.0, {"auc": 1.0}, None),
    ]
    # Written over in place (the same inode) by a longer file.
    longer = write(tmp_path / "longer", [ef.event(s, 1.0 + s, {"acc": s}) for s in (8, 9)])
    shutil.copyfile(longer, path)
    assert [r.step for r in reader.poll()] == [8, 9, 100]
    # Removed.
    os.remove(other)
    assert [r.step for r in reader.poll()] == [8, 9]


def test_damage_in_a_polled_file_warns_once_and_keeps_what_came_before(tmp_path, caplog):
    model_dir = tmp_path / "model"
    path = write(model_dir, [ef.event(s, 10.0 + s, {"loss": s}) for s in range(1, 11)])
    spans = ef.record_spans(path)
    ef.flip_byte(path, spans[6][0] + 20)
    reader = HistoryReader(model_dir)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert [r.step for r in reader.poll()] == [1, 2, 3, 4, 5]
        with open(path, "ab") as file:
            file.write(Path(path).read_bytes()[spans[1][0] :])
        assert [r.step for r in reader.poll()] == [1, 2, 3, 4, 5]
    (warning,) = warnings_of(caplog)
    assert path in warning.getMessage()
    assert f"byte offset {spans[6][0]}" in warning.getMessage()


def test_many_steps_out_of_order_across_polls(tmp_path):
    model_dir = tmp_path / "model"
    rng = random.Random(3)
    steps = list(range(0, 3000, 10))
    rng.shuffle(steps)
    reader = HistoryReader(model_dir)
    events = []
    for part, chunk in enumerate((steps[:5], steps[5:200], steps[200:])):
        chunk_events = [(100.0 + s, s, {"loss": s / 7}, {}) for s in chunk]
        # A re-evaluation of an earlier step in each later part.
        if part:
            s = steps[0]
            chunk_events.append((5000.0 + part, s, {"loss": -part}, {}))
        events.extend(chunk_events)
        write(
            model_dir,
            [ef.event(step, w, values) for w, step, values, _ in chunk_events],
            suffix=f".{part}",
        )
        history = reader.poll()
        assert as_rows(history) == _f32_rows(expected_history(events))
    assert without_time(history) == oracle_rows(model_dir)


def _f32_rows(rows):
    return [(s, w, {k: ef.f32(v) for k, v in m.items()}, c) for s, w, m, c in rows]


@pytest.mark.parametrize("ascending", [False, True])
def test_history_fuzz_random_evals_files_and_poll_points(tmp_path, ascending):
    """Random evals in 1-3 files, appended in random pieces: every poll equals the rules.

    ascending: steps grow within each file, as in training (reads then end inside a step,
    and the reader builds the rest column by column).
    """
    rng = random.Random(11 + ascending)
    for case in range(25):
        case_dir = tmp_path / f"case{case}"
        wall_times = iter(rng.sample(range(1, 100_000), 400))
        files = []
        all_events = []
        for index in range(rng.randint(1, 3)):
            events = []
            for number in range(rng.randint(0, 30)):
                if ascending:
                    step = number * 10 + rng.randrange(3)
                else:
                    step = rng.randrange(0, 40) * rng.choice((1, 1, 1000))
                wall_time = float(next(wall_times))
                if rng.random() < 0.2:
                    events.append((wall_time, step, {}, {CKPT: f"ck-{step}-{wall_time}"}))
                else:
                    tags = rng.sample(["loss", "auc", "acc", "x/y"], rng.randint(1, 3))
                    events.append((wall_time, step, {t: rng.random() for t in tags}, {}))
                    if rng.random() < 0.3:
                        # The Estimator's pair: the checkpoint_path right after the metrics,
                        # at a random (sometimes earlier) wall time.
                        later = float(next(wall_times))
                        events.append((later, step, {}, {CKPT: f"ck-{step}-{later}"}))
            protos = [ef.event(s, w, v, c) for w, s, v, c in events]
            files.append(ef.write_events(case_dir / "source", protos, suffix=f".{index}"))
            all_events.append(events)
        model_dir = case_dir / "model"
        targets = [eval_dir(model_dir) / os.path.basename(f) for f in files]
        sizes = [0] * len(files)
        reader = HistoryReader(model_dir)
        datas = [Path(f).read_bytes() for f in files]
        spans = [ef.record_spans(f) for f in files]
        while True:
            growing = [i for i, d in enumerate(datas) if sizes[i] < len(d)]
            if not growing:
                break
            i = rng.choice(growing)
            sizes[i] = min(len(datas[i]), sizes[i] + rng.randint(1, 400))
            with open(targets[i], "ab") as file:
                file.write(datas[i][file.tell() : sizes[i]])
            if rng.random() < 0.5:
                continue
            # Whole records only; the first record of a file is its file_version event.
            visible = []
            for events, file_spans, size in zip(all_events, spans, sizes, strict=True):
                whole = sum(1 for _, end in file_spans if end <= size)
                visible.extend(events[: max(whole - 1, 0)])
            assert as_rows(reader.poll()) == _f32_rows(expected_history(visible)), case
        final = _f32_rows(expected_history([e for events in all_events for e in events]))
        assert as_rows(reader.poll()) == final, case
        assert as_rows(read_eval_history(model_dir)) == final, case


def test_any_tag_names_in_evals_that_come_in_bulk(tmp_path):
    """Tags that are not plain names, in the Estimator's layout (which the reader builds in
    bulk, one dict maker per layout): the records equal protobuf's reading of the file."""
    tags = ["loss", "it's", '"quoted"', "back\\slash", "new\nline", "{brace}", "ünï/中文", ""]
    events = []
    for step in range(1, 40):
        events.append(ef.event(step, 2.0 * step, {t: step / (i + 1) for i, t in enumerate(tags)}))
        events.append(ef.event(step, 2.0 * step + 1, strings={CKPT: f"/m/model.ckpt-{step}"}))
    path = write(tmp_path, events)
    reference = ef.reference_events(path)
    expected = [
        (step, checkpoint_time, metrics, ckpt[CKPT])
        for (_, step, metrics, _), (checkpoint_time, _, _, ckpt) in zip(
            reference[0::2], reference[1::2], strict=True
        )
    ]
    assert len(expected) == 39 and set(expected[0][2]) == set(tags)
    assert as_rows(read_eval_history(tmp_path)) == expected


# -- a real Estimator ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_estimator_eval_dir(tmp_path):
    model_dir = tmp_path / "model"
    ef.train_dnn_regressor(str(model_dir), max_steps=6, every=2)
    tf = ef.tensorflow()
    oracle: dict[int, dict] = {}
    for path in tf.io.gfile.glob(str(model_dir / "eval" / "*.tfevents.*")):
        for proto in tf.compat.v1.train.summary_iterator(path):
            if not proto.HasField("summary"):
                continue
            entry = oracle.setdefault(proto.step, {"wall_time": 0.0, "metrics": {}, "ckpt": None})
            entry["wall_time"] = max(entry["wall_time"], proto.wall_time)
            for value in proto.summary.value:
                if value.HasField("simple_value"):
                    entry["metrics"][value.tag] = value.simple_value
                elif value.tag == CKPT:
                    entry["ckpt"] = tf.make_ndarray(value.tensor).item().decode()
    history = read_eval_history(model_dir)
    assert as_rows(history) == [
        (step, e["wall_time"], e["metrics"], e["ckpt"]) for step, e in sorted(oracle.items())
    ]
    assert [r.step for r in history] == [2, 4, 6]
    for record in history:
        assert {"loss", "average_loss", "label/mean", "prediction/mean"} <= set(record.metrics)
        assert record.checkpoint_path == str(model_dir / f"model.ckpt-{record.step}")
    frame = history.to_pandas()
    assert frame["step"].tolist() == [2, 4, 6]
    assert list(frame.columns[:3]) == ["step", "wall_time", CKPT]


def test_a_read_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    """The reader pauses the collector and, after a large read, moves the new objects
    to the oldest generation; a collector someone disabled stays disabled, objects
    someone froze stay frozen (and nothing is moved then)."""
    write(tmp_path, [ef.event(s, 100.0 + s, {"loss": 1 / s}) for s in range(1, 12_001)])

    def oldest_holds(history) -> bool:
        oldest = {id(o) for o in gc.get_objects(generation=2)}
        return all(id(r) in oldest for r in history.records[::1000])

    first = read_eval_history(tmp_path)
    assert len(first) == 12_000 and gc.isenabled() and oldest_holds(first)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        second = read_eval_history(tmp_path)
        assert len(second) == 12_000 and gc.isenabled() and not oldest_holds(second)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        assert len(read_eval_history(tmp_path)) == 12_000 and not gc.isenabled()
    finally:
        gc.enable()
