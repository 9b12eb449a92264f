"""URL fetching caps, against a real HTTP origin on 127.0.0.2."""

from __future__ import annotations

import ipaddress

import pytest

from service.errors import BadInput, TooLarge
from service.fetch import ForbiddenAddress, UrlFetcher, is_allowed_address
from tests.conftest import ORIGIN_HOST


def fetcher(**overrides) -> UrlFetcher:
    options = dict(
        max_bytes=10**7,
        timeout_s=3.0,
        connect_timeout_s=1.0,
        max_redirects=2,
        allow_networks=[ipaddress.ip_network(f"{ORIGIN_HOST}/32")],
    )
    return UrlFetcher(**(options | overrides))


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


async def test_fetch_returns_the_body(origin, clean_mp4):
    f = fetcher()
    try:
        assert await f.fetch(f"{origin}/clip.mp4") == clean_mp4
    finally:
        await f.aclose()


async def test_body_over_the_cap_is_refused(origin, clean_mp4):
    f = fetcher(max_bytes=len(clean_mp4) - 1)
    try:
        with pytest.raises(TooLarge):
            await f.fetch(f"{origin}/clip.mp4")
    finally:
        await f.aclose()


async def test_redirect_chains_are_capped(origin):
    url = f"{origin}/clip.mp4"
    for _ in range(3):  # three hops; the cap is two
        url = f"{origin}/redirect?to={url}"
    f = fetcher()
    try:
        with pytest.raises(BadInput, match="redirected more than 2"):
            await f.fetch(url)
    finally:
        await f.aclose()


async def test_without_the_test_allowance_loopback_origins_are_refused(origin):
    f = fetcher(allow_networks=[])
    try:
        with pytest.raises(ForbiddenAddress):
            await f.fetch(f"{origin}/clip.mp4")
    finally:
        await f.aclose()
