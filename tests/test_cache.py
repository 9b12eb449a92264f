"""The score cache through real gateways (uvicorn) and a real redis-server the tests start.

Inference and decoding are counted by the engine's own counters (``engine.stats``), so
"a hit does no work" is checked on the real code path, not on a stand-in.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from vrs_client.videos import video_ref

from models import fingerprint, signal
from models.registry import builtin_models
from models.registry import load_spec as read_spec
from models.spec import FrameSampling, Resolution
from service.api import create_app
from service.cache import LRU, CircuitBreaker, ScoreCache, cache_key, content_digest, encode_scores
from service.compose import build_engine
from service.ingest import EncodedVideo, RawFrames
from tests import tiny_checkpoints, videos
from tests.conftest import PROMPT_PROBE, RunningServer, start_server, test_settings
from tests.redis_server import RedisServer
from tests.test_api import expected_scores
from tests.videos import unique_clip

ROOT = Path(__file__).resolve().parents[1]


def body(frames: np.ndarray, prompt: str | None = None, **extra) -> dict:
    return {"items": [{"video": video_ref(frames, fps=16), "prompt": prompt}], **extra}


def score(server: RunningServer, frames: np.ndarray, prompt: str | None = None, **extra) -> dict:
    response = httpx.post(f"{server.url}/v1/score", json=body(frames, prompt, **extra), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def stats(server: RunningServer) -> Counter:
    return Counter(server.app.state.engine.stats)


def delta(server: RunningServer, before: Counter) -> dict:
    now = stats(server)
    return {k: now[k] - before[k] for k in ("videos_decoded", "inferences")}


def gateway_with(**overrides) -> RunningServer:
    models = builtin_models() | {"prompt-probe": PROMPT_PROBE}
    return start_server(create_app(test_settings(models=["signal", "prompt-probe"], **overrides), models=models))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def replicas(redis_server: RedisServer) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two gateway app instances sharing one Redis."""
    a, b = gateway_with(redis_url=redis_server.url), gateway_with(redis_url=redis_server.url)
    yield a, b
    a.stop()
    b.stop()


# --- keys -------------------------------------------------------------------------------------


def test_key_changes_with_content_model_version_preprocessing_and_prompt():
    clip = unique_clip()
    digest = content_digest(RawFrames(clip, 16.0))
    spec, probe = signal.SPEC, PROMPT_PROBE.spec
    base = cache_key(digest, spec, None)
    assert cache_key(digest, spec, None) == base  # deterministic
    assert cache_key(digest, spec.model_copy(update={"version": "1.0.1"}), None) != base
    other_sampling = FrameSampling(mode="count", count=32, max_frames=32)
    assert cache_key(digest, spec.model_copy(update={"sampling": other_sampling}), None) != base
    other_size = Resolution(max_pixels=128 * 128, size_factor=16)
    assert cache_key(digest, spec.model_copy(update={"resolution": other_size}), None) != base
    assert cache_key(content_digest(RawFrames(clip, 24.0)), spec, None) != base  # fps decides fps-mode sampling
    assert cache_key(content_digest(RawFrames(unique_clip(), 16.0)), spec, None) != base
    assert content_digest(EncodedVideo(b"abc")) != content_digest(EncodedVideo(b"abd"))
    # The prompt is part of the key for models that read it, and only for those.
    assert cache_key(digest, probe, "a cat") != cache_key(digest, probe, "a dog")
    assert cache_key(digest, spec, "a cat") == cache_key(digest, spec, "a dog") == base
    assert cache_key(digest, spec, None, "nvdec.cuda.bfloat16.none") != cache_key(
        digest, spec, None, "cpu.cpu.float32.none"
    )


def test_a_checkpoints_version_changes_with_its_files(tmp_path: Path, tiny_dirs, monkeypatch):
    """Two checkpoints under one directory name, or one replaced in place, must not share cache
    entries on a shared Redis (found by a probe: a second gateway served the first's scores as
    cached). Copies that keep the files and their times do share them."""
    original = tiny_dirs["clip"]
    a = shutil.copytree(original, tmp_path / "a" / "clip")  # copy2: contents and modification times
    b = shutil.copytree(original, tmp_path / "b" / "clip")
    version = read_spec("clip-segmental", a).spec.version
    assert version.startswith("clip+") and read_spec("clip-segmental", b).spec.version == version
    other = tiny_checkpoints.clip(tmp_path / "c" / "clip", seed=7)  # other weights, same name
    assert read_spec("clip-segmental", other).spec.version != version
    (b / "segmental_reward.json").write_text('{"lambda": 0.5}')  # the reward's own configuration
    assert read_spec("clip-segmental", b).spec.version != version
    (a / ".cache").mkdir()  # a download tool's own files are not the checkpoint's
    (a / ".cache" / "clip.lock").write_text("1")
    assert read_spec("clip-segmental", a).spec.version == version
    # Large files count by size and modification time (hashing gigabytes would stall start-up).
    monkeypatch.setattr(fingerprint, "CONTENT_BYTES", 0)
    weights = next(a.glob("*.safetensors"))
    before = fingerprint.fingerprint(a)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))  # rewritten in place
    assert fingerprint.fingerprint(a) != before


def test_gateways_that_compute_a_model_differently_never_share_cache_keys(tiny_dirs):
    """Dtype (bf16 moved a probe's clip-segmental score by 20%), compiled form and backend are in
    the key's variant; the same configuration gives the same keys in every replica."""

    def variant(**overrides) -> str:
        settings = test_settings(
            models=["clip-segmental"], model_dirs={"clip-segmental": tiny_dirs["clip"]}, device="cpu", **overrides
        )
        return build_engine(settings).variants["clip-segmental"]

    base = variant()
    assert base == "cpu.cpu.float32.none" == variant()
    variants = [variant(dtype="bfloat16"), variant(compile="inductor"), variant(backend="triton")]
    assert len({base, *variants}) == 4, variants


# --- L1 alone (the embedded default) ----------------------------------------------------------


def test_miss_then_hit_skips_decoding_and_inference(gateway):
    clip = unique_clip()
    before = stats(gateway)
    first = score(gateway, clip)
    assert first["cached"] is False
    assert delta(gateway, before) == {"videos_decoded": 1, "inferences": 1}
    assert first["scores"] == pytest.approx(expected_scores(clip), abs=1e-5)

    before = stats(gateway)
    second = score(gateway, clip)
    assert second["cached"] is True
    assert second["scores"] == first["scores"]  # float32 round trip through the cache is exact
    assert delta(gateway, before) == {"videos_decoded": 0, "inferences": 0}


def test_uploaded_container_hits_too(gateway):
    data = videos.encode(unique_clip(17, 96, 96))
    first = httpx.post(f"{gateway.url}/v1/score", files={"video": data}, timeout=60).json()["results"][0]
    before = stats(gateway)
    again = httpx.post(f"{gateway.url}/v1/score", files={"video": data}, timeout=60).json()["results"][0]
    assert (first["cached"], again["cached"]) == (False, True) and again["scores"] == first["scores"]
    assert delta(gateway, before) == {"videos_decoded": 0, "inferences": 0}


def test_weights_do_not_split_entries_but_prompts_do(gateway):
    clip = unique_clip()
    plain = score(gateway, clip, weights={"signal.sharpness": 1.0})
    reweighted = score(gateway, clip, weights={"signal.exposure": 3.0, "signal.contrast": 1.0})
    assert reweighted["cached"] is True
    assert reweighted["overall"] == pytest.approx(
        3 * plain["scores"]["signal.exposure"] + plain["scores"]["signal.contrast"]
    )

    # prompt-probe reads the prompt: a new prompt is a miss; signal ignores it: still a hit.
    assert score(gateway, clip, "a cat", models=["prompt-probe"])["cached"] is False
    assert score(gateway, clip, "a dog", models=["prompt-probe"])["cached"] is False
    assert score(gateway, clip, "a dog", models=["prompt-probe"])["cached"] is True
    assert score(gateway, clip, "a dog", models=["signal"])["cached"] is True


def test_two_models_decode_the_video_once(gateway):
    data = videos.encode(unique_clip(17, 96, 96))
    before = stats(gateway)
    form = {"model": ["signal", "prompt-probe"], "prompt": "a ball"}
    response = httpx.post(f"{gateway.url}/v1/score", data=form, files={"video": data}, timeout=60)
    assert response.status_code == 200, response.text
    assert delta(gateway, before) == {"videos_decoded": 1, "inferences": 2}


def test_refresh_recomputes_and_bypass_neither_reads_nor_writes(gateway):
    clip = unique_clip()
    first = score(gateway, clip)
    before = stats(gateway)
    refreshed = score(gateway, clip, cache="refresh")
    assert refreshed["cached"] is False and refreshed["scores"] == first["scores"]
    assert delta(gateway, before) == {"videos_decoded": 1, "inferences": 1}
    assert score(gateway, clip)["cached"] is True

    fresh = unique_clip()
    assert score(gateway, fresh, cache="bypass")["cached"] is False
    assert score(gateway, fresh, cache="bypass")["cached"] is False  # bypass did not read...
    before = stats(gateway)
    assert score(gateway, fresh)["cached"] is False  # ...nor write
    assert delta(gateway, before)["inferences"] == 1


async def test_concurrent_identical_requests_run_one_inference(gateway):
    clip = unique_clip()
    payload = body(clip)
    before = stats(gateway)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/score", json=payload) for _ in range(12)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    scores = [r.json()["results"][0]["scores"] for r in responses]
    assert all(s == scores[0] for s in scores)
    assert delta(gateway, before) == {"videos_decoded": 1, "inferences": 1}


def test_l1_stays_within_its_entry_and_byte_bounds():
    lru = LRU(max_entries=3, max_bytes=10**6)
    for k in "abcd":
        lru.put(k, b"x" * 24)
    assert len(lru) == 3 and lru.get("a") is None  # the oldest went first
    lru.get("b")  # b is now the most recently used
    lru.put("e", b"x" * 24)
    assert lru.get("b") is not None and lru.get("c") is None

    counting = LRU(max_entries=10, max_bytes=10**6)
    for i in range(4):
        counting.put(f"k{i}", b"x" * 24)
    by_bytes = LRU(max_entries=1000, max_bytes=counting.nbytes)  # room for exactly these four entries
    for i in range(10):
        by_bytes.put(f"k{i}", b"x" * 24)
        assert by_bytes.nbytes <= by_bytes.max_bytes
    held = len(by_bytes)
    assert 3 <= held <= 4  # 3 when the table grew a step as the fifth went in (it does not shrink)
    by_bytes.put("huge", b"x" * counting.nbytes)  # larger than the whole cache: not stored, nothing evicted
    assert by_bytes.get("huge") is None and len(by_bytes) == held


def _fill(lru: LRU, n: int, check=None) -> None:
    """Put ``n`` entries shaped like the gateway's: a real cache key and a model's encoded scores."""
    width = len(signal.SPEC.dimensions)
    for i in range(n):
        key = cache_key(hashlib.sha256(str(i).encode()).hexdigest(), signal.SPEC, None)
        lru.put(key, encode_scores(np.full(width, i, np.float32)))
        if check is not None and i % 2000 == 1999:
            check()


def test_l1_byte_bound_is_a_real_memory_bound():
    """Filled far past its bound, the L1 holds (as tracemalloc counts every allocation) no more
    than its byte bound, and not much less: the per-entry count is what is really held."""
    bound = 2 * 1024**2
    lru = LRU(max_entries=10**9, max_bytes=bound)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = []
        _fill(lru, 30_000, lambda: held.append(tracemalloc.get_traced_memory()[0] - before))
    finally:
        tracemalloc.stop()
    assert lru.nbytes <= bound
    assert len(lru) < 30_000  # it did evict
    assert max(held) <= bound, f"held {max(held)} bytes with a bound of {bound}"
    assert held[-1] >= 0.6 * bound, f"held only {held[-1]} of {bound} bytes: the count overstates entries"


def test_l1_byte_bound_bounds_rss():
    """The same in a fresh process, by RSS: 64 MiB of bound grows RSS by at most ~64 MiB."""
    code = (
        "import os, sys\n"
        "from tests.test_cache import _fill, rss_bytes\n"
        "from service.cache import LRU\n"
        "before = rss_bytes()\n"
        "lru = LRU(max_entries=10**9, max_bytes=64 * 1024**2)\n"
        "_fill(lru, 400_000)\n"
        "print(rss_bytes() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    growth = int(out.stdout.split()[-1])
    assert 0.6 * 64 * 1024**2 <= growth <= 1.1 * 64 * 1024**2, f"RSS grew {growth / 1024**2:.1f} MiB"


def rss_bytes() -> int:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024


def test_gateway_l1_respects_its_configured_bounds():
    server = gateway_with(cache_l1_entries=2)
    try:
        for _ in range(4):
            score(server, unique_clip())
        l1 = server.app.state.engine.cache.l1
        assert len(l1) == 2 and l1.nbytes <= l1.max_bytes
    finally:
        server.stop()


def test_circuit_breaker_opens_then_probes_once_per_cooldown():
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown_s=5.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.failure(OSError("down"))
    assert not breaker.is_open
    breaker.failure(OSError("down"))
    assert breaker.is_open and not breaker.allow()
    now[0] = 5.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits
    breaker.failure(OSError("still down"))
    now[0] = 9.0
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open and breaker.allow()


# --- Redis (L2) -------------------------------------------------------------------------------


def test_second_replica_gets_hits_from_redis(replicas, redis_server):
    a, b = replicas
    clip = unique_clip()
    first = score(a, clip)
    before = stats(b)
    shared = score(b, clip)
    assert (first["cached"], shared["cached"]) == (False, True)
    assert shared["scores"] == first["scores"]
    assert delta(b, before) == {"videos_decoded": 0, "inferences": 0}
    keys = redis_server.client().keys("vrs:signal@*")
    assert len(keys) == 1 and 0 < redis_server.client().pttl(keys[0])


async def test_identical_requests_across_replicas_run_one_inference(replicas):
    a, b = replicas
    payload = body(unique_clip(33, 128, 128))
    before_a, before_b = stats(a), stats(b)
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post(f"{server.url}/v1/score", json=payload) for server in (a, b) * 6)
        )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({str(r.json()["results"][0]["scores"]) for r in responses}) == 1
    work = Counter(delta(a, before_a)) + Counter(delta(b, before_b))
    assert work == {"videos_decoded": 1, "inferences": 1}


@pytest.mark.parametrize(
    "corrupt", [b"not six floats", encode_scores(np.full(len(signal.SPEC.dimensions), np.nan, np.float32))]
)
def test_a_corrupt_redis_entry_is_a_miss_and_is_overwritten(replicas, redis_server, corrupt):
    """A value of the wrong size, or with a non-finite score (which the engine never stores), is
    a miss: recomputed and overwritten, not served nor blamed on the model."""
    a, b = replicas
    clip = unique_clip()
    key = cache_key(content_digest(RawFrames(clip, 16.0)), signal.SPEC, None, a.app.state.engine.variants["signal"])
    redis_server.client().set(key, corrupt)
    result = score(a, clip)
    assert result["cached"] is False and result["scores"] == pytest.approx(expected_scores(clip), abs=1e-5)
    assert np.isfinite(np.frombuffer(redis_server.client().get(key), "<f4")).all()
    assert len(redis_server.client().get(key)) == 4 * len(signal.SPEC.dimensions)
    assert score(b, clip)["cached"] is True


def redis_state(server: RunningServer) -> tuple[str, float]:
    """What /readyz (200) and /metrics say of Redis."""
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    gauge = next(
        line for line in httpx.get(f"{server.url}/metrics").text.splitlines() if line.startswith("vrs_cache_redis_up ")
    )
    return ready.json()["cache"]["redis"], float(gauge.split()[1])


def test_slow_redis_is_a_miss_not_an_error(redis_server):
    server = gateway_with(redis_url=redis_server.url, redis_timeout_s=0.2)
    try:
        clip = unique_clip()
        sleeper = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "2"))
        sleeper.start()
        try:
            result = score(server, clip)
        finally:
            sleeper.join()
        assert result["cached"] is False and result["scores"] == pytest.approx(expected_scores(clip), abs=1e-5)
        assert server.app.state.engine.cache.stats["redis_errors"] >= 1
    finally:
        server.stop()


async def test_redis_killed_mid_run_then_back(redis_server):
    """Every request is answered with correct scores while Redis is gone; caching resumes after."""
    server = gateway_with(redis_url=redis_server.url, redis_timeout_s=0.2, redis_breaker_cooldown_s=0.3)
    try:
        clips = [unique_clip() for _ in range(16)]
        expected = [expected_scores(c) for c in clips]
        workload = clips + clips  # misses (some after the kill), then hits
        killed = asyncio.Event()
        done = 0

        async def send(client: httpx.AsyncClient, clip: np.ndarray) -> httpx.Response:
            nonlocal done
            response = await client.post("/v1/score", json=body(clip))
            done += 1
            if done == 4:
                redis_server.kill()
                killed.set()
            return response

        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            limit = asyncio.Semaphore(4)

            async def limited(clip):
                async with limit:
                    return await send(client, clip)

            responses = await asyncio.gather(*(limited(c) for c in workload))
        assert killed.is_set()
        for clip, response in zip(workload, responses):
            assert response.status_code == 200, response.text
            i = next(j for j, c in enumerate(clips) if c is clip)
            assert response.json()["results"][0]["scores"] == pytest.approx(expected[i], abs=1e-5)
        cache_stats = server.app.state.engine.cache.stats
        assert cache_stats["redis_errors"] + cache_stats["redis_skipped"] > 0
        assert redis_state(server) == ("down", 0.0)  # reported, and still ready: Redis is an optimisation

        redis_server.start()  # same port
        await asyncio.sleep(0.4)  # past the breaker's cooldown
        back = unique_clip()
        key = cache_key(
            content_digest(RawFrames(back, 16.0)), signal.SPEC, None, server.app.state.engine.variants["signal"]
        )
        for _ in range(10):  # the first call after the cooldown is the probe that closes the circuit
            await asyncio.to_thread(score, server, back, cache="refresh")
            if redis_server.client().exists(key):
                break
            await asyncio.sleep(0.4)
        assert redis_server.client().exists(key), "caching in Redis did not resume"
        assert redis_state(server) == ("up", 1.0)
        other = gateway_with(redis_url=redis_server.url)
        try:
            assert (await asyncio.to_thread(score, other, back))["cached"] is True
        finally:
            other.stop()
    finally:
        server.stop()


async def test_a_claim_cancelled_while_locking_leaves_no_flight_behind(redis_server: RedisServer):
    """A request cancelled (its client left) while its Redis locks were being taken used to leave its
    keys' single-flight futures unresolved: every later request for those videos in this process
    followed a leader that would never answer, until its own timeout."""
    cache = ScoreCache(test_settings(redis_url=redis_server.url, redis_timeout_s=5.0))
    slow = asyncio.create_task(asyncio.to_thread(redis_server.client().execute_command, "DEBUG", "SLEEP", "1.5"))
    await asyncio.sleep(0.3)  # Redis is asleep
    claim = asyncio.create_task(cache.claim(["k"]))
    await asyncio.sleep(0.3)  # the claim waits on its lock round trip
    claim.cancel()
    await asyncio.gather(claim, return_exceptions=True)
    await slow
    assert cache.flights.lead_or_follow("k") is None  # the next request leads: nobody waits on a dead one
    await cache.close()
