"""The Grafana dashboard's queries, evaluated by a real Prometheus that scraped a real gateway
(scoring through a real Triton) and that Triton, under a short mixed load.

Prometheus runs with the shipped scrape config (``deploy/prometheus/prometheus.yml``, targets
pointed at this test's ports). Every query of every panel in ``deploy/grafana/`` must parse and
return at least one finite value.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from vrs_client.videos import video_ref

from models.registry import builtin_models
from models.triton_repo import TritonOptions, write_python_repo
from service.triton_server import LocalTriton
from tests.conftest import RunningServer, start_server
from tests.prometheus_server import PrometheusServer
from tests.test_triton import start_triton, triton_gateway_app
from tests.videos import unique_clip

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "vrs-dashboard.json"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# What Grafana substitutes at render time.
VARIABLES = {"$__rate_interval": "1m", "$job": "vrs-gateway", "$triton_job": "triton"}


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def render(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[LocalTriton, RunningServer, PrometheusServer]]:
    repo = write_python_repo(tmp_path_factory.mktemp("dash") / "repo", builtin_models(), TritonOptions())
    triton = start_triton(repo)
    gateway = start_server(triton_gateway_app(triton.grpc_url, max_wait_ms=10.0))
    host, port = gateway.url.removeprefix("http://").split(":")
    prometheus = PrometheusServer(
        SCRAPE_CONFIG, {"vrs-gateway": f"{host}:{port}", "triton": f"127.0.0.1:{triton.metrics_port}"}
    ).start()
    yield triton, gateway, prometheus
    prometheus.stop()
    gateway.stop()
    triton.stop()


async def mixed_load(url: str, seconds: float) -> list[int]:
    """Misses, repeats (cache hits), compare, rank and a bad request, several at a time."""
    repeated = video_ref(unique_clip(), fps=16)
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker(n: int) -> None:
            while time.monotonic() < deadline:
                kind = n % 5
                if kind == 0:
                    r = await client.post("/v1/score", json={"items": [{"video": video_ref(unique_clip(), fps=16)}]})
                elif kind == 1:
                    r = await client.post("/v1/score", json={"items": [{"video": repeated}]})
                elif kind == 2:
                    r = await client.post("/v1/compare", json={"videos": [repeated, video_ref(unique_clip(), fps=16)]})
                elif kind == 3:
                    r = await client.post(
                        "/v1/rank", json={"videos": [video_ref(unique_clip(), fps=16) for _ in range(3)]}
                    )
                else:
                    r = await client.post("/v1/score", json={"items": [{"video": {"data": "not base64!"}}]})
                statuses.append(r.status_code)
                n += 1

        await asyncio.gather(*(worker(n) for n in range(5)))
    return statuses


async def test_every_dashboard_query_returns_data_from_real_prometheus(stack):
    triton, gateway, prometheus = stack
    statuses = await mixed_load(gateway.url, seconds=6.0)
    assert set(statuses) == {200, 400} and statuses.count(200) >= 10, statuses

    # Wait until Prometheus has scraped the load from both targets (a safety deadline, not a speed check).
    deadline = time.monotonic() + 60
    ready = ('sum(vrs_requests_total{job="vrs-gateway"})', 'sum(nv_inference_count{job="triton"})')
    while time.monotonic() < deadline:
        values = [prometheus.query(q)["data"]["result"] for q in ready]
        if all(v and float(v[0]["value"][1]) > 0 for v in values):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.5)  # a couple more scrapes, so every rate() has two samples after the load

    queries = dashboard_queries()
    assert len(queries) >= 15
    failures = []
    for title, expr in queries:
        answer = prometheus.query(render(expr))
        if answer.get("status") != "success":
            failures.append(f"{title}: {answer.get('error')}")
            continue
        finite = [s for s in answer["data"]["result"] if math.isfinite(float(s["value"][1]))]
        if not finite:
            failures.append(f"{title}: no data for {render(expr)}")
    assert not failures, "\n".join(failures)


def test_dashboard_queries_that_cannot_parse_are_reported(stack):
    """The check above can fail: a malformed query comes back as a Prometheus error."""
    _, _, prometheus = stack
    answer = prometheus.query("sum by (endpoint (rate(vrs_requests_total[1m]))")
    assert answer["status"] == "error" and "parse error" in answer["error"]
