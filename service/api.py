"""HTTP layer: converts wire types to engine calls and errors to JSON. No scoring logic here."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from typing import BinaryIO, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.registry import RewardModel, builtin_models, load_models
from service import ingest, operations
from service.backends.base import Backend
from service.backends.inprocess import InProcessBackend
from service.body_limits import BodyLimits
from service.config import Settings
from service.engine import Engine, ScoreInput
from service.errors import BadInput, ServiceError, TooLarge, UnsupportedMedia
from service.schemas import (
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    ModelsResponse,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
    VideoRef,
)
from service.telemetry import RequestTelemetry

WireRequest = TypeVar("WireRequest", ScoreRequest, CompareRequest, RankRequest)
_WIRE_REQUESTS = (ScoreRequest, CompareRequest, RankRequest)

log = logging.getLogger(__name__)

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 429, 503, 504)}


def create_app(settings: Settings | None = None, models: dict[str, RewardModel] | None = None) -> FastAPI:
    """Build the gateway app; the engine starts and stops with the app's lifespan."""
    settings = settings or Settings()
    if models is None:  # built-ins plus the configured checkpoints (a bad checkpoint stops start-up here)
        in_process = settings.backend == "inprocess"  # with Triton, the weights live there: read specs only
        models = builtin_models() | load_models(
            settings.models, settings.model_dirs, settings.base_model_dirs, weights=in_process
        )
    available = models
    missing = [name for name in settings.models if name not in available]
    if missing:
        raise ValueError(f"configured models not available: {missing}; available: {sorted(available)}")
    loaded = {name: available[name] for name in settings.models}
    engine = Engine(settings, loaded, _backend(settings, loaded))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="Video reward-model service",
        version="0.1.0",
        description="Scores generated videos with reward models. See README.md.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_request_bytes,
        max_inflight_bytes=settings.max_inflight_body_bytes,
        read_timeout_s=settings.body_read_timeout_s,
        min_rate=settings.body_min_bytes_per_s,
        retry_after_s=engine.admission.estimated_wait_s,
    )
    app.add_middleware(RequestTelemetry, metrics=engine.metrics)  # outermost: sees every answer, 413s included

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if hasattr(exc, "retry_after_s") else None
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing and multipart-parser errors, in the same shape as ours."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail), "item": None}}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(exc.errors())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"error": {"code": "internal", "message": "internal error", "item": None}}, status_code=500)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Models loaded and backend reachable", responses={503: {"model": ErrorResponse}})
    async def readyz():
        ok, reason = await engine.ready()
        if not ok:
            return JSONResponse({"error": {"code": "not_ready", "message": reason, "item": None}}, status_code=503)
        return {"status": "ready", "models": sorted(engine.models)}

    @app.get("/v1/models", response_model=ModelsResponse, summary="Specs of the loaded models")
    async def list_models() -> ModelsResponse:
        return ModelsResponse(models=[m.spec for m in engine.models.values()])

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=_ERRORS,
        summary="Score videos (pointwise)",
        description=(
            "JSON body: a ScoreRequest. Or multipart/form-data: video file parts, plus either a `request` "
            "field holding a ScoreRequest whose videos name parts as `{\"file\": \"<part name>\"}`, or "
            "plain `prompt` / `model` / `weights` / `preset` / `normalise` fields applying to every file part. "
            "Any bad item fails the whole request with an error naming the item (and listing the other bad items)."
        ),
        openapi_extra=_request_body("ScoreRequest"),
    )
    async def score(request: Request) -> ScoreResponse:
        body, inputs = await _read_request(request, settings, ScoreRequest)
        return _labelled(request, await operations.score(engine, body, inputs))

    @app.post(
        "/v1/compare",
        response_model=CompareResponse,
        responses=_ERRORS,
        summary="Compare two videos (pairwise)",
        description=(
            "P(A>B), P(B>A), P(tie) and the winner per dimension (the model's own pairwise model) and for the "
            "weighted overall. JSON body: a CompareRequest; or multipart as for /v1/score (two file parts)."
        ),
        openapi_extra=_request_body("CompareRequest"),
    )
    async def compare(request: Request) -> CompareResponse:
        body, inputs = await _read_request(request, settings, CompareRequest)
        return _labelled(request, await operations.compare(engine, body, inputs))

    @app.post(
        "/v1/rank",
        response_model=RankResponse,
        responses=_ERRORS,
        summary="Rank a group of videos (best-of-N, GRPO)",
        description=(
            "Ranking by overall (ties in input order), scores, and group advantages `(r - mean)/(std + eps)` per "
            "dimension and overall. JSON body: a RankRequest; or multipart as for /v1/score."
        ),
        openapi_extra=_request_body("RankRequest"),
    )
    async def rank(request: Request) -> RankResponse:
        body, inputs = await _read_request(request, settings, RankRequest)
        return _labelled(request, await operations.rank(engine, body, inputs))

    _add_wire_schemas(app)
    return app


def _labelled(request: Request, response):
    """Tell the telemetry middleware which models answered (the ``model`` label of vrs_requests_total)."""
    request.state.models = ",".join(m.name for m in response.models)
    return response


def _backend(settings: Settings, models: dict[str, RewardModel]) -> Backend:
    """The configured backend: in-process (default) or a Triton server."""
    if settings.backend == "triton":
        from service.backends.triton import TritonBackend  # gRPC client only loads when used

        return TritonBackend(
            settings.triton_url,
            list(models),
            model_names=settings.triton_models,
            timeout_s=settings.triton_timeout_s,
            ready_timeout_s=settings.triton_ready_timeout_s,
            max_inflight=settings.triton_max_inflight,
        )
    return InProcessBackend(models, settings.inference_threads)


def _invalid(errors: list[dict]) -> JSONResponse:
    """422 naming the first invalid field and, when it is inside an item, that item's index."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [p for p in first.get("loc", ()) if p != "body"]
    item = loc[1] if len(loc) > 1 and loc[0] in ("items", "videos") and isinstance(loc[1], int) else None
    where = ".".join(str(p) for p in loc) or "body"
    body = {"code": "invalid_request", "message": f"{where}: {first.get('msg', 'invalid')}", "item": item}
    return JSONResponse({"error": body}, status_code=422)


def _request_body(schema: str) -> dict:
    """OpenAPI for a route that reads its body by hand: the JSON schema, or multipart form fields."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "request": {"type": "string", "description": f"{schema} as JSON"},
                            "prompt": {"type": "string"},
                            "model": {"type": "string"},
                            "weights": {"type": "string", "description": "JSON object over model.dimension names"},
                            "preset": {"type": "string"},
                            "normalise": {"type": "boolean"},
                            "cache": {"type": "string", "enum": ["use", "refresh", "bypass"]},
                            "video": {"type": "string", "format": "binary"},
                        },
                    }
                },
            },
        }
    }


async def _read_request(
    request: Request, settings: Settings, kind: type[WireRequest]
) -> tuple[WireRequest, list[ScoreInput]]:
    """Parse a JSON or multipart request of ``kind`` and turn its videos into engine inputs."""
    request.app.state.engine.admission.check_open()  # when saturated, refuse before reading the body
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        body, files = await _read_multipart(request, settings, kind)
    elif content_type.split(";")[0].strip() in ("application/json", ""):
        body, files = await _parse(kind, await request.body()), {}
    else:
        raise UnsupportedMedia(
            f"send application/json or multipart/form-data, not {content_type!r}", code="bad_content_type"
        )
    return body, await run_in_threadpool(_to_inputs, body, files, settings)


async def _parse(kind: type[WireRequest], raw: bytes | str) -> WireRequest:
    try:
        return await run_in_threadpool(kind.model_validate_json, raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def _read_multipart(
    request: Request, settings: Settings, kind: type[WireRequest]
) -> tuple[WireRequest, dict[str, BinaryIO]]:
    """File parts (left spooled on disk, never read whole into memory) plus either a ``request``
    field (the JSON request) or plain fields for every file part."""
    form = await request.form(max_files=settings.max_items, max_fields=64)
    files: dict[str, BinaryIO] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if value.size is not None and value.size > settings.max_video_bytes:
                raise TooLarge(f"file part {name!r} is {value.size} bytes; the limit is {settings.max_video_bytes}")
            if name in files:
                raise BadInput(f"two file parts named {name!r}; give each a distinct name", code="bad_multipart")
            files[name] = value.file
    if "request" in form:
        return await _parse(kind, str(form["request"])), files
    if not files:
        raise BadInput("multipart request has no file parts", code="no_items")
    try:
        weights = json.loads(str(form["weights"])) if "weights" in form else None
    except json.JSONDecodeError as exc:
        raise BadInput(f"weights: not JSON: {exc}", code="bad_weights") from None
    prompt = form.get("prompt")
    fields = {
        "models": [str(m) for m in form.getlist("model")] or None,
        "weights": weights,
        "preset": form.get("preset"),
        "normalise": str(form.get("normalise", "false")).lower() in ("1", "true", "yes"),
        "cache": form.get("cache") or "use",
    }
    if kind is ScoreRequest:
        fields["items"] = [{"video": {"file": name}, "prompt": prompt} for name in files]
    else:
        fields |= {"videos": [{"file": name} for name in files], "prompt": prompt}
    try:
        return kind.model_validate(fields), files
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _to_inputs(body: WireRequest, files: dict[str, BinaryIO], settings: Settings) -> list[ScoreInput]:
    """Wire video references -> engine sources (base64 and .npy decoding happen here)."""
    inputs = []
    uploads = {name: ingest.EncodedVideo(file) for name, file in files.items()}  # one per part, however often named
    for i, (video, prompt) in enumerate(body.videos_with_prompts()):
        try:
            inputs.append(ScoreInput(source=_to_source(video, uploads, settings), prompt=prompt))
        except ServiceError as exc:
            raise exc.for_item(i)
    return inputs


def _to_source(ref: VideoRef, uploads: dict[str, ingest.EncodedVideo], settings: Settings) -> ingest.VideoSource:
    limit = settings.max_video_bytes
    if ref.url is not None:
        return ingest.VideoURL(ref.url)
    if ref.data is not None:
        return ingest.EncodedVideo(ingest.decode_base64(ref.data, max_bytes=limit, what="data"))
    if ref.frames is not None:
        raw = ingest.decode_base64(ref.frames, max_bytes=limit, what="frames")
        return ingest.parse_frames_npy(raw, ref.fps or 0.0)
    if ref.file not in uploads:
        raise BadInput(f"no file part named {ref.file!r} in the upload", code="missing_file")
    return uploads[ref.file]  # its size was checked as it was read


def _add_wire_schemas(app: FastAPI) -> None:
    """Put the request types into the OpenAPI components (the routes read their bodies by hand)."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for kind in _WIRE_REQUESTS:
            extra = kind.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(extra.pop("$defs", {}))
            components[kind.__name__] = extra
        return schema

    app.openapi = openapi
