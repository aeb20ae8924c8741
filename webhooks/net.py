"""Sending one request to a receiver without letting it reach inside our network.

The host is resolved here, every address checked, and the connection made to the checked address
(so a DNS answer that changes between the check and the connect cannot point us at 127.0.0.1). TLS
still verifies the certificate against the URL's host name. No redirect is followed, each socket
operation times out, the whole exchange has a deadline, and at most 64 KB of the answer is read.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3
from django.conf import settings

MAX_RESPONSE_BYTES = 64 * 1024
EXCERPT_CHARS = 1000
USER_AGENT = "ModelPact-Webhooks/1.0"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """The URL may not be sent to: it points inside a private network, or cannot be resolved."""


def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (the one seam tests replace for made-up host names)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_refusal(address: IPAddress) -> str | None:
    """Why this address may not be a webhook target, or None when it is a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local or address == ipaddress.ip_address("169.254.169.254"):
        return "a link-local or cloud metadata address"
    if address.is_private:
        return "a private network address"
    if address.is_multicast or address.is_reserved or address.is_unspecified or not address.is_global:
        return "an address that is not public"
    return None


def checked_addresses(url: str) -> list[str]:
    """The addresses to connect to for this URL, all public (unless private targets are allowed)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        raise TargetRefused("The URL has no host name.")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
        except (OSError, UnicodeError) as exc:
            raise TargetRefused(f"The host {host} does not resolve ({exc.__class__.__name__}).") from None
    if not addresses:
        raise TargetRefused(f"The host {host} does not resolve.")
    if not settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS:
        for address in addresses:
            refusal = address_refusal(address)
            if refusal:
                raise TargetRefused(f"{host} resolves to {address}, {refusal}; webhooks go to public addresses only.")
    return [str(a) for a in addresses]


@dataclass
class Response:
    status_code: int | None
    latency_ms: int
    excerpt: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, *, body: bytes, headers: dict[str, str]) -> Response:
    """POST the body to the URL's checked address; never raises for what the receiver does."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        addresses = checked_addresses(url)
    except TargetRefused as exc:
        return Response(None, took(), "", str(exc))
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    timeout_s = float(settings.WEBHOOKS_TIMEOUT_SECONDS)
    timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
    address = addresses[0]
    pool: urllib3.HTTPConnectionPool
    if https:
        pool = urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            maxsize=1,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            server_hostname=host,
            assert_hostname=host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, maxsize=1, retries=False)
    request_headers = {
        **headers,
        "Host": parts.netloc.rsplit("@", 1)[-1],
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    try:
        response = pool.urlopen(
            "POST", path, body=body, headers=request_headers, redirect=False, retries=False, preload_content=False
        )
    except urllib3.exceptions.HTTPError as exc:
        pool.close()
        return Response(None, took(), "", _describe(exc, timeout_s))
    try:
        data = _read_bounded(response, deadline=started + timeout_s)
        error = ""
    except (urllib3.exceptions.HTTPError, TimeoutError, OSError) as exc:
        data, error = b"", _describe(exc, timeout_s)
    finally:
        response.close()  # unread bytes are dropped with the connection, not read
        pool.close()
    return Response(response.status, took(), data.decode("utf-8", errors="replace")[:EXCERPT_CHARS], error)


def _read_bounded(response: urllib3.BaseHTTPResponse, *, deadline: float) -> bytes:
    """At most MAX_RESPONSE_BYTES, and only until the deadline: a slow trickle is cut off."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE_BYTES:
        if time.monotonic() > deadline:
            raise TimeoutError("the answer took too long to read")
        chunk = response.read(min(8192, MAX_RESPONSE_BYTES - size), decode_content=False)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException, timeout_s: float) -> str:
    text = str(exc).lower()
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)) or "timed out" in text:
        return f"No answer within {timeout_s:g} s."
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS failed: the certificate does not match the host or is not trusted."
    if isinstance(exc, urllib3.exceptions.NewConnectionError) or "refused" in text:
        return "The connection was refused."
    return f"The request failed: {exc.__class__.__name__}."[:300]
