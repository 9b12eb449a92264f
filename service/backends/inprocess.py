"""Run model forwards in this process, on one worker thread so the event loop stays free."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from models.registry import RewardModel
from service.backends.base import FrameBatch
from service.errors import BadInput


class InProcessBackend:
    """The embedded default backend: forwards run under ``torch.inference_mode`` in a thread."""

    max_concurrent_batches = 1  # one inference thread; a second batch would only wait for it

    def __init__(
        self, models: dict[str, RewardModel], threads: int = 0, compile: str = "none", max_batch_size: int | None = None
    ) -> None:
        self._models = models
        self._threads = threads
        self._compile = compile  # VRS_COMPILE: "inductor" compiles and warms up every batch size at start
        self._max_batch_size = max_batch_size
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        # One thread: torch parallelises inside a forward; two forwards at once would fight for cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        if self._threads > 0:
            await asyncio.get_running_loop().run_in_executor(self._executor, torch.set_num_threads, self._threads)
        if self._compile != "none":  # compiled and warmed up on the inference thread, which then runs them
            from models.compile import prepare

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self._models = await asyncio.get_running_loop().run_in_executor(
                self._executor, prepare, self._models, self._compile, device, self._max_batch_size
            )

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def ready(self) -> tuple[bool, str]:
        if self._executor is None:
            return False, "in-process backend not started"
        return True, "ok"

    async def infer(self, model: str, batch: FrameBatch) -> np.ndarray:
        if model not in self._models:
            raise BadInput(f"model {model!r} is not loaded", code="unknown_model")
        if self._executor is None:
            raise RuntimeError("in-process backend not started")
        forward = self._models[model].forward
        return await asyncio.get_running_loop().run_in_executor(self._executor, _run, forward, batch)


def _run(forward, batch: FrameBatch) -> np.ndarray:
    with torch.inference_mode():
        out = forward(torch.from_numpy(batch.frames), torch.from_numpy(batch.num_frames), batch.prompts)
    return out.detach().cpu().numpy().astype(np.float32, copy=False)
