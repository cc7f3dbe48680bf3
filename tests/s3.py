"""A real S3 API server on 127.0.0.1 (moto's standalone server) and boto3 oracles for it.

Everything in the test process talks to it through boto3 only: once
tensorflow-io's S3 filesystem has been used, the interpreter aborts at exit
(tensorflow/io#1912), so TensorFlow touches ``s3://`` in child processes only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

from conftest import free_port

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class S3Server:
    """A running moto server; ``env`` is what tensorflow-io and boto3 need to reach it."""

    endpoint: str
    process: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        return {
            "S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        found = []
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            found.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(found)

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def exports(self, bucket: str, prefix: str) -> dict[str, set[str]]:
        """{export directory name: its files} under ``prefix`` (an export base)."""
        found: dict[str, set[str]] = {}
        for key in self.keys(bucket, prefix.rstrip("/") + "/"):
            relative = key[len(prefix.rstrip("/")) + 1 :]
            name, _, rest = relative.partition("/")
            if rest:
                found.setdefault(name, set()).add(rest)
        return found

    def export_steps(self, bucket: str, prefix: str) -> dict[int, dict]:
        """{global_step from the variables: metadata} of each complete export, via boto3.

        The variables are downloaded and read with ``tf.train.load_variable``
        on the local copy.
        """
        import tensorflow as tf

        steps = {}
        for name, files in self.exports(bucket, prefix).items():
            if not (len(name) == 10 and name.isdigit()) or "saved_model.pb" not in files:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                for file in files:
                    if file.startswith("variables/"):
                        target = os.path.join(tmp, file)
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with open(target, "wb") as f:
                            f.write(self.read(bucket, f"{prefix}/{name}/{file}"))
                step = int(
                    tf.train.load_variable(
                        os.path.join(tmp, "variables", "variables"), "global_step"
                    )
                )
            metadata = json.loads(
                self.read(bucket, f"{prefix}/{name}/assets.extra/mlflow_best_export.json")
            )
            assert metadata["global_step"] == step, (name, metadata)
            steps[step] = metadata
        return steps


@contextlib.contextmanager
def s3_server(log_path: str):
    """Start ``moto_server`` on a free loopback port; stop it afterwards."""
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = S3Server(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.client().list_buckets()
                break
            except Exception as err:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise AssertionError(
                        f"moto_server did not start:\n{open(log_path).read()}"
                    ) from err
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
