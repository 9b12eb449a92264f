"""Run model forwards in this process: a host stage and a device stage, each on its own thread.

A model with ``stages`` (models/registry.py) runs ``pre`` (tokenisation, index tensors: host
work) on one thread and ``core`` (the forward on the device) on another, with two batches in
flight: batch n+1's host work overlaps batch n's device work, so the GPU is not idle between
batches (the pre / core / post split of michaelfeil/infinity's batch handler). ``post`` is the
copy of the scores to host float32, done on the device thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.placement import CPU, Placement
from models.registry import RewardModel
from service.backends.base import FrameBatch
from service.errors import BadInput

if TYPE_CHECKING:
    from models.compile import Compile


class InProcessBackend:
    """The embedded default backend: forwards run under ``torch.inference_mode`` in threads."""

    def __init__(
        self,
        models: dict[str, RewardModel],
        threads: int = 0,
        placement: Placement = CPU,
        compile: Compile = "none",
        max_batch_size: int | None = None,
    ) -> None:
        self._models = models
        self._threads = threads
        self.device = placement.device
        # One device thread: a second forward at once would only fight the first for the device.
        # Staged models take a second batch in flight (its host stage runs meanwhile).
        self.max_concurrent_batches = 2 if any(m.stages for m in models.values()) else 1
        self._compile = compile  # VRS_COMPILE: "inductor" compiles and warms up every batch size at start
        self._max_batch_size = max_batch_size
        self._executor: ThreadPoolExecutor | None = None
        self._host: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._host = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference-pre")
        if self._threads > 0:
            await asyncio.get_running_loop().run_in_executor(self._executor, torch.set_num_threads, self._threads)
        if self._compile != "none":  # compiled and warmed up on the inference thread, which then runs them
            from models.compile import prepare

            self._models = await asyncio.get_running_loop().run_in_executor(
                self._executor, prepare, self._models, self._compile, self.device, self._max_batch_size
            )

    async def close(self) -> None:
        for pool in (self._executor, self._host):
            if pool is not None:
                pool.shutdown(wait=True)
        self._executor = self._host = None

    async def ready(self) -> tuple[bool, str]:
        if self._executor is None:
            return False, "in-process backend not started"
        return True, "ok"

    async def infer(self, model: str, batch: FrameBatch) -> np.ndarray:
        if model not in self._models:
            raise BadInput(f"model {model!r} is not loaded", code="unknown_model")
        if self._executor is None or self._host is None:
            raise RuntimeError("in-process backend not started")
        loop = asyncio.get_running_loop()
        stages = self._models[model].stages
        if stages is None:
            return await loop.run_in_executor(self._executor, _run, self._models[model].forward, batch)
        prepared = await loop.run_in_executor(self._host, _pre, stages.pre, batch)
        return await loop.run_in_executor(self._executor, _core, stages.core, prepared)


def _run(forward, batch: FrameBatch) -> np.ndarray:
    with torch.inference_mode():
        return _post(forward(batch.frames, batch.num_frames, batch.prompts))


def _pre(pre, batch: FrameBatch):
    with torch.inference_mode():
        return pre(batch.frames, batch.num_frames, batch.prompts)


def _core(core, prepared) -> np.ndarray:
    with torch.inference_mode():
        return _post(core(prepared))


def _post(out: torch.Tensor) -> np.ndarray:
    """Scores to host float32 (waits for the device)."""
    return out.detach().float().cpu().numpy()
