"""The real components the other tests stand on actually answer."""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests.harness.env import clean_env
from tests.harness.etcd import EtcdServer
from tests.harness.nginx import Nginx, stream_proxy_config
from tests.harness.ports import free_port
from tests.harness.s3 import S3Server

pytestmark = pytest.mark.integration


def test_etcdctl_put_get_over_tls(etcd_server: EtcdServer) -> None:
    etcd_server.put("/harness/hello", "world")
    assert etcd_server.get("/harness/hello") == "world"


def test_etcd_refuses_clients_without_a_certificate(etcd_server: EtcdServer) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(f"{etcd_server.url}/v3/kv/range", json={"key": "eA=="},
                      verify=str(etcd_server.ssl.cacert), timeout=5)


def test_etcd_bulk_load(etcd_server: EtcdServer) -> None:
    assert etcd_server.put_many(50, 1024, prefix="/bulk/") == 50 * 1024
    import json

    listing = json.loads(etcd_server.ctl("get", "/bulk/", "--prefix", "--keys-only", "-w", "json").stdout)
    assert listing["count"] == 50


def test_s3_put_get_over_https_with_the_tests_ca(s3_https: S3Server) -> None:
    bucket = s3_https.new_bucket()
    client = s3_https.client()
    client.put_object(Bucket=bucket, Key="a/b.zip", Body=b"payload")
    assert client.get_object(Bucket=bucket, Key="a/b.zip")["Body"].read() == b"payload"


def test_s3_https_is_refused_without_the_ca(s3_https: S3Server) -> None:
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.SSLError):
        s3_https.client(verify=True).list_buckets()


def test_s3_over_plain_http(s3_http: S3Server) -> None:
    bucket = s3_http.new_bucket()
    s3_http.client().put_object(Bucket=bucket, Key="k", Body=b"v")
    keys = [o["Key"] for o in s3_http.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["k"]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(b"echo:" + data)


def test_nginx_stream_proxy_passes_bytes(tmp_path: Path) -> None:
    backend = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    listen = free_port()
    nginx = Nginx(tmp_path / "nginx", stream_proxy_config(listen, [f"127.0.0.1:{backend.server_address[1]}"], tmp_path / "nginx"))
    try:
        nginx.start(wait_port=listen)
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as conn:
            conn.sendall(b"ping")
            assert conn.recv(1024) == b"echo:ping"
    finally:
        nginx.stop()
        backend.shutdown()


def test_the_tools_run_at_the_optimization_the_pass_asks_for() -> None:
    """scripts/test's second pass runs every tool (the venv's interpreter, started with the
    tests' environment) as the image's launcher does, with -OO."""
    expected = os.environ.get("SIDEKICK_TEST_TOOL_OPTIMIZE", "0")
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.flags.optimize)"], env=clean_env(),
                           capture_output=True, text=True, check=True, timeout=30)
    assert probe.stdout.strip() == expected
