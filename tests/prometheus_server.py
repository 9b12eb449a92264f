"""A real Prometheus server for tests (Debian's ``prometheus`` 2.42).

Uses ``prometheus`` from PATH when installed; otherwise fetches the Debian package with
``apt-get download`` and unpacks only its binary (``dpkg-deb -x``) into a cache folder, so
nothing is installed system-wide and no service is started.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import free_port

CACHE = Path.home() / ".cache" / "vrs-tests" / "prometheus"


def prometheus_binary() -> Path:
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    binary = CACHE / "usr" / "bin" / "prometheus"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run(["apt-get", "download", "prometheus"], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("prometheus_*.deb"))
        if not debs:
            raise RuntimeError(f"could not fetch Debian's prometheus package: {fetched.stderr.strip()}")
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(CACHE)], check=True)
    return binary


class PrometheusServer:
    """Prometheus scraping ``targets`` ({job: "host:port"}) every second, with the job names and
    metric paths of ``deploy/prometheus/prometheus.yml``."""

    def __init__(self, config_file: Path, targets: dict[str, str]) -> None:
        config = yaml.safe_load(config_file.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        for job in config["scrape_configs"]:
            job.pop("file_sd_configs", None)  # the shipped targets/*.yml point at default ports
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}] if job["job_name"] in targets else []
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-"))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> PrometheusServer:
        self.process = subprocess.Popen(
            [
                str(prometheus_binary()),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prometheus did not start")
            time.sleep(0.2)

    def query(self, expr: str) -> dict:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        return response.json()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
