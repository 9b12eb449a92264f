"""Score cache: a repeat of the same video, model, preprocessing and prompt costs a lookup.

Two levels. L1 is an LRU in this process, bounded by entries and bytes. L2 is Redis, shared
by every gateway replica, read with one MGET and written with one pipeline per request.
Values are a model's raw per-dimension scores (float32), so weights and normalisation,
applied after the cache, never split an entry. Redis is an optimisation, never a
dependency: every Redis call has a hard timeout, failures open a circuit breaker that
lets one probe through per cooldown, and a failed lookup is a miss, not an error.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import secrets
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry  # the asyncio client wants its own (redis 8 warns on the sync one)
from redis.backoff import NoBackoff
from vrs_wire import npy

from models.spec import ModelSpec
from service.config import Settings
from service.ingest import Digest, EncodedVideo, RawFrames

log = logging.getLogger(__name__)

# Bump when decoding or resizing changes what a model sees for the same spec: old entries then miss.
PREPROCESS_REVISION = 1


def content_digest(video: EncodedVideo | RawFrames | Digest) -> str:
    """The content address a client can compute too (``vrs_wire.npy``): sha256 of the container
    bytes; for raw frames sha256 of their .npy file, with the frame rate (it decides sampling)."""
    if isinstance(video, EncodedVideo):
        if isinstance(video.data, bytes):
            return npy.container_digest(video.data)
        h = hashlib.sha256()  # a spooled upload: hashed in chunks, never whole in memory
        with video.reading() as stream:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    if isinstance(video, RawFrames):
        return _address(npy.frames_digest(video.frames), video.fps)
    return _address(video.sha256, video.fps)


def _address(sha256: str, fps: float | None) -> str:
    return sha256 if fps is None else f"{sha256}@{float(fps)!r}"


@functools.cache  # specs are frozen and few; this runs for every (item, model) of every request
def preprocessing_hash(spec: ModelSpec) -> str:
    """Hash of everything that decides the model's input frames for a given video."""
    text = f"{PREPROCESS_REVISION}\0{spec.sampling.model_dump_json()}\0{spec.resolution.model_dump_json()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(digest: str, spec: ModelSpec, prompt: str | None, variant: str = "-") -> str:
    """``vrs:<model>@<version>:<preprocessing>:<variant>:<prompt>:<content>``. A checkpoint model's
    version carries its files' fingerprint (models/fingerprint.py). ``variant`` says how the gateway
    computes the model (``Engine.variants``: decode path, device, dtype, compiled form). Models that
    take no prompt (``needs_prompt`` false) ignore it, so their key leaves it out and any prompt hits."""
    prompt_part = hashlib.sha256((prompt or "").encode()).hexdigest()[:16] if spec.needs_prompt else "-"
    return f"vrs:{spec.name}@{spec.version}:{preprocessing_hash(spec)}:{variant}:{prompt_part}:{digest}"


def encode_scores(scores: np.ndarray) -> bytes:
    return np.asarray(scores, dtype="<f4").tobytes()


def decode_scores(value: bytes, width: int) -> np.ndarray | None:
    """float32 [width], or None for a value of the wrong size or with a non-finite score (never
    stored by the engine: a corrupt entry), treated as a miss."""
    if len(value) != 4 * width:
        return None
    scores = np.frombuffer(value, dtype="<f4").astype(np.float32)
    return scores if np.isfinite(scores).all() else None


class LRU:
    """In-process cache bounded by entry count and by the bytes it really holds: its key and
    value objects as allocated, plus the container itself (``sys.getsizeof`` of an OrderedDict
    counts its hash table, index and linked-list nodes, which grow in steps and, under eviction
    churn, up to ~200 bytes per entry)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._objects = 0  # bytes of the keys and values held
        self._data: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._objects + sys.getsizeof(self._data)

    def get(self, key: str) -> bytes | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        size = _object_bytes(key, value)
        if size > self.max_bytes or self.max_entries <= 0:
            return
        old = self._data.pop(key, None)
        if old is not None:
            self._objects -= _object_bytes(key, old)
        self._data[key] = value
        self._objects += size
        while self._data and (len(self._data) > self.max_entries or self.nbytes > self.max_bytes):
            evicted_key, evicted = self._data.popitem(last=False)
            self._objects -= _object_bytes(evicted_key, evicted)


def _object_bytes(key: str, value: bytes) -> int:
    """The key and value objects as allocated: headers included, rounded up to the 16-byte size
    classes of CPython's small-object allocator."""
    return _allocated(sys.getsizeof(key)) + _allocated(sys.getsizeof(value))


def _allocated(size: int) -> int:
    return (size + 15) // 16 * 16


class CircuitBreaker:
    """Closed until ``failures`` calls fail in a row; then open for ``cooldown_s``, after which
    one probe call is let through per cooldown until one succeeds."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._clock() - self._opened_at >= self.cooldown_s:
            self._opened_at = self._clock()  # this call is the probe; others wait another cooldown
            return True
        return False

    def success(self) -> None:
        if self._opened_at is not None:
            log.warning("redis cache: reachable again, circuit closed")
        self._failures = 0
        self._opened_at = None

    def failure(self, exc: BaseException) -> None:
        self._failures += 1
        if self._opened_at is None and self._failures >= self.threshold:
            log.warning(
                "redis cache: %d failures in a row (%r); circuit open for %.1f s", self._failures, exc, self.cooldown_s
            )
            self._opened_at = self._clock()
        elif self._opened_at is not None:
            self._opened_at = self._clock()  # the probe failed: stay open another cooldown


class RedisStore:
    """L2: Redis with hard timeouts and a circuit breaker. Methods never raise; a failed read is a miss."""

    def __init__(self, settings: Settings, stats: Counter[str]) -> None:
        self.timeout_s = settings.redis_timeout_s
        self.ttl_s = settings.cache_ttl_s
        self.jitter = settings.cache_ttl_jitter
        self.breaker = CircuitBreaker(settings.redis_breaker_failures, settings.redis_breaker_cooldown_s)
        self.stats = stats
        self._token = secrets.token_hex(8)  # marks this replica's locks
        assert settings.redis_url is not None  # made only when it is set (ScoreCache)
        self._redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._unlock = self._redis.register_script(_UNLOCK_LUA)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, what: str, op):
        """Run one Redis round trip under the timeout and the breaker; None when skipped or failed."""
        if not self.breaker.allow():
            self.stats["redis_skipped"] += 1
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await op()
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            self.stats["redis_errors"] += 1
            log.info("redis cache: %s failed: %r", what, exc)
            self.breaker.failure(exc)
            return None
        self.breaker.success()
        return result

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        values = await self._call("MGET", lambda: self._redis.mget(keys))
        return values if values is not None else [None] * len(keys)

    async def put_many(self, entries: dict[str, bytes]) -> None:
        async def op():
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in entries.items():
                    pipe.set(key, value, px=self._ttl_ms())
                return await pipe.execute()

        await self._call("SET", op)

    def _ttl_ms(self) -> int:
        """TTL with jitter, so entries written together do not all expire together."""
        return max(1, int(self.ttl_s * 1000 * (1 + random.uniform(-self.jitter, self.jitter))))

    async def lock_many(self, keys: list[str], ttl_s: float) -> list[bool]:
        """SET NX PX a short lock per key; True where this replica now holds it. Failures count as
        held (the caller computes itself rather than wait on a Redis that does not answer)."""

        async def op():
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(f"lock:{key}", self._token, nx=True, px=max(1, int(ttl_s * 1000)))
                return await pipe.execute()

        result = await self._call("lock", op)
        return [bool(r) for r in result] if result is not None else [True] * len(keys)

    async def unlock_many(self, keys: list[str]) -> None:
        """Release this replica's locks (only those still holding our token)."""
        if keys:
            await self._call("unlock", lambda: self._unlock(keys=[f"lock:{k}" for k in keys], args=[self._token]))

    async def wait_for(self, keys: list[str], timeout_s: float) -> dict[str, bytes]:
        """Values that other replicas, holding the keys' locks, store within ``timeout_s``.
        Stops waiting for a key when its lock goes without a value (that replica failed)."""
        found: dict[str, bytes] = {}
        pending = list(keys)
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2 * delay, 0.2)
            polled = await self._call("poll", lambda: self._poll(pending))
            if polled is None:
                break  # Redis is failing: do not wait on it
            still = []
            for key, (value, locked) in zip(pending, polled):
                if value is not None:
                    found[key] = value
                elif locked:
                    still.append(key)
            pending = still
        return found

    async def _poll(self, keys: list[str]) -> list[tuple[bytes | None, bool]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.exists(f"lock:{key}")
            replies = await pipe.execute()
        return [(replies[2 * i], bool(replies[2 * i + 1])) for i in range(len(keys))]


_UNLOCK_LUA = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""


class ScoreCache:
    """L1 then L2. ``stats`` counts l1_hits, l2_hits, misses, redis_errors, redis_skipped."""

    def __init__(self, settings: Settings) -> None:
        self.stats: Counter[str] = Counter()
        self.l1 = LRU(settings.cache_l1_entries, settings.cache_l1_bytes)
        self.l2 = RedisStore(settings, self.stats) if settings.redis_url else None
        self.flights = SingleFlight()
        self.lock_s = settings.cache_lock_s

    async def claim(self, keys: list[str], single_flight: bool = True) -> Flight:
        """Claim ``keys`` to compute. With ``single_flight``, keys another call in this process is
        computing are followed rather than claimed, and with Redis a short lock per key (SET NX PX,
        ``cache_lock_s``) leaves keys another replica holds to that replica. Without it (a refresh)
        every key is this call's, and nobody waits on it."""
        keys = list(dict.fromkeys(keys))
        if not single_flight:
            return Flight(self, keys)
        local, led = {}, []
        for key in keys:
            future = self.flights.lead_or_follow(key)
            if future is None:
                led.append(key)
            else:
                local[key] = future
        mine, remote = led, []
        if led and self.l2 is not None and self.lock_s > 0:
            try:
                held = await self.l2.lock_many(led, self.lock_s)
            except BaseException:  # cancelled (its client left): followers must not wait on it forever
                for key in led:
                    self.flights.finish(key, None)
                raise
            mine = [k for k, h in zip(led, held) if h]
            remote = [k for k, h in zip(led, held) if not h]
        return Flight(self, mine, led=led, local=local, remote=remote)

    async def close(self) -> None:
        if self.l2 is not None:
            await self.l2.close()

    @property
    def redis_state(self) -> str:
        """``up``, ``down`` (its circuit breaker is open: lookups skip it) or ``none`` (not configured)."""
        if self.l2 is None:
            return "none"
        return "down" if self.l2.breaker.is_open else "up"

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        """Values found for ``keys``; L2 hits are copied into L1."""
        found: dict[str, bytes] = {}
        for key in keys:
            value = self.l1.get(key)
            if value is not None:
                found[key] = value
        self.stats["l1_hits"] += len(found)
        rest = [k for k in dict.fromkeys(keys) if k not in found]
        if rest and self.l2 is not None:
            for key, value in zip(rest, await self.l2.get_many(rest)):
                if value is not None:
                    found[key] = value
                    self.l1.put(key, value)
                    self.stats["l2_hits"] += 1
        self.stats["misses"] += sum(1 for k in keys if k not in found)
        return found

    async def put_many(self, entries: dict[str, bytes]) -> None:
        for key, value in entries.items():
            self.l1.put(key, value)
        if entries and self.l2 is not None:
            await self.l2.put_many(entries)


class Flight:
    """One call's claim on the keys it must compute (``ScoreCache.claim``).

    ``mine``: compute these, then ``publish`` them. The rest are led elsewhere, by another call in
    this process or (with Redis) another replica; ``others`` waits for their values. A key missing
    from ``others``' answer had a leader that failed or was slow: compute and publish it too.
    ``release`` (always, in a ``finally``) hands this call's followers what it has (None for what it
    has not: they compute themselves) and drops its Redis locks.
    """

    def __init__(
        self,
        cache: ScoreCache,
        mine: list[str],
        *,
        led: Sequence[str] = (),
        local: dict[str, asyncio.Future[bytes | None]] | None = None,
        remote: Sequence[str] = (),
    ) -> None:
        self.mine = mine
        self._cache = cache
        self._led = list(led)  # keys this call leads in this process: mine, and those another replica holds
        self._local = local or {}
        self._remote = list(remote)
        self._values: dict[str, bytes] = {}

    async def others(self) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        if self._remote and self._cache.l2 is not None:
            found |= await self._cache.l2.wait_for(self._remote, self._cache.lock_s)
            self._values |= found
        for key, future in self._local.items():
            value = await asyncio.shield(future)  # our own timeout must not cancel the leader's future
            if value is not None:
                found[key] = value
        return found

    async def publish(self, values: dict[str, bytes]) -> None:
        """Store computed values (L1 and L2); this process's followers get theirs at ``release``."""
        self._values |= values
        await self._cache.put_many(values)
        for key in values:
            if key in self._led:
                self._cache.flights.finish(key, values[key])

    async def release(self) -> None:
        for key in self._led:
            self._cache.flights.finish(key, self._values.get(key))
        locked = [k for k in self.mine if k in self._led]
        if locked and self._cache.l2 is not None and self._cache.lock_s > 0:
            await self._cache.l2.unlock_many(locked)


class SingleFlight:
    """Identical work in progress in this process: the first caller leads, later ones wait for
    its result. A leader that fails resolves with None, and its followers compute themselves."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[bytes | None]] = {}

    def lead_or_follow(self, key: str) -> asyncio.Future[bytes | None] | None:
        """None: the caller leads and must ``finish`` the key. Else the leader's future."""
        future = self._futures.get(key)
        if future is not None:
            return future
        self._futures[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str, value: bytes | None) -> None:
        future = self._futures.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)
