"""Shared fixtures: a real uvicorn gateway on a free port, and real encoded test videos."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from models import signal
from models.registry import RewardModel, builtin_models
from models.spec import Dimension, Pairwise
from service.api import create_app
from service.config import Settings
from service.head_limits import uvicorn_config
from tests import videos
from tests.tiny_checkpoints import tiny_dirs  # noqa: F401 (session fixture, built once for all modules)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(app, host: str = "127.0.0.1", port: int | None = None, start_timeout_s: float = 20) -> RunningServer:
    """Run an ASGI app under a real uvicorn in a thread, configured as ``vrs serve`` configures it
    (``service.head_limits.uvicorn_config``); return once it accepts requests."""
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://{host}:{port}", app, server, thread)


async def forward(request: Request, gateway_url: str) -> Response:
    """For a proxy in front of a real gateway: send ``request``'s body to the same path there and
    answer what the gateway answered."""
    async with httpx.AsyncClient(timeout=60) as upstream:
        forwarded = await upstream.post(
            f"{gateway_url}{request.url.path}",
            content=await request.body(),
            headers={"content-type": request.headers["content-type"]},
        )
    return Response(forwarded.content, forwarded.status_code, media_type="application/json")


# URL-ingest tests serve videos from 127.0.0.2; the gateway allows exactly that address, so
# 127.0.0.1, 10.x and 169.254.169.254 stay forbidden as in production.
ORIGIN_HOST = "127.0.0.2"


def test_settings(**overrides) -> Settings:
    base = dict(
        url_allow_networks=[f"{ORIGIN_HOST}/32"],
        url_timeout_s=3.0,
        url_connect_timeout_s=1.0,
        max_duration_s=120.0,
        max_wait_ms=20.0,
        queue_budget_s=90.0,  # bursts of real work on a busy CI box are not shed; tests/test_admission.py sets its own
    )
    base.update(overrides)
    return Settings(**base)


test_settings.__test__ = False  # a factory, not a test


def _prompt_probe(frames: torch.Tensor, num_frames: torch.Tensor, prompts) -> torch.Tensor:
    """A real (weight-free) model that needs a prompt: len(prompt) + frames/1000, so tests can
    check each item's prompt and frames reach its own row through batching."""
    lengths = torch.tensor([float(len(p)) for p in prompts])
    return (lengths + num_frames.float() / 1000).view(-1, 1)


PROMPT_PROBE = RewardModel(
    spec=signal.SPEC.model_copy(
        update={"name": "prompt-probe", "needs_prompt": True, "dimensions": (Dimension(name="length"),)}
    ),
    forward=_prompt_probe,
)


@pytest.fixture(scope="session")
def gateway() -> Iterator[RunningServer]:
    models = builtin_models() | {"prompt-probe": PROMPT_PROBE}
    running = start_server(create_app(test_settings(models=["signal", "prompt-probe"]), models=models))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(gateway: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def clean_frames() -> np.ndarray:
    """33 frames 240x416 (Wan2.1-1.3B rollout shape)."""
    return videos.moving_scene(33, 240, 416)


@pytest.fixture(scope="session")
def clean_mp4(clean_frames: np.ndarray) -> bytes:
    return videos.encode(clean_frames, "mp4")


@pytest.fixture(scope="session")
def clean_webm(clean_frames: np.ndarray) -> bytes:
    return videos.encode(clean_frames, "webm")


@pytest.fixture(scope="session")
def origin(clean_mp4: bytes) -> Iterator[str]:
    """An HTTP origin on 127.0.0.2 serving a video and redirects."""

    async def video(request):
        return Response(clean_mp4, media_type="video/mp4")

    async def redirect(request):
        return RedirectResponse(request.query_params["to"], status_code=302)

    app = Starlette(routes=[Route("/clip.mp4", video), Route("/redirect", redirect)])
    running = start_server(app, host=ORIGIN_HOST)
    yield running.url
    running.stop()


# `signal` again, with VideoAlign's pairwise spec (Rao-Kupper, theta 5) and per-dimension
# statistics, so compare/rank/normalise are exercised with both pairwise models on real scores.
SIGNAL_RK = RewardModel(
    spec=signal.SPEC.model_copy(
        update={
            "name": "signal-rk",
            "pairwise": Pairwise(model="rao-kupper", theta=5.0),
            "dimensions": tuple(
                d.model_copy(update={"mean": 0.5, "std": 0.25 + 0.05 * i}) for i, d in enumerate(signal.SPEC.dimensions)
            ),
        }
    ),
    forward=signal.forward,
)


@pytest.fixture(scope="session")
def scoring_gateway() -> Iterator[RunningServer]:
    """A gateway with signal (Bradley-Terry, no statistics), signal-rk and prompt-probe."""
    models = builtin_models() | {"prompt-probe": PROMPT_PROBE, "signal-rk": SIGNAL_RK}
    running = start_server(create_app(test_settings(models=["signal", "signal-rk", "prompt-probe"]), models=models))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def group_frames() -> list[np.ndarray]:
    """Four rollouts of one scene that differ in quality: clean, blurred, flickering, dark (17x120x160)."""
    clean = videos.moving_scene(17, 120, 160)
    return [clean, videos.blur(clean), videos.flicker(clean), videos.exposure(clean, 0.3)]


@pytest.fixture(scope="session")
def group_mp4(group_frames: list[np.ndarray]) -> list[bytes]:
    return [videos.encode(f) for f in group_frames]
