"""A real S3 server for registry tests: moto in server mode, as a subprocess on
127.0.0.1 (never an in-process mock), plus a TCP proxy we can kill mid-transfer.

Authentication is switched on after setup (``/moto-api/reset-auth``), so the
server rejects wrong credentials the way real S3 does.  Load with
``pytest_plugins = ["tests.integration.conftest_registry"]``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
BUCKET = "mvm-templates"

PROXY_CODE = r"""
import socket, sys, threading
listen, target = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen)); srv.listen(64)
print("ready", flush=True)
def pipe(a, b):
    try:
        while data := a.recv(1 << 16):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
while True:
    c, _ = srv.accept()
    u = socket.create_connection(("127.0.0.1", target))
    for a, b in ((c, u), (u, c)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """A running moto server with an IAM user whose keys the tests use."""

    proc: subprocess.Popen[bytes]
    port: int
    access_key_id: str = ""
    secret_access_key: str = ""
    bucket: str = BUCKET
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, prefix: str, **over: str) -> dict[str, str]:
        env = {
            "MVM_TEMPLATE_REGISTRY_ENDPOINT": self.endpoint,
            "MVM_TEMPLATE_REGISTRY_BUCKET": self.bucket,
            "MVM_TEMPLATE_REGISTRY_ACCESS_KEY_ID": self.access_key_id,
            "MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY": self.secret_access_key,
            "MVM_TEMPLATE_REGISTRY_PREFIX": prefix,
        }
        env.update(over)
        return env

    def client(self, key: str | None = None, secret: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key or self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except Exception as exc:
            if "NoSuchKey" in str(exc):
                return None
            raise

    def proxy(self) -> tuple[int, subprocess.Popen[bytes]]:
        """Start a TCP proxy to this server; kill it to simulate the server dying."""
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", PROXY_CODE, str(port), str(self.port)], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        self.extra.append(proc)
        return port, proc

    def stop(self) -> None:
        for p in [*self.extra, self.proc]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


def _wait_up(proc: subprocess.Popen[bytes], url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto_server did not start")


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(req, timeout=10).read()


def start_s3_server(bucket: str = BUCKET) -> S3Server:
    """Start moto, create an IAM user (s3:*) and ``bucket``, then enforce auth."""
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    server = S3Server(proc, port, bucket=bucket)
    try:
        _wait_up(proc, server.endpoint)
        admin = boto3.session.Session(
            aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1"
        )
        iam = admin.client("iam", endpoint_url=server.endpoint)
        iam.create_user(UserName="mvm")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="mvm", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="mvm")["AccessKey"]
        server.access_key_id, server.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        admin.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
        _post(server.endpoint + "/moto-api/reset-auth", b"0")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto server for the session; tests separate themselves by prefix."""
    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def private_s3_server() -> Iterator[S3Server]:
    """A moto server of one's own, for tests that kill it."""
    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point MVM_TEMPLATE_REGISTRY_* at the session server under a fresh prefix."""
    env = s3_server.env(f"t-{uuid.uuid4().hex[:10]}")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
