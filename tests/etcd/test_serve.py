"""``serve`` over real mutual TLS on loopback: the one route, ranges, who may connect, logs."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidekick.errors import SidekickError
from sidekick.etcd import options, serve
from sidekick.etcd.serve import ByteRange, HttpError, parse_range
from sidekick.host.signals import StopRequest
from tests.etcd.servers import captured_logs, client_context, fetch, running_server
from tests.harness.pki import CertificateAuthority, RkeSsl

NAME = "rke_etcd_snapshot_2024-10-04T14:00:00+02:00"
PATH = "/" + urllib.parse.quote(NAME)


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, etcd_ssl: RkeSsl) -> Iterator[tuple[Path, bytes]]:
    root = tmp_path / "root"
    (root / "backup").mkdir(parents=True)
    monkeypatch.setenv("SIDEKICK_ROOT", str(root))
    data = os.urandom(3 << 20) + b"tail"
    (root / "backup" / NAME).write_bytes(data)
    yield root, data


@pytest.fixture
def server(node: tuple[Path, bytes], etcd_ssl: RkeSsl) -> Iterator[serve.SnapshotServer]:
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key,
                        sha256=hashlib.sha256(node[1]).hexdigest()) as srv:
        yield srv


@pytest.fixture
def mtls(etcd_ssl: RkeSsl) -> ssl.SSLContext:
    return client_context(etcd_ssl.node_cert, etcd_ssl.node_key)


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority("kube-ca")  # same name, different key: an impostor


# --- what is served --------------------------------------------------------------------
def test_an_uncompressed_file_without_archive_is_served_as_is(node: tuple[Path, bytes]) -> None:
    ready = serve.snapshot_to_serve(options.Options(name=NAME), None, StopRequest())
    assert ready.path == node[0] / "backup" / NAME
    assert ready.origin == "uncompressed file" and ready.digest is None


def test_nothing_to_serve_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "backup").mkdir()
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    with pytest.raises(SidekickError, match=re.escape(f"snapshot {NAME} not found: neither /backup/{NAME}.zip nor")):
        serve.snapshot_to_serve(options.Options(name=NAME), None, StopRequest())


# --- the route ------------------------------------------------------------------------
def test_get_serves_the_whole_file_with_its_digest(server: serve.SnapshotServer, node, mtls) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch(server.port, PATH, context=mtls)
    data = node[1]
    assert status == 200
    assert body == data
    assert headers["content-length"] == str(len(data))
    assert headers["accept-ranges"] == "bytes"
    expected = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert headers["repr-digest"] == f"sha-256=:{expected}:"
    assert headers["etag"].startswith('"')


def test_head_sends_headers_only(server: serve.SnapshotServer, node, mtls) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = fetch(server.port, PATH, context=mtls, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len(node[1]))


@pytest.mark.parametrize(
    "header,start,end",
    [("bytes=10-99", 10, 99), ("bytes=100-", 100, None), ("bytes=-100", -100, None), ("bytes=0-0", 0, 0)],
)
def test_ranges(server: serve.SnapshotServer, node, mtls, header: str, start: int, end: int | None) -> None:  # type: ignore[no-untyped-def]
    data = node[1]
    status, headers, body = fetch(server.port, PATH, context=mtls, headers={"Range": header})
    expected = data[start:] if end is None else data[start : end + 1]
    assert status == 206
    assert body == expected
    assert headers["content-length"] == str(len(expected))
    first = start if start >= 0 else len(data) + start
    assert headers["content-range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"


def test_range_past_the_end_is_416(server: serve.SnapshotServer, node, mtls) -> None:  # type: ignore[no-untyped-def]
    status, headers, _ = fetch(server.port, PATH, context=mtls, headers={"Range": f"bytes={len(node[1])}-"})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(node[1])}"


def test_if_range_of_another_version_gets_the_whole_file(server: serve.SnapshotServer, node, mtls) -> None:  # type: ignore[no-untyped-def]
    status, _, body = fetch(server.port, PATH, context=mtls, headers={"Range": "bytes=10-", "If-Range": '"old"'})
    assert (status, body) == (200, node[1])
    _, headers, _ = fetch(server.port, PATH, context=mtls, method="HEAD")
    status, _, body = fetch(server.port, PATH, context=mtls, headers={"Range": "bytes=10-", "If-Range": headers["etag"]})
    assert (status, body) == (206, node[1][10:])


@pytest.mark.parametrize("path", ["/", "/other", f"{PATH}.zip", f"/x/..{PATH}", f"{PATH}/", "/backup" + PATH])
def test_every_other_path_is_404(server: serve.SnapshotServer, mtls, path: str) -> None:  # type: ignore[no-untyped-def]
    status, _, body = fetch(server.port, path, context=mtls)
    assert status == 404
    assert NAME.encode() not in body


def test_other_methods_are_refused(server: serve.SnapshotServer, mtls) -> None:  # type: ignore[no-untyped-def]
    status, headers, _ = fetch(server.port, PATH, context=mtls, method="DELETE")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_keep_alive_serves_several_requests(server: serve.SnapshotServer, node, mtls) -> None:  # type: ignore[no-untyped-def]
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=mtls, timeout=30)
    try:
        for start in (0, 10):
            conn.request("GET", PATH, headers={"Range": f"bytes={start}-{start + 9}"})
            response = conn.getresponse()
            assert response.status == 206
            assert response.read() == node[1][start : start + 10]
    finally:
        conn.close()


# --- who may connect ------------------------------------------------------------------
def _handshake_fails(port: int, context: ssl.SSLContext) -> str:
    # With TLS 1.3 the refusal may only show on the first read.
    with (
        pytest.raises((ssl.SSLError, ConnectionError, OSError)) as info,
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if not tls.recv(100):
            raise ConnectionError("closed without an answer")
    return str(info.value)


def test_a_client_without_certificate_is_refused(server: serve.SnapshotServer) -> None:
    _handshake_fails(server.port, client_context(None, None))


def test_a_client_certificate_of_another_ca_is_refused(
    server: serve.SnapshotServer, other_ca: CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = other_ca.kube_node().write(tmp_path, "impostor")
    with captured_logs(caplog):
        _handshake_fails(server.port, client_context(cert, key))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(r.getMessage() == "TLS handshake refused" for r in caplog.records):
            time.sleep(0.02)
    refused = [r for r in caplog.records if r.getMessage() == "TLS handshake refused"]
    assert refused and "certificate" in str(refused[0].fields["error"]).lower()  # type: ignore[attr-defined]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_below_1_2_is_refused(server: serve.SnapshotServer, etcd_ssl: RkeSsl) -> None:
    old = client_context(etcd_ssl.node_cert, etcd_ssl.node_key)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    _handshake_fails(server.port, old)


def test_server_context_requires_tls_1_2_and_a_client_certificate(etcd_ssl: RkeSsl) -> None:
    context = serve.server_context(etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_each_client_is_logged_with_subject_and_bytes(
    server: serve.SnapshotServer, node, mtls, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    with captured_logs(caplog):
        fetch(server.port, PATH, context=mtls)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(r.getMessage() == "snapshot sent" for r in caplog.records):
            time.sleep(0.05)
    sent = next(r for r in caplog.records if r.getMessage() == "snapshot sent")
    fields = sent.fields  # type: ignore[attr-defined]
    assert fields["subject"] == "CN=system:node,O=system:nodes"
    assert fields["bytes"] == len(node[1])
    assert fields["status"] == 200
    assert str(fields["client"]).startswith("127.0.0.1:")


def test_stop_ends_serving_even_with_an_idle_client(node, etcd_ssl: RkeSsl, mtls) -> None:  # type: ignore[no-untyped-def]
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key) as srv:
        idle = mtls.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
        began = time.monotonic()
    assert time.monotonic() - began < 5
    assert idle.recv(10) == b""  # the server hung up on it
    idle.close()


def test_listening_port_is_refused_when_taken(node, etcd_ssl: RkeSsl) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        context = serve.server_context(etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key)
        resource = serve.Resource.of(NAME, node[0] / "backup" / NAME, None)
        with pytest.raises(serve.SidekickError, match=r"cannot listen on 127.0.0.1:\d+: Address already in use"):
            serve.SnapshotServer(resource, context, "127.0.0.1", taken.getsockname()[1])


def test_unreadable_certificate_is_one_clear_error(tmp_path: Path, etcd_ssl: RkeSsl) -> None:
    with pytest.raises(serve.SidekickError, match="cannot load server certificate"):
        serve.server_context(etcd_ssl.cacert, tmp_path / "missing.pem", etcd_ssl.node_key)
    with pytest.raises(serve.SidekickError, match="cannot load CA certificate"):
        serve.server_context(tmp_path / "missing-ca.pem", etcd_ssl.node_cert, etcd_ssl.node_key)


def test_port_and_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(options.SERVE_PORT_ENV, raising=False)
    monkeypatch.delenv(options.SERVE_ADDRESS_ENV, raising=False)
    assert (options.serve_address(), options.serve_port()) == ("0.0.0.0", 2379)
    monkeypatch.setenv(options.SERVE_PORT_ENV, "12379")
    monkeypatch.setenv(options.SERVE_ADDRESS_ENV, "10.213.0.1")
    assert (options.serve_address(), options.serve_port()) == ("10.213.0.1", 12379)
    monkeypatch.setenv(options.SERVE_PORT_ENV, "70000")
    with pytest.raises(serve.UsageError):
        options.serve_port()


# --- pure parts -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header,size,expected",
    [
        (None, 100, None),
        ("bytes=0-9", 100, ByteRange(0, 9)),
        ("bytes=90-200", 100, ByteRange(90, 99)),
        ("bytes=-10", 100, ByteRange(90, 99)),
        ("bytes=-1000", 100, ByteRange(0, 99)),
        ("bytes=5-", 100, ByteRange(5, 99)),
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole file
        ("items=0-1", 100, None),
        ("bytes=9-5", 100, None),
        ("bytes=x-5", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0", "bytes=500-600"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(HttpError) as info:
        parse_range(header, 100)
    assert info.value.status == 416


def _raw(port: int, context: ssl.SSLContext, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (f"POST {PATH} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".encode(), 405),
    (f"GET {PATH} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".encode(), 400),
])
def test_bad_requests_are_bounded_and_refused(server: serve.SnapshotServer, mtls, request_bytes: bytes,  # type: ignore[no-untyped-def]
                                              status: int) -> None:
    answer = _raw(server.port, mtls, request_bytes)
    assert answer.startswith(b"HTTP/1.") and answer.split(b" ", 2)[1] == str(status).encode()


def test_http_1_0_closes_unless_asked(server: serve.SnapshotServer, node, mtls) -> None:  # type: ignore[no-untyped-def]
    answer = _raw(server.port, mtls, f"GET {PATH} HTTP/1.0\r\n\r\n".encode())  # recv ends: the server closed
    assert answer.split(b" ", 2)[1] == b"200" and answer.endswith(node[1])


def test_subject_text() -> None:
    cert = {"subject": ((("organizationName", "system:nodes"),), (("commonName", "system:node"),))}
    assert serve.subject_text(cert) == "O=system:nodes,CN=system:node"
    assert serve.subject_text(None) == ""


def test_many_clients_at_once_are_bounded(node, etcd_ssl: RkeSsl, mtls, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(serve, "MAX_CLIENTS", 2)
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key) as srv:
        idle = [mtls.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10)) for _ in range(2)]
        for sock in idle:  # verified: each holds a peer slot
            sock.sendall(b"HEAD " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        # A third verified client finds every slot busy: 503, try again.
        assert fetch(srv.port, PATH, context=mtls)[0] == 503
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(fetch(srv.port, PATH, context=mtls)[0])) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200, 200]


def test_idle_connections_without_certificates_never_starve_a_peer(node, etcd_ssl: RkeSsl, mtls) -> None:  # type: ignore[no-untyped-def]
    """200 idle TCP connections and 50 reconnecting ones, all from loopback like the peer."""
    with running_server(NAME, etcd_ssl.cacert, etcd_ssl.node_cert, etcd_ssl.node_key) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(200)]
        stop = threading.Event()

        def reconnect() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", srv.port), timeout=2):
                    time.sleep(0.05)

        churn = [threading.Thread(target=reconnect, daemon=True) for _ in range(50)]
        for t in churn:
            t.start()
        try:
            started = time.monotonic()
            status, _, body = fetch(srv.port, PATH, context=mtls)
            took = time.monotonic() - started
        finally:
            stop.set()
            for t in churn:
                t.join()
            for sock in idle:
                sock.close()
    assert status == 200 and body == node[1]
    assert took < 2, f"a real peer waited {took:.2f}s behind unauthenticated connections"
