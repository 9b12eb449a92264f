#!/bin/sh
# The device part of issues 11 and 12 in one call of the device tool (README "GPU benchmark: one
# command"). Run from the repository root on the GPU machine, with $OUT set (the tool sets it):
#   sh loadtests/device_run.sh          carry .whl: probe, tests/gpu, bench_gpu, bench_compile
#   sh loadtests/device_run.sh triton   carry .whl-triton, on the machine still warm from the first
#                                       call (its .site/ is reused): Triton on the GPU, cuda_shm
# SMOKE=1 runs tiny sizes (loadtests/device_rehearsal.sh runs this script on the CPU that way).
# Wheels come from `sh loadtests/gpu_wheels.sh [triton]` here; they are installed into .site/.
# Every step has its own time limit, so a slow or hanging step cannot take the others' results
# with it; each step's log and result files go to $OUT, and `steps.txt` lists exit codes and times.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for logs and results}"
py=${PYTHON:-python3}
smoke=${SMOKE:+--smoke}
export PYTHONPATH="$PWD/.site:$PWD:$PWD/clients/python" PYTHONUNBUFFERED=1

install() {  # install() DIR: the carried wheels into .site/
  [ -d "$1" ] || { echo "no $1/: carry it (sh loadtests/gpu_wheels.sh)" | tee -a "$OUT/steps.txt"; return 1; }
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site "$1"/*.whl
}

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, show its tail
  name=$1 limit=$2
  shift 2
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(($(date +%s) - start)) s (limit $limit s)" | tee -a "$OUT/steps.txt"
  tail -n "${TAIL:-15}" "$OUT/$name.log"
}

if [ "${1:-}" = triton ]; then
  [ -d .site/fastapi ] || { echo "no .site/ from a first call: this machine is fresh" | tee -a "$OUT/steps.txt"; exit 3; }
  install .whl-triton || exit 3
  step triton_tests 240 "$py" -m pytest tests/gpu/test_cuda_shm.py tests/test_triton.py -q -rs -p no:cacheprovider \
    -k "cuda_shared or shared_memory or equal_in_process"
  step bench_transport 240 "$py" loadtests/bench_compile.py $smoke --skip-compile --out "$OUT/bench_transport.json"
  exit 0
fi

install .whl || exit 3
step probe 60 "$py" loadtests/device_probe.py
step tests_gpu 150 "$py" -m pytest tests/gpu tests/test_gpu_path.py -q -rs -p no:cacheprovider --ignore tests/gpu/test_cuda_shm.py
TAIL=40 step bench_gpu 300 "$py" loadtests/bench_gpu.py $smoke --out "$OUT"
step bench_compile 150 "$py" loadtests/bench_compile.py $smoke --skip-transport --out "$OUT/bench_compile.json"
