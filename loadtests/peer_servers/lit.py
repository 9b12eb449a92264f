"""Peer (b): LitServe with batching.

LitServe's unit is a request: its API server process parses the JSON and queues it to one
inference worker process, which gathers up to ``max_batch_size`` requests (waiting at most
``batch_timeout``), runs ``decode_request`` on each (base64 / .npy only, cheap), then
``predict`` on the batch. ``predict`` decodes and samples every video of the batch on a pool
of ``DECODE_WORKERS`` threads (the gateway's decode pool size), then scores them all with
``common.score_clips`` (groups of equal frame size, at most 16 videos per forward). The worker
takes the next batch only after ``predict`` returns: decode and inference of consecutive
batches do not overlap, which is LitServe's design, not a choice made here.

Run: ``python -m loadtests.peer_servers.lit --port PORT``.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import litserve as ls

from loadtests.peer_servers import common

REQUEST_TIMEOUT_S = 120.0  # the gateway's default request_timeout_s


class SignalAPI(ls.LitAPI):
    """Decode + sample + ``signal`` forward, batched over requests."""

    def setup(self, device: str) -> None:
        common.set_threads()
        self.pool = ThreadPoolExecutor(max_workers=common.DECODE_WORKERS, thread_name_prefix="decode")

    def decode_request(self, request: dict) -> tuple[dict, list]:
        return request, common.sources(request)

    def batch(self, inputs: list) -> list:
        return inputs

    def predict(self, batch: list[tuple[dict, list]]) -> list[dict]:
        videos = [video for _, sources in batch for video in sources]
        scores = common.score_clips(list(self.pool.map(common.prepare, videos)))
        out, start = [], 0
        for body, sources in batch:
            out.append(common.answer(body, scores[start : start + len(sources)]))
            start += len(sources)
        return out

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--path", default="/predict", help="LitServe serves one path per API; peers.py sends every body there"
    )
    args = parser.parse_args()
    api = SignalAPI(max_batch_size=common.MAX_BATCH, batch_timeout=common.MAX_WAIT_S, api_path=args.path)
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=1, timeout=REQUEST_TIMEOUT_S, healthcheck_path="/healthz"
    )
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
