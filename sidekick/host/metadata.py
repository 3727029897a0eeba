"""Cloud metadata and management APIs over plain ``http.client``, each request bounded in time and size.

These calls run before a kubelet or kube-proxy starts, so a metadata service that hangs,
answers one byte at a time or sends a huge answer must not hold the component back. Every
request gets a :class:`~sidekick.deadline.Deadline` for ALL of it (connect, send, status line,
headers, body) and a cap on the body; every lookup a total budget over its requests. The
read loop is ours: the answer is read through :class:`_DeadlineReader`, which gives each
``recv`` only the time left on the request's deadline, so a drip ends at the deadline without
a watchdog thread (:mod:`sidekick.host.guard` is for libraries whose loops we do not own).
The connect and the TLS handshake are bounded by the socket timeout (the time left), which
CPython applies to each as a whole. ``requests`` is not used: these calls must stay cheap to
import.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import logging
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from sidekick.deadline import Deadline
from sidekick.errors import UsageError
from sidekick.log import register_secret

log = logging.getLogger(__name__)

AWS_METADATA_ENV = "SIDEKICK_AWS_METADATA_URL"
AWS_METADATA_URL = "http://169.254.169.254"
AZURE_METADATA_ENV = "SIDEKICK_AZURE_METADATA_URL"
AZURE_METADATA_URL = "http://169.254.169.254"
AZURE_IMDS_API_VERSION = "2019-08-15"  # what the original asked for
AZURE_IDENTITY_API_VERSION = "2018-02-01"
CHUNK = 64 * 1024
KIB, MIB = 1024, 1024 * 1024


class MetadataError(Exception):
    """A metadata or API call failed; the message names the call, never a credential."""


def service_url(value: str, default: str, *, name: str) -> str:
    """A service's base URL from a setting: ``http(s)://host[:port][/path]`` or an error."""
    url = value.strip() or default
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{name}={value!r} is not an http:// or https:// URL")
    return url.rstrip("/")


class _DeadlineReader(io.RawIOBase):
    """A socket's incoming bytes, each ``recv`` given only the time left on ``deadline``.

    Reads go through the socket's own ``SocketIO``, which keeps the socket open while an
    answer is read after ``http.client`` has let go of the connection (``Connection: close``).
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline.remaining()
        if left <= 0:
            raise TimeoutError("deadline reached")
        self._sock.settimeout(left)
        count = self._raw.readinto(buffer)
        if count is None:  # "nothing yet" comes only from a non-blocking socket
            raise TimeoutError("no data")
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSource:
    """What ``http.client.HTTPResponse`` reads an answer from: it calls only ``makefile``."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline), CHUNK)


class _DeadlineResponse(http.client.HTTPResponse):
    """A response (also a proxy's answer to ``CONNECT``) read through the request's deadline."""

    def __init__(self, sock: socket.socket, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(cast(socket.socket, _DeadlineSource(sock, deadline)), *args, **kwargs)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self, service: str) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            raise MetadataError(f"{service} answered {self.status} with a body that is not JSON") from None

    def json_object(self, service: str) -> dict[str, object]:
        """The body of a 200 answer as a JSON object; anything else is ``service``'s error."""
        if self.status != 200:
            raise MetadataError(f"{service} answered {self.status}")
        data = self.json(service)
        if not isinstance(data, dict):
            raise MetadataError(f"{service} sent a non-object answer")
        return data


class _TlsConnection(http.client.HTTPSConnection):
    """HTTPS whose TLS handshake gets only the time left on the request's deadline.

    The socket timeout set when the TCP connection opens would give the handshake (which
    CPython bounds as a whole by that timeout) the full budget again after a slow connect
    or proxy tunnel.
    """

    def __init__(self, host: str, port: int | None, *, server_name: str, deadline: Deadline) -> None:
        import ssl

        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=deadline.remaining(), context=self._tls)
        self._server_name = server_name
        self._deadline = deadline

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP, and the proxy's tunnel
        left = self._deadline.remaining()
        if left <= 0 or self.sock is None:
            raise TimeoutError("deadline reached")
        self.sock.settimeout(left)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


def _https_connection(parts: urllib.parse.SplitResult, deadline: Deadline) -> http.client.HTTPSConnection:
    """A connection to ``parts``, through ``HTTPS_PROXY`` (CONNECT) unless ``NO_PROXY`` covers it.

    Nodes behind a corporate proxy reach Azure AD and Resource Manager only through it, as
    the original's ``az`` CLI did. Metadata services are plain HTTP on a link-local address
    and never go through a proxy.
    """
    import base64
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get("https")
    host = parts.hostname or ""
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return _TlsConnection(host, parts.port, server_name=host, deadline=deadline)
    via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    conn = _TlsConnection(via.hostname or "", via.port or 3128, server_name=host, deadline=deadline)
    headers = {}
    if via.username:
        password = urllib.parse.unquote(via.password or "")
        register_secret(password)
        user = urllib.parse.unquote(via.username)
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    conn.set_tunnel(host, parts.port or 443, headers=headers)
    return conn


def _read_body(response: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    """The body in chunks, refused as soon as it is known to be longer than ``limit``."""
    if response.length is not None and response.length > limit:
        raise MetadataError(f"{what}: an answer of {response.length} bytes is over the {limit}-byte cap")
    body = bytearray()
    while chunk := response.read(min(CHUNK, limit + 1 - len(body))):
        body += chunk
        if len(body) > limit:
            raise MetadataError(f"{what}: the answer is over the {limit}-byte cap")
    return bytes(body)


def request(
    method: str,
    url: str,
    *,
    deadline: Deadline,
    limit: int,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Response:
    """One HTTP(S) request, all of it within ``deadline``, its body at most ``limit`` bytes.

    Connection, protocol, time and size failures become ``MetadataError``.
    """
    parts = urllib.parse.urlsplit(url)
    what = f"{method} {parts.netloc}{parts.path}"
    left = deadline.remaining()
    if left <= 0:
        raise MetadataError(f"{what}: no time left of {deadline.what}'s budget")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = _https_connection(parts, deadline)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=left)
    # http.client only calls response_class(sock, method=...); the partial carries the deadline.
    conn.response_class = cast("type[http.client.HTTPResponse]", functools.partial(_DeadlineResponse, deadline=deadline))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.connect()
        left = deadline.remaining()
        if left <= 0 or conn.sock is None:
            raise TimeoutError("deadline reached")
        conn.sock.settimeout(left)  # bounds the whole send (CPython's sendall keeps one deadline)
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return Response(response.status, _read_body(response, limit, what))
    except (OSError, http.client.HTTPException) as err:
        if isinstance(err, TimeoutError) or deadline.expired():
            raise MetadataError(f"{what}: no complete answer within {deadline.seconds:.3g}s") from None
        raise MetadataError(f"{what}: {err or type(err).__name__}") from None
    finally:
        conn.close()


class Ec2Metadata:
    """EC2 instance metadata, IMDSv2 first (rancher/rancher#46582)."""

    TOKEN_TTL = "60"
    REQUEST = 2.0  # seconds for one request, all of it; the answers are a few dozen bytes
    TOTAL = 4.0  # seconds for the token and the host name together
    LIMIT = 64 * KIB

    def __init__(self, base_url: str, *, scale: float = 1.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.scale = scale

    def hostname(self) -> str:
        """``latest/meta-data/hostname`` as sent (stripped); MetadataError when there is none."""
        lookup = Deadline(self.TOTAL * self.scale, what="the EC2 host name lookup")
        token = self._token(lookup)
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        answer = request(
            "GET", f"{self.base_url}/latest/meta-data/hostname", headers=headers,
            deadline=lookup.within(self.REQUEST * self.scale), limit=self.LIMIT,
        )  # fmt: skip
        if answer.status != 200:
            raise MetadataError(f"EC2 metadata hostname answered {answer.status}")
        return answer.body.decode(errors="replace").strip()

    def _token(self, lookup: Deadline) -> str | None:
        """An IMDSv2 session token; None means "try IMDSv1" (the service predates tokens)."""
        answer = request(
            "PUT", f"{self.base_url}/latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": self.TOKEN_TTL},
            deadline=lookup.within(self.REQUEST * self.scale), limit=self.LIMIT,
        )  # fmt: skip
        if answer.status == 200:
            token = answer.body.decode(errors="replace").strip()
            register_secret(token)
            return token
        if answer.status in (404, 405):
            return None
        # 403: IMDS is switched off for this instance; anything else: not EC2's IMDS.
        raise MetadataError(f"IMDSv2 token request answered {answer.status}")


def _error_text(data: object) -> str:
    """``error`` and a short ``error_description`` of an OAuth2 error answer (never a secret)."""
    if not isinstance(data, dict):
        return ""
    code, description = str(data.get("error") or ""), str(data.get("error_description") or "")
    return f"{code}: {description[:160]}" if description else code


class AzureMetadata:
    """Azure Instance Metadata Service (``Metadata: true``, an api-version on every call)."""

    REQUEST = 5.0  # seconds for one request, all of it
    LIMIT = 1 * MIB  # the compute document with many tags is tens of kB

    def __init__(self, base_url: str, *, scale: float = 1.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.scale = scale

    def _get(self, path: str, query: dict[str, str], lookup: Deadline) -> Response:
        return request(
            "GET", f"{self.base_url}{path}?{urllib.parse.urlencode(query)}", headers={"Metadata": "true"},
            deadline=lookup.within(self.REQUEST * self.scale), limit=self.LIMIT,
        )  # fmt: skip

    def compute(self, lookup: Deadline) -> dict[str, object]:
        answer = self._get("/metadata/instance/compute", {"api-version": AZURE_IMDS_API_VERSION, "format": "json"}, lookup)
        return answer.json_object("Azure instance metadata")

    def identity_token(self, resource: str, identity: str, lookup: Deadline) -> str:
        """A token for ``resource`` from the VM's managed identity: the system-assigned one,
        or the user-assigned one ``identity`` names (a client ID, or a resource ID, which is
        how cloud-provider-azure tells ``userAssignedIdentityID`` values apart)."""
        query = {"api-version": AZURE_IDENTITY_API_VERSION, "resource": resource}
        if identity:
            query["msi_res_id" if "/subscriptions/" in identity.lower() else "client_id"] = identity
        answer = self._get("/metadata/identity/oauth2/token", query, lookup)
        data = answer.json("Azure managed identity") if answer.body else {}
        token = data.get("access_token") if isinstance(data, dict) else None
        if answer.status != 200 or not isinstance(token, str) or not token:
            raise MetadataError(f"Azure managed identity token answered {answer.status} {_error_text(data)}".strip())
        register_secret(token)
        return token


class AzureArm:
    """Azure Resource Manager reads with an OAuth2 token (a service principal's or a managed identity's)."""

    MAX_PAGES = 50
    REQUEST = 10.0  # seconds for one request, all of it
    LOGIN_LIMIT = 1 * MIB
    LIMIT = 16 * MIB  # a page of scale-set instances, each a few kB

    def __init__(self, *, login_url: str, arm_url: str, resource: str, scale: float = 1.0) -> None:
        self.login_url = login_url.rstrip("/")
        self.arm_url = arm_url.rstrip("/")
        self.resource = resource
        self.scale = scale
        self._token = ""

    def login(self, *, tenant: str, client_id: str, secret: str, lookup: Deadline) -> None:
        """OAuth2 client credentials grant against the cloud's Azure AD (v1 token endpoint)."""
        register_secret(secret)
        form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                "resource": self.resource,
            }
        ).encode()
        answer = request(
            "POST",
            f"{self.login_url}/{urllib.parse.quote(tenant, safe='')}/oauth2/token",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            body=form,
            deadline=lookup.within(self.REQUEST * self.scale),
            limit=self.LOGIN_LIMIT,
        )
        data = answer.json("Azure AD login") if answer.body else {}
        if answer.status != 200 or not isinstance(data, dict) or not data.get("access_token"):
            code = data.get("error", "") if isinstance(data, dict) else ""
            raise MetadataError(f"Azure AD login answered {answer.status} {code}".strip())
        self._token = str(data["access_token"])
        register_secret(self._token)

    def use_identity(self, imds: AzureMetadata, identity: str, lookup: Deadline) -> None:
        """Read Resource Manager as the VM's managed identity (see :meth:`AzureMetadata.identity_token`)."""
        self._token = imds.identity_token(self.resource, identity, lookup)

    def get(self, path_or_url: str, *, api_version: str, lookup: Deadline) -> dict[str, object]:
        url = path_or_url if path_or_url.startswith(self.arm_url) else f"{self.arm_url}{path_or_url}"
        if "api-version=" not in url:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"api-version": api_version})
        answer = request(
            "GET",
            url,
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
            deadline=lookup.within(self.REQUEST * self.scale),
            limit=self.LIMIT,
        )
        return answer.json_object(f"Azure Resource Manager ({urllib.parse.urlsplit(url).path})")

    def items(self, path: str, *, api_version: str, lookup: Deadline) -> Iterator[dict[str, object]]:
        """The items of a collection, page by page (``nextLink`` on the same endpoint, at most
        :attr:`MAX_PAGES`), so a caller that finds what it needs reads no further."""
        url = path
        for _ in range(self.MAX_PAGES):
            page = self.get(url, api_version=api_version, lookup=lookup)
            values = page.get("value")
            if isinstance(values, list):
                yield from (v for v in values if isinstance(v, dict))
            next_link = page.get("nextLink")
            if not isinstance(next_link, str) or not next_link.startswith(self.arm_url):
                return
            url = next_link
