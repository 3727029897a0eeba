"""Trusting the peer that serves a snapshot: its chain, not its host name or purpose.

A snapshot must come only from a node of this cluster, and verifying that has to fit what
RKE deploys (CONTRACT 12):
``serve`` presents ``kube-node.pem``, a CLIENT-auth-only certificate without SANs, and the
peer is dialled by its internal IP. OpenSSL's client-side verification insists on the
server purpose (``unsuitable certificate purpose``) and Python's ``ssl`` cannot relax that,
nor does it offer a verification callback.

So the handshake runs without verification (``CERT_NONE``: the TLS handshake itself still
proves the peer holds the key of the certificate it presented), and before a single byte of
the request is sent the presented chain is verified here with ``cryptography``'s path
builder: it must chain to a certificate of ``--cacert`` and be within its validity; every
issuer must be a CA (basicConstraints ``cA``, keyCertSign when key usage is present). The
leaf's host name, SANs and extended key usage are deliberately not checked. A certificate
signed by any other CA is refused.
"""

from __future__ import annotations

import _ssl
import datetime as dt
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from sidekick.errors import SidekickError

MAX_CHAIN_DEPTH = 4
_ENCODING_DER = _ssl.ENCODING_DER  # what the private _ssl.Certificate.public_bytes takes


class PeerNotTrusted(SidekickError):
    """The peer's certificate does not chain to our CA (or is expired, or not yet valid)."""


def load_roots(cacert: Path) -> list[x509.Certificate]:
    try:
        roots = x509.load_pem_x509_certificates(cacert.read_bytes())
    except OSError as err:
        raise SidekickError(f"cannot read CA certificate {cacert}: {err.strerror or err}") from None
    except ValueError as err:
        raise SidekickError(f"CA certificate {cacert} is not PEM: {err}") from None
    return roots


def _issuer_is_a_ca(_policy: Any, _cert: x509.Certificate, constraints: x509.BasicConstraints) -> None:
    if not constraints.ca:
        raise ValueError("issuer is not a CA (basicConstraints cA is false)")


def _issuer_may_sign(_policy: Any, _cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("issuer key usage lacks keyCertSign")


def _ca_policy() -> ExtensionPolicy:
    # Only what makes a certificate an issuer: RKE's kube-ca (client-go, possibly created by an
    # old Go without key identifiers) must pass, a leaf posing as an issuer must not.
    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _issuer_is_a_ca)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _issuer_may_sign)
    )


def verify_chain(
    chain_der: Sequence[bytes], roots: Sequence[x509.Certificate], *, now: dt.datetime | None = None
) -> x509.Certificate:
    """Verify a peer's DER chain (leaf first) against ``roots``; return the leaf."""
    if not chain_der:
        raise PeerNotTrusted("the peer presented no certificate")
    try:
        leaf = x509.load_der_x509_certificate(chain_der[0])
        intermediates = [x509.load_der_x509_certificate(der) for der in chain_der[1:]]
    except ValueError as err:
        raise PeerNotTrusted(f"the peer's certificate cannot be parsed: {err}") from None
    verifier = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(now or dt.datetime.now(dt.UTC))
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=_ca_policy(), ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()  # the only verifier that does not demand a SAN match
    )
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as err:
        raise PeerNotTrusted(f"the peer's certificate ({subject_of(leaf)}) is not trusted by the CA: {err}") from None
    return leaf


def subject_of(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "empty subject"


def peer_chain(sock: ssl.SSLSocket) -> list[bytes]:
    """The chain the peer presented, leaf first (DER)."""
    sslobj: Any = getattr(sock, "_sslobj", None)
    unverified = getattr(sslobj, "get_unverified_chain", None)  # public in Python 3.13
    if unverified is not None:
        chain = unverified() or []
        return [cert.public_bytes(_ENCODING_DER) for cert in chain]
    leaf = sock.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def client_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS >= 1.2 with our client certificate; the server is verified by :func:`verify_chain`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise SidekickError(f"cannot load client certificate {cert} / key {key}: {err}") from None
    return context
