"""Service configuration, read from environment variables prefixed ``VRS_``."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class JudgeUpstream(BaseModel):
    """Where a judge's model runs: an OpenAI-compatible server (``url``) or a local checkpoint (``directory``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server, e.g. http://gpu:8001 (credentials in it, "
        "http://user:password@gpu:8001, are sent as HTTP basic auth and shown nowhere).",
    )
    directory: Path | None = Field(default=None, description="A Qwen2-VL / Qwen2.5-VL checkpoint run in process.")
    model: str | None = Field(default=None, description="Served model name, if not the judge's default.")
    api_key: SecretStr | None = None
    max_concurrency: int = Field(default=8, ge=1, description="Requests in flight to this server at once.")
    max_attempts: int = Field(default=5, ge=1)
    timeout_s: float = Field(default=300.0, gt=0, description="Seconds per try, sending to the last byte read.")
    max_answer_bytes: int = Field(
        default=16 * 1024**2, ge=1, description="Longer answers are refused (upstream_rejected), not read."
    )
    pairwise: bool = Field(
        default=False, description="/v1/compare asks the model with both videos (judges with a pairwise mode)."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Override of the judge's max_tokens.")
    top_logprobs: int | None = Field(
        default=None, ge=0, description="Override of the judge's top_logprobs (at most vLLM's --max-logprobs)."
    )

    @model_validator(mode="after")
    def _one_place(self) -> JudgeUpstream:
        if (self.url is None) == (self.directory is None):
            raise ValueError("a judge upstream needs exactly one of url or directory")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("a judge url is http:// or https:// and names a host")
            if (parts.username is not None or parts.password is not None) and self.api_key is not None:
                raise ValueError("a judge url with credentials and an api_key: give one of them")
        return self

    @property
    def where(self) -> str:
        """The upstream's host[:port] as the URL writes it (never its credentials), or ``in-process``."""
        return urlsplit(self.url).netloc.rpartition("@")[2] if self.url is not None else "in-process"


class Settings(BaseSettings):
    """All knobs of the gateway. ``VRS_MAX_VIDEO_BYTES=1000`` sets ``max_video_bytes``."""

    model_config = SettingsConfigDict(env_prefix="VRS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    models: list[str] = Field(default=["signal"], description="Models loaded at start.")
    default_model: str = "signal"
    api_keys: list[SecretStr] = Field(
        default=[], description='Bearer keys, JSON list (e.g. ["k1", "k2"]); empty = no auth (service/auth.py).'
    )
    shutdown_grace_s: float = Field(
        default=30.0, gt=0, description="On SIGTERM, how long in-flight requests may finish (service/lifecycle.py)."
    )

    # Input limits, checked before anything large is allocated.
    # Request heads (service/head_limits.py): slower or larger gets 408 / 431 and a closed connection.
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's line and headers must arrive within this."
    )
    max_header_bytes: int = Field(
        default=64 * 1024, gt=0, description="A request's line and headers may not exceed this."
    )
    max_request_bytes: int = 512 * 1024**2
    # Bytes of all requests at once (bodies read or processed, videos downloaded for URL items); more gets 429
    max_inflight_body_bytes: int = 1024**3
    body_read_timeout_s: float = 30.0  # grace before a body must arrive at body_min_bytes_per_s; else 408
    body_min_bytes_per_s: float = Field(default=32 * 1024, gt=0)
    max_prompt_chars: int = 8192
    max_video_bytes: int = 200 * 1024**2
    max_items: int = 64
    max_pixels: int = 4096 * 2304  # 4K (DCI-ish) frames and below
    max_duration_s: float = 600.0
    max_total_frames: int = 36_000

    # URL ingest (see service/fetch.py).
    url_timeout_s: float = 20.0
    url_connect_timeout_s: float = 5.0
    url_max_redirects: int = 3
    url_fetches_per_request: int = Field(default=8, ge=1)  # one request's downloads at once
    url_max_connections: int = Field(default=512, ge=1)  # all requests' downloads at once
    url_connections_per_host: int = Field(default=32, ge=1)  # downloads at once from one host
    url_allow_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default=[], description="Networks exempt from the private-address block (for tests and private deployments)."
    )

    # Where models run (models/placement.py): auto = the first CUDA device if torch sees one, else cpu.
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    # Decode path (service/nvdec.py): nvdec decodes on the GPU when the device is CUDA and the policy
    # says so, with the CPU as fallback; cpu always decodes with FFmpeg's software decoders.
    decode: Literal["auto", "cpu", "nvdec"] = "auto"  # auto = nvdec when the device is CUDA, else cpu
    nvdec_min_pixels: int = Field(
        default=640 * 360,
        ge=0,
        description="Smaller frames decode on the CPU (NVDEC's per-stream set-up outweighs them).",
    )

    # Work scheduling.
    decode_workers: int = 2
    decode_ahead: int = Field(
        default=64,
        ge=1,
        description="Videos decoded and not yet scored, over all requests; decoding waits beyond this. Bounds "
        "the memory (host, or GPU with NVDEC) that decoded frames hold in front of a slower model.",
    )
    inference_threads: int = 0  # torch intra-op threads for in-process inference; 0 = torch default
    max_batch_size: int | None = None  # override every model's spec
    max_wait_ms: float | None = None
    max_pending: int = 1024  # (video, model) pairs admitted and not yet scored, over all requests; more gets 429
    queue_budget_s: float = Field(
        default=10.0, gt=0, description="Refuse (429) work that would queue longer than this (service/admission.py)."
    )
    unmeasured_cost_s: float = Field(
        default=0.25,
        ge=0,
        description="Backend seconds per video that admission assumes for a model until its first batch is "
        "measured, so a cold gateway refuses a burst past the queue budget instead of timing it out.",
    )
    request_timeout_s: float = 120.0

    # Score cache (service/cache.py). Without redis_url the cache is in-process only.
    cache_l1_entries: int = 200_000
    cache_l1_bytes: int = 64 * 1024**2
    redis_url: str | None = Field(default=None, description="e.g. redis://127.0.0.1:6379/0; shared by all replicas.")
    cache_ttl_s: float = 7 * 24 * 3600.0
    cache_ttl_jitter: float = Field(default=0.1, ge=0, lt=1, description="TTLs vary by +-this fraction.")
    redis_timeout_s: float = 0.25  # per Redis round trip; a slow Redis is a miss, never a slow request
    redis_breaker_failures: int = 3  # failures in a row that open the circuit
    redis_breaker_cooldown_s: float = 5.0  # how long Redis is skipped before one probe
    cache_lock_s: float = Field(
        default=10.0, ge=0, description="Cross-replica lock on a key while it is computed; 0 = off."
    )

    # Scoring
    weight_presets: dict[str, dict[str, float]] = Field(
        default={
            "signal-spatial": {
                "signal.sharpness": 1.0,
                "signal.exposure": 1.0,
                "signal.contrast": 1.0,
                "signal.colourfulness": 1.0,
            },
            "signal-temporal": {"signal.temporal_stability": 1.0, "signal.motion_smoothness": 1.0},
        },
        description="Named weights over `model.dimension` names, picked with `preset` (JSON object of objects).",
    )

    # Model checkpoints (models/registry.py). A model named in `models` other than the built-in
    # `signal` loads from model_dirs[name]; base_model_dirs maps a checkpoint's base-model id
    # (e.g. VideoReward's "Qwen/Qwen2-VL-2B-Instruct") to a local directory.
    model_dirs: dict[str, Path] = Field(default={}, description='e.g. {"videoalign": "/ckpt/VideoReward"}')
    base_model_dirs: dict[str, Path] = Field(
        default={}, description='e.g. {"Qwen/Qwen2-VL-2B-Instruct": "/ckpt/Qwen2-VL-2B-Instruct"}'
    )

    # Generative judges (service/judge_backend.py; README "Generative judges"): judge name -> where
    # its model runs. Every judge named here is served, next to VRS_MODELS.
    judges: dict[str, JudgeUpstream] = Field(
        default={},
        description='e.g. {"videoscore2": {"url": "http://gpu:8001"}, "yes-no": {"directory": "/ckpt/cosmos"}}',
    )

    # Triton backend (service/backends/triton.py; README "Triton backend").
    backend: Literal["inprocess", "triton"] = "inprocess"
    triton_url: str = "127.0.0.1:8001"  # gRPC host:port
    triton_models: dict[str, str] = Field(default={}, description="Gateway model name -> Triton model name.")
    triton_timeout_s: float = 60.0  # per Triton request; past it the request gets 504
    triton_ready_timeout_s: float = 2.0  # per readiness probe
    triton_max_inflight: int = 4  # gateway batches in flight to Triton per model
    # How frames reach a Triton on this host: in the gRPC message, or through a shared-memory region
    # per in-flight batch (system memory, or CUDA memory when gateway and Triton share a GPU).
    triton_transport: Literal["grpc", "system_shm", "cuda_shm"] = "grpc"

    # Compiled models (models/compile.py; README "Compiled models"): torch.compile (Inductor) of
    # the forwards that run in torch, or TensorRT engines in Triton (the gateway then sends token ids).
    compile: Literal["none", "inductor", "tensorrt"] = "none"
