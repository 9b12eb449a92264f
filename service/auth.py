"""Optional API-key auth: ``Authorization: Bearer <key>``, keys from ``VRS_API_KEYS``.

Contract: with no keys configured, nothing changes. With keys, every request needs one of
them, except the open paths: the probes and scrapes (``/healthz``, ``/readyz``, ``/metrics``)
and the API's own description (``/docs``, its assets, ``/openapi.json``), which hold no data.
A missing or wrong key is a 401 with ``WWW-Authenticate: Bearer``, before the body is read, and
so is a request with more than one ``Authorization`` header (which one a proxy or a framework
reads differs; none is guessed).
Keys are compared in constant time, against every configured key, so neither the key nor
which key matched leaks through timing. The OpenAPI document declares the ``bearer``
security scheme on the protected operations, so ``/docs`` offers an "Authorize" button.
"""

from __future__ import annotations

import hmac
import json

from fastapi import FastAPI
from pydantic import SecretStr

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
OPEN_PREFIXES = ("/docs/",)
SCHEME = "bearer"


def protect(app: FastAPI, keys: list[SecretStr]) -> None:
    """Require one of ``keys`` on every non-open path of ``app`` (no-op without keys)."""
    if not keys:
        return
    app.add_middleware(BearerAuth, keys=[k.get_secret_value().encode() for k in keys])


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def key_matches(given: bytes, keys: list[bytes]) -> bool:
    """Constant-time membership: every key is compared, whatever matched before."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key)
    return found


class BearerAuth:
    """ASGI middleware: 401 unless the ``Authorization: Bearer`` token is a configured key."""

    def __init__(self, app, keys: list[bytes]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_open(scope["path"]):
            return await self.app(scope, receive, send)
        given = [value for name, value in scope["headers"] if name.lower() == b"authorization"]
        if len(given) > 1:
            return await _unauthorized(send, "more than one Authorization header")
        header = given[0] if given else b""
        kind, _, token = header.partition(b" ")
        if kind.lower() != b"bearer" or not token.strip():
            return await _unauthorized(send, "missing API key: send 'Authorization: Bearer <key>'")
        if not key_matches(token.strip(), self.keys):
            return await _unauthorized(send, "invalid API key")
        await self.app(scope, receive, send)


async def _unauthorized(send, message: str) -> None:
    body = json.dumps({"error": {"code": "unauthorized", "message": message, "item": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="vrs"')]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def document(app: FastAPI, keys: list[SecretStr]) -> None:
    """Declare the bearer scheme in ``app``'s OpenAPI document, required on the protected operations
    (no-op without keys). Call after any other ``app.openapi`` customisation."""
    if not keys:
        return
    previous = app.openapi

    def openapi() -> dict:
        schema = previous()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[SCHEME] = {"type": "http", "scheme": "bearer", "description": "One of the keys in VRS_API_KEYS."}
        for path, operations in schema.get("paths", {}).items():
            if not is_open(path):
                for operation in operations.values():
                    operation["security"] = [{SCHEME: []}]
                    operation.setdefault("responses", {})["401"] = {"description": "Missing or invalid API key"}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented schema override
