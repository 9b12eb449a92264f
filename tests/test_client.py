"""The Python client's transport behaviour against real HTTP servers: retries on 429/503 honouring
Retry-After, bounded attempts, refused connections, timeouts.

A small real proxy stands in front of the real gateway and answers a scripted number of 429/503
responses before forwarding, so the retry sequence is deterministic. ``on_retry`` reports each
wait the client chose, so no test measures time.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from vrs_client import APIError, AsyncClient, Client, Frames, Retry
from vrs_client.retry import retry_after_s

from tests import videos
from tests.conftest import forward, free_port, start_server
from tests.videos import unique_clip


@dataclass
class Script:
    """Responses the proxy gives before it forwards: (status, headers) each."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    seen: int = 0


@pytest.fixture(scope="module")
def proxy(scoring_gateway) -> Iterator[tuple[str, Script]]:
    script = Script()

    async def handle(request: Request) -> Response:
        script.seen += 1
        if script.answers:
            status, headers = script.answers.pop(0)
            error = {"code": "overloaded" if status == 429 else "backend_unavailable", "message": "busy", "item": None}
            return JSONResponse({"error": error}, status_code=status, headers=headers)
        return await forward(request, scoring_gateway.url)

    running = start_server(Starlette(routes=[Route("/v1/{op}", handle, methods=["POST"])]))
    yield running.url, script
    running.stop()


@pytest.fixture
def script(proxy) -> Script:
    proxy[1].answers.clear()
    proxy[1].seen = 0
    return proxy[1]


def test_429_is_retried_after_the_servers_retry_after(proxy, script, group_mp4):
    script.answers = [(429, {"Retry-After": "1"}), (429, {"Retry-After": "1"})]
    waits: list[tuple[int, float, str]] = []
    with Client(proxy[0], on_retry=lambda *w: waits.append(w)) as client:
        result = client.score(group_mp4[:1])
    assert waits == [(1, 1.0, "HTTP 429"), (2, 1.0, "HTTP 429")]
    assert script.seen == 3 and len(result.results) == 1


def test_503_without_retry_after_backs_off_exponentially(proxy, script, group_mp4):
    script.answers = [(503, {}), (503, {}), (503, {})]
    waits = []
    retry = Retry(attempts=4, backoff_s=0.05)
    with Client(proxy[0], retry=retry, on_retry=lambda *w: waits.append(w)) as client:
        result = client.rank(group_mp4[:2])
    assert [(n, w) for n, w, _ in waits] == [(1, 0.05), (2, 0.1), (3, 0.2)]
    assert script.seen == 4 and sorted(result.ranking) == [0, 1]


def test_a_retry_after_that_is_not_a_finite_non_negative_number_counts_as_absent(proxy, script, group_mp4):
    script.answers = [(429, {"Retry-After": value}) for value in ("nan", "inf", "-3")]
    waits = []
    with Client(proxy[0], retry=Retry(backoff_s=0.01), on_retry=lambda *w: waits.append(w)) as client:
        result = client.score(group_mp4[:1])  # nan reached time.sleep once: ValueError
    assert [(n, w) for n, w, _ in waits] == [(1, 0.01), (2, 0.02), (3, 0.04)]  # the backoff, as without one
    assert script.seen == 4 and len(result.results) == 1
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": past})) == 0.0  # a date gone by: now


def test_attempts_are_bounded(proxy, script, group_mp4):
    script.answers = [(429, {"Retry-After": "0"})] * 5
    waits = []
    with Client(proxy[0], retry=Retry(attempts=3), on_retry=lambda *w: waits.append(w)) as client:
        with pytest.raises(APIError) as err:
            client.score(group_mp4[:1])
    assert (err.value.status, err.value.code) == (429, "overloaded")
    assert len(waits) == 2 and script.seen == 3


def test_client_errors_are_not_retried(proxy, script, group_mp4):
    waits = []
    with Client(proxy[0], on_retry=lambda *w: waits.append(w)) as client:
        with pytest.raises(APIError) as err:
            client.rank(group_mp4[:2], weights={"signal.nope": 1.0})
    assert (err.value.status, err.value.code, err.value.item) == (400, "bad_weights", None)
    assert "weights: unknown dimension 'signal.nope'" in err.value.message
    assert waits == [] and script.seen == 1


async def test_async_client_retries_too(proxy, script, group_mp4):
    script.answers = [(429, {"Retry-After": "1"})]
    waits = []
    async with AsyncClient(proxy[0], on_retry=lambda *w: waits.append(w)) as client:
        result = await client.compare(group_mp4[0], group_mp4[1])
    assert waits == [(1, 1.0, "HTTP 429")] and script.seen == 2 and len(result.results) == 2


def test_refused_connections_are_retried_then_raised(group_mp4):
    waits = []
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, retry=Retry(attempts=3, backoff_s=0.01), on_retry=lambda *w: waits.append(w)) as client:
        with pytest.raises(httpx.ConnectError):
            client.score(group_mp4[:1])
    assert [(n, w) for n, w, _ in waits] == [(1, 0.01), (2, 0.02)]


def test_read_timeout_is_raised():
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with Client(url, timeout_s=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.score([b"not sent anywhere useful"])


def test_retry_after_as_http_date_and_the_cap():
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    response = httpx.Response(429, headers={"Retry-After": later})
    assert 25 < retry_after_s(response) <= 30
    assert Retry(max_wait_s=10).delay(1, response) == 10
    assert Retry().delay(1, httpx.Response(429, headers={"Retry-After": "soon"})) == 0.5  # unparseable: backoff


def test_client_side_input_checks():
    client = Client("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="2 prompts for 1 videos"):
        client.score([b"x"], ["a", "b"])
    with pytest.raises(ValueError, match="need fps"):
        client.score([np.zeros((2, 8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        client.score([np.zeros((2, 8, 8, 3), np.float32)], fps=16)
    client.close()


def content_types(client: Client | AsyncClient) -> list[str]:
    """The media type of every request the client sends from now on."""
    sent: list[str] = []

    def hook(request: httpx.Request) -> None:
        sent.append(request.headers["content-type"].split(";")[0])

    async def async_hook(request: httpx.Request) -> None:
        hook(request)

    client._http.event_hooks["request"].append(async_hook if isinstance(client, AsyncClient) else hook)
    return sent


@pytest.mark.parametrize("cache", ["refresh", "bypass"])
async def test_reuse_uploads_at_once_when_the_cache_may_not_answer(scoring_gateway, cache):
    """A digest is scored from the cache only (400 with refresh/bypass): reuse skips it for those calls."""
    clip = Frames(unique_clip(), 16)
    with Client(scoring_gateway.url, reuse=True) as client:
        sent = content_types(client)
        assert client.score([clip]).results[0].cached is False  # cache="use": digest, not_cached, upload
        assert sent == ["application/json", "multipart/form-data"]
        sent.clear()
        result = client.score([clip], cache=cache)
        assert sent == ["multipart/form-data"] and result.results[0].cached is False
    async with AsyncClient(scoring_gateway.url, reuse=True) as async_client:
        sent = content_types(async_client)
        ranked = await async_client.rank([clip, Frames(unique_clip(), 16)], cache=cache)
        assert sent == ["multipart/form-data"] and not any(r.cached for r in ranked.results)


@pytest.mark.parametrize("transport", ["multipart", "json"])
def test_a_long_non_ascii_prompt_for_every_item_arrives_intact(scoring_gateway, transport):
    """64 items with a 3000-character CJK prompt: escaped as \\uXXXX the multipart ``request`` field
    was 1.15 MB, over the server's 1 MiB per field (400); as UTF-8 it is 576 KB. ``prompt-probe``
    scores len(prompt) + frames/1000, so each item's score shows its prompt decoded as sent."""
    prompt = "一只猫在冲浪，🏄" * 375  # 3000 characters, one outside the BMP (a surrogate pair when escaped)
    clip = Frames(unique_clip(), 16)
    with Client(scoring_gateway.url, transport=transport) as client:
        result = client.score([clip] * 64, prompt, models=["prompt-probe"], cache="bypass")
    assert [r.overall for r in result.results] == pytest.approx([len(prompt) + 9 / 1000] * 64)


@pytest.mark.parametrize("one", ["clip.mp4", b"\x00\x00\x00\x18ftypmp42", np.zeros((9, 8, 8, 3), np.uint8)])
async def test_one_video_where_a_list_is_expected_is_a_type_error(scoring_gateway, one):
    """A str was taken apart character by character (FileNotFoundError: 'c'), bytes byte by byte;
    a [N, T, H, W, 3] array stays N videos."""
    with Client(scoring_gateway.url) as client:
        assert len(client.score(np.stack([unique_clip(), unique_clip()]), fps=16).results) == 2
    methods = ["score", "rank", "grpo_advantages"]
    with Client("http://127.0.0.1:9") as client:
        for method in methods:
            with pytest.raises(TypeError, match=f"videos must be a list of videos, not one {type(one).__name__}"):
                getattr(client, method)(one, fps=16)
    async with AsyncClient("http://127.0.0.1:9") as async_client:
        for method in methods:
            with pytest.raises(TypeError, match="videos must be a list of videos"):
                await getattr(async_client, method)(one, fps=16)


def test_every_bad_item_keeps_its_own_code_and_message(scoring_gateway, group_mp4):
    """The server names every bad item in ``error.others`` with its own reason; the client kept only the indices."""
    corrupt, audio = b"\x00not a video" * 100, videos.audio_only()
    with Client(scoring_gateway.url) as client:
        with pytest.raises(APIError) as err:
            client.score([group_mp4[0], corrupt, group_mp4[1], audio, corrupt[1:]])
    assert (err.value.status, err.value.code, err.value.item) == (415, "unsupported_media", 1)
    assert err.value.others == [3, 4]
    assert [(e.code, e.item) for e in err.value.other_errors] == [("no_video_stream", 3), ("unsupported_media", 4)]
    audio_error, corrupt_error = err.value.other_errors
    assert "video stream" in audio_error.message and corrupt_error.message == err.value.message
