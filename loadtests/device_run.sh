#!/bin/sh
# The device part of issues 11 and 12 (README "GPU benchmark: one command"). Run from the
# repository root on the GPU machine with $OUT set (the device tool sets it):
#   sh loadtests/device_run.sh [STEPS]     STEPS: comma-separated, default probe,bench_gpu,tests
#     probe      loadtests/device_probe.py: GPU, driver, PyAV's NVDEC decoders, NVDEC after torch
#     bench_gpu  loadtests/bench_gpu.py: NVDEC vs CPU decode, forward share of peak, GRPO vs naive
#     tests      tests/gpu (but cuda_shm and the inductor gateways) and tests/test_gpu_path.py
#     compile    loadtests/bench_compile.py: VRS_COMPILE=inductor (CUDA graphs) vs eager
#     inductor   tests/gpu's inductor test: two CUDA gateways, eager vs inductor + CUDA graphs
#     triton     Triton on the GPU: tests/gpu/test_cuda_shm.py, gRPC bytes vs system/CUDA shm
# A session's device time is 15 minutes, the machine's start included, so the calls are planned
# in order of worth (README "GPU benchmark: one command"; tests/test_device_tools.py checks the
# sums): call 1 is issue 11's (the default steps), call 2 `compile,inductor` (issue 12's inductor
# figures) unless call 1 needs a step rerun instead; `triton` does not fit beside them.
# Wheels: `sh loadtests/gpu_wheels.sh` here fills .whl/ (carry it: installed into .site/); the
# triton step also needs `sh loadtests/gpu_wheels.sh triton` (.whl-triton/). Both do not fit in
# one call's 64 MiB, so a call carrying only .whl-triton relies on .site/ from an earlier call on
# the same warm machine. The Triton step covers the frame transports with the built-in model:
# pytriton 0.7's stub needs numpy 1.x and the image's transformers numpy 2, so checkpoint models
# cannot load in that python backend here (the production image's Triton is another build).
# SMOKE=1 runs tiny sizes (loadtests/device_rehearsal.sh runs every step that way, on the CPU).
# Every step has its own time limit, so a slow or hanging step cannot take the others' results
# with it; each step's log and result files go to $OUT, and steps.txt lists exit codes and times.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for logs and results}"
py=${PYTHON:-python3}
smoke=${SMOKE:+--smoke}
export PYTHONPATH="$PWD/.site:$PWD:$PWD/clients/python" PYTHONUNBUFFERED=1

install() {  # install TARGET WHEEL...: the carried wheels into a folder on the path
  target=$1
  shift
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
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

if [ -d .whl ]; then
  install .site .whl/*.whl || exit 3
  if [ -d .whl/grpc ]; then install .site-grpc .whl/grpc/*.whl || exit 3; fi
elif [ ! -d .site/fastapi ]; then
  echo "neither .whl/ carried nor .site/ left by an earlier call on this machine" | tee -a "$OUT/steps.txt"
  exit 3
fi
# Step limits: call 1's add up to 380 s, call 2's to 300 s (README's table gives each call's
# timeout_s, with 20 s for the install); neither call writes more than 8 files, the most a call
# brings back. Tests run with a per-test limit (pytest-timeout, in the image): a hanging test fails
# alone, and the session still prints every failure before the step's own limit.
inductor_test=tests/gpu/test_gpu_parity.py::test_inductor_with_cuda_graphs_serves_the_eager_scores
pytest_opts="-q -rs -p no:cacheprovider"
for s in $(echo "${1:-probe,bench_gpu,tests}" | tr , ' '); do
  case $s in
    probe) step probe 30 "$py" loadtests/device_probe.py ;;
    bench_gpu) TAIL=40 step bench_gpu 220 "$py" loadtests/bench_gpu.py $smoke --out "$OUT" ;;
    tests) step tests_gpu 130 "$py" -m pytest tests/gpu tests/test_gpu_path.py $pytest_opts --timeout 60 \
      --deselect tests/gpu/test_cuda_shm.py --deselect "$inductor_test" ;;
    compile) TAIL=12 step bench_compile 150 "$py" loadtests/bench_compile.py $smoke --skip-transport \
      --out "$OUT/bench_compile.json" ;;
    inductor) step tests_inductor 150 "$py" -m pytest "$inductor_test" $pytest_opts --timeout 140 ;;
    triton)  # pytriton beside the gateway's packages; numpy 1.x on the python-backend stub's path only
      [ -d .whl-triton ] || { echo "no .whl-triton/: carry it (sh loadtests/gpu_wheels.sh triton)" | tee -a "$OUT/steps.txt"; continue; }
      install .site .whl-triton/nvidia_pytriton-*.whl && install .site-stub .whl-triton/numpy-*.whl || continue
      export VRS_TRITON_STUB_PATH="$PWD/.site-stub"
      # tritonclient's generated stubs need the gRPC runtime they were built for (.whl/grpc, call 1)
      export PYTHONPATH="$PWD/.site-grpc:$PYTHONPATH"
      step tests_triton 180 "$py" -m pytest tests/gpu/test_cuda_shm.py $pytest_opts --timeout 170
      TAIL=12 step bench_transport 180 "$py" loadtests/bench_compile.py $smoke --skip-compile \
        --out "$OUT/bench_transport.json" ;;
    *) echo "unknown step $s (probe, bench_gpu, tests, compile, inductor, triton)" >&2; exit 2 ;;
  esac
done
