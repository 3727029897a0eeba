"""An in-process ``serve`` (real TLS on loopback) and a plain mTLS HTTP client for tests."""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

from sidekick.etcd import options, serve
from sidekick.host.signals import StopRequest


@contextlib.contextmanager
def running_server(
    name: str,
    cacert: Path,
    cert: Path,
    key: Path,
    *,
    sha256: str | bool | None = True,
) -> Iterator[serve.SnapshotServer]:
    """``serve`` for ``/backup/<name>`` under the current SIDEKICK_ROOT, on a free port.

    ``sha256``: True announces the verified digest, a string announces that (a lying server),
    None announces nothing.
    """
    snapshot = serve.snapshot_to_serve(options.Options(name=name), None, StopRequest())
    announced = (snapshot.digest.sha256 if snapshot.digest else None) if sha256 is True else sha256
    resource = serve.Resource.of(name, snapshot.path, announced or None)
    server = serve.SnapshotServer(resource, serve.server_context(cacert, cert, key), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve, name="serve", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "serve did not stop"


def client_context(cert: Path | None, key: Path | None, **options: object) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # kube-node has no SANs and no server purpose
    for attr, value in options.items():
        setattr(context, attr, value)
    if cert and key:
        context.load_cert_chain(cert, key)
    return context


def fetch(
    port: int,
    path: str,
    *,
    context: ssl.SSLContext,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


@contextlib.contextmanager
def captured_logs(caplog: object) -> Iterator[None]:
    """Let ``sidekick.*`` records reach pytest's caplog even after the dispatcher set them up."""
    import logging

    logger = logging.getLogger("sidekick")
    saved = logger.propagate, logger.level
    logger.propagate = True
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.propagate, logger.level = saved[0], saved[1]
