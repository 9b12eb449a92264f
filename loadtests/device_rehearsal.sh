#!/bin/sh
# Rehearse the device run here, on the CPU, before spending device time on it: a Python 3.12
# virtual environment with the device image's versions of what the service uses (torch 2.11,
# numpy 2, transformers 5.17, ...: /work/.library/device/KINDS.md), then every step of
# loadtests/device_run.sh in its SMOKE form, with the wheels gpu_wheels.sh fetched, installed the
# way the device installs them. What this catches: a wheel the image lacks, a module path, an
# import that needs numpy 1 or 2, a script that breaks; not GPU behaviour (CUDA steps skip).
#   sh loadtests/device_rehearsal.sh [VENV]     (default /tmp/vrs-device-image; ~3 GB: torch
#                                                 from PyPI is its CUDA build, which runs on the CPU)
set -eu
cd "$(dirname "$0")/.."
venv=${1:-/tmp/vrs-device-image}
py312=${PY312:-python3.12}
if [ ! -x "$venv/bin/python3" ]; then
  "$py312" -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.11.0 numpy==2.5.2 transformers==5.17.0 tokenizers==0.23.2 \
    safetensors==0.8.0 huggingface_hub==1.33.0 accelerate==1.15.0 peft onnx==1.23.1 onnxruntime==1.30.0 \
    onnxscript==0.7.2 ml-dtypes pytest pytest-timeout httpx prometheus-client uvloop pillow psutil pyyaml grpcio protobuf \
    tqdm cuda-bindings
fi
[ -d .whl ] || sh loadtests/gpu_wheels.sh
[ -d .whl-triton ] || sh loadtests/gpu_wheels.sh triton
rm -rf .site .site-stub
OUT=$(mktemp -d /tmp/device-rehearsal-XXXX)
export OUT
PYTHON="$venv/bin/python3" SMOKE=1 sh loadtests/device_run.sh probe,bench_gpu,tests,compile,inductor,triton
echo "logs and results: $OUT"
! grep -v ": exit 0 " "$OUT/steps.txt"
