"""Fetch a video from an http(s) URL without letting the URL reach inside our network.

Every TCP connection (the first and one per redirect) resolves the host itself, refuses the
connection if *any* resolved address is loopback, private, link-local (which covers the
cloud metadata address 169.254.169.254), multicast, reserved or otherwise not globally
routable, and then connects to an address it checked, so DNS cannot change the answer in
between. Bytes, redirects and total time are capped, and the body streams into a bounded
buffer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from service.errors import BadInput, TooLarge

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenAddress(BadInput):
    code = "url_forbidden"


def is_allowed_address(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> bool:
    """True for globally routable unicast addresses, or those inside an allowed network."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allow):
        return True
    return ip.is_global and not ip.is_multicast


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that checks every address before it connects."""

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow = list(allow)

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for ip in addresses:
            if not is_allowed_address(ip, self._allow):
                raise ForbiddenAddress(f"URL host {host} resolves to {ip}, a non-public address; refused")
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class UrlFetcher:
    """Downloads URL-referenced videos under the limits it was built with. Reuse one instance."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float,
        connect_timeout_s: float,
        max_redirects: int,
        allow_networks: Sequence[IPNetwork] = (),
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        # httpx has no public hook for the network backend; swap the pool for one that has ours.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_GuardedBackend(allow_networks)
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers={"Accept-Encoding": "identity", "User-Agent": "video-reward-service"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """Return the body at ``url``; raise a BadInput / TooLarge subclass saying why not."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url)
        except TimeoutError as exc:
            raise BadInput(f"URL did not answer within {self.timeout_s:g} s", code="url_timeout") from exc

    async def _follow(self, url: str) -> bytes:
        for _ in range(self.max_redirects + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise BadInput(f"only absolute http(s) URLs are fetched, got {url[:200]!r}", code="bad_url")
            try:
                async with self._client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise BadInput(f"URL answered HTTP {response.status_code}", code="url_fetch_failed")
                    return await self._read_capped(response)
            except httpx.TimeoutException as exc:
                raise BadInput(f"URL timed out: {type(exc).__name__}", code="url_timeout") from exc
            except httpx.HTTPError as exc:
                raise BadInput(f"URL could not be fetched: {exc}", code="url_fetch_failed") from exc
        raise BadInput(f"URL redirected more than {self.max_redirects} times", code="url_fetch_failed")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise TooLarge(f"URL body is {declared} bytes; the limit is {self.max_bytes}")
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self.max_bytes:
                raise TooLarge(f"URL body exceeds the limit of {self.max_bytes} bytes")
        return bytes(body)
