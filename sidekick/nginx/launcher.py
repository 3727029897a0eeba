"""``nginx-proxy CP_HOSTS=ip1,ip2``: render the stream proxy config, check it, run nginx.

RKE runs this on every node without the controlplane role (CONTRACT section 6) with
``CP_HOSTS`` in the environment and, to force a container recreation when the list changes,
the same ``CP_HOSTS=...`` as the argument. The environment is authoritative; the argument is
used only when the environment lacks the variable (a hand-started container), and a
disagreement is logged.

The rendered file is checked with ``nginx -t`` as a candidate next to the live file and only
then renamed over it, so neither a bad ``CP_HOSTS`` nor a config nginx rejects ever replaces
the previous working config.

Without health checks (the default) this process becomes nginx (exec). With them
(:mod:`sidekick.nginx.checked`), nginx runs as its child and a checker thread takes failing
control planes out of the upstream and puts them back, by reloads.
"""

from __future__ import annotations

import functools
import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from sidekick.errors import SidekickError, UsageError
from sidekick.host.files import atomic_output, remove_leftovers
from sidekick.host.proc import Runner
from sidekick.log import kv
from sidekick.nginx.config import Settings, Upstream, render
from sidekick.paths import host_path

log = logging.getLogger(__name__)

NGINX = "nginx"  # the image's nginx, found on PATH (not a host file: no host_path)
CONF_PATH = "/etc/nginx/nginx.conf"
PID_PATH = "/run/nginx.pid"
STREAM_MODULE_FILE = "ngx_stream_module.so"



def cp_hosts_value(argv: list[str], env: Mapping[str, str]) -> str:
    """Pick the ``CP_HOSTS`` value from the environment, else from a ``CP_HOSTS=`` argument."""
    from_args: str | None = None
    for arg in argv:
        name, sep, value = arg.partition("=")
        if not sep or not name:
            raise UsageError(f"unexpected argument {arg!r}: nginx-proxy takes only NAME=VALUE arguments")
        if name == "CP_HOSTS":
            from_args = value
    from_env = env.get("CP_HOSTS")
    if from_env:
        if from_args is not None and from_args != from_env:
            log.warning("CP_HOSTS argument differs from the environment; using the environment",
                        extra=kv(argument=from_args, environment=from_env))
        return from_env
    if from_args is not None:
        log.info("CP_HOSTS not in the environment; using the argument", extra=kv(value=from_args))
        return from_args
    raise UsageError("CP_HOSTS is not set or empty (expected CP_HOSTS=ip1,ip2 in the environment)")


def _configure_args(version_output: str) -> dict[str, str]:
    for line in version_output.splitlines():
        if line.startswith("configure arguments:"):
            args: dict[str, str] = {}
            for token in shlex.split(line.partition(":")[2]):
                name, _, value = token.partition("=")
                args[name] = value
            return args
    return {}


def stream_module_path(version_output: str, exists: Callable[[Path], bool]) -> Path | None:
    """The ``load_module`` path nginx needs for ``stream {}``, or None when it is built in.

    Decided from ``nginx -V``: ``--with-stream`` is static, ``--with-stream=dynamic`` needs the
    module file from ``--modules-path`` (default ``<prefix>/modules``); Debian ships it in
    libnginx-mod-stream, Alpine in nginx-mod-stream.
    """
    args = _configure_args(version_output)
    if "--with-stream" in args and args["--with-stream"] != "dynamic":
        return None
    modules = Path(args.get("--modules-path") or Path(args.get("--prefix") or "/usr/local/nginx") / "modules")
    module = modules / STREAM_MODULE_FILE
    if exists(module):
        return module
    if args.get("--with-stream") == "dynamic":
        raise SidekickError(f"nginx needs the stream module as a dynamic module but {module} is missing")
    raise SidekickError(f"nginx was built without the stream module and {module} does not exist")


def nginx_complaint(stderr: bytes) -> str:
    """nginx's own reason (its ``[emerg]`` line), not the trailing "test failed"."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    reasons = [line for line in lines if "[emerg]" in line or "[alert]" in line]
    return (reasons or lines or ["no output"])[0]


class NginxProxy:
    """The host side: probe nginx, install the checked config, exec nginx."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.conf_path = host_path(CONF_PATH)
        self.pid_path = host_path(PID_PATH)

    @functools.cached_property
    def stream_module(self) -> Path | None:
        """Asked of ``nginx -V`` once: every render needs it and the binary does not change."""
        result = self.runner.run([NGINX, "-V"], timeout=30)
        return stream_module_path((result.stderr + result.stdout).decode(errors="replace"), Path.exists)

    def install(self, text: str) -> None:
        """Write ``text`` as a candidate, let ``nginx -t`` check it, then rename it into place."""
        directory = self.conf_path.parent
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        remove_leftovers(directory, names=[self.conf_path.name])
        with atomic_output(self.conf_path, mode=0o644) as pending:
            pending.file.write(text.encode())
            pending.file.flush()
            result = self.runner.run([NGINX, "-t", "-q", "-c", str(pending.temp)], timeout=30, check=False)
            if result.returncode != 0:
                raise SidekickError(
                    f"nginx rejected the rendered config ({nginx_complaint(result.stderr)}); "
                    f"{self.conf_path} left as it was")

    @property
    def argv(self) -> list[str]:
        # -c always: the same path as nginx's default on a real node, the rendered file under a test root.
        return [NGINX, "-c", str(self.conf_path), "-g", "daemon off;"]

    def exec(self) -> NoReturn:
        self.runner.exec(self.argv)


def prepare(proxy: NginxProxy, upstreams: Sequence[Upstream], settings: Settings, *, host_count: int | None = None) -> str:
    """Render and install the config; return the text that nginx will run with."""
    text = render(upstreams, settings, pid_path=proxy.pid_path, stream_module=proxy.stream_module,
                  host_count=host_count)
    proxy.install(text)
    log.info("nginx config written", extra=kv(
        path=proxy.conf_path, listen=settings.listen,
        upstreams=",".join(u.address for u in upstreams)))
    return text
