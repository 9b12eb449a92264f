"""Workloads shaped like the service's users (DESIGN.md §1), as pre-encoded JSON payloads.

Videos are the synthetic scenes of ``tests.videos`` in the rollout shapes public trainers use
(T x H x W): 33x240x416, 53x480x480, 53x400x640, 49x512x512. Each workload is a small pool of
request bodies sent in turn. Rollouts are new videos every step, so every workload except
``cache-hit`` asks the gateway for ``cache: "bypass"``: a small pool then costs what new
videos cost. Servers other than the gateway ignore the ``cache`` field.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from loadtests.loadgen.core import Payload
from tests import videos

FPS = 16
SHAPES = {"wan": (33, 240, 416), "hunyuan": (53, 480, 480), "skyreels": (53, 400, 640), "pref": (49, 512, 512)}


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    payloads: list[Payload]

    @property
    def videos_per_request(self) -> float:
        return sum(p.videos for p in self.payloads) / len(self.payloads)


def _scene(shape: tuple[int, int, int], variant: int) -> np.ndarray:
    """A distinct clip per variant: different speed, and every third one blurred or darkened."""
    frames = videos.moving_scene(*shape, speed=1.0 + 0.5 * variant)
    if variant % 3 == 1:
        return videos.blur(frames, radius=2)
    if variant % 3 == 2:
        return videos.exposure(frames, 0.6)
    return frames


def _ref(frames: np.ndarray, form: str) -> dict:
    """The wire form of one video: base64 mp4 (``data``) or base64 .npy raw frames (``frames``)."""
    if form == "mp4":
        return {"data": base64.b64encode(videos.encode(frames, "mp4", fps=FPS)).decode()}
    return {"frames": base64.b64encode(videos.npy_bytes(frames)).decode(), "fps": FPS}


def _json(path: str, body: dict, n_videos: int) -> Payload:
    return Payload(path=path, body=json.dumps(body).encode(), videos=n_videos)


def grpo(form: str = "mp4", groups: int = 2, size: int = 8) -> Workload:
    """GRPO steps: ``/v1/rank`` of ``size`` rollouts of 53x480x480 (HunyuanVideo / DanceGRPO) with one prompt."""
    payloads = []
    for g in range(groups):
        refs = [_ref(_scene(SHAPES["hunyuan"], g * size + v), form) for v in range(size)]
        body = {"videos": refs, "prompt": f"rollout group {g}", "cache": "bypass"}
        payloads.append(_json("/v1/rank", body, size))
    return Workload(f"grpo-{form}", f"/v1/rank, groups of {size} rollouts 53x480x480 as {form}, cache bypass", payloads)


def best_of_n(ns: tuple[int, ...] = (4, 8, 16)) -> Workload:
    """Best-of-N reranking: ``/v1/rank`` of N candidates (33x240x416 mp4) with ``top_k: 1``."""
    payloads = []
    for n in ns:
        refs = [_ref(_scene(SHAPES["wan"], v), "mp4") for v in range(n)]
        payloads.append(_json("/v1/rank", {"videos": refs, "prompt": "a candidate", "top_k": 1, "cache": "bypass"}, n))
    return Workload(
        "best-of-n", f"/v1/rank, N in {list(ns)} candidates 33x240x416 mp4, top_k 1, cache bypass", payloads
    )


def pointwise_mixed() -> Workload:
    """Evaluation-style ``/v1/score`` of one video: the four design shapes, each as mp4 and as raw frames."""
    payloads = []
    for i, shape in enumerate(SHAPES.values()):
        frames = _scene(shape, i)
        for form in ("mp4", "frames"):
            payloads.append(_json("/v1/score", {"items": [{"video": _ref(frames, form)}], "cache": "bypass"}, 1))
    return Workload(
        "pointwise-mixed", "/v1/score, one video: 4 design shapes x (mp4, raw frames), cache bypass", payloads
    )


def cache_hit(pool: int = 4) -> Workload:
    """Repeated candidates: ``/v1/score`` over a pool of ``pool`` 33x240x416 mp4 clips with the cache on."""
    payloads = [
        _json("/v1/score", {"items": [{"video": _ref(_scene(SHAPES["wan"], v), "mp4")}], "cache": "use"}, 1)
        for v in range(pool)
    ]
    return Workload("cache-hit", f"/v1/score over a pool of {pool} repeated 33x240x416 mp4 clips, cache use", payloads)


def with_cache(workload: Workload, mode: str) -> Workload:
    """The same bodies with another ``cache`` mode (e.g. the gateway's cache-hit row of a peer run)."""
    payloads = []
    for p in workload.payloads:
        body = json.loads(p.body) | {"cache": mode}
        payloads.append(Payload(p.path, json.dumps(body).encode(), p.content_type, p.videos))
    return Workload(f"{workload.name}+cache-{mode}", f"{workload.description} (cache {mode})", payloads)


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "grpo-mp4": lambda: grpo("mp4"),
    "grpo-frames": lambda: grpo("frames", groups=1),
    "best-of-n": best_of_n,
    "pointwise-mixed": pointwise_mixed,
    "cache-hit": cache_hit,
}
