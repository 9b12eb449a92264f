"""VRS_TRITON_TRANSPORT=cuda_shm against a real Triton on a GPU host (skipped without CUDA).

Frames go through a CUDA memory region registered with Triton by IPC handle; scores must equal
those of frames sent in the gRPC message, with the python model on KIND_CPU and on KIND_GPU. Needs a GPU, cuda-python (tritonclient[cuda]) and a
Triton built with GPU support; none exist on the CPU CI machines.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kind", ["cpu", "cuda"], ids=["KIND_CPU", "KIND_GPU"])
async def test_cuda_shared_memory_transport_scores_equal_grpc_bytes(tmp_path: Path, kind: str):
    pytest.importorskip("cuda.bindings.runtime", reason="tritonclient's CUDA shared memory needs cuda-python")
    from models.registry import builtin_models
    from models.triton_repo import TritonOptions, write_python_repo
    from service.api import create_app
    from tests.conftest import start_server, test_settings
    from tests.test_triton import start_triton, workload

    triton = start_triton(write_python_repo(tmp_path / "repo", builtin_models(), TritonOptions(device=kind)))
    gateways = [
        start_server(create_app(test_settings(backend="triton", triton_url=triton.grpc_url, triton_transport=t)))
        for t in ("grpc", "cuda_shm")
    ]
    try:
        body = {"items": workload()}
        async with httpx.AsyncClient(timeout=300) as client:
            plain, shared = await asyncio.gather(*(client.post(f"{g.url}/v1/score", json=body) for g in gateways))
        assert plain.status_code == shared.status_code == 200, (plain.text, shared.text)
        for a, b in zip(plain.json()["results"], shared.json()["results"], strict=True):
            assert b["scores"] == pytest.approx(a["scores"], abs=1e-6)
        assert [r for r in gateways[1].app.state.engine.backend._regions._queue if r.size]  # CUDA regions were used
    finally:
        for g in gateways:
            g.stop()
        triton.stop()
