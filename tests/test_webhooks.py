"""Deploy on a new best: MLflow's webhooks call examples/deploy_on_best.py's receiver.

A real ``mlflow server`` (webhooks live in its database) and the example's
receiver on 127.0.0.1; training runs against the server. The receiver must be
called exactly once per move of ``best``: with one sync per eval and a new best
at every eval, that is once per eval, for versions 1..N in some order.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time

import pytest
import requests
from conftest import REPO, free_port, run_tiny
from mlflow.tracking import MlflowClient
from mlflow_checks import MlflowServer

pytestmark = pytest.mark.slow

WEBHOOK_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}
LOSSES = "50,40,30,20,10"  # five new bests: five moves of `best`


def load_example():
    spec = importlib.util.spec_from_file_location(
        "deploy_on_best", REPO / "examples" / "deploy_on_best.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_receiver_is_called_once_per_move_of_best(tmp_path, monkeypatch):
    for key, value in WEBHOOK_ENV.items():
        monkeypatch.setenv(key, value)
    example = load_example()
    server = MlflowServer(str(tmp_path / "server"), extra_env=WEBHOOK_ENV).start()
    deployed: list[tuple[str, str]] = []
    port = free_port()
    receiver = example.make_receiver(
        "127.0.0.1",
        port,
        model="hooked",
        alias="best",
        secret="s3cret",
        deploy=lambda name, version: deployed.append((name, version)),
    )
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        client = MlflowClient(server.uri)
        example.register_webhook(client, f"http://127.0.0.1:{port}/", "s3cret")
        kwargs = json.dumps({"tracking_uri": server.uri, "registered_model_name": "hooked"})
        run_tiny(
            "--model-dir",
            str(tmp_path / "model"),
            "--losses",
            LOSSES,
            "--exports-to-keep",
            "2",
            "--exporter-kwargs",
            kwargs,
            "--flush-each",
        )
        deadline = time.monotonic() + 60
        while len(deployed) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # late or duplicate deliveries would arrive by now
        assert sorted(deployed, key=lambda d: int(d[1])) == [
            ("hooked", str(v)) for v in range(1, 6)
        ]
        best = client.get_model_version_by_alias("hooked", "best")
        assert str(best.version) == "5"
        # A promotion to another alias is an alias move too, but not of `best`.
        client.set_registered_model_alias("hooked", "champion", best.version)
        time.sleep(2)
        assert len(deployed) == 5
        # A request without MLflow's signature is refused and deploys nothing.
        body = json.dumps(
            {
                "entity": "model_version_alias",
                "action": "created",
                "data": {"name": "hooked", "alias": "best", "version": "1"},
            }
        )
        answer = requests.post(f"http://127.0.0.1:{port}/", data=body, timeout=10)
        assert answer.status_code == 403 and len(deployed) == 5
    finally:
        receiver.shutdown()
        server.stop()
