"""Run the ``tritonserver`` binary that ships in the ``nvidia-pytriton`` wheel over a model repository.

We point the bundled binary at our generated repository instead of driving PyTriton's API: the
repository (config.pbtxt + model.py) is then exactly what a production Triton container loads.
Three things make the bundled server work on a plain CPU machine:

- the python backend needs its stub for this interpreter's version next to ``libtriton_python.so``
  (the wheel ships one per Python version), so we assemble a backend directory of symlinks;
- the stub must load this interpreter's libpython: ``LD_LIBRARY_PATH`` starts with its LIBDIR;
- the stub's Python runs isolated (it ignores ``PYTHONPATH``) and sees only the base
  interpreter's site-packages, so the generated model.py puts this checkout and this
  environment's site-packages on ``sys.path`` (``models.triton_repo.default_python_paths``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def pytriton_dist() -> Path:
    """The ``tritonserver`` tree inside the installed nvidia-pytriton wheel.

    Found without importing ``pytriton`` (its own client brings zmq, gevent, ...; only the binary is used)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the local Triton server needs nvidia-pytriton: pip install -e '.[triton]'")
    return Path(spec.submodule_search_locations[0]) / "tritonserver"


def bundled_backends() -> list[str]:
    """The backends the bundled tritonserver has (nvidia-pytriton ships ``python`` only)."""
    return sorted(p.name for p in (pytriton_dist() / "backends").iterdir() if p.is_dir())


def backend_dir(dest: Path) -> Path:
    """Assemble ``dest/python`` (libtriton_python.so, utils, and the stub for this Python) and return ``dest``."""
    dist = pytriton_dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton ships no python-backend stub for Python {version}")
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (
        dist / "backends/python/libtriton_python.so",
        dist / "backends/python/triton_python_backend_utils.py",
        stub,
    ):
        link = python / source.name
        if not link.exists():
            link.symlink_to(source)
    return dest


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and its python stubs (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_dist().parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@dataclass
class LocalTriton:
    """A tritonserver process over ``repo``; ``start()`` returns once every model is ready."""

    repo: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    log_path: Path | None = None  # server log (default: a file in the work dir, removed on stop)
    verbose: bool = False
    inherit_output: bool = False  # server log to our stdout/stderr instead of log_path
    process: subprocess.Popen | None = field(default=None, init=False)
    _work: Path | None = field(default=None, init=False)
    _shm_prefix: str = field(default="", init=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        assert self._work is not None
        return [
            str(pytriton_dist() / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={self._work / 'backends'}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--log-verbose={1 if self.verbose else 0}",
        ]

    def start(self, timeout_s: float = 180.0) -> LocalTriton:
        """Launch the server and wait (polling) until it and every model in the repo are ready."""
        self._work = Path(tempfile.mkdtemp(prefix="vrs-triton-"))
        self._shm_prefix = f"vrs{os.getpid()}_{self._work.name[-8:]}_"
        backend_dir(self._work / "backends")
        if self.inherit_output:
            self.process = subprocess.Popen(self.command(), env=server_env(), start_new_session=True)
        else:
            self.log_path = self.log_path or self._work / "tritonserver.log"
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(), env=server_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited during start-up; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready after {timeout_s:g} s; log:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log without its settings tables (a failed start's table would
        otherwise push the model's load error out of the ``chars`` shown)."""
        try:
            text = Path(self.log_path).read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""
        return "\n".join(line for line in text.splitlines() if not line.startswith(("|", "+-")))[-chars:]

    def kill(self) -> None:
        """Stop abruptly (SIGKILL to the server and its stubs), as a crash would."""
        self._signal(signal.SIGKILL)
        self._reap(10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop gracefully, then forcibly; remove the work dir and the stubs' shared memory."""
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGTERM)
            if not self._reap(timeout_s):
                self.kill()
        self._signal(signal.SIGKILL)  # stubs left over in the server's process group
        self._reap(10)
        self.process = None
        if self._shm_prefix:
            for leftover in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                leftover.unlink(missing_ok=True)
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    def _signal(self, sig: int) -> None:
        """Signal the server's process group (our child's own session: the server and its stubs)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self, timeout_s: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
