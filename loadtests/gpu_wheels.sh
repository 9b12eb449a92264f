#!/bin/sh
# Download the wheels a GPU machine lacks (its image has torch, transformers, peft, tokenizers,
# safetensors, numpy, httpx, prometheus-client, pytest; see /work/.library/device/KINDS.md) for
# Python 3.12 on x86-64 into .whl/, to carry to the device (README "GPU path").
# Versions are the ones this repository is tested with here.
set -e
cd "$(dirname "$0")/.."
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl \
  av==18.1.0 pydantic==2.14.3 pydantic_core==2.50.4 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
  annotated-types==0.8.0 typing-inspection==0.4.5 fastapi==0.165.0 starlette==1.10.0 annotated-doc \
  uvicorn==0.54.0 python-multipart==0.0.34 redis==8.1.0 python-json-logger==4.2.0 pytest-asyncio==1.5.0 \
  transformers==5.23.0
du -sh .whl
