"""TLS over memory BIOs against a real ``ssl`` server on loopback: bytes across many records
arrive whole, and each way a connection can end (close_notify, a bare FIN, a reset, a
refused certificate) reads as the ``SSLSocket`` it replaces would read it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from sidekick.etcd import tlsverify
from sidekick.etcd.tlsbio import BioSocket
from tests.harness.pki import RkeSsl


@contextmanager
def tls_server(etcd_ssl: RkeSsl, behave: Callable[[ssl.SSLSocket], None]) -> Iterator[int]:
    """One connection, mutual TLS as ``serve`` requires it, then ``behave``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(etcd_ssl.node_cert, etcd_ssl.node_key)
    context.load_verify_locations(etcd_ssl.cacert)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        raw, _ = listener.accept()
        raw.settimeout(5)
        tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (OSError, ssl.SSLError):
            # As serve does: the alert is out; let the client's bytes drain so that closing
            # sends no reset that could destroy it (the TLS layer is gone after shutdown).
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_WR)
                while tls.recv(4096):
                    pass
            tls.close()
            return
        try:
            behave(tls)
        except (OSError, ssl.SSLError):
            tls.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(10)
        listener.close()


def connect(port: int, etcd_ssl: RkeSsl, cert: RkeSsl | None = None) -> BioSocket:
    ssl_ = cert or etcd_ssl
    sock = BioSocket(socket.create_connection(("127.0.0.1", port), timeout=10),
                     tlsverify.client_context(ssl_.node_cert, ssl_.node_key))
    sock.do_handshake()
    return sock


def read_all(sock: BioSocket, size: int = 1 << 20) -> bytes:
    buffer = bytearray(size)
    out = bytearray()
    while count := sock.recv_into(buffer):
        out += buffer[:count]
    return bytes(out)


DATA = os.urandom((3 << 20) + 77)  # ~200 records of 16 KiB and an odd end


def test_many_records_arrive_whole_and_the_chain_is_the_servers(etcd_ssl: RkeSsl) -> None:
    def send(tls: ssl.SSLSocket) -> None:
        assert tls.recv(4) == b"ping"
        tls.sendall(DATA)
        tls.unwrap().close()  # close_notify

    with tls_server(etcd_ssl, send) as port:
        sock = connect(port, etcd_ssl)
        assert tlsverify.verify_chain(tlsverify.peer_chain(sock.tls), tlsverify.load_roots(etcd_ssl.cacert))
        sock.sendall(b"ping")
        got = read_all(sock)
        sock.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()


def test_a_bare_fin_ends_the_stream_like_sslsocket_does(etcd_ssl: RkeSsl) -> None:
    """No close_notify (a peer that died between records): an end of stream, and the bytes so
    far, for Content-Length to judge."""
    def send_and_drop(tls: ssl.SSLSocket) -> None:
        tls.sendall(DATA[: 1 << 20])
        os.close(tls.detach())  # the descriptor goes without a TLS goodbye

    with tls_server(etcd_ssl, send_and_drop) as port:
        sock = connect(port, etcd_ssl)
        got = read_all(sock, 64 << 10)
        sock.close()
    assert got == DATA[: 1 << 20]


def test_a_reset_is_an_oserror(etcd_ssl: RkeSsl) -> None:
    def send_and_reset(tls: ssl.SSLSocket) -> None:
        tls.sendall(DATA[: 64 << 10])
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.recv(1)  # wait for the client's go, so the reset comes mid-stream
        socket.socket.close(tls)

    with tls_server(etcd_ssl, send_and_reset) as port:
        sock = connect(port, etcd_ssl)
        buffer = bytearray(1 << 20)
        assert sock.recv_into(buffer) > 0
        sock.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            while sock.recv_into(buffer):
                pass
        sock.close()


def test_a_refused_client_certificate_is_the_servers_alert(etcd_ssl: RkeSsl, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.harness.pki import CertificateAuthority

    stranger = RkeSsl.create(tmp_path / "stranger", CertificateAuthority("kube-ca"), "127.0.0.1")

    def refuse(tls: ssl.SSLSocket) -> None:
        tls.recv(1)

    with tls_server(etcd_ssl, refuse) as port:
        sock = connect(port, etcd_ssl, cert=stranger)  # TLS 1.3: the verdict comes after
        try:
            with pytest.raises(ssl.SSLError) as raised:
                sock.sendall(b"GET")
                read_all(sock)
        finally:
            sock.close()
    assert any(word in str(raised.value.reason).upper() for word in ("UNKNOWN_CA", "CERTIFICATE", "DECRYPT_ERROR"))


def test_a_silent_server_times_out(etcd_ssl: RkeSsl) -> None:
    done = threading.Event()

    def say_nothing(tls: ssl.SSLSocket) -> None:
        done.wait(10)
        tls.close()

    with tls_server(etcd_ssl, say_nothing) as port:
        sock = connect(port, etcd_ssl)
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv_into(bytearray(16))
        sock.close()
        done.set()


def test_the_socket_outlives_its_close_while_a_reader_is_open(etcd_ssl: RkeSsl) -> None:
    """``http.client`` closes the connection as soon as a response says ``Connection: close``
    and reads the body through the response's file: the bytes must still come."""
    def send(tls: ssl.SSLSocket) -> None:
        tls.sendall(DATA[: 1 << 20])
        tls.unwrap().close()

    with tls_server(etcd_ssl, send) as port:
        sock = connect(port, etcd_ssl)
        reader = sock.makefile("rb")
        sock.close()
        assert sock.fileno() != -1
        assert reader.read() == DATA[: 1 << 20]
        reader.close()
        assert sock.fileno() == -1  # closed with its last reader


def test_a_download_from_a_server_that_closes_after_each_response(etcd_ssl: RkeSsl, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sidekick.etcd import download
    from sidekick.etcd.budgets import Budgets
    from tests.harness.stops import RecordingStop, fast_policy

    body = DATA[: (1 << 20) + 5]
    head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            f"Repr-Digest: sha-256=:{__import__('base64').b64encode(hashlib.sha256(body).digest()).decode()}:\r\n\r\n")

    def answer(tls: ssl.SSLSocket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += tls.recv(4096)
        tls.sendall(head.encode() + body)
        tls.unwrap().close()

    (tmp_path / "backup").mkdir()
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    with tls_server(etcd_ssl, answer) as port:
        digest = download.download_from_peer("snap", "127.0.0.1", cacert=etcd_ssl.cacert, cert=etcd_ssl.node_cert,
                                             key=etcd_ssl.node_key, port=port, budgets=Budgets(),
                                             stop=RecordingStop(), policy=fast_policy(0))
    assert (tmp_path / "backup" / "snap").read_bytes() == body
    assert digest.sha256 == hashlib.sha256(body).hexdigest()
