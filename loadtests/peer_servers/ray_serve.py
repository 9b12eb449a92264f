"""Peer (c): Ray Serve with ``@serve.batch``.

One replica behind Ray Serve's HTTP proxy (a FastAPI ingress with the gateway's two paths).
A request's videos are decoded and sampled on a pool of ``DECODE_WORKERS`` threads (the
gateway's decode pool size), then each video is submitted on its own to a ``@serve.batch``
method (``max_batch_size`` 16, ``batch_wait_timeout_s`` 5 ms, as the gateway's batcher), so
videos of concurrent requests share forwards; the forward runs on one thread off the
replica's event loop. ``max_ongoing_requests`` is raised from its default (5) so batches can fill.

Run: ``python -m loadtests.peer_servers.ray_serve --port PORT`` (starts a local Ray with 2 CPUs).
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class on the ingress methods.
import argparse
import asyncio
import os
import signal as signals
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
from fastapi import FastAPI, Request
from ray import serve

from loadtests.peer_servers import common

REQUEST_TIMEOUT_S = 120.0  # the gateway's default request_timeout_s
app = FastAPI()


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class SignalDeployment:
    def __init__(self) -> None:
        common.set_threads()
        self.decode_pool = ThreadPoolExecutor(max_workers=common.DECODE_WORKERS, thread_name_prefix="decode")
        self.infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/v1/score")
    async def score(self, request: Request) -> dict:
        return await self._handle(await request.json())

    @app.post("/v1/rank")
    async def rank(self, request: Request) -> dict:
        return await self._handle(await request.json())

    async def _handle(self, body: dict) -> dict:
        loop = asyncio.get_running_loop()
        videos = await loop.run_in_executor(self.decode_pool, common.sources, body)
        clips = await asyncio.gather(*(loop.run_in_executor(self.decode_pool, common.prepare, v) for v in videos))
        scores = await asyncio.gather(*(self.batched(clip) for clip in clips))
        return common.answer(body, np.stack(scores))

    @serve.batch(max_batch_size=common.MAX_BATCH, batch_wait_timeout_s=common.MAX_WAIT_S)
    async def batched(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        scores = await asyncio.get_running_loop().run_in_executor(self.infer_pool, common.score_clips, clips)
        return list(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    env = {k: os.environ[k] for k in ("VRS_INFERENCE_THREADS", "OMP_WAIT_POLICY", "PYTHONPATH") if k in os.environ}
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=1024**3,
        runtime_env={"env_vars": env},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port, "request_timeout_s": REQUEST_TIMEOUT_S})
    serve.run(SignalDeployment.bind(), route_prefix="/")
    stop = threading.Event()
    signals.signal(signals.SIGTERM, lambda *_: stop.set())
    signals.signal(signals.SIGINT, lambda *_: stop.set())
    stop.wait()
    ray.shutdown()  # stops the local cluster this process started, Serve included (serve.shutdown() waits 30 s+)


if __name__ == "__main__":
    main()
