"""URL ingest against non-public targets, through a real gateway that runs inside a loopback-only
network namespace (``unshare -n``): even a regression in the address policy cannot send a packet
off this machine. The gateway listens on a Unix socket, which crosses the namespace boundary.

Inside the namespace only loopback exists, so a target the policy *allows* fails to connect
(``url_fetch_failed``) while a refused one answers ``url_forbidden``, which the guarded network
backend raises before it opens any connection.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.fetch import is_allowed_address

ROOT = Path(__file__).resolve().parent.parent


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (root or user namespaces) and `ip`")

# Each target is refused by the policy; the comment says which rule.
FORBIDDEN = [
    "127.0.0.1",
    "127.1.2.3",  # loopback
    "0.0.0.0",
    "0.1.2.3",  # "this network"
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",  # private
    "169.254.169.254",
    "169.254.0.1",  # link-local (cloud metadata)
    "100.64.0.1",
    "100.100.100.200",
    "100.127.255.254",  # shared address space (CGNAT)
    "198.18.0.1",
    "198.19.255.254",  # benchmarking
    "192.0.0.8",
    "192.0.2.10",
    "198.51.100.7",
    "203.0.113.9",  # IETF protocol assignments, documentation
    "192.88.99.1",  # deprecated 6to4 relay anycast
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",  # multicast, reserved, broadcast
    "[::1]",
    "[::]",  # loopback, unspecified
    "[::ffff:127.0.0.1]",
    "[::ffff:10.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:100.64.0.1]",  # IPv4-mapped
    "[::127.0.0.1]",
    "[::8.8.8.8]",  # IPv4-compatible (deprecated, in the reserved ::/8)
    "[64:ff9b::127.0.0.1]",
    "[64:ff9b::a9fe:a9fe]",
    "[64:ff9b::10.1.2.3]",
    "[64:ff9b::c612:1]",  # NAT64 to private
    "[64:ff9b:1::a00:1]",
    "[64:ff9b:1:7f00:1::]",  # local-use NAT64
    "[2002:7f00:1::1]",
    "[2002:a9fe:a9fe::1]",
    "[2002:c0a8:101::1]",
    "[2002:6440:1::1]",  # 6to4 around private IPv4
    "[2001:0:808:808::80ff:fffe]",  # Teredo: server 8.8.8.8, client 127.0.0.1 (obfuscated)
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo, client 192.0.2.45 (documentation)
    "[fc00::1]",
    "[fd12:3456::1]",
    "[fe80::1]",
    "[fec0::1]",  # unique-local, link-local, site-local
    "[ff02::1]",
    "[2001:db8::1]",
    "[3fff::1]",
    "[100::1]",
    "[5f00::1]",  # multicast, documentation, discard, SRv6
]

# Allowed by the policy: inside the namespace the connection itself fails.
ALLOWED = [
    "93.184.216.34",
    "[2606:4700::1111]",
    "[64:ff9b::5db8:d822]",
    "[::ffff:93.184.216.34]",
    "[2002:5db8:d822::1]",
]

# Not URLs the fetcher will send: 400 bad_url, never 500.
BAD_URLS = [
    "http://0177.0.0.1/a.mp4",  # octal spelling of 127.0.0.1 to inet_aton
    "http://127.000.000.001/a.mp4",  # zero-padded
    "http://2130706433/a.mp4",  # 127.0.0.1 as one decimal number
    "http://0x7f.0.0.1/a.mp4",  # hex
    "http://127.1/a.mp4",  # short form
    "http://example.com/a.mp4\r\nX-Injected: 1",
    "http://exa\nmple.com/a.mp4",
    "http://exa mple.com/a.mp4",
    "http://example.com:99999/a.mp4",
    "http://[::1/a.mp4",
    "http:///a.mp4",
    "ftp://example.com/a.mp4",
]


@pytest.fixture(scope="module")
def jailed_gateway(tmp_path_factory) -> Iterator[httpx.Client]:
    sock = tmp_path_factory.mktemp("jail") / "gateway.sock"
    env = os.environ | {"VRS_MODELS": '["signal"]', "VRS_URL_CONNECT_TIMEOUT_S": "2", "VRS_URL_TIMEOUT_S": "4"}
    env.pop("VRS_URL_ALLOW_NETWORKS", None)
    command = f"ip link set lo up && exec {sys.executable} -m uvicorn --factory service.api:create_app --uds {sock} --log-level warning"
    process = subprocess.Popen(["unshare", "-n", "sh", "-c", command], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the jailed gateway did not start")
            time.sleep(0.1)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://gateway", timeout=30) as c:
            yield c
    finally:
        process.terminate()
        process.wait(timeout=20)


def _score_url(client: httpx.Client, url: str) -> httpx.Response:
    return client.post("/v1/score", json={"items": [{"video": {"url": url}}]})


def test_the_gateway_is_jailed(jailed_gateway):
    """The namespace has only loopback: a public address is unreachable, so the policy is the only line."""
    r = _score_url(jailed_gateway, "http://93.184.216.34/a.mp4")
    assert r.status_code == 400 and r.json()["error"]["code"] == "url_fetch_failed", r.text


def test_battery_of_non_public_targets_is_refused_before_connecting(jailed_gateway):
    assert len(FORBIDDEN) >= 40
    answers = {host: _score_url(jailed_gateway, f"http://{host}:8080/clip.mp4") for host in FORBIDDEN}
    wrong = {
        h: (r.status_code, r.text[:200])
        for h, r in answers.items()
        if r.status_code != 400 or r.json()["error"]["code"] != "url_forbidden"
    }
    assert not wrong, wrong
    for host, r in answers.items():
        assert r.json()["error"]["item"] == 0 and "not a public address" in r.json()["error"]["message"], host


def test_public_targets_pass_the_policy(jailed_gateway):
    """The policy does not refuse everything: these reach the connect step (which the jail makes fail)."""
    for host in ALLOWED:
        r = _score_url(jailed_gateway, f"http://{host}/clip.mp4")
        assert r.status_code == 400 and r.json()["error"]["code"] == "url_fetch_failed", (host, r.text)


def test_malformed_and_ambiguous_urls_are_bad_url(jailed_gateway):
    for url in BAD_URLS:
        r = _score_url(jailed_gateway, url)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_url", (url, r.status_code, r.text)


@pytest.mark.parametrize("host", FORBIDDEN)
def test_address_policy_refuses(host):
    assert not is_allowed_address(ipaddress.ip_address(host.strip("[]")))


@pytest.mark.parametrize("host", ALLOWED)
def test_address_policy_allows(host):
    assert is_allowed_address(ipaddress.ip_address(host.strip("[]")))
