"""Deploy each new best model: an MLflow webhook on alias moves, and its receiver.

``MLflowBestExporter`` moves the alias ``best`` whenever a better model is
registered. MLflow 3's webhooks (on ``model_version_alias.created``) call a URL
for every such move; this script registers one and serves the receiver, which
checks the HMAC signature, keeps only moves of ``--alias`` on ``--model``,
and deploys the version (here: loads ``models:/NAME/VERSION`` and prints it;
put your rollout there).

The MLflow server must be a real ``mlflow server`` (webhooks live in its
database). For a receiver on plain http or a private address, start the
server with ``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https`` and
``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true``.

Usage::

    python examples/deploy_on_best.py --tracking-uri http://127.0.0.1:5000 \\
        --model house-prices --port 8099 --secret s3cret
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger("deploy_on_best")

EVENT = "model_version_alias.created"


def signature_ok(secret: str, headers, body: bytes) -> bool:
    """True if ``X-MLflow-Signature`` is MLflow's HMAC-SHA256 of delivery id, time, body."""
    signed = f"{headers.get('X-MLflow-Delivery-Id')}.{headers.get('X-MLflow-Timestamp')}."
    digest = hmac.new(secret.encode(), signed.encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    return hmac.compare_digest(expected, headers.get("X-MLflow-Signature", ""))


def make_receiver(
    host: str,
    port: int,
    *,
    model: str,
    alias: str,
    secret: str | None,
    deploy: Callable[[str, str], None],
) -> ThreadingHTTPServer:
    """An HTTP server that calls ``deploy(model, version)`` once per move of ``alias``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if secret is not None and not signature_ok(secret, self.headers, body):
                self.send_response(403)
                self.end_headers()
                return
            event = json.loads(body)
            data = event.get("data", {})
            self.send_response(200)
            self.end_headers()
            if (
                f"{event.get('entity')}.{event.get('action')}" == EVENT
                and data.get("name") == model
                and data.get("alias") == alias
            ):
                deploy(data["name"], str(data["version"]))

        def log_message(self, format, *args):  # noqa: A002 - http.server's name
            logger.debug(format, *args)

    return ThreadingHTTPServer((host, port), Handler)


def register_webhook(client, url: str, secret: str | None, name: str = "deploy-on-best"):
    """Create the webhook that calls ``url`` on every alias move."""
    return client.create_webhook(name=name, url=url, events=[EVENT], secret=secret)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="a real mlflow server")
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--alias", default="best")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--secret", default=None, help="HMAC secret shared with MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    lock = threading.Lock()

    def deploy(model: str, version: str) -> None:
        with lock:  # one rollout at a time
            loaded = mlflow.pyfunc.load_model(f"models:/{model}/{version}")
            logger.info("deployed %s version %s (%s)", model, version, loaded.metadata.model_id)

    receiver = make_receiver(
        args.host, args.port, model=args.model, alias=args.alias, secret=args.secret, deploy=deploy
    )
    url = f"http://{args.host}:{args.port}/"
    hook = register_webhook(MlflowClient(args.tracking_uri), url, args.secret)
    logger.info(
        "webhook %s calls %s on every move of %s@%s", hook.webhook_id, url, args.model, args.alias
    )
    try:
        receiver.serve_forever()
    finally:
        MlflowClient(args.tracking_uri).delete_webhook(hook.webhook_id)


if __name__ == "__main__":
    main()
