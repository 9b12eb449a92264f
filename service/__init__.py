"""The gateway: ingest -> decode/sample -> batch -> backend -> scoring, behind a FastAPI app."""

import os

# Decode threads resize frames with small torch calls while FFmpeg's own threads decode. With
# OpenMP's default spin-waiting, torch's idle workers burn the cores FFmpeg needs (compare
# `OMP_WAIT_POLICY=ACTIVE python loadtests/bench_decode.py` with the default run). Must be set
# before torch loads, so importing `service` first matters; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
