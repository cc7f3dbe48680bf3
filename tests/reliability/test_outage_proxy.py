"""A tracking server that answers 500s (through a fault-injecting proxy) never stops training.

A real `mlflow server` (tests/mlflow_checks.py) behind tests/reliability/proxy.py;
the exporter talks to the proxy only. The invariants are checked against the
server directly.
"""

from __future__ import annotations

import logging

import harness
import pytest
import tiny
from mlflow_checks import MlflowServer, check_mlflow
from proxy import FaultProxy

from mlflow_best_export import MLflowBestExporter

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path, mlflow_fails_fast):
    server = MlflowServer(str(tmp_path / "server")).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(server):
    proxy = FaultProxy(server.uri).start()
    yield proxy
    proxy.stop()


def sync_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("mlflow_best_export")]


@pytest.mark.parametrize("fault", ["fail", "drop"])
def test_training_outlives_a_failing_server_and_catches_up(tmp_path, server, proxy, caplog, fault):
    model_dir = str(tmp_path / "model")
    exporter = MLflowBestExporter(
        serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
        exports_to_keep=2,
        tracking_uri=proxy.uri,
        registered_model_name="tiny",
    )
    losses = list(harness.LOSSES)
    tiny.train(model_dir, exporter, losses, max_steps=6)
    assert exporter.flush(120)
    check_mlflow(model_dir, server.uri, registered_model_name="tiny", best_step=4)

    # A few requests still get through, so the outage starts in the middle of a sync.
    getattr(proxy, fault)(after=3)
    with caplog.at_level(logging.INFO, logger="mlflow_best_export"):
        tiny.train(model_dir, exporter, losses, max_steps=12)  # new bests at 8 and 12
        assert exporter.flush(30) is False  # still failing: not in step
    assert proxy.failed + proxy.dropped > 0
    messages = sync_warnings(caplog)
    assert any("Could not bring MLflow in line" in m for m in messages), messages
    assert _steps(model_dir) == [8, 12]  # the disk moved on

    proxy.heal()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mlflow_best_export"):
        tiny.train(model_dir, exporter, losses)
        exporter.close()
    assert any("reachable again" in m for m in sync_warnings(caplog)), sync_warnings(caplog)
    check_mlflow(model_dir, server.uri, registered_model_name="tiny", best_step=16)


def _steps(model_dir):
    from oracles import export_steps

    return sorted(export_steps(f"{model_dir}/export/best_exporter"))


def test_an_outage_at_the_end_is_caught_up_by_the_next_start(tmp_path, server, proxy, caplog):
    model_dir = str(tmp_path / "model")
    losses = list(harness.LOSSES)

    def exporter():
        return MLflowBestExporter(
            serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
            exports_to_keep=2,
            tracking_uri=proxy.uri,
            registered_model_name="tiny",
            flush_timeout=20,
        )

    first = exporter()
    proxy.fail(after=10)
    with caplog.at_level(logging.WARNING, logger="mlflow_best_export"):
        tiny.train(model_dir, first, losses)
        first.close()  # does not raise, and does not wait forever
    assert proxy.failed > 0
    assert any("not in step after the final export" in m for m in sync_warnings(caplog))
    assert _steps(model_dir) == [12, 16]

    proxy.heal()
    second = exporter()
    tiny.train(model_dir, second, losses + [8])  # one more eval: its export() reconciles
    second.close()
    check_mlflow(model_dir, server.uri, registered_model_name="tiny", best_step=16)
