"""``/docs`` without internet: Swagger UI served from the gateway itself.

FastAPI's default ``/docs`` page loads Swagger UI's script and stylesheet from a CDN, so it is
blank on an air-gapped cluster. Here the page points at copies served under ``/docs/assets``,
taken from the ``swagger-ui-py`` package (Swagger UI 5, Apache-2.0; its LICENSE is served at
``/docs/assets/LICENSE``). The online spec validator badge is off, so the page makes no
request outside the gateway. ReDoc (CDN-only) is not offered.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def swagger_ui_dir() -> str:
    return str(files("swagger_ui") / "static")


def serve_docs(app: FastAPI) -> None:
    """Add ``/docs`` and its assets to ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        assert app.openapi_url is not None  # create_app keeps FastAPI's /openapi.json
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
