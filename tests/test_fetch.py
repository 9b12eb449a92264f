"""URL fetching caps, against a real HTTP origin on 127.0.0.2 and a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from dnslib import AAAA, QTYPE, RR, A, DNSRecord
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from service.api import create_app
from service.body_limits import ByteBudget, Holding
from service.errors import BadInput, Overloaded, TooLarge
from service.fetch import ForbiddenAddress, UrlFetcher, is_allowed_address
from tests.conftest import ORIGIN_HOST, start_server, test_settings


def fetcher(**overrides) -> UrlFetcher:
    options = dict(
        max_bytes=10**7,
        timeout_s=3.0,
        connect_timeout_s=1.0,
        max_redirects=2,
        allow_networks=[ipaddress.ip_network(f"{ORIGIN_HOST}/32")],
    )
    return UrlFetcher(**(options | overrides))


def holding(limit: int = 10**9, budget: ByteBudget | None = None) -> Holding:
    return Holding(budget or ByteBudget(10**9), limit)


async def body(f: UrlFetcher, url: str, held: Holding | None = None) -> bytes:
    with await f.fetch(url, held or holding()) as spool:
        return spool.read()


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),  # shared address space (a cloud metadata address)
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fd00:ec2::254", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_address_policy(address, allowed):
    assert is_allowed_address(ipaddress.ip_address(address)) is allowed


async def test_fetch_returns_the_body_and_charges_its_bytes(origin, clean_mp4):
    f = fetcher()
    budget = ByteBudget(10**9)
    held = holding(budget=budget)
    try:
        assert await body(f, f"{origin}/clip.mp4", held) == clean_mp4
        assert held.held == budget.used == len(clean_mp4)
        held.release()
        assert budget.used == 0
    finally:
        await f.aclose()


async def test_a_request_downloads_at_most_its_limit(origin, clean_mp4):
    f = fetcher()
    held = holding(limit=2 * len(clean_mp4) + 10)
    try:
        await body(f, f"{origin}/clip.mp4", held)
        await body(f, f"{origin}/clip.mp4", held)
        with pytest.raises(TooLarge, match="this request downloads exceed"):
            await body(f, f"{origin}/clip.mp4", held)
    finally:
        await f.aclose()


async def test_downloads_share_the_in_flight_byte_budget(origin, clean_mp4):
    """Another request holds most of the budget (a body, say): this download gets 429, and the
    bytes it had taken are given back with the rest of its request's."""
    f = fetcher()
    budget = ByteBudget(3 * len(clean_mp4) // 2)
    other, mine = holding(budget=budget), holding(budget=budget)
    try:
        await body(f, f"{origin}/clip.mp4", other)
        with pytest.raises(Overloaded):
            await body(f, f"{origin}/clip.mp4", mine)
        mine.release()
        assert budget.used == len(clean_mp4)
        other.release()
        await body(f, f"{origin}/clip.mp4", mine)  # alone, a request may use the whole budget and more
    finally:
        await f.aclose()


async def test_body_over_the_cap_is_refused(origin, clean_mp4):
    f = fetcher(max_bytes=len(clean_mp4) - 1)
    try:
        with pytest.raises(TooLarge):
            await body(f, f"{origin}/clip.mp4")
    finally:
        await f.aclose()


async def test_redirect_chains_are_capped(origin):
    url = f"{origin}/clip.mp4"
    for _ in range(3):  # three hops; the cap is two
        url = f"{origin}/redirect?to={url}"
    f = fetcher()
    try:
        with pytest.raises(BadInput, match="redirected more than 2"):
            await body(f, url)
    finally:
        await f.aclose()


async def test_without_the_test_allowance_loopback_origins_are_refused(origin):
    f = fetcher(allow_networks=[])
    try:
        with pytest.raises(ForbiddenAddress, match=f"{ORIGIN_HOST} is not a public address"):
            await body(f, f"{origin}/clip.mp4")
    finally:
        await f.aclose()


@pytest.fixture
def dns() -> Iterator[str]:
    """A DNS server on 127.0.0.1 (UDP): ``*.origin.test`` is 127.0.0.2 (IPv4 only), ``*.private.test``
    10.0.0.5, ``*.hang.test`` is never answered (a resolver that black-holes), the rest NXDOMAIN."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = DNSRecord.parse(data)
            name, qtype = str(query.q.qname).rstrip("."), query.q.qtype
            if name.endswith(".hang.test"):
                continue
            reply = query.reply()
            answer = ORIGIN_HOST if name.endswith(".origin.test") else "10.0.0.5"
            if name.endswith((".origin.test", ".private.test")):
                if qtype == QTYPE.A:
                    reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(answer), ttl=60))
            else:
                reply.header.rcode = 3  # NXDOMAIN
            if qtype == QTYPE.AAAA and name.endswith(".v6.origin.test"):
                reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA("::1"), ttl=60))
            sock.sendto(reply.pack(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    sock.close()


async def test_names_are_resolved_and_every_address_checked(origin, clean_mp4, dns):
    port = origin.rsplit(":", 1)[1]
    f = fetcher(nameservers=[dns])
    try:
        assert await body(f, f"http://video.origin.test:{port}/clip.mp4") == clean_mp4
        with pytest.raises(ForbiddenAddress, match="does not resolve to a public address") as mixed:
            await body(f, f"http://both.v6.origin.test:{port}/clip.mp4")  # one of its addresses is ::1
        # a private name and a missing one get the same answer, without the address (no DNS oracle)
        with pytest.raises(ForbiddenAddress) as private:
            await body(f, "http://db.private.test/clip.mp4")
        with pytest.raises(ForbiddenAddress) as missing:
            await body(f, "http://nothing.test/clip.mp4")
        texts = [
            str(e.value).replace(host, "HOST") for e, host in ((private, "db.private.test"), (missing, "nothing.test"))
        ]
        assert texts[0] == texts[1] and "10.0.0.5" not in str(private.value) and "::1" not in str(mixed.value)
    finally:
        await f.aclose()


async def test_lookups_that_never_answer_hold_no_thread_and_end_as_url_timeout(origin, clean_mp4, dns):
    """64 names whose lookups hang (more than any resolver thread pool here) do not hold up a
    lookup that answers, and each ends as ``url_timeout`` at the connect timeout (5 s: the answered
    fetch has that long to finish first, however busy the machine)."""
    port = origin.rsplit(":", 1)[1]
    f = fetcher(nameservers=[dns], connect_timeout_s=5.0, timeout_s=10.0)
    try:
        hanging = [asyncio.ensure_future(body(f, f"http://n{i}.hang.test/clip.mp4")) for i in range(64)]
        await asyncio.sleep(0.1)
        assert await body(f, f"http://video.origin.test:{port}/clip.mp4") == clean_mp4
        assert not any(t.done() for t in hanging)  # answered while the 64 were still waiting
        outcomes = await asyncio.gather(*hanging, return_exceptions=True)
        assert all(isinstance(e, BadInput) and e.code == "url_timeout" for e in outcomes), outcomes[:2]
    finally:
        await f.aclose()


def test_a_gateway_downloads_each_distinct_url_once_and_caps_a_requests_downloads(clean_mp4):
    """64 items naming one URL cost one download; distinct URLs past ``VRS_MAX_REQUEST_BYTES`` of
    downloads in one request get 413 naming the item (was: every item held its own copy in memory)."""
    hits: list[str] = []

    async def video(request):
        hits.append(str(request.url))
        return Response(clean_mp4, media_type="video/mp4")

    origin = start_server(Starlette(routes=[Route("/clip.mp4", video)]), host=ORIGIN_HOST)
    gateway = start_server(create_app(test_settings(max_request_bytes=2 * len(clean_mp4) + 1000)))
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            same = [{"video": {"url": f"{origin.url}/clip.mp4"}}] * 64
            r = client.post("/v1/score", json={"items": same})
            assert r.status_code == 200, r.text
            assert len(hits) == 1 and len(r.json()["results"]) == 64
            distinct = [{"video": {"url": f"{origin.url}/clip.mp4?copy={i}"}} for i in range(3)]
            r = client.post("/v1/score", json={"items": distinct})
            assert r.status_code == 413, r.text
            error = r.json()["error"]
            assert error["code"] == "too_large" and error["item"] is not None, error
            assert "downloads exceed" in error["message"]
            assert client.post("/v1/score", json={"items": distinct[:2]}).status_code == 200  # nothing left held
            # one failed download named by two items: each item gets its own error
            missing = {"video": {"url": f"{origin.url}/nothing.mp4"}}
            r = client.post("/v1/score", json={"items": [missing, same[0], missing]})
            error = r.json()["error"]
            assert r.status_code == 400 and error["item"] == 0 and [e["item"] for e in error["others"]] == [2], error
        # A budget below the per-request cap caps a request at the budget: a lone request past it
        # gets 413, not a 429 that no retry could ever turn into a 200.
        gateway.stop()
        gateway = start_server(create_app(test_settings(max_inflight_body_bytes=3 * len(clean_mp4) // 2)))
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            r = client.post("/v1/score", json={"items": distinct[:2]})
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
    finally:
        gateway.stop()
        origin.stop()


async def test_a_hanging_host_holds_at_most_its_share_of_the_pool(clean_mp4):
    """Four downloads hang on one origin; with two slots per host, a download from another host
    still gets one of the pool's four connections (was: the pool drained by one host's URLs)."""

    async def hang(request):
        await asyncio.sleep(5)
        return Response(b"")

    async def video(request):
        return Response(clean_mp4, media_type="video/mp4")

    slow = start_server(Starlette(routes=[Route("/hang", hang)]), host=ORIGIN_HOST)
    other = start_server(Starlette(routes=[Route("/clip.mp4", video)]), host="127.0.0.3")
    allow = [ipaddress.ip_network(f"{ORIGIN_HOST}/32"), ipaddress.ip_network("127.0.0.3/32")]
    f = fetcher(allow_networks=allow, max_connections=4, per_host=2, timeout_s=3.0)
    try:
        hanging = [asyncio.ensure_future(body(f, f"{slow.url}/hang?i={i}")) for i in range(4)]
        await asyncio.sleep(0.3)
        assert await body(f, f"{other.url}/clip.mp4") == clean_mp4
        assert not any(t.done() for t in hanging)
        outcomes = await asyncio.gather(*hanging, return_exceptions=True)
        assert all(isinstance(e, BadInput) and e.code == "url_timeout" for e in outcomes), outcomes
    finally:
        await f.aclose()
        slow.stop()
        other.stop()
