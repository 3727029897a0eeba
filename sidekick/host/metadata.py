"""Cloud metadata and management APIs over plain ``http.client``, with hard time limits.

The original's ``curl`` calls had no timeout, so off EC2 a kubelet start could hang for
minutes. Here every request has a short timeout and every flow a total budget on the
monotonic clock (the shape cloud-init uses for IMDS). ``requests`` is not used: these
calls run before every kubelet start and must stay cheap to import.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass

from sidekick.log import register_secret

log = logging.getLogger(__name__)

AWS_METADATA_ENV = "SIDEKICK_AWS_METADATA_URL"
AWS_METADATA_URL = "http://169.254.169.254"
AZURE_METADATA_ENV = "SIDEKICK_AZURE_METADATA_URL"
AZURE_METADATA_URL = "http://169.254.169.254"
AZURE_IMDS_API_VERSION = "2019-08-15"  # what the original asked for


class MetadataError(Exception):
    """A metadata or API call failed; the message names the call, never a credential."""


class Deadline:
    """A total time budget shared by the requests of one flow."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def timeout(self, per_request: float) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise MetadataError("time budget spent")
        return min(per_request, remaining)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            raise MetadataError("answer is not JSON") from None

    def json_object(self, service: str) -> dict[str, object]:
        """The body of a 200 answer as a JSON object; anything else is ``service``'s error."""
        if self.status != 200:
            raise MetadataError(f"{service} answered {self.status}")
        data = self.json()
        if not isinstance(data, dict):
            raise MetadataError(f"{service} sent a non-object answer")
        return data


def _https_connection(parts: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPSConnection:
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
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout)
    via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    conn = http.client.HTTPSConnection(via.hostname or "", via.port or 3128, timeout=timeout)
    headers = {}
    if via.username:
        password = urllib.parse.unquote(via.password or "")
        register_secret(password)
        user = urllib.parse.unquote(via.username)
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    conn.set_tunnel(host, parts.port or 443, headers=headers)
    return conn


def request(
    method: str,
    url: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Response:
    """One HTTP(S) request; connection and protocol errors become ``MetadataError``."""
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = _https_connection(parts, timeout)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return Response(response.status, response.read())
    except (OSError, http.client.HTTPException) as err:
        raise MetadataError(f"{method} {parts.netloc}{parts.path}: {err or type(err).__name__}") from None
    finally:
        conn.close()


class Ec2Metadata:
    """EC2 instance metadata, IMDSv2 first (rancher/rancher#46582)."""

    TOKEN_TTL = "60"

    def __init__(self, base_url: str, *, request_timeout: float = 1.0, total: float = 4.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.total = total

    def hostname(self) -> str | None:
        """``latest/meta-data/hostname``, or None when no IMDS answers in time."""
        deadline = Deadline(self.total)
        try:
            token = self._token(deadline)
            headers = {"X-aws-ec2-metadata-token": token} if token else {}
            answer = request(
                "GET",
                f"{self.base_url}/latest/meta-data/hostname",
                headers=headers,
                timeout=deadline.timeout(self.request_timeout),
            )
        except MetadataError as err:
            log.debug("EC2 metadata unavailable: %s", err)
            return None
        if answer.status != 200:
            log.debug("EC2 metadata hostname answered %s", answer.status)
            return None
        name = answer.body.decode(errors="replace").strip()
        return name or None

    def _token(self, deadline: Deadline) -> str | None:
        """An IMDSv2 session token; None means "try IMDSv1" (the service predates tokens)."""
        answer = request(
            "PUT",
            f"{self.base_url}/latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": self.TOKEN_TTL},
            timeout=deadline.timeout(self.request_timeout),
        )
        if answer.status == 200:
            token = answer.body.decode(errors="replace").strip()
            register_secret(token)
            return token
        if answer.status in (404, 405):
            return None
        # 403: IMDS is switched off for this instance; anything else: not EC2's IMDS.
        raise MetadataError(f"IMDSv2 token request answered {answer.status}")


class AzureMetadata:
    """Azure Instance Metadata Service (``Metadata: true``, an api-version on every call)."""

    def __init__(self, base_url: str, *, request_timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout

    def compute(self, deadline: Deadline) -> dict[str, object]:
        query = urllib.parse.urlencode({"api-version": AZURE_IMDS_API_VERSION, "format": "json"})
        answer = request(
            "GET",
            f"{self.base_url}/metadata/instance/compute?{query}",
            headers={"Metadata": "true"},
            timeout=deadline.timeout(self.request_timeout),
        )
        return answer.json_object("Azure instance metadata")


class AzureArm:
    """Azure Resource Manager reads with a service principal's OAuth2 token."""

    MAX_PAGES = 50

    def __init__(self, *, login_url: str, arm_url: str, resource: str, request_timeout: float = 10.0) -> None:
        self.login_url = login_url.rstrip("/")
        self.arm_url = arm_url.rstrip("/")
        self.resource = resource
        self.request_timeout = request_timeout
        self._token = ""

    def login(self, *, tenant: str, client_id: str, secret: str, deadline: Deadline) -> None:
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
            timeout=deadline.timeout(self.request_timeout),
        )
        data = answer.json() if answer.body else {}
        if answer.status != 200 or not isinstance(data, dict) or not data.get("access_token"):
            code = data.get("error", "") if isinstance(data, dict) else ""
            raise MetadataError(f"Azure AD login answered {answer.status} {code}".strip())
        self._token = str(data["access_token"])
        register_secret(self._token)

    def get(self, path_or_url: str, *, api_version: str, deadline: Deadline) -> dict[str, object]:
        url = path_or_url if path_or_url.startswith(self.arm_url) else f"{self.arm_url}{path_or_url}"
        if "api-version=" not in url:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"api-version": api_version})
        answer = request(
            "GET",
            url,
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
            timeout=deadline.timeout(self.request_timeout),
        )
        return answer.json_object(f"Azure Resource Manager ({urllib.parse.urlsplit(url).path})")

    def list(self, path: str, *, api_version: str, deadline: Deadline) -> list[dict[str, object]]:
        """Every item of a collection, following ``nextLink`` on the same ARM endpoint."""
        items: list[dict[str, object]] = []
        url = path
        for _ in range(self.MAX_PAGES):
            page = self.get(url, api_version=api_version, deadline=deadline)
            values = page.get("value")
            if isinstance(values, list):
                items.extend(v for v in values if isinstance(v, dict))
            next_link = page.get("nextLink")
            if not isinstance(next_link, str) or not next_link.startswith(self.arm_url):
                break
            url = next_link
        return items
