#!/bin/sh
# Download the wheels the GPU machine's image lacks, for Python 3.12 on x86-64, into .whl/, to
# carry to the device (README "GPU benchmark: one command"; loadtests/device_run.sh installs them).
# What the service and its GPU tests need that the image (loadtests/device_image_packages.txt:
# torch, transformers, numpy 2, pytest, ...) lacks is found by loadtests/device_wheels.py and
# taken at the version this checkout's .venv runs (the environment the README's test command
# builds), so the device runs what CI tests.
# `sh loadtests/gpu_wheels.sh triton` instead fills .whl-triton/ (the Triton server, trimmed to
# Python 3.12's stub, and numpy 1.x for that stub: more than fits beside .whl/ in one call's
# 64 MiB): loadtests/device_run.sh triton.
set -e
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x $py ] || { echo "no .venv: run the README's test command (or its install step) first" >&2; exit 2; }
if [ "$1" = triton ]; then
  # Only the server binary is used (service/triton_server.py): no dependencies. numpy 1.x is for
  # the python-backend stub alone (Triton 2.51's stub garbles BYTES tensors under numpy 2, and the
  # image's own packages need numpy 2): loadtests/device_run.sh puts it on VRS_TRITON_STUB_PATH.
  pins=$($py -c 'import importlib.metadata as m; print(*(f"{n}=={m.version(n)}" for n in ("nvidia-pytriton", "numpy")))')
  dest=.whl-triton
else
  pins=$($py loadtests/device_wheels.py "video-reward-service[models]" pytest-asyncio)
  dest=.whl
fi
rm -rf $dest
platforms="--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
  -d $dest $pins
[ "$1" = triton ] && $py loadtests/device_wheels.py --slim-pytriton $dest/nvidia_pytriton-*.whl
if [ "$1" != triton ]; then
  # The gRPC runtime tritonclient's generated stubs were built for (they refuse older ones), for the
  # triton step only (device_run.sh keeps it off the other steps' path): here, since .whl-triton
  # has no room left for it in one call's 64 MiB.
  grpc=$($py -c 'import importlib.metadata as m; print(*(f"{n}=={m.version(n)}" for n in ("grpcio", "protobuf")))')
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d $dest/grpc $grpc
  pins="$pins $grpc"
fi
echo "$pins" > $dest/PINS
du -sh $dest
