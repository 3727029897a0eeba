"""Small real HTTP servers speaking the shapes of services that cannot run here.

EC2's instance metadata (IMDSv2 tokens), Azure's instance metadata (with its managed
identity token endpoint), Azure AD's token endpoint and Resource Manager on loopback, and the
Docker Engine API on a unix socket. Each records the requests it saw so tests can check what
was sent, and can misbehave on chosen paths (:class:`Misbehave`): send its answer one byte at
a time, send a huge answer, or answer with an HTML page, as a broken metadata service or a
proxy in its way does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Misbehave:
    """How the fake answers one path instead of its real answer.

    ``drip``: the whole answer (status line, headers, body) one byte every ``drip`` seconds;
    ``size``: a 200 answer of ``size`` bytes streamed in chunks, with a ``Content-Length``
    unless ``declare_length`` is false (then the end is the connection's close); ``page``:
    a 200 ``text/html`` answer with this body (a captive portal or proxy error page).
    """

    drip: float = 0.0
    size: int = 0
    declare_length: bool = True
    page: bytes = b""


HTML_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    server_version = "fake"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(
            self.command, parts.path, dict(urllib.parse.parse_qsl(parts.query)),
            {k.lower(): v for k, v in self.headers.items()}, body,
        )  # fmt: skip
        app = self.server.app  # type: ignore[attr-defined]
        app.seen.append(seen)
        fault = app.faults.get(seen.path)
        if fault is not None and fault.size:
            self._stream(fault)
            return
        if fault is not None and fault.page:
            status, content_type, data = 200, "text/html", fault.page
        else:
            status, payload = app.answer(seen)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            content_type = "text/plain" if isinstance(payload, bytes) else "application/json"
        if fault is not None and fault.drip:
            self._drip(status, content_type, data, fault.drip, app.stopped)
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drip(self, status: int, content_type: str, data: bytes, every: float, stopped: threading.Event) -> None:
        head = f"HTTP/1.1 {status} {self.responses[status][0]}\r\nContent-Type: {content_type}\r\n"
        raw = f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data
        self.close_connection = True
        for i in range(len(raw)):
            if stopped.wait(every):
                return
            try:
                self.wfile.write(raw[i : i + 1])
            except OSError:
                return  # the client gave up: the point of the test

    def _stream(self, fault: Misbehave) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if fault.declare_length:
            self.send_header("Content-Length", str(fault.size))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk, sent = b"x" * 65536, 0
        try:
            while sent < fault.size:
                piece = chunk[: fault.size - sent]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:
            return
        self.server.app.streamed.append(sent)  # type: ignore[attr-defined]

    do_GET = do_PUT = do_POST = _handle


class App(ABC):
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.faults: dict[str, Misbehave] = {}  # path -> how to misbehave there
        self.streamed: list[int] = []  # sizes of huge answers sent to the end
        self.stopped = threading.Event()

    @abstractmethod
    def answer(self, req: Seen) -> tuple[int, bytes | dict[str, Any] | list[Any]]:
        """The status and body for one request (each fake service speaks its own API)."""

    @contextmanager
    def serve(self, *, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
        """Serve on 127.0.0.1 (HTTPS as ``localhost`` with ``tls=(cert, key)``); yields the base URL."""
        self.stopped.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.app = self  # type: ignore[attr-defined]
        base = f"http://127.0.0.1:{server.server_address[1]}"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            base = f"https://localhost:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        try:
            yield base
        finally:
            self.stopped.set()
            server.shutdown()
            server.server_close()


class ConnectProxy:
    """An HTTP proxy that only tunnels (``CONNECT host:port``), as HTTPS clients use one;
    with ``drip``, its answer to ``CONNECT`` comes one byte every ``drip`` seconds."""

    def __init__(self, *, drip: float = 0.0) -> None:
        self.tunnels: list[str] = []
        self.auth: list[str] = []
        self.drip = drip

    @contextmanager
    def serve(self) -> Iterator[str]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)
        stop = threading.Event()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        def handle(client: socket.socket) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    client.close()
                    return
                head += chunk
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].decode().split(" ", 2)
            for line in lines[1:]:
                if line.lower().startswith(b"proxy-authorization:"):
                    self.auth.append(line.split(b":", 1)[1].strip().decode())
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                client.close()
                return
            self.tunnels.append(target)
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection(("127.0.0.1" if host == "localhost" else host, int(port)))
            established = b"HTTP/1.1 200 Connection established\r\n\r\n"
            if self.drip:
                for i in range(len(established)):
                    if stop.wait(self.drip):
                        break
                    with contextlib.suppress(OSError):
                        client.sendall(established[i : i + 1])
                client.close()
                upstream.close()
                return
            client.sendall(established)
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
            pump(client, upstream)

        def accept() -> None:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=handle, args=(client,), daemon=True).start()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join()
            listener.close()


# --- EC2 -----------------------------------------------------------------------------
class Ec2Imds(App):
    """IMDS with ``mode``: v2 (tokens required), v1 (no token API), off (403), slow."""

    TOKEN = "AQAEAFakeImdsV2SessionToken=="

    def __init__(self, hostname: str = "ip-10-0-0-7.eu-west-1.compute.internal", mode: str = "v2") -> None:
        super().__init__()
        self.hostname = hostname
        self.mode = mode

    def answer(self, req: Seen) -> tuple[int, bytes | dict[str, Any] | list[Any]]:
        if self.mode == "slow":
            time.sleep(3)
        if req.path == "/latest/api/token":
            if req.method != "PUT":
                return 405, b""
            if self.mode == "v1":
                return 404, b""
            if self.mode == "off":
                return 403, b""
            ttl = req.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, b""
            return 200, self.TOKEN.encode()
        if req.path == "/latest/meta-data/hostname" and req.method == "GET":
            if self.mode == "v2" and req.headers.get("x-aws-ec2-metadata-token") != self.TOKEN:
                return 401, b""
            return 200, self.hostname.encode()
        return 404, b""


# --- Azure ---------------------------------------------------------------------------
SUB = "8d2b1a3c-0000-4000-8000-000000000001"
TENANT = "72f988bf-0000-4000-8000-000000000002"
CLIENT_ID = "c1d2e3f4-0000-4000-8000-000000000003"
CLIENT_SECRET = "Zq8~supersecret.client-value_42"


@dataclass
class AzureWorld:
    """The VM the fake describes, and where its network lives."""

    vm_name: str = "node-1"
    vm_group: str = "rke-nodes"
    location: str = "westeurope"
    scale_set: str = ""  # set -> the VM is a scale-set instance
    instance_id: str = "3"
    vnet_group: str = "rke-net"
    vnet: str = "rke-vnet"
    subnet: str = "nodes"
    nsg: str = "rke-nsg"
    resource: str = "https://management.azure.com/"
    secret: str = CLIENT_SECRET
    extra_instances: int = 0  # more instances before ours, paged two per page
    overrides: dict[str, Any] = field(default_factory=dict)
    system_identity: bool = False  # the VM has a system-assigned managed identity
    user_identities: tuple[UserIdentity, ...] = ()  # user-assigned identities attached to the VM


@dataclass(frozen=True)
class UserIdentity:
    client_id: str
    resource_id: str


class Azure(App):
    """Azure IMDS (instance metadata and managed identity tokens) + Azure AD v1 token
    endpoint + Resource Manager in one server."""

    TOKEN = "eyJ0eXAiOiJKV1QiFakeArmAccessToken.payload.sig"
    IDENTITY_TOKEN = "eyJ0eXAiOiJKV1QiFakeManagedIdentityToken.payload.sig"
    IDENTITY_API = "2018-02-01"

    def __init__(self, world: AzureWorld | None = None) -> None:
        super().__init__()
        self.world = world or AzureWorld()
        self.base = ""

    @contextmanager
    def serve(self, *, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
        with super().serve(tls=tls) as base:
            self.base = base
            yield base

    def _identity_token(self, req: Seen) -> tuple[int, dict[str, Any]]:
        """IMDS's token endpoint: the system identity, or the user-assigned one named by
        ``client_id`` or ``msi_res_id`` (the only one, when the VM has just one and no system
        identity); a token only for the world's Resource Manager."""
        w = self.world

        def refused(description: str) -> tuple[int, dict[str, Any]]:
            return 400, {"error": "invalid_request", "error_description": description}

        if req.method != "GET" or req.headers.get("metadata") != "true":
            return refused("Required metadata header not specified")
        if req.query.get("api-version") != self.IDENTITY_API:
            return refused("Invalid api-version")
        if req.query.get("resource") != w.resource:
            return 400, {"error": "invalid_resource", "error_description": "AADSTS500011: resource principal not found"}
        client_id, resource_id = req.query.get("client_id"), req.query.get("msi_res_id")
        if client_id or resource_id:
            found = [u for u in w.user_identities
                     if u.client_id == client_id or (resource_id or "").lower() == u.resource_id.lower()]  # fmt: skip
            if not found:
                return refused("Identity not found")
            chosen = found[0].client_id
        elif w.system_identity:
            chosen = "system-" + w.vm_name
        elif len(w.user_identities) == 1:
            chosen = w.user_identities[0].client_id
        elif w.user_identities:
            return refused("Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request")
        else:
            return refused("Identity not found")
        now = int(time.time())
        return 200, {
            "access_token": self.IDENTITY_TOKEN, "client_id": chosen, "expires_in": "86399",
            "expires_on": str(now + 86399), "ext_expires_in": "86399", "not_before": str(now),
            "resource": w.resource, "token_type": "Bearer",
        }  # fmt: skip

    def _nic(self, nic_id: str) -> dict[str, Any]:
        w = self.world
        subnet_id = (
            f"/subscriptions/{SUB}/resourceGroups/{w.vnet_group}/providers/Microsoft.Network"
            f"/virtualNetworks/{w.vnet}/subnets/{w.subnet}"
        )
        props: dict[str, Any] = {
            "primary": True,
            "ipConfigurations": [
                {"name": "secondary", "properties": {"primary": False, "subnet": {"id": subnet_id.replace(w.subnet, "other")}}},
                {"name": "ipconfig1", "properties": {"primary": True, "privateIPAddress": "10.0.0.7", "subnet": {"id": subnet_id}}},
            ],
        }
        if w.nsg:
            props["networkSecurityGroup"] = {
                "id": f"/subscriptions/{SUB}/resourceGroups/{w.vm_group}/providers/Microsoft.Network/networkSecurityGroups/{w.nsg}"
            }
        return {"name": nic_id.rsplit("/", 1)[-1], "id": nic_id, "properties": props}

    def answer(self, req: Seen) -> tuple[int, bytes | dict[str, Any] | list[Any]]:
        w = self.world
        if req.path == "/metadata/instance/compute":
            if req.headers.get("metadata") != "true" or req.query.get("api-version") != "2019-08-15":
                return 400, {"error": "Bad request. Required metadata header not specified"}
            compute = {
                "name": f"{w.scale_set}_{w.instance_id}" if w.scale_set else w.vm_name,
                "location": w.location, "resourceGroupName": w.vm_group,
                "subscriptionId": SUB, "vmScaleSetName": w.scale_set, "vmId": "0b7a-fake",
                **w.overrides,
            }  # fmt: skip
            return 200, compute
        if req.path == "/metadata/identity/oauth2/token":
            return self._identity_token(req)
        if req.path == f"/{TENANT}/oauth2/token" and req.method == "POST":
            form = dict(urllib.parse.parse_qsl(req.body.decode()))
            if form.get("grant_type") != "client_credentials" or form.get("resource") != w.resource:
                return 400, {"error": "invalid_request"}
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != w.secret:
                return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}
            return 200, {"token_type": "Bearer", "expires_in": "3599", "resource": w.resource, "access_token": self.TOKEN}
        if req.headers.get("authorization") not in (f"Bearer {self.TOKEN}", f"Bearer {self.IDENTITY_TOKEN}"):
            return 401, {"error": {"code": "AuthenticationFailed"}}
        if not req.query.get("api-version"):
            return 400, {"error": {"code": "MissingApiVersionParameter"}}
        compute_base = f"/subscriptions/{SUB}/resourceGroups/{w.vm_group}/providers/Microsoft.Compute"
        nic_id = f"/subscriptions/{SUB}/resourceGroups/{w.vm_group}/providers/Microsoft.Network/networkInterfaces/{w.vm_name}-nic"
        if not w.scale_set and req.path == f"{compute_base}/virtualMachines/{w.vm_name}":
            refs = [{"id": nic_id.replace("-nic", "-nic2"), "properties": {"primary": False}}, {"id": nic_id, "properties": {"primary": True}}]
            return 200, {"name": w.vm_name, "properties": {"networkProfile": {"networkInterfaces": refs}}}
        if not w.scale_set and req.path == nic_id:
            return 200, self._nic(nic_id)
        if w.scale_set:
            vms = f"{compute_base}/virtualMachineScaleSets/{w.scale_set}/virtualMachines"
            if req.path == vms:
                names = [(f"{w.scale_set}_{i + 10}", str(i + 10)) for i in range(w.extra_instances)]
                names.append((f"{w.scale_set}_{w.instance_id}", w.instance_id))
                page = int(req.query.get("page", "0"))
                chunk = names[page * 2 : page * 2 + 2]
                body: dict[str, Any] = {"value": [{"name": n, "instanceId": i} for n, i in chunk]}
                if page * 2 + 2 < len(names):
                    body["nextLink"] = f"{self.base}{vms}?api-version={req.query['api-version']}&page={page + 1}"
                return 200, body
            if req.path == f"{vms}/{w.instance_id}/networkInterfaces" and req.query.get("api-version") == "2018-10-01":
                vmss_nic = f"{vms}/{w.instance_id}/networkInterfaces/{w.scale_set}-nic"
                return 200, {"value": [self._nic(vmss_nic)]}
        return 404, {"error": {"code": "ResourceNotFound", "message": f"{req.path} not found"}}


# --- Docker --------------------------------------------------------------------------
class _UnixHandler(_Handler):
    def address_string(self) -> str:
        return "unix"


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class DockerApi(App):
    """``GET /info`` and ``/_ping`` of the Engine API."""

    def __init__(self, *, cgroup_driver: str = "cgroupfs", cgroup_version: str | None = "1",
                 root_dir: str = "/var/lib/docker", selinux: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.info: dict[str, Any] = {
            "ID": "fake-engine", "Driver": "overlay2", "CgroupDriver": cgroup_driver,
            "DockerRootDir": root_dir, "ServerVersion": "28.2.2",
            "SecurityOptions": ["name=seccomp,profile=builtin", *(["name=selinux"] if selinux else [])],
        }  # fmt: skip
        if cgroup_version is not None:
            self.info["CgroupVersion"] = cgroup_version

    def answer(self, req: Seen) -> tuple[int, bytes | dict[str, Any] | list[Any]]:
        if req.method == "GET" and req.path in ("/info", "/v1.24/info"):
            return 200, self.info
        if req.path == "/_ping":
            return 200, b"OK"
        return 404, {"message": f"page not found: {req.path}"}

    @contextmanager
    def serve_unix(self, path: Path) -> Iterator[Path]:
        path.parent.mkdir(parents=True, exist_ok=True)
        server = _UnixServer(str(path), _UnixHandler)
        server.app = self  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            server.shutdown()
            server.server_close()
            path.unlink(missing_ok=True)
