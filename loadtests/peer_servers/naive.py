"""Peer (a): the way trainers score today, behind a plain FastAPI route.

One video at a time: each request's videos are decoded and scored one after another, one
forward per video (batch of 1), in the request's own thread (a sync route, so FastAPI runs
it in its thread pool; concurrent requests run side by side with no batching and no queue).

Run: ``python -m loadtests.peer_servers.naive --port PORT``.
"""

from __future__ import annotations

import argparse

import numpy as np
import uvicorn
from fastapi import Body, FastAPI

from loadtests.peer_servers import common


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/score")
    @app.post("/v1/rank")
    def score(body: dict = Body(...)) -> dict:
        scores = [common.score_clips([common.prepare(video)], max_batch=1)[0] for video in common.sources(body)]
        return common.answer(body, np.stack(scores))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    common.set_threads()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
