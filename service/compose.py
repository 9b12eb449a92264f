"""The composition root: settings -> models, judges -> backends -> engine, in one place.

``vrs serve`` (through ``service.api.create_app``), ``vrs score --local`` and the tests all build
their engine here, so a configured checkpoint or backend means the same thing everywhere.
"""

from __future__ import annotations

from models.placement import resolve
from models.registry import RewardModel, builtin_models, load_models
from service.backends.base import Backend
from service.backends.inprocess import InProcessBackend
from service.config import Settings
from service.engine import Engine
from service.judge_backend import JudgeBackend


def build_engine(settings: Settings | None = None, models: dict[str, RewardModel] | None = None) -> Engine:
    """The engine for ``settings`` (default: from ``VRS_*``), serving ``settings.models`` and the
    judges of ``settings.judges`` (a judge named in both is served once, as a judge).

    ``models`` replaces the model catalogue (tests add their own models); by default it is the
    built-ins plus the configured checkpoints, and a bad checkpoint stops start-up here. With the
    Triton backend the weights live in Triton, so only the checkpoints' specs are read.
    """
    settings = settings or Settings()
    placement = resolve(settings.device, settings.dtype)  # the server hands each loader its device and dtype
    if models is None:
        in_process = settings.backend == "inprocess"
        models = builtin_models() | load_models(
            settings.models, settings.model_dirs, settings.base_model_dirs, weights=in_process, placement=placement
        )
    missing = [name for name in settings.models if name not in models and name not in settings.judges]
    if missing:
        raise ValueError(
            f"configured models not available: {missing}; available: {sorted(models)} "
            "(a judge needs its upstream in VRS_JUDGES)"
        )
    loaded = {name: models[name] for name in settings.models if name not in settings.judges}
    judges = JudgeBackend.from_config(settings.judges, placement)  # in-process judges load on ``placement``
    return Engine(settings, loaded, build_backend(settings, loaded), judges)


def build_backend(settings: Settings, models: dict[str, RewardModel]) -> Backend:
    """The configured backend: in-process (default) or a Triton server."""
    if settings.backend == "triton":
        from service.backends.triton import TritonBackend, triton_contracts  # the gRPC client only loads when used

        return TritonBackend(
            settings.triton_url,
            list(models),
            model_names=settings.triton_models,
            timeout_s=settings.triton_timeout_s,
            ready_timeout_s=settings.triton_ready_timeout_s,
            max_inflight=settings.triton_max_inflight,
            contracts=triton_contracts(settings, {n: m.spec for n, m in models.items()}),
            transport=settings.triton_transport,
        )
    if settings.compile == "tensorrt":
        raise ValueError("VRS_COMPILE=tensorrt serves engines from Triton: set VRS_BACKEND=triton")
    return InProcessBackend(
        models,
        settings.inference_threads,
        resolve(settings.device, settings.dtype),
        compile=settings.compile,
        max_batch_size=settings.max_batch_size,
    )
