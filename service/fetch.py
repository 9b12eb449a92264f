"""Fetch a video from an http(s) URL without letting the URL reach inside our network.

A URL is parsed first (``checked_url``): malformed ones and ambiguous IPv4 spellings are
``bad_url``. Every TCP connection (the first and one per redirect) resolves the host itself,
refuses the connection if *any* resolved address is not public (``is_allowed_address``:
loopback, private, link-local, which covers the cloud metadata address 169.254.169.254, CGNAT,
benchmarking, documentation, multicast, reserved..., and IPv6 forms judged by the IPv4 address
they carry), and then connects to an address it checked, so DNS cannot change the answer in
between. Names are resolved by c-ares (aiodns), not by the libc resolver on a thread pool: a
lookup that times out is abandoned without holding a thread, so names that never answer cannot
starve everyone's lookups. A name that does not resolve and one that resolves to a non-public
address get the same answer, without the address, so errors do not map the internal network.

Bytes, redirects and total time are capped. The body streams into a spooled temporary file
(memory up to ``SPOOL_IN_MEMORY``, then disk, like an upload), each chunk charged to the
request's ``Holding`` (its share of the gateway's in-flight byte budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import tempfile
from collections.abc import Sequence
from typing import BinaryIO
from urllib.parse import urljoin

import aiodns
import httpcore
import httpx

from service.body_limits import Holding
from service.errors import BadInput, TooLarge

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenAddress(BadInput):
    code = "url_forbidden"


# Networks refused whatever ``is_global`` says (IANA special-purpose registries).
_REFUSED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.31.196.0/24",
        "192.52.193.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "192.175.48.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/8",  # unspecified, loopback, IPv4-compatible (deprecated); IPv4-mapped and NAT64 are unwrapped first
        "64:ff9b:1::/48",  # local-use NAT64: the prefix length is site-specific, so the IPv4 inside is unknowable
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped, NAT64 (64:ff9b::/96), 6to4, Teredo
    (server and client). Traffic to such an address ends at (or passes through) those IPv4 hosts."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip in _TEREDO and ip.teredo is not None:
        return list(ip.teredo)
    return []


def is_allowed_address(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> bool:
    """True for globally routable unicast addresses, or those inside an allowed network.

    An IPv6 address that embeds IPv4 addresses is allowed only when each of them is; reserved,
    shared (CGNAT), benchmarking, documentation and the other special-purpose ranges are
    refused by name, not only through ``is_global``."""
    if any(ip in net for net in allow):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return is_allowed_address(inner[0], allow)  # the IPv4 host is the real destination
        if not all(is_allowed_address(v4, allow) for v4 in inner):
            return False
        refused: tuple[IPNetwork, ...] = _REFUSED_V6
    else:
        refused = _REFUSED_V4
    if any(ip in net for net in refused):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_private or ip.is_link_local)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves the host itself and checks every address before it
    connects to one of them."""

    def __init__(self, allow: Sequence[IPNetwork], resolve_timeout_s: float, nameservers: Sequence[str] = ()) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow = list(allow)
        self._resolve_timeout_s = resolve_timeout_s
        self._nameservers = list(nameservers)  # "ip" or "ip:port"; none: the system's (/etc/resolv.conf)
        self._resolver: aiodns.DNSResolver | None = None  # made on first use, in the serving event loop

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        literal = _ip_literal(host)
        addresses = [literal] if literal is not None else await self._resolve(host)
        if not addresses or not all(is_allowed_address(ip, self._allow) for ip in addresses):
            # A name that does not resolve gets the same answer as a non-public one, and neither
            # names the address: errors must not map the internal network.
            raise ForbiddenAddress(
                f"URL host {host} is not a public address; refused"
                if literal is not None
                else f"URL host {host} does not resolve to a public address; refused"
            )
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    async def _resolve(self, host: str) -> list[IPAddress]:
        """What DNS (or /etc/hosts) says ``host`` is; [] when it says nothing."""
        if self._resolver is None:
            self._resolver = aiodns.DNSResolver(
                self._nameservers or None, timeout=min(2.0, self._resolve_timeout_s), tries=2
            )
        try:
            async with asyncio.timeout(self._resolve_timeout_s):
                result = await self._resolver.getaddrinfo(host, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"URL host {host} did not resolve within {self._resolve_timeout_s:g} s")
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            if code in _NO_SUCH_NAME:
                return []
            if code == aiodns.error.ARES_ETIMEOUT:
                raise httpcore.ConnectTimeout(f"URL host {host}: DNS did not answer") from None
            raise httpcore.ConnectError(f"URL host {host}: DNS failed ({exc.args[-1] if exc.args else code})") from None
        found = (_ip_literal(n.addr[0].decode() if isinstance(n.addr[0], bytes) else n.addr[0]) for n in result.nodes)
        return list(dict.fromkeys(ip for ip in found if ip is not None))

    async def aclose(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_NO_SUCH_NAME = (aiodns.error.ARES_ENOTFOUND, aiodns.error.ARES_ENODATA, aiodns.error.ARES_ENONAME)


def _ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address (brackets and an IPv6 zone dropped), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


# A host written only with digits, dots and hex parts: an IPv4 literal in some spelling. Only the
# canonical dotted quad is accepted; ``0177.0.0.1``, ``127.000.000.001``, ``2130706433`` or
# ``0x7f.1`` mean different hosts to different parsers (inet_aton reads 0177 as octal 127).
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?", re.IGNORECASE)
_CANONICAL_IPV4 = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")


def checked_url(url: str) -> httpx.URL:
    """Parse an absolute http(s) URL, or raise BadInput ``bad_url`` saying what is wrong with it."""
    shown = url[:200]
    if any(c.isspace() or not c.isprintable() for c in url):
        raise BadInput(f"URL contains whitespace or control characters: {shown!r}", code="bad_url")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise BadInput(f"not a valid URL ({exc}): {shown!r}", code="bad_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise BadInput(f"only absolute http(s) URLs are fetched, got {shown!r}", code="bad_url")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise BadInput(f"URL port {parsed.port} is out of range: {shown!r}", code="bad_url")
    if _NUMERIC_HOST.fullmatch(parsed.host) and not _CANONICAL_IPV4.fullmatch(parsed.host):
        raise BadInput(
            f"URL host {parsed.host[:100]!r} is an ambiguous IPv4 spelling; write the dotted decimal form",
            code="bad_url",
        )
    return parsed


SPOOL_IN_MEMORY = 1 << 20  # a downloaded video past this many bytes is spooled to disk


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
        max_connections: int = 512,
        per_host: int = 32,
        nameservers: Sequence[str] = (),
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        # Downloads at once from one host (as the URL names it), so one slow or hanging origin
        # cannot take the whole pool from other hosts' downloads; waiting counts against its timeout.
        self._per_host = per_host
        self._hosts: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}  # host -> (slots, [users])
        self._backend = _GuardedBackend(allow_networks, connect_timeout_s, nameservers)
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        # httpx has no public hook for the network backend; swap the pool for one that has ours.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=self._backend,
            max_connections=max_connections,
            max_keepalive_connections=min(max_connections, 32),
            keepalive_expiry=5.0,
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
        await self._backend.aclose()

    async def fetch(self, url: str, holding: Holding) -> BinaryIO:
        """The body at ``url``, in a spooled file at its start, its bytes charged to ``holding``;
        raise a BadInput / TooLarge / Overloaded subclass saying why not."""
        try:
            async with asyncio.timeout(self.timeout_s), self._slot(checked_url(url).host.lower()):
                return await self._follow(url, holding)
        except TimeoutError as exc:
            raise BadInput(f"URL did not answer within {self.timeout_s:g} s", code="url_timeout") from exc

    @contextlib.asynccontextmanager
    async def _slot(self, host: str):
        """One of ``host``'s download slots; a host nobody holds or waits for is forgotten."""
        slots, users = self._hosts.setdefault(host, (asyncio.Semaphore(self._per_host), [0]))
        users[0] += 1
        try:
            async with slots:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._hosts[host]

    async def _follow(self, url: str, holding: Holding) -> BinaryIO:
        for _ in range(self.max_redirects + 1):
            url = str(checked_url(url))
            try:
                async with self._client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise BadInput(f"URL answered HTTP {response.status_code}", code="url_fetch_failed")
                    return await self._read_capped(response, holding)
            except httpx.InvalidURL as exc:  # checked above; httpx may still refuse (e.g. a header it cannot encode)
                raise BadInput(f"URL could not be sent: {exc}", code="bad_url") from exc
            except httpx.TimeoutException as exc:
                raise BadInput(f"URL timed out: {type(exc).__name__}", code="url_timeout") from exc
            except httpx.HTTPError as exc:
                raise BadInput(f"URL could not be fetched: {exc}", code="url_fetch_failed") from exc
        raise BadInput(f"URL redirected more than {self.max_redirects} times", code="url_fetch_failed")

    async def _read_capped(self, response: httpx.Response, holding: Holding) -> BinaryIO:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit():
            if int(declared) > self.max_bytes:
                raise TooLarge(f"URL body is {declared} bytes; the limit is {self.max_bytes}")
            holding.make_room(int(declared))  # over the request's own cap: 413 now, not 429 halfway
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        try:
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.max_bytes:
                    raise TooLarge(f"URL body exceeds the limit of {self.max_bytes} bytes")
                holding.take(len(chunk))
                spool.write(chunk)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool  # type: ignore[return-value]  # a BinaryIO in all but name
