"""Trusting the peer that serves a snapshot: its chain, not its host name or purpose.

A snapshot must come only from a node of this cluster, and verifying that has to fit what
RKE deploys (CONTRACT 12):
``serve`` presents ``kube-node.pem``, a CLIENT-auth-only certificate without SANs, and the
peer is dialled by its internal IP. OpenSSL's client-side verification insists on the
server purpose (``unsuitable certificate purpose``) and Python's ``ssl`` cannot relax that,
nor does it offer a verification callback.

So the handshake runs without verification (``CERT_NONE``: the TLS handshake itself still
proves the peer holds the key of the certificate it presented), and before a single byte of
the request is sent the presented chain is verified here: it must chain to a certificate of
``--cacert`` (at most :data:`MAX_CHAIN_DEPTH` deep) and be within its validity, and every
issuer must be a CA (basicConstraints ``cA``; keyCertSign when key usage is present). The
leaf's host name, SANs and extended key usage are deliberately not checked. A certificate
signed by any other CA is refused.

The check is OpenSSL's own ``X509_verify_cert`` with no purpose set, called through
``ctypes`` in the very libcrypto that ``ssl`` already loaded (looked up through ``_ssl``'s
dependencies, so never another copy). ``cryptography``'s verifier would do the same, but
loading it costs 11 MiB of resident memory, a third of the download's budget, for one check
per connection.
"""

from __future__ import annotations

import _ssl
import binascii
import ctypes
import functools
import re
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sidekick.errors import SidekickError

MAX_CHAIN_DEPTH = 4
_ENCODING_DER = _ssl.ENCODING_DER  # what the private _ssl.Certificate.public_bytes takes
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)
# XN_FLAG_RFC2253: ASN1_STRFLGS_RFC2253 (0x317) | SEP_COMMA_PLUS | DN_REV | DUMP_UNKNOWN_FIELDS
_XN_FLAG_RFC2253 = 0x317 | 1 << 16 | 1 << 20 | 1 << 24
_BIO_CTRL_INFO = 3  # BIO_get_mem_data


class PeerNotTrusted(SidekickError):
    """The peer's certificate does not chain to our CA (or is expired, or not yet valid)."""


def load_roots(cacert: Path) -> list[bytes]:
    """The DER certificates of a PEM file (each parsed once here, so a bad file fails now)."""
    try:
        text = cacert.read_bytes()
    except OSError as err:
        raise SidekickError(f"cannot read CA certificate {cacert}: {err.strerror or err}") from None
    try:
        roots = [binascii.a2b_base64(block) for block in _PEM.findall(text)]
    except binascii.Error as err:
        raise SidekickError(f"CA certificate {cacert} is not PEM: {err}") from None
    if not roots:
        raise SidekickError(f"CA certificate {cacert} is not PEM: no CERTIFICATE block")
    lib = _libcrypto()
    for der in roots:
        lib.X509_free(_parse(lib, der, f"CA certificate {cacert} is not PEM: a certificate cannot be parsed"))
    return roots


def verify_chain(chain_der: Sequence[bytes], roots: Sequence[bytes], *, now: float | None = None) -> str:
    """Verify a peer's DER chain (leaf first) against ``roots`` (DER); return the leaf's subject.

    Each root is tried on its own: OpenSSL picks one issuer per name, and a CA bundle may hold
    two CAs of the same name (``kube-ca`` before and after a rotation).
    """
    if not chain_der:
        raise PeerNotTrusted("the peer presented no certificate")
    lib = _libcrypto()
    certs: list[int] = []
    try:
        for der in chain_der:
            certs.append(_parse(lib, der, "the peer's certificate cannot be parsed"))
        subject = _subject(lib, certs[0])
        reasons = [_verify_with(lib, certs, root, int(time.time() if now is None else now)) for root in roots]
        if "" not in reasons:
            why = reasons[0] if reasons else "no CA certificate to check it against"
            raise PeerNotTrusted(f"the peer's certificate ({subject}) is not trusted by the CA: {why}")
        return subject
    finally:
        for cert in certs:
            lib.X509_free(cert)


def _verify_with(lib: Any, certs: Sequence[int], root_der: bytes, now: int) -> str:
    """Why ``certs`` (leaf first) do not chain to ``root_der``, or "" when they do."""
    root = _parse(lib, root_der, "a CA certificate cannot be parsed")
    store = lib.X509_STORE_new()
    untrusted = lib.OPENSSL_sk_new_null()
    ctx = lib.X509_STORE_CTX_new()
    try:
        if not (store and untrusted and ctx):
            raise MemoryError("OpenSSL could not allocate a verification context")
        lib.X509_STORE_add_cert(store, root)
        for cert in certs[1:]:
            lib.OPENSSL_sk_push(untrusted, cert)
        if lib.X509_STORE_CTX_init(ctx, store, certs[0], untrusted) != 1:
            raise MemoryError("OpenSSL could not start a verification")
        param = lib.X509_STORE_CTX_get0_param(ctx)
        lib.X509_VERIFY_PARAM_set_depth(param, MAX_CHAIN_DEPTH)
        lib.X509_VERIFY_PARAM_set_time(param, now)
        if lib.X509_verify_cert(ctx) != 1:
            return str(lib.X509_verify_cert_error_string(lib.X509_STORE_CTX_get_error(ctx)).decode())
        chain = lib.X509_STORE_CTX_get0_chain(ctx)
        for i in range(1, lib.OPENSSL_sk_num(chain)):
            if lib.X509_check_ca(lib.OPENSSL_sk_value(chain, i)) != 1:
                return "an issuer is not a CA (basicConstraints cA, keyCertSign)"
        return ""
    finally:
        if ctx:
            lib.X509_STORE_CTX_free(ctx)
        if untrusted:
            lib.OPENSSL_sk_free(untrusted)  # the stack only: the certificates are the caller's
        if store:
            lib.X509_STORE_free(store)
        lib.X509_free(root)


def peer_chain(sock: ssl.SSLSocket | ssl.SSLObject) -> list[bytes]:
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


# --- libcrypto through ctypes ------------------------------------------------------------
_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "d2i_X509": (_P, [_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
    "X509_free": (None, [_P]),
    "X509_get_subject_name": (_P, [_P]),
    "X509_NAME_print_ex": (ctypes.c_int, [_P, _P, ctypes.c_int, ctypes.c_ulong]),
    "X509_check_ca": (ctypes.c_int, [_P]),
    "X509_STORE_new": (_P, []),
    "X509_STORE_free": (None, [_P]),
    "X509_STORE_add_cert": (ctypes.c_int, [_P, _P]),
    "X509_STORE_CTX_new": (_P, []),
    "X509_STORE_CTX_free": (None, [_P]),
    "X509_STORE_CTX_init": (ctypes.c_int, [_P, _P, _P, _P]),
    "X509_STORE_CTX_get0_param": (_P, [_P]),
    "X509_STORE_CTX_get_error": (ctypes.c_int, [_P]),
    "X509_STORE_CTX_get0_chain": (_P, [_P]),
    "X509_VERIFY_PARAM_set_depth": (None, [_P, ctypes.c_int]),
    "X509_VERIFY_PARAM_set_time": (None, [_P, ctypes.c_int64]),
    "X509_verify_cert": (ctypes.c_int, [_P]),
    "X509_verify_cert_error_string": (ctypes.c_char_p, [ctypes.c_long]),
    "OPENSSL_sk_new_null": (_P, []),
    "OPENSSL_sk_push": (ctypes.c_int, [_P, _P]),
    "OPENSSL_sk_num": (ctypes.c_int, [_P]),
    "OPENSSL_sk_value": (_P, [_P, ctypes.c_int]),
    "OPENSSL_sk_free": (None, [_P]),
    "BIO_s_mem": (_P, []),
    "BIO_new": (_P, [_P]),
    "BIO_ctrl": (ctypes.c_long, [_P, ctypes.c_int, ctypes.c_long, _P]),
    "BIO_free": (ctypes.c_int, [_P]),
}


@functools.cache
def _libcrypto() -> Any:
    """libcrypto as ``ssl`` loaded it: symbols are looked up through ``_ssl``'s own
    dependencies (the main program's when ``_ssl`` is built in)."""
    lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def _parse(lib: Any, der: bytes, error: str) -> int:
    cursor = ctypes.c_char_p(der)
    cert = lib.d2i_X509(None, ctypes.byref(cursor), len(der))
    if not cert:
        raise PeerNotTrusted(error)
    return int(cert)


def _subject(lib: Any, cert: int) -> str:
    """RFC 4514 text of the subject (``O=system:nodes,CN=system:node``)."""
    bio = lib.BIO_new(lib.BIO_s_mem())
    if not bio:
        raise MemoryError("OpenSSL could not allocate a BIO")
    try:
        lib.X509_NAME_print_ex(bio, lib.X509_get_subject_name(cert), 0, _XN_FLAG_RFC2253)
        data = _P()
        size = lib.BIO_ctrl(bio, _BIO_CTRL_INFO, 0, ctypes.byref(data))
        text = ctypes.string_at(data, size).decode(errors="replace") if size > 0 and data.value else ""
    finally:
        lib.BIO_free(bio)
    return text or "empty subject"
