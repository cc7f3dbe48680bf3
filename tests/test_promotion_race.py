"""Two promotions of one alias at the same moment, for real: two processes, one `mlflow
server`, a barrier before every round. Every promotion that says it moved the alias must
find its record in the alias history afterwards (MLflow's client reads the tags)."""

from __future__ import annotations

import multiprocessing
import queue
import time

import pytest
from mlflow.tracking import MlflowClient
from mlflow_checks import MlflowServer

ROUNDS = 50
HISTORY_PREFIX = "mlflow_best_export.alias_history.champion."


def promote_in_rounds(uri: str, source: str, barrier, results) -> None:
    """Promote ``source`` to ``champion`` once per round, all rounds in step with the other
    process; put how many promotions moved the alias into ``results``.

    A promotion may also fail: MLflow 3.11's server answers two alias moves at the same
    moment with "UNIQUE constraint failed" for one of them. A failed move must leave no
    record, so it counts as no move."""
    from mlflow.exceptions import MlflowException

    from mlflow_best_export.promotion import promote

    client = MlflowClient(uri)
    moved = 0
    for _ in range(ROUNDS):
        barrier.wait(timeout=120)
        try:
            moved += promote(client, "race", from_alias=source, to_alias="champion").moved
        except MlflowException:
            pass
    results.put((source, moved))


def collect(results, workers, timeout: float = 600) -> dict[str, int]:
    """Each worker's count, failing as soon as a worker dies without one."""
    moved: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(moved) < len(workers):
        try:
            source, count = results.get(timeout=1)
            moved[source] = count
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            assert not dead, f"a promoting process failed (exit codes {dead}); see its stderr"
            assert time.monotonic() < deadline, "the promoting processes did not finish"
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return moved


@pytest.mark.slow
def test_two_promotions_at_once_both_keep_their_record(tmp_path):
    server = MlflowServer(str(tmp_path / "server")).start()
    try:
        client = MlflowClient(server.uri)
        client.create_registered_model("race")
        for _ in range(2):
            client.create_model_version("race", source="s3://bucket/race")  # never read
        client.set_registered_model_alias("race", "a", "1")
        client.set_registered_model_alias("race", "b", "2")

        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(2), context.Queue()
        workers = [
            context.Process(target=promote_in_rounds, args=(server.uri, s, barrier, results))
            for s in ("a", "b")
        ]
        for worker in workers:
            worker.start()
        moved = collect(results, workers)

        tags = client.get_registered_model("race").tags
        records = [key for key in tags if key.startswith(HISTORY_PREFIX)]
        # The alias moved again and again, and no move lost its record.
        assert sum(moved.values()) >= ROUNDS // 2, moved
        assert len(records) == sum(moved.values()), (len(records), moved)
    finally:
        server.stop()
