"""nginx-proxy health checks without processes: settings, the up/down decisions, zone sizes,
and real probes against HTTPS servers of the tests' own on loopback."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidekick.errors import SidekickError, UsageError
from sidekick.nginx import probe
from sidekick.nginx.config import Upstream, parse_cp_hosts, zone_size
from sidekick.nginx.health import (
    HealthSettings,
    HostState,
    health_from_env,
    membership,
    observe,
    renderable,
)
from tests.harness.nginx_backends import ReadyzBackend
from tests.harness.pki import CertificateAuthority

A, B, C = Upstream("10.0.0.1", 6443), Upstream("10.0.0.2", 6443), Upstream("cp3.example", 6443)


# --- settings ----------------------------------------------------------------------------
def test_health_is_off_by_default() -> None:
    assert health_from_env({}) == HealthSettings("off", 5.0, 2.0, 3, 2)
    assert not health_from_env({}).enabled


def test_health_settings_from_env() -> None:
    settings = health_from_env({
        "NGINX_PROXY_HEALTH_CHECK": "readyz", "NGINX_PROXY_HEALTH_INTERVAL": "500ms",
        "NGINX_PROXY_HEALTH_FALL": "1", "NGINX_PROXY_HEALTH_RISE": "4",
    })
    assert settings == HealthSettings("readyz", 0.5, 0.5, 1, 4)  # the timeout follows a short interval
    assert health_from_env({"NGINX_PROXY_HEALTH_CHECK": "TCP", "NGINX_PROXY_HEALTH_INTERVAL": "1m",
                            "NGINX_PROXY_HEALTH_TIMEOUT": "2.5"}) == HealthSettings("tcp", 60.0, 2.5, 3, 2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NGINX_PROXY_HEALTH_CHECK": "http"}, "NGINX_PROXY_HEALTH_CHECK='http' is not one of off, readyz, tcp"),
        ({"NGINX_PROXY_HEALTH_INTERVAL": "inf"}, "NGINX_PROXY_HEALTH_INTERVAL='inf' is not a duration from 0.1s to 3600s"),
        ({"NGINX_PROXY_HEALTH_INTERVAL": "nan"}, "is not a duration"),
        ({"NGINX_PROXY_HEALTH_INTERVAL": "0"}, "is not a duration"),
        ({"NGINX_PROXY_HEALTH_INTERVAL": "2h"}, "is not a duration"),
        ({"NGINX_PROXY_HEALTH_INTERVAL": "-1"}, "is not a duration"),
        ({"NGINX_PROXY_HEALTH_INTERVAL": "1e3"}, "is not a duration"),
        ({"NGINX_PROXY_HEALTH_TIMEOUT": "10ms"}, "NGINX_PROXY_HEALTH_TIMEOUT='10ms' is not a duration from 0.05s"),
        ({"NGINX_PROXY_HEALTH_TIMEOUT": "6"}, "NGINX_PROXY_HEALTH_TIMEOUT=6s is longer than NGINX_PROXY_HEALTH_INTERVAL=5s"),
        ({"NGINX_PROXY_HEALTH_FALL": "0"}, "NGINX_PROXY_HEALTH_FALL='0' is not a whole number from 1 to 100"),
        ({"NGINX_PROXY_HEALTH_FALL": "2.5"}, "is not a whole number"),
        ({"NGINX_PROXY_HEALTH_RISE": "101"}, "NGINX_PROXY_HEALTH_RISE='101' is not a whole number from 1 to 100"),
        ({"NGINX_PROXY_HEALTH_RISE": "-3"}, "is not a whole number"),
    ],
)
def test_bad_health_settings_are_one_line_usage_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        health_from_env(env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# --- decisions ---------------------------------------------------------------------------
def test_a_host_leaves_after_fall_failures_in_a_row_and_returns_after_rise_passes() -> None:
    state = HostState(up=True)
    for ok, up in [(False, True), (True, True), (False, True), (False, True), (False, False)]:
        state = observe(state, ok, fall=3, rise=2)
        assert state.up is up
    for ok, up in [(True, False), (False, False), (True, False), (True, True)]:
        state = observe(state, ok, fall=3, rise=2)
        assert state.up is up
    assert state == HostState(up=True, streak=0)


def test_thresholds_of_one_flip_at_once() -> None:
    assert observe(HostState(True), False, fall=1, rise=1) == HostState(False)
    assert observe(HostState(False), True, fall=1, rise=1) == HostState(True)


def test_membership_is_the_up_hosts_in_order_or_all_when_none_is_up() -> None:
    upstreams = [A, B, C]
    assert membership(upstreams, {A: HostState(True), B: HostState(False), C: HostState(True)}).members == (A, C)
    assert not membership(upstreams, {A: HostState(True), B: HostState(False), C: HostState(True)}).fail_open
    everything_down = membership(upstreams, {A: HostState(False), B: HostState(False, 1), C: HostState(False)})
    assert everything_down.members == (A, B, C)
    assert everything_down.fail_open


def test_names_that_do_not_resolve_are_never_rendered() -> None:
    assert renderable((A, B, C), {A: True, B: True, C: False}) == (A, B)
    assert renderable((A, C), {}) == (A, C)


# --- CP_HOSTS forms and zone -------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[fd00::1]:6443", "[fd00::1]:6443"),
        ("[fd00::1:6443]", "[fd00::1:6443]:6443"),  # brackets: the whole text is the address
        ("fd00::1", "[fd00::1]:6443"),
        ("fd00::1:2", "[fd00::1:2]:6443"),  # a short group is an address, as RKE sends it
        ("fd00::10", "[fd00::10]:6443"),
        ("fd00::6443", "[fd00::6443]:6443"),  # no second reading: "fd00:" is not an address
        ("2001:db8:0:0:1:2:3:6443", "[2001:db8::1:2:3:6443]:6443"),  # eight groups: no room for a port
        ("fd00::1:abcd", "[fd00::1:abcd]:6443"),
        ("fd00::1:99999", None),  # not an address at all (group too long)
        ("cp1:6443", "cp1:6443"),
    ],
)
def test_ipv6_and_port_forms(value: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(UsageError, match="is not an IPv6 address"):
            parse_cp_hosts(value)
    else:
        assert [u.address for u in parse_cp_hosts(value)] == [expected]


@pytest.mark.parametrize("value", ["fd00::1:6443", "::1:8443", "fd00:10::5:16443", "10.0.0.1,fd00::1:6443"])
def test_bare_ipv6_with_a_port_like_tail_is_refused(value: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_cp_hosts(value)
    message = str(err.value)
    assert "reads as IPv6 address" in message and "write [" in message
    if value == "fd00::1:6443":
        assert message == ("CP_HOSTS item 'fd00::1:6443' reads as IPv6 address fd00::1 with port 6443 or the "
                           "address fd00::1:6443: write [fd00::1]:6443 for a port or [fd00::1:6443] for the address")
    if value == "fd00:10::5:16443":  # not an address at all: only the port reading is offered
        assert message == ("CP_HOSTS item 'fd00:10::5:16443' reads as IPv6 address fd00:10::5 with port 16443: "
                           "write [fd00:10::5]:16443 for a port")


def test_zone_grows_with_the_hosts_and_stays_64k_for_small_clusters() -> None:
    assert zone_size(1) == zone_size(8) == "64k"
    assert zone_size(9) == "68k"
    assert zone_size(1000) == "4032k"


# --- probes against real HTTPS servers on loopback ----------------------------------------
@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("kube-ca")


@pytest.fixture
def backend(ca: CertificateAuthority) -> Iterator[ReadyzBackend]:
    server = ReadyzBackend("cp1", "127.0.0.2", ca).start()
    yield server
    server.stop()


@pytest.fixture
def verified(ca: CertificateAuthority, tmp_path: Path) -> ssl.SSLContext:
    (tmp_path / "kube-ca.pem").write_bytes(ca.cert_pem)
    context, is_verified = probe.tls_context(tmp_path / "kube-ca.pem")
    assert is_verified
    return context


def _upstream(server: ReadyzBackend) -> Upstream:
    return Upstream(server.host, server.port)


def test_readyz_passes_on_200_and_fails_on_500(backend: ReadyzBackend, verified: ssl.SSLContext) -> None:
    assert probe.probe(_upstream(backend), timeout=2, tls=verified) == probe.ProbeResult(True, True, "")
    backend.ready = False
    assert probe.probe(_upstream(backend), timeout=2, tls=verified) == probe.ProbeResult(False, True, "HTTP 500")
    assert backend.readyz_hits == 2


def test_tcp_probe_passes_while_readyz_fails(backend: ReadyzBackend, verified: ssl.SSLContext) -> None:
    backend.ready = False  # up at TCP level, not ready: only readyz sees it
    assert probe.probe(_upstream(backend), timeout=2, tls=None).ok
    assert not probe.probe(_upstream(backend), timeout=2, tls=verified).ok


def test_readyz_verifies_the_certificate_against_kube_ca(verified: ssl.SSLContext, tmp_path: Path) -> None:
    stranger = ReadyzBackend("cp9", "127.0.0.3", CertificateAuthority("not-kube-ca")).start()
    try:
        result = probe.probe(_upstream(stranger), timeout=2, tls=verified)
        assert not result.ok and result.resolved
        assert result.detail.startswith("TLS: ") and "issuer" in result.detail
        unverified, is_verified = probe.tls_context(tmp_path / "absent.pem")
        assert not is_verified
        assert probe.probe(_upstream(stranger), timeout=2, tls=unverified).ok
    finally:
        stranger.stop()


def test_an_unreadable_kube_ca_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "kube-ca.pem").write_text("not a certificate\n")
    with pytest.raises(SidekickError, match=r"cannot load .*kube-ca\.pem to verify /readyz"):
        probe.tls_context(tmp_path / "kube-ca.pem")


def test_a_dripping_answer_fails_at_the_deadline(backend: ReadyzBackend, verified: ssl.SSLContext) -> None:
    backend.readyz_body = b"o" * 100
    backend.drip = 0.05  # 5 s for the whole body; every single read is quick
    started = time.monotonic()
    result = probe.probe(_upstream(backend), timeout=0.5, tls=verified)
    elapsed = time.monotonic() - started
    assert result == probe.ProbeResult(False, True, "no complete answer within 0.5s")
    assert elapsed < 2.5  # the deadline held: the body alone takes 5 s


def test_an_oversized_answer_fails(backend: ReadyzBackend, verified: ssl.SSLContext) -> None:
    backend.readyz_body = b"x" * (probe.BODY_CAP + 1)
    assert probe.probe(_upstream(backend), timeout=5, tls=verified) == \
        probe.ProbeResult(False, True, f"answer longer than {probe.BODY_CAP} bytes")


def test_a_silent_server_fails_at_the_deadline(verified: ssl.SSLContext) -> None:
    with socket.create_server(("127.0.0.4", 0)) as listener:  # accepts (backlog), never speaks TLS
        port = listener.getsockname()[1]
        started = time.monotonic()
        result = probe.probe(Upstream("127.0.0.4", port), timeout=0.3, tls=verified)
        assert result == probe.ProbeResult(False, True, "no complete answer within 0.3s")
        assert time.monotonic() - started < 2.0


def test_refused_connections_fail_both_probes(verified: ssl.SSLContext) -> None:
    with socket.create_server(("127.0.0.5", 0)) as listener:
        port = listener.getsockname()[1]
    for tls in (None, verified):
        assert probe.probe(Upstream("127.0.0.5", port), timeout=1, tls=tls) == \
            probe.ProbeResult(False, True, "connection refused")


def test_ipv6_loopback_readyz(ca: CertificateAuthority, verified: ssl.SSLContext) -> None:
    server = ReadyzBackend("v6", "::1", ca).start()
    try:
        assert probe.probe(Upstream("[::1]", server.port), timeout=2, tls=verified).ok
    finally:
        server.stop()
