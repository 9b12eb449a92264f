"""The tensorrt variant end to end, as far as this workplace allows: the repository that
``vrs triton --variant tensorrt`` writes, served by a real Triton, behind a gateway with
``VRS_COMPILE=tensorrt``, scores as the eager in-process gateway.

The commands run as documented (README "Compiled models"): ``vrs compile export`` writes the ONNX
parts, ``vrs triton --variant tensorrt --write-only`` the repository. ``vrs compile engine`` needs
TensorRT, which cannot exist here (tests/test_compile.py checks it then exits 2), so each
``tensorrt_plan`` model is stood in by onnxruntime running the same ONNX under the same Triton
model name, inputs, outputs and batcher (tests/onnx_plan.py). Everything else is real: Triton
validates and schedules the ``clip-segmental`` ensemble, its python pre/post steps run in Triton's
stub, and the gateway sends the plan contract (frames, counts, token ids it tokenised itself).

Tolerance 1e-4: the towers run as the same float32 graph in onnxruntime instead of torch
(tests/test_export.py), every other step is the eager code.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.triton_server import LocalTriton
from tests.conftest import RunningServer, free_port
from tests.onnx_plan import stand_in_plans
from tests.test_triton import checkpoint_videos, counted, gateway_pair, stats

ROOT = Path(__file__).parents[1]
MODELS = ["signal", "clip-segmental"]
STEPS = ["clip-segmental.pre", "clip-segmental.image", "clip-segmental.text", "clip-segmental.post"]
LONG_PROMPT = " ".join(["a slow pan across a crowded market at dusk with lanterns"] * 12)  # past CLIP's 77 positions
PROMPTS = ["a cat surfing a wave at sunset", "a red car in the rain", LONG_PROMPT]


def vrs(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"vrs {' '.join(args)}:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def triton(tiny_dirs, tmp_path_factory) -> Iterator[LocalTriton]:
    work = tmp_path_factory.mktemp("tensorrt")
    clip_dir = f"clip-segmental={tiny_dirs['clip']}"
    vrs("compile", "export", "--out", str(work / "onnx"), "--models", *MODELS, "--model-dir", clip_dir)
    vrs("triton", "--variant", "tensorrt", "--write-only", "--repo", str(work / "repo"), "--models", *MODELS,
        "--model-dir", clip_dir, "--max-queue-delay-us", "20000")  # fmt: skip
    assert stand_in_plans(work / "repo", work / "onnx") == ["clip-segmental.image", "clip-segmental.text", "signal"]
    server = LocalTriton(work / "repo", free_port(), free_port(), free_port()).start(timeout_s=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateways(triton: LocalTriton, tiny_dirs) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Eager in-process, and Triton with VRS_COMPILE=tensorrt, over the same settings; a batch closes at 3."""
    with gateway_pair(
        triton.grpc_url, {"compile": "tensorrt"}, models=MODELS, model_dirs={"clip-segmental": tiny_dirs["clip"]},
        max_batch_size=3, max_wait_ms=60_000,
    ) as pair:  # fmt: skip
        yield pair


async def test_tensorrt_variant_through_triton_scores_as_eager(gateways, triton: LocalTriton):
    local, remote = gateways
    items = [
        {"video": {"data": base64.b64encode(v).decode()}, "prompt": p}
        for v, p in zip(checkpoint_videos(), PROMPTS, strict=True)
    ]
    body = {"items": items, "models": MODELS}
    before = {name: stats(triton, name) for name in ["clip-segmental", *STEPS, "signal"]}
    async with httpx.AsyncClient(timeout=300) as client:
        answers = await asyncio.gather(*(client.post(f"{g.url}/v1/score", json=body) for g in (local, remote)))
    for answer in answers:
        assert answer.status_code == 200, answer.text
    eager, compiled = ([r["scores"] for r in a.json()["results"]] for a in answers)
    assert [sorted(s) for s in compiled] == [sorted(s) for s in eager]
    for e, c in zip(eager, compiled, strict=True):
        keys = sorted(e)
        np.testing.assert_allclose([c[k] for k in keys], [e[k] for k in keys], atol=1e-4, rtol=0, err_msg=str(keys))
    assert np.ptp([s["clip-segmental.segmental"] for s in compiled]) > 1e-3  # the videos really score differently

    # Triton's statistics witness the path: two frame sizes -> two requests to the ensemble and to
    # each step and plan under it (and to the signal plan), three videos in all, none failed.
    for name, start in before.items():
        change = counted(triton, start, "inferences", 3, name)
        assert change["inferences"] == 3 and change["requests"] == 2 and change["failed"] == 0, (name, change)
