#!/usr/bin/env bash
# One call on a GPU machine: build the extension in place, run the GPU-marked and full
# test suites, and (optionally) benchmarks. Logs go to $OUT (or ./gpu-logs).
# Usage: bash scripts/gpu_check.sh [pytest -k expression] ; BENCH="bench/routing.py ..." to add benches.
# Env: SKIP_BUILD=1 skips the C++ build; SKIP_FULL=1 skips the CPU suite; SKIP_GPU_TESTS=1 skips
# pytest -m gpu; BENCH_ARGS="..." is passed to every bench after --out.
set -uo pipefail
cd "$(dirname "$0")/.."
fail=0  # the script's exit status: non-zero when the build or any test step fails
OUT=${OUT:-./gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

start=$(date +%s)
[ -n "${SKIP_BUILD:-}" ] || TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  $PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1
rc=$?; [ $rc -eq 0 ] || fail=1
echo "build rc=$rc in $(( $(date +%s) - start )) s (log: build.log)"
$PY -m capsid_kernels.info | tee "$OUT/info.txt"

K=${1:-}
if [ -z "${SKIP_GPU_TESTS:-}" ]; then
  $PY -m pytest -q -rfE -m gpu --continue-on-collection-errors ${K:+-k "$K"} -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
fi
if [ -z "${SKIP_FULL:-}" ]; then
  $PY -m pytest -q -rfE -m "not gpu" --continue-on-collection-errors ${K:+-k "$K"} -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cpu_suite_on_gpu_host.log" | tail -5
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
fi
if [ -n "${CMAKE:-}" ]; then  # the CMake build and CTest (C++ tests), and memcheck on the squash test
  cmake -S . -B build-gpu -DPython3_EXECUTABLE="$(command -v $PY)" > "$OUT/cmake.log" 2>&1 \
    && cmake --build build-gpu -j 16 >> "$OUT/cmake.log" 2>&1 \
    && ctest --test-dir build-gpu --output-on-failure 2>&1 | tee -a "$OUT/cmake.log" | tail -4
  rc=${PIPESTATUS[0]}; [ $rc -eq 0 ] || fail=1
  echo "cmake+ctest rc=$rc"
  if command -v compute-sanitizer > /dev/null && [ -x build-gpu/test_squash ]; then
    compute-sanitizer --tool memcheck build-gpu/test_squash 2>&1 | tail -3 | tee "$OUT/memcheck.log"
    compute-sanitizer --tool racecheck build-gpu/test_squash 2>&1 | tail -2 | tee -a "$OUT/memcheck.log"
  fi
fi
for bench in ${BENCH:-}; do
  echo "== $bench"
  $PY "$bench" --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee -a "$OUT/bench.log" | tail -40
done
echo "gpu_check: $([ $fail -eq 0 ] && echo passed || echo FAILED)"
exit $fail
