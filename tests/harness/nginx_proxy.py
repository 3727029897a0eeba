"""The real ``nginx-proxy`` tool started as a process, listening on a loopback port.

Without health checks the tool execs nginx, so the process started here becomes nginx
itself; with them it stays nginx's parent and forwards signals. Either way, stopping it is
stopping nginx (SIGQUIT: graceful shutdown).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.ports import free_port, port_open, stop_process, wait_for


@dataclass
class NginxProxyProcess:
    exe: Path  # the sidekick executable, or a link to it named nginx-proxy
    root: Path  # SIDEKICK_ROOT
    cp_hosts: str
    log_path: Path
    listen_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    cp_hosts_in_env: bool = True  # False: only the CP_HOSTS=... argument carries the list
    wrap: list[str] = field(default_factory=list)  # a command that execs the rest (unshare ...)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def argv(self) -> list[str]:
        tool = [] if self.exe.name == "nginx-proxy" else ["nginx-proxy"]
        return [*self.wrap, str(self.exe), *tool, f"CP_HOSTS={self.cp_hosts}"]

    def start(self, timeout: float = 20) -> NginxProxyProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDEKICK_", "NGINX_PROXY_", "CP_HOSTS"))}
        env.update(
            SIDEKICK_ROOT=str(self.root),
            NGINX_PROXY_LISTEN_ADDRESS="127.0.0.1",
            NGINX_PROXY_LISTEN_PORT=str(self.listen_port),
            **self.env,
        )
        if self.cp_hosts_in_env:
            env["CP_HOSTS"] = self.cp_hosts
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=log, env=env)

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx-proxy exited {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
            # nginx opens its sockets before it writes its pid file: both, so the port is ours
            # and the pid is there to read.
            return self._pid_text().isdigit() and port_open(self.listen_port)

        wait_for(listening, timeout=timeout, what="nginx-proxy listening")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _pid_text(self) -> str:
        try:
            return (self.root / "run/nginx.pid").read_text().strip()
        except FileNotFoundError:
            return ""

    @property
    def nginx_pid(self) -> int:
        """nginx's master (the tool's own pid without health checks)."""
        return int(self._pid_text())

    @property
    def conf(self) -> str:
        return (self.root / "etc/nginx/nginx.conf").read_text()

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int | None:
        return stop_process(self.process, sig=signal.SIGQUIT, timeout=15)  # nginx's graceful stop
