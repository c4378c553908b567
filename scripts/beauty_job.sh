#!/usr/bin/env bash
# One device call: several Beauty pipeline runs side by side on one GPU (the models are small).
# Usage: bash scripts/beauty_job.sh "<variant> <seed>" ...   e.g. "capsid 0" "rqkmeans 0"
# Env: PRESET (gpu), EXTRA (more `capsid pipeline` flags), DATA (.data/amazon-beauty),
# VECTORS (.data/beauty_vectors.npy). Logs and results under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
date -u | tee "$OUT/date.txt"
pids=()
for job in "$@"; do
  set -- $job
  v=$1; s=$2
  $PY -m capsid.cli pipeline --data "${DATA:-.data/amazon-beauty}" --vectors "${VECTORS:-.data/beauty_vectors.npy}" \
    --tokenizer "$v" --seeds "$s" --preset "${PRESET:-gpu}" --device cuda --out "$OUT/runs" --quiet ${EXTRA:-} \
    > "$OUT/$v-seed$s.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "pid $p rc=$?"; done
for f in "$OUT"/*-seed*.log; do echo "== $f"; tail -4 "$f"; done
find "$OUT/runs" -name results.json -path "*seed*" | sort
