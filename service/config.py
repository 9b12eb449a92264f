"""Service configuration, read from environment variables prefixed ``VRS_``."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All knobs of the gateway. ``VRS_MAX_VIDEO_BYTES=1000`` sets ``max_video_bytes``."""

    model_config = SettingsConfigDict(env_prefix="VRS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    models: list[str] = Field(default=["signal"], description="Models loaded at start.")
    default_model: str = "signal"

    # Input limits, checked before anything large is allocated.
    max_request_bytes: int = 512 * 1024**2
    max_video_bytes: int = 200 * 1024**2
    max_items: int = 64
    max_pixels: int = 4096 * 2304  # 4K (DCI-ish) frames and below
    max_duration_s: float = 600.0
    max_total_frames: int = 36_000

    # URL ingest (see service/fetch.py).
    url_timeout_s: float = 20.0
    url_connect_timeout_s: float = 5.0
    url_max_redirects: int = 3
    url_allow_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default=[], description="Networks exempt from the private-address block (for tests and private deployments)."
    )

    # Work scheduling.
    decode_workers: int = 2
    inference_threads: int = 0  # torch intra-op threads for in-process inference; 0 = torch default
    max_batch_size: int | None = None  # override every model's spec
    max_wait_ms: float | None = None
    max_pending: int = 1024  # videos admitted and not yet scored, over all requests; more gets 429
    request_timeout_s: float = 120.0

    # Triton backend (service/backends/triton.py; README "Triton backend").
    backend: Literal["inprocess", "triton"] = "inprocess"
    triton_url: str = "127.0.0.1:8001"  # gRPC host:port
    triton_models: dict[str, str] = Field(default={}, description="Gateway model name -> Triton model name.")
    triton_timeout_s: float = 60.0  # per Triton request; past it the request gets 504
    triton_ready_timeout_s: float = 2.0  # per readiness probe
    triton_max_inflight: int = 4  # gateway batches in flight to Triton per model
