"""Run model forwards in a Triton Inference Server, over KServe v2 gRPC (``tritonclient.grpc.aio``).

One gateway batch is one Triton request: ``FRAMES`` uint8 [B,T,H,W,3], ``NUM_FRAMES`` int32
[B,1], ``PROMPT`` bytes [B,1] -> ``SCORES`` fp32 [B,K] (the contract of models/triton_repo.py).
Triton's errors become the gateway's: unreachable or model not loaded -> 503, deadline or
queue timeout -> 504, Triton's queue full -> 429. The gRPC channel reconnects by itself (with
a short backoff cap), so the gateway recovers when Triton comes back without a restart.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from service.backends.base import FrameBatch
from service.errors import BackendUnavailable, Overloaded, Timeout

CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # gRPC backs off up to 120 s between reconnect attempts by default; cap it so a restarted
    # Triton is picked up within about a second.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonBackend:
    """Scores batches on a Triton server; ``model_names`` maps gateway model names to Triton's."""

    def __init__(
        self,
        url: str,
        models: list[str],
        *,
        model_names: dict[str, str] | None = None,
        timeout_s: float = 60.0,
        ready_timeout_s: float = 2.0,
        max_inflight: int = 4,
    ) -> None:
        self.url = url
        # Several batches in flight let Triton's dynamic batcher merge them and overlap the
        # gateway's serialisation with Triton's execution.
        self.max_concurrent_batches = max_inflight
        self.device = torch.device("cpu")  # gRPC carries bytes: batches are assembled on the host
        self._models = list(models)
        self._names = dict(model_names or {})
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._client: grpcaio.InferenceServerClient | None = None

    def triton_name(self, model: str) -> str:
        return self._names.get(model, model)

    async def start(self) -> None:
        # The channel connects lazily and belongs to the running event loop, so it is made here.
        self._client = grpcaio.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ready(self) -> tuple[bool, str]:
        """Triton is up and every configured model is loaded and ready."""
        if self._client is None:
            return False, "Triton backend not started"
        try:
            if not await self._client.is_server_ready(client_timeout=self.ready_timeout_s):
                return False, f"Triton at {self.url} is not ready"
            for model in self._models:
                if not await self._client.is_model_ready(self.triton_name(model), client_timeout=self.ready_timeout_s):
                    return False, f"model {self.triton_name(model)!r} is not ready on Triton at {self.url}"
        except InferenceServerException as exc:
            return False, f"Triton at {self.url} is unreachable: {exc.message()}"
        return True, "ok"

    async def infer(self, model: str, batch: FrameBatch) -> np.ndarray:
        if self._client is None:
            raise BackendUnavailable("Triton backend not started")
        name = self.triton_name(model)
        inputs = await asyncio.to_thread(to_inputs, batch)  # copies up to hundreds of MB: off the event loop
        try:
            result = await self._client.infer(name, inputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise to_service_error(exc, name, self.url, self.timeout_s) from exc
        scores = result.as_numpy("SCORES")
        if scores is None:
            raise RuntimeError(f"Triton model {name!r} returned no SCORES output")
        return scores.astype(np.float32, copy=False)


def to_inputs(batch: FrameBatch) -> list[grpcclient.InferInput]:
    """The batch as Triton inputs (batch dimension first): the backend's edge, where tensors become bytes."""
    b = len(batch.frames)
    frames = batch.frames.cpu().numpy()
    counts = batch.num_frames.to(torch.int32).numpy().reshape(b, 1)
    prompts = np.array([p.encode("utf-8") for p in batch.prompts], dtype=np.object_).reshape(b, 1)
    tensors = (("FRAMES", frames, "UINT8"), ("NUM_FRAMES", counts, "INT32"), ("PROMPT", prompts, "BYTES"))
    inputs = []
    for name, array, dtype in tensors:
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def to_service_error(exc: InferenceServerException, model: str, url: str, timeout_s: float) -> Exception:
    """Map a Triton/gRPC error to the status the client should see."""
    status, message = exc.status() or "", exc.message() or ""
    lowered = message.lower()
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return Timeout(f"Triton did not answer within {timeout_s:g} s (model {model!r})")
    if "timeout" in lowered and "expired" in lowered:
        return Timeout(f"request timed out in Triton's queue (model {model!r}): {message}")
    if "exceeds maximum queue size" in lowered:
        return Overloaded(f"Triton's queue for model {model!r} is full; try again shortly", retry_after_s=1.0)
    if status == "StatusCode.UNAVAILABLE":
        return BackendUnavailable(f"Triton at {url} is unavailable (model {model!r}): {message}")
    if status == "StatusCode.NOT_FOUND" or "unknown model" in lowered or "not ready" in lowered:
        return BackendUnavailable(f"model {model!r} is not loaded on Triton at {url}: {message}")
    return RuntimeError(f"Triton error for model {model!r}: {status} {message}")

