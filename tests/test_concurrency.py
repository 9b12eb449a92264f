"""Many simultaneous requests: every answer is right and the micro-batcher forms real batches."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest
import torch

from models import signal
from service.decode import Limits, sample_frames
from service.ingest import EncodedVideo, RawFrames
from tests import videos

N_REQUESTS = 40
LIMITS = Limits(10**9, 10**6, 10**6)


def alone(source) -> list[float]:
    """The signal model run on one video by itself, outside the service."""
    clip = sample_frames(source, signal.SPEC, LIMITS).frames.numpy()
    return signal.forward(torch.from_numpy(clip[None]), torch.tensor([len(clip)]))[0].tolist()


@pytest.fixture(scope="module")
def workload() -> list[dict]:
    """40 distinct videos: mp4 uploads and raw frames, two rollout shapes, varied speed and damage."""
    jobs = []
    for i in range(N_REQUESTS):
        shape = (33, 240, 416) if i % 2 else (17, 480, 480)
        frames = videos.moving_scene(*shape, speed=1.0 + i % 5)
        if i % 3 == 0:
            frames = videos.flicker(frames, 0.05 * (i % 4))
        prompt = "p" * (i + 1)
        if i % 4 == 0:
            data = videos.encode(frames)
            jobs.append({"prompt": prompt, "files": {"video": data}, "expected": alone(EncodedVideo(data))})
        else:
            ref = {"frames": base64.b64encode(videos.npy_bytes(frames)).decode(), "fps": 16}
            jobs.append({"prompt": prompt, "json": ref, "expected": alone(RawFrames(frames, 16.0))})
    return jobs


async def send(client: httpx.AsyncClient, job: dict) -> httpx.Response:
    models = ["signal", "prompt-probe"]
    if "files" in job:
        form = {
            "prompt": job["prompt"],
            "model": models,
            "cache": "bypass",
        }  # some videos repeat; batching is under test
        return await client.post("/v1/score", data=form, files=job["files"])
    body = {"models": models, "items": [{"video": job["json"], "prompt": job["prompt"]}], "cache": "bypass"}
    return await client.post("/v1/score", json=body)


async def test_simultaneous_requests_are_batched_and_all_correct(gateway, workload):
    batcher = gateway.app.state.engine.batchers["signal"]
    before = dict(batcher.batch_sizes)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
        responses = await asyncio.gather(*(send(client, job) for job in workload))

    for i, (job, response) in enumerate(zip(workload, responses)):
        assert response.status_code == 200, f"request {i}: {response.text}"
        (result,) = response.json()["results"]
        got = [result["scores"][f"signal.{d}"] for d in signal.SPEC.dimension_names]
        np.testing.assert_allclose(got, job["expected"], atol=1e-5, err_msg=f"request {i}")
        frames = 33 if i % 2 else 17
        assert result["scores"]["prompt-probe.length"] == pytest.approx(i + 1 + frames / 1000), f"request {i}"

    new = {size: n - before.get(size, 0) for size, n in batcher.batch_sizes.items() if n > before.get(size, 0)}
    assert sum(size * n for size, n in new.items()) == N_REQUESTS  # every item went through a batch once
    assert max(new) > 1, f"no batch larger than 1 formed: {new}"
