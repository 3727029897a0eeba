"""nginx-proxy decisions: CP_HOSTS parsing, settings, rendering, module detection (no processes)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from sidekick.errors import SidekickError, UsageError
from sidekick.nginx.config import Settings, Upstream, parse_cp_hosts, render, settings_from_env
from sidekick.nginx.launcher import NginxProxy, cp_hosts_value, stream_module_path

DEBIAN_V = """nginx version: nginx/1.22.1
built with OpenSSL 3.0.11 19 Sep 2023
configure arguments: --with-cc-opt='-g -O2 -fPIC' --prefix=/usr/share/nginx --conf-path=/etc/nginx/nginx.conf --modules-path=/usr/lib/nginx/modules --with-stream=dynamic --with-stream_ssl_module
"""
ALPINE_STATIC_V = """nginx version: nginx/1.27.1
configure arguments: --prefix=/etc/nginx --sbin-path=/usr/sbin/nginx --modules-path=/usr/lib/nginx/modules --with-stream --with-stream_realip_module
"""
NO_STREAM_V = """nginx version: nginx/1.27.1
configure arguments: --prefix=/opt/nginx --with-http_ssl_module
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.1", ["10.0.0.1:6443"]),
        ("10.0.0.1,10.0.0.2,10.0.0.3", ["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]),
        ("10.0.0.1:7443", ["10.0.0.1:7443"]),
        ("fd00::1", ["[fd00::1]:6443"]),  # RKE sends a bare IPv6 InternalAddress
        ("[fd00:0::1]:7443,[fd00::2]", ["[fd00::1]:7443", "[fd00::2]:6443"]),
        ("cp-1.example.internal,CP2:8443", ["cp-1.example.internal:6443", "cp2:8443"]),
    ],
)
def test_valid_cp_hosts_in_order(value: str, expected: list[str]) -> None:
    assert [u.address for u in parse_cp_hosts(value)] == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "CP_HOSTS is empty"),
        ("  ", "CP_HOSTS is empty"),
        ("10.0.0.1,,10.0.0.2", "item 2 is empty"),
        ("10.0.0.1,", "item 2 is empty"),
        (",10.0.0.1", "item 1 is empty"),
        ("10.0.0.1, 10.0.0.2", "' 10.0.0.2' contains spaces"),
        ("10.0.0 .1", "'10.0.0 .1' contains spaces"),
        ("10.0.0.1,10.0.0.1", "'10.0.0.1' duplicates '10.0.0.1'"),
        ("10.0.0.1,10.0.0.1:6443", "'10.0.0.1:6443' duplicates '10.0.0.1'"),
        ("fd00::1,[fd00::1]:6443", "'[fd00::1]:6443' duplicates 'fd00::1'"),
        ("10.0.0.256", "'10.0.0.256' is not a valid IPv4 address"),
        ("10.0.0.1:0", "port '0' is not a number from 1 to 65535"),
        ("10.0.0.1:70000", "port '70000'"),
        ("10.0.0.1:", "port ''"),
        (":6443", "has no host"),
        ("[fd00::1", "missing ']'"),
        ("[nothex::1]:6443", "'nothex::1' is not an IPv6 address"),
        ("[fd00::1]x", "unexpected text after ']'"),
        ("fd00::zz", "is not an IPv6 address"),
        ("bad_host", "'bad_host' is not an IP address or host name"),
        ("-leading.example", "is not an IP address or host name"),
    ],
)
def test_bad_cp_hosts_name_the_item(value: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_cp_hosts(value)
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_environment_wins_over_the_argument(caplog: pytest.LogCaptureFixture) -> None:
    assert cp_hosts_value(["CP_HOSTS=10.0.0.9"], {"CP_HOSTS": "10.0.0.1"}) == "10.0.0.1"
    assert "differs" in caplog.text


def test_argument_used_when_environment_lacks_it() -> None:
    assert cp_hosts_value(["CP_HOSTS=10.0.0.9,10.0.0.8"], {}) == "10.0.0.9,10.0.0.8"
    assert cp_hosts_value(["OTHER=1"], {"CP_HOSTS": "10.0.0.1"}) == "10.0.0.1"


def test_missing_cp_hosts_and_stray_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="CP_HOSTS is not set or empty"):
        cp_hosts_value([], {})
    with pytest.raises(UsageError, match="unexpected argument 'oops'"):
        cp_hosts_value(["oops"], {"CP_HOSTS": "10.0.0.1"})


def test_settings_defaults_are_the_originals() -> None:
    settings = settings_from_env({})
    assert settings == Settings("", 6443, 1, "10s")
    assert settings.listen == "6443"


def test_settings_from_env() -> None:
    settings = settings_from_env({
        "NGINX_PROXY_LISTEN_ADDRESS": "::1", "NGINX_PROXY_LISTEN_PORT": "16443",
        "NGINX_PROXY_MAX_FAILS": "3", "NGINX_PROXY_FAIL_TIMEOUT": "30s",
    })
    assert settings.listen == "[::1]:16443"
    assert (settings.max_fails, settings.fail_timeout) == (3, "30s")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NGINX_PROXY_LISTEN_ADDRESS": "localhost"}, "is not an IP address"),
        ({"NGINX_PROXY_LISTEN_PORT": "99999"}, "is not a port"),
        ({"NGINX_PROXY_MAX_FAILS": "-1"}, "is not a non-negative integer"),
        ({"NGINX_PROXY_FAIL_TIMEOUT": "10 s"}, "is not an nginx time"),
        # nginx reads fail_timeout in seconds and refuses "ms" there ("invalid parameter")
        ({"NGINX_PROXY_FAIL_TIMEOUT": "500ms"}, "is not an nginx time in seconds"),
    ],
)
def test_bad_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings_from_env(env)


def test_render_matches_the_original_shape() -> None:
    text = render(
        [Upstream("10.0.0.1", 6443), Upstream("[fd00::1]", 6443)], Settings(),
        pid_path=Path("/run/nginx.pid"), stream_module=Path("/usr/lib/nginx/modules/ngx_stream_module.so"),
    )
    lines = [line.strip() for line in text.splitlines()]
    assert lines.index("load_module /usr/lib/nginx/modules/ngx_stream_module.so;") < lines.index("stream {")
    for expected in (
        "error_log stderr notice;", "worker_processes auto;", "multi_accept on;", "use epoll;",
        "worker_connections 1024;", "upstream kube_apiserver {", "zone kube_apiserver 64k;", "listen 6443;",
        "proxy_pass kube_apiserver;", "proxy_timeout 10m;", "proxy_connect_timeout 2s;",
        "server 10.0.0.1:6443 max_fails=1 fail_timeout=10s;",
        "server [fd00::1]:6443 max_fails=1 fail_timeout=10s;",
        "pid /run/nginx.pid;",
    ):
        assert expected in lines


def test_render_without_a_dynamic_module() -> None:
    text = render([Upstream("10.0.0.1", 6443)], Settings(), pid_path=Path("/run/nginx.pid"), stream_module=None)
    assert "load_module" not in text


def test_stream_module_detection() -> None:
    present = {Path("/usr/lib/nginx/modules/ngx_stream_module.so")}
    assert stream_module_path(DEBIAN_V, present.__contains__) == Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    assert stream_module_path(ALPINE_STATIC_V, present.__contains__) is None
    with pytest.raises(SidekickError, match=re.escape("dynamic module but /usr/lib/nginx/modules/ngx_stream_module.so is missing")):
        stream_module_path(DEBIAN_V, lambda path: False)
    with pytest.raises(SidekickError, match="built without the stream module"):
        stream_module_path(NO_STREAM_V, lambda path: False)
    assert stream_module_path(NO_STREAM_V, {Path("/opt/nginx/modules/ngx_stream_module.so")}.__contains__) == \
        Path("/opt/nginx/modules/ngx_stream_module.so")


class RejectingRunner:
    """nginx -t says no: the live config must survive."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(list(argv))
        stderr = b"nginx: [emerg] invalid port in upstream\nnginx: configuration file x test failed\n"
        return subprocess.CompletedProcess(list(argv), 1, b"", stderr)


def test_config_rejected_by_nginx_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEKICK_ROOT", str(tmp_path))
    conf = tmp_path / "etc/nginx/nginx.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("old working config\n")
    runner = RejectingRunner()
    proxy = NginxProxy(runner)  # type: ignore[arg-type]
    with pytest.raises(SidekickError) as err:
        proxy.install("new config\n")
    assert "nginx rejected the rendered config (nginx: [emerg] invalid port in upstream)" in str(err.value)
    assert conf.read_text() == "old working config\n"
    assert sorted(p.name for p in conf.parent.iterdir()) == ["nginx.conf"]
    assert runner.calls[0][:3] == ["nginx", "-t", "-q"]
