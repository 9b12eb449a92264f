"""HTTP layer: converts wire types to engine calls and errors to JSON. No scoring logic here."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from vrs_wire.schemas import (
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    ModelsResponse,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
)

from models.placement import CPU
from models.registry import RewardModel
from service import auth, ingest, lifecycle, operations
from service.body_limits import BodyLimits
from service.compose import build_engine
from service.config import Settings
from service.docs import serve_docs
from service.engine import Engine
from service.errors import BadInput, InvalidRequest, ServiceError, TooLarge, UnsupportedMedia, shown
from service.head_limits import HeadLimits
from service.ingest import ScoreInput, WireRequest
from service.telemetry import RequestTelemetry

_WIRE_REQUESTS = (ScoreRequest, CompareRequest, RankRequest)

log = logging.getLogger(__name__)

T = TypeVar("T")

CLIENT_GONE = 499  # nginx's "client closed request": the status recorded for an answer nobody reads

MAX_RETRY_AFTER_S = 3600  # what a Retry-After says at most (an upstream's hint may say more)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 429, 502, 503, 504)
}


def _retry_after(exc: ServiceError) -> int | None:
    """The whole seconds of ``exc``'s ``Retry-After``: its ``retry_after_s`` rounded, within
    [1, ``MAX_RETRY_AFTER_S``]; None without one or when it is not a finite number."""
    seconds = getattr(exc, "retry_after_s", None)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(1, round(seconds)))


def create_app(settings: Settings | None = None, models: dict[str, RewardModel] | None = None) -> FastAPI:
    """Build the gateway app around ``compose.build_engine(settings, models)``; the engine starts
    and stops with the app's lifespan."""
    settings = settings or Settings()
    engine = build_engine(settings, models)

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
        docs_url=None,  # served offline by serve_docs
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.drain = lifecycle.Drain(settings.shutdown_grace_s)  # `vrs serve` starts it on SIGTERM
    app.state.head_limits = HeadLimits(  # for uvicorn_config; the body's limits bind the unread rest of a body
        settings.header_timeout_s,
        settings.max_header_bytes,
        body_read_timeout_s=settings.body_read_timeout_s,
        body_min_bytes_per_s=settings.body_min_bytes_per_s,
        max_body_bytes=settings.max_request_bytes,
    )
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_request_bytes,
        budget=engine.bytes_in_flight,  # shared with the videos the engine downloads for URL items
        read_timeout_s=settings.body_read_timeout_s,
        min_rate=settings.body_min_bytes_per_s,
    )
    auth.protect(app, settings.api_keys)  # 401 before any body is read
    app.add_middleware(lifecycle.DrainGate, drain=app.state.drain)
    app.add_middleware(RequestTelemetry, metrics=engine.metrics)  # outermost: sees every answer, 413s included

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        retry_after = _retry_after(exc)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing and multipart-parser errors, in the same shape as ours (and their headers: a 405's
        ``Allow``, which RFC 9110 requires)."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail), "item": None}},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = InvalidRequest.from_errors(list(exc.errors()))
        return JSONResponse({"error": error.to_dict()}, status_code=error.status)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """The client went away before its answer (mid-body, or while its request was scored): not a
        server error, so no 500 and no traceback. Nobody reads the answer; its status, 499, is what
        the access log and ``vrs_requests_total`` record."""
        log.info("client disconnected before its answer on %s", request.url.path)
        return Response(status_code=CLIENT_GONE)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        # The server closes the connection after an unhandled error: say so, so that no client sends
        # its next request down a connection that is going away.
        return JSONResponse(
            {"error": {"code": "internal", "message": "internal error", "item": None}},
            status_code=500,
            headers={"Connection": "close"},
        )

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
        # Redis is an optimisation: its state is reported, never a reason to be unready.
        return {
            "status": "ready",
            "models": sorted(engine.specs),
            "placement": _placement(settings, engine),
            "cache": {"redis": engine.cache.redis_state},
        }

    @app.get("/v1/models", response_model=ModelsResponse, summary="Specs of the loaded models and judges")
    async def list_models() -> ModelsResponse:
        return ModelsResponse(models=list(engine.specs.values()), placement=_placement(settings, engine))

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=_ERRORS,
        summary="Score videos (pointwise)",
        description=(
            "JSON body: a ScoreRequest. Or multipart/form-data: video file parts (containers, or raw frames "
            "as `application/x-npy` parts with `fps`), plus either a `request` field holding a ScoreRequest "
            'whose videos name parts as `{"file": "<part name>"}`, or plain `prompt` / `model` / '
            "`weights` / `preset` / `normalise` / `fps` fields applying to every file part. "
            "Any bad item fails the whole request with an error naming the item (and listing the other bad items)."
        ),
        openapi_extra=_request_body("ScoreRequest"),
    )
    async def score(request: Request) -> ScoreResponse:
        async with _read_request(request, settings, ScoreRequest) as (body, inputs):
            return _labelled(request, await _unless_gone(request, operations.score(engine, body, inputs)))

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
        async with _read_request(request, settings, CompareRequest) as (body, inputs):
            return _labelled(request, await _unless_gone(request, operations.compare(engine, body, inputs)))

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
        async with _read_request(request, settings, RankRequest) as (body, inputs):
            return _labelled(request, await _unless_gone(request, operations.rank(engine, body, inputs)))

    _add_wire_schemas(app)
    auth.document(app, settings.api_keys)
    serve_docs(app)
    return app


def _labelled(request: Request, response):
    """Tell the telemetry middleware which models answered (the ``model`` label of vrs_requests_total)."""
    request.state.models = ",".join(m.name for m in response.models)
    return response


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` (the request's scoring, its body read) while watching the connection. If the
    client disconnects first, the work is cancelled, which frees its admission and drops its videos
    from batches not yet run (keys other requests were waiting for are handed back to them, which
    compute them themselves: ``Flight.release`` in service/cache.py), and ``ClientDisconnect`` is
    raised (answered 499). Work that finishes first is returned, whatever the connection does."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():  # the client left, or this request was cancelled (e.g. shutdown)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its clean-up runs before the answer
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects. Only once the body is read: the server's ``receive``
    then blocks until the connection closes (uvicorn) or the response is complete."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _placement(settings: Settings, engine: Engine) -> dict[str, dict[str, str]]:
    """Where each model runs: backend, device and dtype (weight-free models compute in float32 on
    the backend's device); behind Triton the device is Triton's (see its model config). A judge:
    its upstream's host:port or ``in-process``, and the model name it asks."""
    out = {}
    for name, model in engine.models.items():
        if settings.backend == "triton":
            out[name] = {"backend": "triton", "device": "triton", "dtype": "triton"}
        else:
            weight_free = model.placement == CPU  # computes where its frames are
            where = (
                {"device": str(engine.backend.device), "dtype": "float32"}
                if weight_free
                else model.placement.describe()
            )
            out[name] = {"backend": "inprocess", **where, "decode": engine.decode_policy.pixels_id}
    return out | {name: engine.judges.describe(name) for name in engine.judges.names}


RANK_FORM_PROPERTIES = {
    "top_k": {"type": "integer", "minimum": 1},
    "advantage_eps": {"type": "number", "minimum": 0},
    "advantage_std": {"type": "string", "enum": ["sample", "population"]},
}


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
                            "fps": {"type": "number", "description": "frame rate of application/x-npy parts"},
                            "video": {"type": "string", "format": "binary"},
                        }
                        | (RANK_FORM_PROPERTIES if schema == "RankRequest" else {}),
                    }
                },
            },
        }
    }


@asynccontextmanager
async def _read_request(
    request: Request, settings: Settings, kind: type[WireRequest]
) -> AsyncIterator[tuple[WireRequest, list[ScoreInput]]]:
    """Read a JSON or multipart body; ``ingest`` turns it into the request and its engine inputs.
    Uploads stay spooled on disk while the request is scored (the stages read them from there)."""
    request.app.state.engine.admission.check_open()  # when saturated, refuse before reading the body
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    budget = ingest.json_budget(settings.max_items)  # JSON values a request may hold (pydantic's memory)
    if media_type == "multipart/form-data":
        form = await _form(request, settings)
        try:
            fields: dict[str, list[str]] = {}
            uploads: dict[str, ingest.Upload] = {}
            for name, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    fields.setdefault(name, []).append(value)
                elif name in uploads:
                    raise BadInput(
                        f"two file parts named {shown(name)}; give each a distinct name", code="bad_multipart"
                    )
                else:
                    uploads[name] = ingest.Upload(value.content_type or "", value.file, value.size)
            body = await run_in_threadpool(ingest.parse_form, kind, fields, uploads, budget)
            yield (
                body,
                await run_in_threadpool(ingest.to_inputs, body, uploads, settings.max_video_bytes, settings.max_items),
            )
        finally:
            await form.close()
    elif media_type in ("application/json", ""):
        body = await run_in_threadpool(ingest.parse_json, kind, await request.body(), budget)
        yield body, await run_in_threadpool(ingest.to_inputs, body, {}, settings.max_video_bytes, settings.max_items)
    else:
        raise UnsupportedMedia(
            f"send application/json or multipart/form-data, not {shown(content_type)}", code="bad_content_type"
        )


async def _form(request: Request, settings: Settings):
    """The multipart form, within the request's limits: at most ``max_items`` file parts, 64 plain
    fields, and a plain field (the ``request`` JSON) as large as a JSON body may be. The parser's
    refusals become ours: past a limit is 413, a malformed body 400 ``bad_multipart``."""
    try:
        return await request.form(max_files=settings.max_items, max_fields=64, max_part_size=settings.max_request_bytes)
    except StarletteHTTPException as exc:
        message = str(exc.detail)
        if message.startswith(("Too many files", "Too many fields", "Part exceeded", "Field exceeded")):
            raise TooLarge(f"multipart body: {message} (file parts: at most {settings.max_items})") from None
        raise BadInput(f"multipart body: {message}", code="bad_multipart") from None


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

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented schema override
