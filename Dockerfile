# syntax=docker/dockerfile:1
# Two images from one file (README "Deploy"):
#
#   docker build --target gateway -t vrs-gateway .   # slim CPU gateway
#   docker run -p 8000:8000 vrs-gateway              # serves the embedded `signal` model
#
#   docker build --target triton -t vrs-triton .     # NVIDIA Triton (+ TensorRT) with the model-repository tooling
#
# The Triton image's init step (k8s/overlays/gpu) writes the model repository with
# `vrs triton --write-only` and builds TensorRT engines on the GPU it will run on with
# `vrs compile engine`, caching them on a volume; the main container runs `tritonserver`.
# Bases are pinned by tag; pin by digest with --build-arg PYTHON_IMAGE=python@sha256:... etc.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# Triton 25.x is built on Ubuntu 24.04 with Python 3.12 (the package needs Python >= 3.11).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.01-py3

# --- gateway: build the virtual environment ------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/vrs
WORKDIR /src
# Dependencies first, from pyproject.toml alone (its dependencies + the models extra), so that a
# source change reuses this layer instead of reinstalling torch and the rest.
# torch from PyTorch's CPU index: the default index would bring the CUDA build (gigabytes) to a
# gateway that never touches a GPU. constraints.txt pins torch's version (2.13.0 matches 2.13.0+cpu).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['models']))" > /tmp/requirements.txt \
    && /opt/vrs/bin/pip install --no-cache-dir -c constraints.txt \
        --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        -r /tmp/requirements.txt
COPY . .
RUN /opt/vrs/bin/pip install --no-cache-dir --no-deps .

# --- gateway: runtime ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway
RUN useradd --system --uid 10001 --home-dir /tmp --shell /usr/sbin/nologin vrs
COPY --from=gateway-build /opt/vrs /opt/vrs
# The service binds 127.0.0.1 by default; in a container it must listen on every interface.
ENV PATH=/opt/vrs/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    VRS_HOST=0.0.0.0 \
    VRS_PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VRS_PORT', '8000'), timeout=4)"]
# SIGTERM drains (VRS_SHUTDOWN_GRACE_S) and exits; `vrs` is PID 1, so it receives the signal itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vrs"]
CMD ["serve"]

# --- triton: NVIDIA's server, which carries TensorRT, plus our package --------------------
FROM ${TRITON_IMAGE} AS triton
# The python backend's stub runs the container's system Python, so the package goes into it
# (the image is this service's alone; PEP 668's guard is for shared system Pythons).
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1
WORKDIR /opt/vrs/src
# Dependencies first, from pyproject.toml alone (its dependencies + the models and compile extras:
# the init container runs `vrs compile export`, which needs onnx and onnxscript), so that a source
# change reuses this layer; then the package itself.
COPY pyproject.toml constraints.txt ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; e = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + e['models'] + e['compile']))" > /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
COPY . .
RUN python3 -m pip install --no-cache-dir --no-deps .
# TensorRT's Python bindings for `vrs compile engine` (module tensorrt_bindings), at the version of
# the image's own TensorRT libraries, which they load (a plan loads only in the TensorRT that built
# it). The version comes from libnvinfer's file name, the CUDA major from the image's CUDA_VERSION.
RUN trt="$(find /usr/lib /usr/local /opt -name 'libnvinfer.so.*.*.*' -print -quit 2>/dev/null)"; \
    trt="${trt##*libnvinfer.so.}"; \
    if [ -z "$trt" ]; then echo "no libnvinfer.so.X.Y.Z in this image" >&2; exit 1; fi; \
    python3 -m pip install --no-cache-dir "tensorrt-cu${CUDA_VERSION%%.*}-bindings==${trt}.*"
# Model repository (written at deploy time) and the engine cache (a volume in Kubernetes).
RUN useradd --system --uid 10001 --home-dir /tmp --shell /usr/sbin/nologin vrs \
    && mkdir -p /models /engine-cache && chown 10001:10001 /models /engine-cache
USER 10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
