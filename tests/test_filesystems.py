"""The model directory on any filesystem: a local directory and TensorFlow's ``ram://``.

``ram://`` needs no server and behaves like an object store where it matters
here: no inodes, no flock, and (in TensorFlow 2.15) a directory rename that
leaves the contents behind. The expectations come from TensorFlow itself
(``tf.io.gfile`` listings, ``tf.train.load_variable``,
``summary_iterator``) and from the tiny model's schedule, never from the
code under test. ``s3://`` is in tests/test_s3.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid

import pytest
import tensorflow as tf
import tiny

from mlflow_best_export import MLflowBestExporter, fs, read_eval_history
from mlflow_best_export.history import HistoryReader
from mlflow_best_export.locks import ExportDirLock, ExportDirLockedError

# Scheduled eval losses, one per checkpoint (every 2 steps): new bests at steps
# 2, 4, 8, 12 and 16, everything else worse than the best before it.
LOSSES = [50, 30, 40, 20, 25, 10, 60, 5, 8]


@pytest.fixture(params=["local", "ram"])
def model_dir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "model")
    return f"ram://{uuid.uuid4().hex}/model"


def exports_on_store(model_dir: str, name: str = "best_exporter") -> dict[int, dict]:
    """{global_step in the variables: metadata} of each export, read by TensorFlow."""
    base = f"{model_dir}/export/{name}"
    if not tf.io.gfile.exists(base):
        return {}
    found = {}
    for entry in sorted(tf.io.gfile.listdir(base)):
        entry = entry.rstrip("/")
        if not (len(entry) == 10 and entry.isdigit()):
            continue
        path = f"{base}/{entry}"
        assert tf.io.gfile.exists(f"{path}/saved_model.pb"), path
        # NewCheckpointReader, not load_variable: ram:// calls any prefix of a file a directory.
        reader = tf.compat.v1.train.NewCheckpointReader(f"{path}/variables/variables")
        step = int(reader.get_tensor("global_step"))
        with tf.io.gfile.GFile(f"{path}/assets.extra/mlflow_best_export.json") as f:
            metadata = json.load(f)
        assert metadata["global_step"] == step
        found[step] = metadata
    return found


def leftovers(model_dir: str, name: str = "best_exporter") -> list[str]:
    base = f"{model_dir}/export/{name}"
    return [n for n in tf.io.gfile.listdir(base) if n.rstrip("/").startswith("temp-")]


def exporter(**kwargs) -> MLflowBestExporter:
    kwargs.setdefault("serving_input_receiver_fn", tiny.raw_serving_input_receiver_fn)
    kwargs.setdefault("log_to_mlflow", False)
    return MLflowBestExporter(**kwargs)


@pytest.mark.slow
def test_keeps_the_last_n_new_bests(model_dir):
    first = exporter(exports_to_keep=3)
    tiny.train(model_dir, first, LOSSES)
    first.close()
    kept = exports_on_store(model_dir)
    assert sorted(kept) == tiny.new_best_steps(LOSSES)[-3:]
    for step, metadata in kept.items():
        assert metadata["eval_result"]["loss"] == pytest.approx(
            tiny.loss_at(tiny.schedule_from(LOSSES, 2), step), abs=2
        )
    assert not leftovers(model_dir)


@pytest.mark.slow
def test_restart_with_worse_evals_keeps_what_a_never_stopped_run_keeps(model_dir):
    # Steps 2..8 (bests at 2, 4, 8), then a new process object continues to step 18,
    # where steps 10 and 14 are worse than the kept best, and 12 and 16 are new bests.
    first = exporter(exports_to_keep=2)
    tiny.train(model_dir, first, LOSSES, max_steps=8)
    first.close()
    assert sorted(exports_on_store(model_dir)) == [4, 8]
    second = exporter(exports_to_keep=2)
    tiny.train(model_dir, second, LOSSES)
    second.close()
    assert sorted(exports_on_store(model_dir)) == tiny.new_best_steps(LOSSES)[-2:]
    assert not leftovers(model_dir)


@pytest.mark.slow
def test_history_matches_summary_iterator(model_dir):
    tiny.train(model_dir, None, LOSSES[:4])
    expected = {}
    for path in tf.io.gfile.glob(f"{model_dir}/eval/*.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "loss":
                    expected[event.step] = value.simple_value
    history = read_eval_history(model_dir)
    assert {r.step: r.metrics["loss"] for r in history.records} == expected
    assert sorted(expected) == [2, 4, 6, 8]


def loss_summary(value: float):
    return tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag="loss", simple_value=value)])


def write_scalar_events(path: str, steps: range) -> None:
    """An event file of loss scalars, written by TensorFlow's record writer (any filesystem)."""
    with tf.io.TFRecordWriter(path) as writer:
        for step in steps:
            event = tf.compat.v1.Event(
                step=step, wall_time=1.0 + step, summary=loss_summary(1 / step)
            )
            writer.write(event.SerializeToString())


@pytest.mark.parametrize("scheme", ["local", "ram"])
def test_a_poll_after_one_new_event_reads_that_event_only(tmp_path, scheme):
    model_dir = str(tmp_path) if scheme == "local" else f"ram://{uuid.uuid4().hex}"
    path = f"{model_dir}/eval/events.out.tfevents.1.host"
    tf.io.gfile.makedirs(f"{model_dir}/eval")
    records = [
        tf.compat.v1.Event(
            step=step,
            wall_time=1.0 + step,
            summary=tf.compat.v1.Summary(
                value=[tf.compat.v1.Summary.Value(tag="loss", simple_value=1.0 / step)]
            ),
        ).SerializeToString()
        for step in range(1, 5001)
    ]
    with tf.io.TFRecordWriter(path) as writer:
        for record in records[:-1]:
            writer.write(record)
    reader = HistoryReader(model_dir)
    assert len(reader.poll()) == 4999
    size_before = tf.io.gfile.stat(path).length
    write_scalar_events(f"{path}.last", range(5000, 5001))
    # Append the last record's framed bytes, as a writer's flush does.
    with tf.io.gfile.GFile(f"{path}.last", "rb") as f:
        tail = f.read()
    with tf.io.gfile.GFile(path, "ab") as f:
        f.write(tail)
    tf.io.gfile.remove(f"{path}.last")
    assert tf.io.gfile.stat(path).length == size_before + len(tail)
    before = fs.bytes_read()
    history = reader.poll()
    read = fs.bytes_read() - before
    assert len(history) == 5000 and history.records[-1].step == 5000
    # The new record, plus the fingerprint that proves the file was appended to.
    assert len(tail) <= read <= len(tail) + 80, (read, len(tail))
    assert read < 0.01 * size_before


@pytest.mark.parametrize("scheme", ["local", "ram"])
def test_a_replaced_or_shrunk_file_is_read_again(tmp_path, scheme):
    model_dir = str(tmp_path) if scheme == "local" else f"ram://{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(f"{model_dir}/eval")
    path = f"{model_dir}/eval/events.out.tfevents.1.host"
    write_scalar_events(path, range(1, 11))
    reader = HistoryReader(model_dir)
    assert [r.step for r in reader.poll()] == list(range(1, 11))
    # Another file under the same name, longer than what was read.
    tf.io.gfile.remove(path)
    write_scalar_events(path, range(100, 130))
    assert [r.step for r in reader.poll()] == list(range(100, 130))
    # Shrunk: a shorter file under the same name.
    tf.io.gfile.remove(path)
    write_scalar_events(path, range(7, 9))
    assert [r.step for r in reader.poll()] == [7, 8]


def test_a_second_exporter_is_refused_and_named(model_dir):
    base = f"{model_dir}/export/best_exporter"
    holder = ExportDirLock(base, lease_seconds=1.5)
    holder.acquire()
    try:
        with pytest.raises(ExportDirLockedError, match=rf"in this process \(pid {os.getpid()} on "):
            ExportDirLock(base, lease_seconds=1.5).acquire()
    finally:
        holder.release()
    again = ExportDirLock(base, lease_seconds=1.5)
    again.acquire()
    again.release()


def test_a_lock_held_by_another_process_names_that_process(tmp_path):
    base = str(tmp_path / "export" / "best_exporter")
    hold = (
        "import sys, time\n"
        "from mlflow_best_export.locks import ExportDirLock\n"
        "ExportDirLock(sys.argv[1]).acquire()\n"
        "print('LOCKED', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, base], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(ExportDirLockedError, match=rf"^Another process \(pid {holder.pid} on "):
            ExportDirLock(base).acquire()
    finally:
        holder.kill()
        holder.wait()
    again = ExportDirLock(base)
    again.acquire()  # the kernel released the dead holder's flock
    again.release()


def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it(caplog):
    base = f"ram://{uuid.uuid4().hex}/export/best_exporter"
    stale = ExportDirLock(base, lease_seconds=0.6)
    stale.acquire()
    stale._stop.set()  # the holder stops renewing, as a dead or frozen process would
    stale._renewer.join()
    with caplog.at_level(logging.WARNING, logger="mlflow_best_export"):
        # The holder (this live process) stopped renewing: the taker waits the lease out.
        started = time.monotonic()
        taker = ExportDirLock(base, lease_seconds=30)
        taker.acquire()
    assert time.monotonic() - started >= 0.3
    assert "waiting up to" in caplog.text
    assert "it was not renewed within its lease" in caplog.text
    with tf.io.gfile.GFile(f"{base}/.mlflow_best_export.lock") as f:
        assert json.load(f)["token"] == taker._owner["token"]
    # The old holder, renewing again, finds the lock taken and refuses to go on.
    stale._stop.clear()
    stale._renew_once()
    with pytest.raises(ExportDirLockedError, match="taken over"):
        stale.check()
    stale.release()  # does not delete the new holder's lock
    assert tf.io.gfile.exists(f"{base}/.mlflow_best_export.lock")
    taker.release()
    assert not tf.io.gfile.exists(f"{base}/.mlflow_best_export.lock")


def test_an_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match=r"No filesystem is registered for nosuch:// paths"):
        HistoryReader("nosuch://bucket/model")
    with pytest.raises(ValueError, match=r"nosuch://"):
        read_eval_history("nosuch://bucket/model")


def test_the_exporter_checks_assets_extra_sources_on_any_filesystem(tmp_path):
    source = f"ram://{uuid.uuid4().hex}/vocab.txt"
    with pytest.raises(ValueError, match="does not exist"):
        exporter(assets_extra={"vocab.txt": source})
    with tf.io.gfile.GFile(source, "w") as f:
        f.write("a\n")
    exporter(assets_extra={"vocab.txt": source})
    with pytest.raises(ValueError, match="nosuch://"):
        exporter(assets_extra={"vocab.txt": "nosuch://x/vocab.txt"})


def test_fs_lists_reads_and_deletes_alike_everywhere(tmp_path):
    for base in (str(tmp_path / "local"), f"ram://{uuid.uuid4().hex}"):
        fs.makedirs(fs.join(base, "a", "b"))
        fs.write_bytes(fs.join(base, "a", "b", "f.bin"), b"0123456789")
        fs.write_bytes(fs.join(base, "a", "g.txt"), b"g")
        assert fs.listdir(fs.join(base, "a")) == ["b", "g.txt"]
        assert fs.listdir(fs.join(base, "missing")) == []
        assert fs.read_range(fs.join(base, "a", "b", "f.bin"), 3, 4) == b"3456"
        assert fs.read_range(fs.join(base, "a", "b", "f.bin"), 8, 100) == b"89"
        status = fs.stat(fs.join(base, "a", "b", "f.bin"))
        assert status.size == 10 and not status.is_dir
        assert (status.identity is None) == fs.is_url(base)
        assert fs.stat(fs.join(base, "nope")) is None
        assert fs.glob(fs.join(base, "a", "*.txt")) == [fs.join(base, "a", "g.txt")]
        assert list(fs.walk_files(fs.join(base, "a"))) == ["b/f.bin", "g.txt"]
        with pytest.raises(FileNotFoundError):
            fs.read_bytes(fs.join(base, "nope"))
        fs.rmtree(fs.join(base, "a"))
        assert not fs.exists(fs.join(base, "a", "b", "f.bin"))


def test_upload_tree_writes_the_marker_file_last(tmp_path, monkeypatch):
    source = tmp_path / "export"
    (source / "variables").mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"pb")
    (source / "variables" / "variables.index").write_bytes(b"i")
    (source / "zzz.txt").write_bytes(b"z")
    copied = []
    real_copy = tf.io.gfile.copy
    monkeypatch.setattr(
        tf.io.gfile, "copy", lambda src, dst, *a, **k: copied.append(dst) or real_copy(src, dst)
    )
    destination = f"ram://{uuid.uuid4().hex}/1234567890"
    fs.upload_tree(str(source), destination, first=("zzz.txt",), last=("saved_model.pb",))
    assert copied[0] == f"{destination}/zzz.txt"
    assert copied[-1] == f"{destination}/saved_model.pb"
    assert sorted(copied) == sorted(
        f"{destination}/{n}" for n in ("saved_model.pb", "variables/variables.index", "zzz.txt")
    )


def test_an_export_name_is_never_given_twice(tmp_path):
    """Where exports are copied into place (ram://, object stores) and two come within a
    second, a name is taken ahead of the clock; once retention frees it, a later export
    must not get it again (MLflow knows exports by their directory)."""
    from mlflow_best_export.session import free_name as _free_name

    base = str(tmp_path)
    os.makedirs(os.path.join(base, "1796541743"))
    # The clock says ...742, which was used and freed; ...743 exists: the next is ...744.
    assert _free_name(base, "/local/export/1796541742", after=1796541742) == "1796541744"
    assert _free_name(base, "/local/export/1796541750", after=1796541743) == "1796541750"
