"""What every peer server shares with the gateway, so that only the serving differs.

- the request body: the gateway's JSON (``{"items": [{"video": ref}]}`` for ``/v1/score``,
  ``{"videos": [ref, ...]}`` for ``/v1/rank``) with refs ``{"data": base64 container}`` or
  ``{"frames": base64 .npy, "fps": ...}``; other fields are ignored;
- preprocessing: ``service.ingest`` (base64, .npy) and ``service.decode.sample_frames`` with the
  ``signal`` spec and the gateway's default limits (decode + sample + resize);
- the model: ``models.signal.forward`` under ``torch.inference_mode``, on batches padded with
  ``FrameBatch.assemble`` and grouped by frame size, at most ``MAX_BATCH`` videos per forward, as the
  gateway's batcher does (``signal.SPEC.batching.max_batch_size``);
- the answer: per-video scores (6 floats) and, for ``/v1/rank``, the ranking by their mean.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import torch

from models import signal
from service import decode, ingest
from service.backends.base import FrameBatch
from service.config import Settings

MAX_BATCH = signal.SPEC.batching.max_batch_size
MAX_WAIT_S = signal.SPEC.batching.max_wait_ms / 1000
DECODE_WORKERS = Settings().decode_workers  # the gateway's default decode pool size

_settings = Settings()
LIMITS = decode.Limits(_settings.max_pixels, _settings.max_duration_s, _settings.max_total_frames)


def set_threads() -> int:
    """Torch intra-op threads from ``VRS_INFERENCE_THREADS`` (set by peers.py for every server alike)."""
    threads = int(os.environ.get("VRS_INFERENCE_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    print(f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    return torch.get_num_threads()


def sources(body: dict) -> list[ingest.EncodedVideo | ingest.RawFrames]:
    """The videos of a score or rank body, base64 decoded (URLs and multipart are not part of the benchmark)."""
    refs = [item["video"] for item in body["items"]] if "items" in body else body["videos"]
    out = []
    for ref in refs:
        if "data" in ref:
            out.append(
                ingest.EncodedVideo(ingest.decode_base64(ref["data"], max_bytes=_settings.max_video_bytes, what="data"))
            )
        else:
            raw = ingest.decode_base64(ref["frames"], max_bytes=_settings.max_video_bytes, what="frames")
            out.append(ingest.parse_npy(raw, float(ref["fps"])))
    return out


def prepare(video: ingest.EncodedVideo | ingest.RawFrames) -> np.ndarray:
    """Decode (if needed), sample and resize for ``signal``: uint8 [T, H, W, 3]. Blocking."""
    return decode.sample_frames(video, signal.SPEC, LIMITS).frames.numpy()


def score_clips(clips: list[np.ndarray], max_batch: int = MAX_BATCH) -> np.ndarray:
    """``signal`` scores float32 [n, 6]: one forward per group of equal frame size, at most ``max_batch`` each. Blocking."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        groups[clip.shape[1:3]].append(i)
    out = np.zeros((len(clips), len(signal.SPEC.dimensions)), dtype=np.float32)
    for members in groups.values():
        for start in range(0, len(members), max_batch):
            chunk = members[start : start + max_batch]
            batch = FrameBatch.assemble([clips[i] for i in chunk], [""] * len(chunk))
            with torch.inference_mode():
                scores = signal.forward(batch.frames, batch.num_frames, batch.prompts)
            out[chunk] = scores.numpy()
    return out


def answer(body: dict, scores: np.ndarray) -> dict:
    """Scores per video; for a group (``videos``), also the ranking by mean score, best first."""
    result: dict = {"scores": scores.tolist()}
    if "videos" in body:
        result["ranking"] = np.argsort(-scores.mean(axis=1), kind="stable").tolist()
    return result
