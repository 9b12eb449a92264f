"""What asking a judge over HTTP costs on top of asking it in process.

The same tiny Qwen2-VL judge (built here, random weights) is asked the same UnifiedReward-style
request (16 frames of 240x416 as images, one generated token) three ways, in rounds that
alternate:

- ``payload``: ``chat_payload`` alone (16 JPEG encodes + base64 + JSON body): the client's CPU cost;
- ``in_process``: ``TransformersRunner.generate`` directly;
- ``http``: ``OpenAIChatRunner.generate`` against a real uvicorn server (``tests/openai_upstream``)
  whose handler decodes the JPEGs and calls the same runner.

``http - in_process`` is the transport overhead per request (encode, HTTP, decode, JSON); the
model work is identical (the server's model sees the JPEG-decoded frames). Medians over rounds.

Run: ``.venv/bin/python loadtests/bench_judge_client.py [--rounds 20]``.
Results: ``loadtests/results/bench_judge_client.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.judges import JUDGES  # noqa: E402
from models.judges.runner import build_request  # noqa: E402
from models.judges.transformers_runner import TransformersRunner  # noqa: E402
from service.judge_client import OpenAIChatRunner, chat_payload  # noqa: E402
from tests import videos  # noqa: E402
from tests.conftest import start_server  # noqa: E402
from tests.judge_checkpoints import qwen2vl_judge  # noqa: E402
from tests.openai_upstream import Upstream  # noqa: E402


async def main(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        runner = TransformersRunner.load(qwen2vl_judge(Path(tmp) / "judge"))
    judge = JUDGES["unifiedreward"]
    spec = judge.spec.model_copy(
        update={"upstream_model": "tiny", "generation": judge.spec.generation.model_copy(update={"max_tokens": 1})}
    )
    request = build_request(spec, videos.moving_scene(16, 240, 416), "a cat surfing a wave")
    server = start_server(Upstream(runner=runner, model_name="tiny").app())
    times: dict[str, list[float]] = {"payload": [], "in_process": [], "http": []}
    try:
        async with OpenAIChatRunner(server.url) as remote:
            await remote.generate(request)  # warm up both paths
            await runner.generate(request)
            for _ in range(rounds):
                t = time.perf_counter()
                chat_payload(request)
                times["payload"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await runner.generate(request)
                times["in_process"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await remote.generate(request)
                times["http"].append(time.perf_counter() - t)
    finally:
        server.stop()
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {
        "request": "16 images 240x416, 1 generated token, tiny Qwen2-VL",
        "rounds": rounds,
        "median_ms": {k: round(v, 2) for k, v in median.items()},
        "http_overhead_ms": round(median["http"] - median["in_process"], 2),
        "http_over_in_process": round(median["http"] / median["in_process"], 3),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    result = asyncio.run(main(parser.parse_args().rounds))
    out = ROOT / "loadtests" / "results" / "bench_judge_client.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
