"""The decode-ahead window: decoded frames waiting for a slower model are bounded in number
(``VRS_DECODE_AHEAD``), granted first come first served, and never deadlock; a request larger
than the window streams through it, each item scored as soon as it is decoded."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest
import torch

from models import signal
from models.registry import RewardModel, builtin_models
from models.spec import Dimension
from service.api import create_app
from service.batching import Window
from tests import videos
from tests.conftest import start_server, test_settings

# --- the window alone ---------------------------------------------------------------------------


async def test_claims_wait_their_turn_first_come_first_served():
    window = Window(3)
    order: list[str] = []
    release = asyncio.Event()

    async def claim(name: str, units: int) -> None:
        async with window.hold(units):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(claim("a", 2))
    await asyncio.sleep(0)
    big = asyncio.create_task(claim("big", 2))  # does not fit beside a's 2
    await asyncio.sleep(0)
    small = asyncio.create_task(claim("small", 1))  # would fit, but waits behind big (no overtaking)
    await asyncio.sleep(0.01)
    assert order == ["a"] and window.held == 2
    release.set()
    await asyncio.gather(first, big, small)
    assert order == ["a", "big", "small"] and window.held == 0 and window.peak == 3


async def test_a_claim_larger_than_the_window_is_granted_when_it_is_empty():
    window = Window(2)
    async with window.hold(5):
        assert window.held == 5
    assert window.held == 0


async def test_a_cancelled_waiter_gives_its_place_up():
    window = Window(1)
    gate = asyncio.Event()

    async def hold(units: int) -> None:
        async with window.hold(units):
            await gate.wait()

    holder = asyncio.create_task(hold(1))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold(1))
    await asyncio.sleep(0)
    behind = asyncio.create_task(hold(1))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    await asyncio.gather(holder, behind)
    assert window.held == 0 and window.peak == 1


# --- through a gateway --------------------------------------------------------------------------

COST_S = 0.05


def _slow_forward(frames: torch.Tensor, num_frames: torch.Tensor, prompts) -> torch.Tensor:
    time.sleep(COST_S * len(frames))  # a model slower than decoding these small clips
    return num_frames.float().view(-1, 1)


SLOW = RewardModel(
    spec=signal.SPEC.model_copy(update={"name": "slow", "dimensions": (Dimension(name="frames"),)}),
    forward=_slow_forward,
)


@pytest.fixture(scope="module")
def gateway():
    settings = test_settings(
        models=["slow", "signal"], default_model="slow", decode_ahead=3, decode_workers=4, max_batch_size=2
    )
    running = start_server(create_app(settings, models=builtin_models() | {"slow": SLOW}))
    yield running
    running.stop()


async def test_decoded_videos_waiting_for_the_model_stay_within_the_window(gateway):
    """Three requests of 8 videos each, decoded by 4 workers much faster than the model scores
    them: at most 3 videos are ever decoded and waiting, and every answer is right."""
    clips = [[videos.unique_clip() for _ in range(8)] for _ in range(3)]
    bodies = [
        {
            "models": ["slow", "signal"],
            "items": [{"video": {"frames": base64.b64encode(videos.npy_bytes(c)).decode(), "fps": 8}} for c in group],
            "cache": "bypass",
        }
        for group in clips
    ]
    engine = gateway.app.state.engine
    before = engine.stats["videos_decoded"]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
        answers = await asyncio.gather(*(client.post("/v1/score", json=body) for body in bodies))
    for group, answer in zip(clips, answers):
        assert answer.status_code == 200, answer.text
        assert [r["scores"]["slow.frames"] for r in answer.json()["results"]] == [
            float(min(len(c), signal.SPEC.sampling.max_frames)) for c in group
        ]
    assert engine.stats["videos_decoded"] - before == 24
    assert engine.decoded.peak == 3 and engine.decoded.held == 0


async def test_a_bad_item_does_not_hold_the_window(gateway):
    good = base64.b64encode(videos.npy_bytes(videos.unique_clip())).decode()
    body = {
        "items": [
            {"video": {"frames": good, "fps": 8}},
            {"video": {"data": base64.b64encode(b"not a video").decode()}},
        ],
        "cache": "bypass",
    }
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        bad = await client.post("/v1/score", json=body)
    assert bad.status_code == 415 and bad.json()["error"]["item"] == 1, bad.text
    assert gateway.app.state.engine.decoded.held == 0
