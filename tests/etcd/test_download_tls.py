"""The peer's certificate: RKE's real shapes pass, anything not signed by kube-ca is refused.

``serve`` presents ``kube-node.pem``: client-auth only, no SANs, dialled by IP (CONTRACT 12).
Default TLS verification rejects it; ours must accept it and still refuse impostors.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidekick.errors import SidekickError
from sidekick.etcd import download, tlsverify
from sidekick.etcd.budgets import Budgets
from tests.etcd.servers import running_server
from tests.harness.pki import CertificateAuthority, KeyPair, RkeSsl
from tests.harness.stops import RecordingStop, fast_policy

NAME = "snap"
NOW = dt.datetime.now(dt.UTC)


def der(pair: KeyPair) -> bytes:
    return pair.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def impostor_ca() -> CertificateAuthority:
    return CertificateAuthority("kube-ca")  # the same name as the real one, another key


# --- the verification policy ----------------------------------------------------------
def test_rke_kube_node_is_accepted(kube_ca: CertificateAuthority) -> None:
    node = kube_ca.kube_node()
    usages = list(node.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == [ExtendedKeyUsageOID.CLIENT_AUTH]  # RKE's shape: client only...
    with pytest.raises(x509.ExtensionNotFound):  # ... and no SANs
        node.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert tlsverify.verify_chain([der(node)], [der(kube_ca.pair)]) == "O=system:nodes,CN=system:node"


def test_default_tls_verification_would_reject_kube_node(kube_ca: CertificateAuthority, tmp_path: Path) -> None:
    """Why the custom check exists: OpenSSL's client-side purpose check refuses kube-node."""
    import socket
    import threading

    cert, key = kube_ca.kube_node().write(tmp_path, "kube-node")
    (tmp_path / "ca.pem").write_bytes(kube_ca.cert_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            server_ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    strict = ssl.create_default_context(cafile=tmp_path / "ca.pem")
    strict.check_hostname = False
    with pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"), socket.create_connection(listener.getsockname()) as raw:
        strict.wrap_socket(raw)
    thread.join(5)
    listener.close()


def test_a_server_certificate_with_sans_is_accepted_too(kube_ca: CertificateAuthority) -> None:
    tlsverify.verify_chain([der(kube_ca.kube_etcd("10.213.0.1"))], [der(kube_ca.pair)])


def test_a_certificate_of_another_ca_is_refused(kube_ca: CertificateAuthority, impostor_ca: CertificateAuthority) -> None:
    with pytest.raises(tlsverify.PeerNotTrusted, match="not trusted by the CA"):
        tlsverify.verify_chain([der(impostor_ca.kube_node())], [der(kube_ca.pair)])


def test_the_impostor_cannot_add_its_own_ca_to_the_chain(kube_ca: CertificateAuthority, impostor_ca: CertificateAuthority) -> None:
    chain = [der(impostor_ca.kube_node()), impostor_ca.pair.cert.public_bytes(serialization.Encoding.DER)]
    with pytest.raises(tlsverify.PeerNotTrusted):
        tlsverify.verify_chain(chain, [der(kube_ca.pair)])


def test_self_signed_is_refused(kube_ca: CertificateAuthority) -> None:
    with pytest.raises(tlsverify.PeerNotTrusted):
        tlsverify.verify_chain([der(CertificateAuthority("kube-ca").pair)], [der(kube_ca.pair)])


def test_expired_and_not_yet_valid_are_refused(kube_ca: CertificateAuthority) -> None:
    expired = kube_ca.issue("system:node", not_before=NOW - dt.timedelta(days=20), not_after=NOW - dt.timedelta(days=1))
    future = kube_ca.issue("system:node", not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=20))
    for pair in (expired, future):
        with pytest.raises(tlsverify.PeerNotTrusted, match=r"certificate has expired|certificate is not yet valid"):
            tlsverify.verify_chain([der(pair)], [der(kube_ca.pair)])


def test_a_leaf_cannot_act_as_an_issuer(kube_ca: CertificateAuthority) -> None:
    """kube-node's key signing a certificate: the chain reaches kube-ca, but through a non-CA."""
    node = kube_ca.kube_node()
    with pytest.raises(tlsverify.PeerNotTrusted):
        tlsverify.verify_chain([_leaf_of(node), der(node)], [der(kube_ca.pair)])


def _intermediate(kube_ca: CertificateAuthority, *, constraints: bool, key_cert_sign: bool = True) -> KeyPair:
    """A certificate kube-ca signs, able (or not) to act as an issuer."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd-intermediate")]))
        .issuer_name(kube_ca.pair.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
                                     crl_sign=key_cert_sign, encipher_only=False, decipher_only=False),
                       critical=True)
    )
    if constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return KeyPair(builder.sign(kube_ca.pair.key, hashes.SHA256()), key)


def _leaf_of(issuer: KeyPair) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:node")]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_a_chain_through_an_intermediate_ca_is_accepted(kube_ca: CertificateAuthority) -> None:
    middle = _intermediate(kube_ca, constraints=True)
    assert tlsverify.verify_chain([_leaf_of(middle), der(middle)], [der(kube_ca.pair)]) == "CN=system:node"
    with pytest.raises(tlsverify.PeerNotTrusted, match="unable to get local issuer certificate"):
        tlsverify.verify_chain([_leaf_of(middle)], [der(kube_ca.pair)])  # the intermediate withheld


@pytest.mark.parametrize(("constraints", "key_cert_sign"), [(False, True), (True, False)])
def test_an_issuer_must_be_a_ca_that_may_sign(kube_ca: CertificateAuthority, constraints: bool,
                                              key_cert_sign: bool) -> None:
    """No basicConstraints (OpenSSL alone would accept keyUsage keyCertSign), or keyUsage
    without keyCertSign: refused either way."""
    middle = _intermediate(kube_ca, constraints=constraints, key_cert_sign=key_cert_sign)
    with pytest.raises(tlsverify.PeerNotTrusted, match="not trusted by the CA"):
        tlsverify.verify_chain([_leaf_of(middle), der(middle)], [der(kube_ca.pair)])


def test_garbage_in_the_chain_is_refused_not_crashed_on(kube_ca: CertificateAuthority) -> None:
    with pytest.raises(tlsverify.PeerNotTrusted, match="cannot be parsed"):
        tlsverify.verify_chain([b"\x30\x03junk"], [der(kube_ca.pair)])


def test_roots_are_every_certificate_of_the_pem_file(kube_ca: CertificateAuthority, impostor_ca: CertificateAuthority,
                                                     tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(impostor_ca.cert_pem + b"\n" + kube_ca.cert_pem)
    roots = tlsverify.load_roots(bundle)
    assert roots == [der(impostor_ca.pair), der(kube_ca.pair)]
    assert tlsverify.verify_chain([der(kube_ca.kube_node())], roots) == "O=system:nodes,CN=system:node"
    (tmp_path / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(SidekickError, match="is not PEM: a certificate cannot be parsed"):
        tlsverify.load_roots(tmp_path / "broken.pem")


def test_no_certificate_at_all() -> None:
    with pytest.raises(tlsverify.PeerNotTrusted, match="presented no certificate"):
        tlsverify.verify_chain([], [])


def test_unreadable_ca_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SidekickError, match="cannot read CA certificate"):
        tlsverify.load_roots(tmp_path / "missing.pem")
    (tmp_path / "bad.pem").write_text("not a pem")
    with pytest.raises(SidekickError, match="is not PEM"):
        tlsverify.load_roots(tmp_path / "bad.pem")


# --- over real TLS: serve presenting various certificates, download deciding ---------
@pytest.fixture
def nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path, bytes]]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for root in (src, dst):
        (root / "backup").mkdir(parents=True)
    data = os.urandom(1 << 20)
    (src / "backup" / NAME).write_bytes(data)
    monkeypatch.setenv("SIDEKICK_ROOT", str(src))
    yield src, dst, data


def _download(dst: Path, port: int, ssl_: RkeSsl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(dst))
    download.download_from_peer(NAME, "127.0.0.1", cacert=ssl_.cacert, cert=ssl_.node_cert, key=ssl_.node_key,
                                port=port, budgets=Budgets(), stop=RecordingStop(), policy=fast_policy(0))


@pytest.mark.parametrize("shape", ["kube-node", "kube-etcd"])
def test_rke_shaped_server_certificates_are_trusted(nodes, etcd_ssl: RkeSsl, monkeypatch: pytest.MonkeyPatch, shape: str) -> None:  # type: ignore[no-untyped-def]
    _, dst, data = nodes
    cert = etcd_ssl.node_cert if shape == "kube-node" else etcd_ssl.directory / "kube-etcd-127-0-0-1.pem"
    key = cert.with_name(cert.stem + "-key.pem")
    with running_server(NAME, etcd_ssl.cacert, cert, key) as srv:
        _download(dst, srv.port, etcd_ssl, monkeypatch)
    assert (dst / "backup" / NAME).read_bytes() == data


def test_a_server_signed_by_another_ca_gets_no_request(
    nodes, etcd_ssl: RkeSsl, impostor_ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    _, dst, _ = nodes
    cert, key = impostor_ca.kube_node().write(tmp_path / "impostor", "kube-node")
    requests: list[int] = []
    from sidekick.etcd import serve

    real = serve.SnapshotHandler.handle_one_request

    def spy(self):  # type: ignore[no-untyped-def]
        if self.rfile.peek(1):
            requests.append(1)
        return real(self)

    monkeypatch.setattr(serve.SnapshotHandler, "handle_one_request", spy)
    # The impostor accepts our client certificate (it trusts kube-ca) and would serve garbage.
    with running_server(NAME, etcd_ssl.cacert, cert, key) as srv, pytest.raises(
        tlsverify.PeerNotTrusted, match=r"O=system:nodes,CN=system:node\) is not trusted by the CA"
    ):
        _download(dst, srv.port, etcd_ssl, monkeypatch)
    assert requests == []
    assert not (dst / "backup" / NAME).exists()


def test_a_server_refusing_our_client_certificate_is_not_retried(
    nodes, etcd_ssl: RkeSsl, impostor_ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    _, dst, _ = nodes
    other = tmp_path / "other"
    other.mkdir()
    (other / "ca.pem").write_bytes(impostor_ca.cert_pem)
    sleeps: list[float] = []
    with running_server(NAME, other / "ca.pem", etcd_ssl.node_cert, etcd_ssl.node_key) as srv:
        monkeypatch.setenv("SIDEKICK_ROOT", str(dst))
        with pytest.raises(SidekickError, match="refused our TLS client certificate"):
            download.download_from_peer(NAME, "127.0.0.1", cacert=etcd_ssl.cacert, cert=etcd_ssl.node_cert,
                                        key=etcd_ssl.node_key, port=srv.port, budgets=Budgets(),
                                        stop=RecordingStop(sleeps.append), policy=fast_policy())
    assert sleeps == []
