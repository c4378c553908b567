#!/usr/bin/env bash
# One GPU call for the CUDA routing kernel (issue 8): build in place (sm_90), GPU tests -k route_cuda,
# leave-one-stage-out timings, the routing bench (Triton vs cuda), ncu on one launch, and
# compute-sanitizer memcheck + racecheck on small cases. Logs and JSON go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
SKIP_FULL=1 timeout ${T_TESTS:-300} bash scripts/gpu_check.sh "${TESTS_K:-route_cuda}"
[ -n "${SKIP_STAGES:-}" ] || { echo "== stages"; timeout ${T_STAGES:-120} $PY scripts/route_cuda_check.py stages --out "$OUT" 2>&1 | tee "$OUT/stages.log" | tail -22; }
if [ -n "${BENCH_ARGS:-}" ]; then
  echo "== bench"; timeout ${T_BENCH:-200} $PY bench/routing.py --out "$OUT" $BENCH_ARGS 2>&1 | tee "$OUT/bench.log" | tail -30
fi
if [ -z "${SKIP_NCU:-}" ] && command -v ncu > /dev/null; then
  echo "== ncu"; timeout ${T_NCU:-90} ncu --kernel-name regex:route_fwd_kernel --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section MemoryWorkloadAnalysis \
    $PY -c "
import torch, sys; sys.path.insert(0, 'scripts')
from route_cuda_check import _layer, _rows
from capsid_kernels.ops.route_cuda import forward
W, b, D = _layer(256, 64, 128, torch.bfloat16, 1); r = _rows(65536, 128, torch.bfloat16, 2)
for _ in range(4): forward(r, W, b, D, 3, False, 1.0, 0.82, 0.08, False, False, False, False)
torch.cuda.synchronize()" > "$OUT/ncu.log" 2>&1; grep -E "Throughput|Pipe|Issue|Stall|Warp Cycles|Duration|Registers|Shared|L2|Bank|Executed Ipc" "$OUT/ncu.log" | head -40
fi
if [ -z "${SKIP_SAN:-}" ] && command -v compute-sanitizer > /dev/null; then
  echo "== memcheck"; timeout ${T_SAN:-150} compute-sanitizer --tool memcheck $PY scripts/route_cuda_check.py sanitize > "$OUT/memcheck.log" 2>&1; echo "rc=$?"; tail -3 "$OUT/memcheck.log"
  echo "== racecheck"; timeout ${T_SAN:-150} compute-sanitizer --tool racecheck $PY scripts/route_cuda_check.py sanitize > "$OUT/racecheck.log" 2>&1; echo "rc=$?"; tail -3 "$OUT/racecheck.log"
fi
# At most 8 files come back from the device: pack the logs.
(cd "$OUT" && tar czf logs.tgz --ignore-failed-read *.log *.txt 2>/dev/null && rm -f *.log *.txt; ls -la)
