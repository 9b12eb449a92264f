"""Admission bounds queueing time: work that would wait past ``queue_budget_s`` is refused at once
with 429 and a Retry-After computed from the backlog, and ``max_pending`` stays a hard cap.

The HTTP tests run a real gateway whose model costs a known 0.25 s per video (a weight-free
forward that sleeps, standing in for a model of that cost), so the backlog's drain time is known.
"""

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
from service.admission import MAX_CALIBRATION, Admission
from service.api import create_app
from service.errors import Overloaded, TooLarge
from tests import videos
from tests.conftest import start_server, test_settings

COST_S = 0.25


def _slow_forward(frames: torch.Tensor, num_frames: torch.Tensor, prompts) -> torch.Tensor:
    time.sleep(COST_S * len(frames))
    return num_frames.float().view(-1, 1)


SLOW = RewardModel(
    spec=signal.SPEC.model_copy(update={"name": "slow", "dimensions": (Dimension(name="frames"),)}),
    forward=_slow_forward,
)


# --- the pure bookkeeping -----------------------------------------------------------------------


def test_wait_is_the_slower_stage_of_measured_costs_over_concurrency():
    a = Admission(queue_budget_s=5.0, max_pending=100, concurrency=2, decode_workers=2)
    assert a.estimated_wait_s() == 0.0  # nothing measured, nothing pending
    a.observe_batch("m", 4.0, 4)  # 1 s per video, two batches at once -> 0.5 s of drain time per video
    a.observe_decode(0.2)  # 0.2 s per video on two workers -> 0.1 s
    with a.admit(["m"], 6):
        assert a.estimated_wait_s() == pytest.approx(3.0)
        with a.admit(["m"], 4):
            assert a.estimated_wait_s() == pytest.approx(5.0)
            with pytest.raises(Overloaded) as refused:  # 5 s queued is not over the budget; 6.5 s is
                with a.admit(["m"], 3):
                    with a.admit(["m"], 1):
                        pass
            assert refused.value.retry_after_s == 2  # ceil(6.5 + 0.5 - 5)
    assert a.pending_pairs == 0 and a.pending_videos == 0  # released on the way out, refused or not
    a.observe_decode(2.0)  # EWMA: 0.2 + 0.2 * (2.0 - 0.2) = 0.56 s -> 0.28 s per video on 2 workers
    assert a.work_seconds({"m": 10}, 10) == pytest.approx(5.0)
    assert a.work_seconds({}, 100) == pytest.approx(28.0)  # decode-bound


def test_work_admitted_before_any_cost_was_measured_does_not_skew_the_calibration():
    """A first request, admitted while its model was unmeasured (estimated 0 s), runs long (start-up);
    its busy time has no estimated work to set against, so it must not count: otherwise a window of
    long busy time over almost no estimated work makes the factor huge and sheds everything after."""
    now = [0.0]
    a = Admission(queue_budget_s=5.0, max_pending=100, window_s=2.0, clock=lambda: now[0])
    with a.admit(["m"], 1) as ticket, ticket.working():  # unmeasured: 0 s of estimated work, 30 s of wall time
        now[0] += 30.0
        a.observe_batch("m", 0.01, 1)
    for _ in range(400):  # measured now: each video of 0.01 s takes 0.01 s
        with a.admit(["m"], 1) as ticket, ticket.working():
            now[0] += 0.01
    assert a.calibration.value == pytest.approx(1.0, rel=0.01)


def test_time_waiting_outside_the_compute_stages_is_not_busy_time():
    """A request that waits on the network, Redis or another replica's result (outside
    ``ticket.working()``) holds little work for a long time. Counting that as busy made one 5 s
    wait over 1 ms of work a calibration of thousands, and an idle gateway shed the next burst
    (what CI saw: 429 with "about 90.2 s of work" for 40 small requests)."""
    now = [0.0]
    a = Admission(queue_budget_s=5.0, max_pending=100, window_s=2.0, clock=lambda: now[0])
    a.observe_batch("m", 0.001, 1)
    with a.admit(["m"], 1) as stalled:  # waits 5 s on I/O, then computes its 1 ms
        now[0] += 5.0
        with stalled.working():
            now[0] += 0.001
    for _ in range(1500):  # then ordinary traffic (3 s): each video's 1 ms takes 2 ms of busy time
        with a.admit(["m"], 1) as ticket, ticket.working():
            now[0] += 0.002
    assert a.calibration.value == pytest.approx(2.0, rel=0.05)
    with a.admit(["m"], 40):  # a burst of 40 videos: about 80 ms to drain, nowhere near the budget
        assert a.estimated_wait_s() == pytest.approx(0.08, rel=0.05)


def test_one_odd_window_moves_the_calibration_a_bounded_step():
    """A stage stalled far beyond its estimate (a hung backend call) is one window of a huge ratio;
    the factor is clamped, so afterwards the gateway over-estimates at most MAX_CALIBRATION-fold."""
    now = [0.0]
    a = Admission(queue_budget_s=5.0, max_pending=100, window_s=2.0, alpha=1.0, clock=lambda: now[0])
    a.observe_batch("m", 0.001, 1)
    with a.admit(["m"], 1) as ticket, ticket.working():
        now[0] += 30.0  # 30 s of busy time for 1 ms of estimated work
    assert a.calibration.value == MAX_CALIBRATION


def test_cache_hits_complete_no_work():
    """Requests answered from the cache never enter a compute stage; their estimated work must not
    count as done, or a mostly-cached load would deflate the factor below the compute's real cost."""
    now = [0.0]
    a = Admission(queue_budget_s=5.0, max_pending=100, window_s=2.0, clock=lambda: now[0])
    a.observe_batch("m", 0.01, 1)
    for i in range(400):
        if i % 2:
            with a.admit(["m"], 1) as ticket, ticket.working():  # computed: 10 ms takes 30 ms
                now[0] += 0.03
        else:
            with a.admit(["m"], 1):  # a cache hit
                now[0] += 0.001
    assert a.calibration.value == pytest.approx(3.0, rel=0.05)


def test_calibration_scales_stage_costs_to_the_measured_drain_rate():
    """Stage costs miss HTTP parsing, hashing and contention: busy wall time per second of estimated
    work completed corrects them."""
    now = [0.0]
    a = Admission(queue_budget_s=5.0, max_pending=100, window_s=2.0, clock=lambda: now[0])
    a.observe_batch("m", 0.5, 1)  # 0.5 s per video on the backend
    for _ in range(2):  # two videos of 0.5 s of estimated work took 3 s of busy time: 3x
        with a.admit(["m"], 1) as ticket, ticket.working():
            now[0] += 1.5
    assert a.calibration.value == pytest.approx(3.0)
    with a.admit(["m"], 3):  # 1.5 s of stage work, 4.5 s once calibrated
        assert a.estimated_wait_s() == pytest.approx(4.5)
        with a.admit(["m"], 1):
            with pytest.raises(Overloaded) as refused:  # 6 s > 5 s
                with a.admit(["m"], 1):
                    pass
            assert refused.value.retry_after_s == 3  # ceil(6 + 1.5 - 5)


def test_an_unmeasured_model_is_priced_at_the_prior_until_its_first_batch():
    """Work of a model never measured used to cost 0 s: a cold gateway admitted any burst. It is
    priced at ``unmeasured_s`` until the first batch, then at the measured cost."""
    a = Admission(queue_budget_s=2.0, max_pending=1000, concurrency=2, unmeasured_s=0.5)
    assert a.work_seconds({"m": 4}, 4) == pytest.approx(1.0)  # 4 x 0.5 s over 2 batches at once
    with a.admit(["m"], 4), a.admit(["m"], 4):  # 2 s queued: not over the budget
        with pytest.raises(Overloaded):
            with a.admit(["m"], 4), a.admit(["m"], 1):
                pass
        a.observe_batch("m", 0.1, 1)  # measured: 0.05 s per video
        assert a.estimated_wait_s() == pytest.approx(0.4)
        with a.admit(["m"], 20):
            pass


def test_max_pending_is_still_a_hard_cap():
    a = Admission(queue_budget_s=100.0, max_pending=10)
    with pytest.raises(TooLarge):
        with a.admit(["x", "y"], 6):
            pass
    with a.admit(["x"], 8):
        with pytest.raises(Overloaded):
            with a.admit(["x"], 3):
                pass
        with a.admit(["x"], 2):
            with pytest.raises(Overloaded):
                a.check_open()


# --- through HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_gateway():
    settings = test_settings(
        models=["slow"], default_model="slow", queue_budget_s=1.0, max_batch_size=1, max_wait_ms=0.0
    )
    running = start_server(create_app(settings, models=builtin_models() | {"slow": SLOW}))
    yield running
    running.stop()


def _body(n: int) -> dict:
    refs = [{"frames": base64.b64encode(videos.npy_bytes(videos.unique_clip())).decode(), "fps": 8} for _ in range(n)]
    return {"items": [{"video": r} for r in refs], "cache": "bypass"}


async def test_a_burst_past_the_budget_is_shed_early_with_retry_after_from_the_backlog(slow_gateway):
    async with httpx.AsyncClient(base_url=slow_gateway.url, timeout=60) as client:
        assert (await client.post("/v1/score", json=_body(1))).status_code == 200  # measures the model's cost

        # 12 videos at 0.25 s = 3 s of work, admitted by an idle server however long it is
        big = asyncio.create_task(client.post("/v1/score", json=_body(12)))
        await asyncio.sleep(0.5)
        refused = await client.post("/v1/score", json=_body(1))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        # about 2.5 s of work left, budget 1 s: Retry-After = ceil(2.5 + 0.25 - 1) = 2, give or take a batch
        assert 2 <= int(refused.headers["retry-after"]) <= 3, refused.headers
        # refused before the body is read: even a body that is not JSON gets the 429
        garbage = await client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
        assert garbage.status_code == 429
        assert (await big).status_code == 200

        # a burst of 20 one-video requests: about budget / cost of them get in, the rest are refused at once
        burst = await asyncio.gather(*(client.post("/v1/score", json=_body(1)) for _ in range(20)))
    statuses = [r.status_code for r in burst]
    assert set(statuses) <= {200, 429}, statuses
    assert 2 <= statuses.count(200) <= 10, statuses  # ~ 1 s / 0.25 s + the one being served
    for r in burst:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1


async def test_a_cold_gateway_refuses_a_burst_past_the_budget_rather_than_timing_it_out():
    """A fresh gateway has measured nothing; it used to price all work at 0 s, admit the whole
    burst (10 s of work against a 2 s budget) and answer its tail 504 after the request timeout,
    the work wasted. The default prior admits about a budget's worth and refuses the rest 429."""
    settings = test_settings(
        models=["slow"], default_model="slow", queue_budget_s=2.0, request_timeout_s=8.0, max_batch_size=1,
        max_wait_ms=0.0,
    )  # fmt: skip
    running = start_server(create_app(settings, models=builtin_models() | {"slow": SLOW}))
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
            burst = await asyncio.gather(*(client.post("/v1/score", json=_body(4)) for _ in range(10)))
    finally:
        running.stop()
    statuses = [r.status_code for r in burst]
    assert set(statuses) <= {200, 429}, statuses  # no 504: nothing admitted that could not finish
    assert 1 <= statuses.count(200) <= 5, statuses  # ~ 2 s budget / 1 s per request + the first
    for r in burst:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
