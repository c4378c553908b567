#!/usr/bin/env bash
# One device call: several Beauty pipeline runs side by side on one GPU (the models are small).
# Usage: bash scripts/beauty_job.sh "<variant> <seed>" ...   e.g. "capsid 0" "rqkmeans 0"
# Env: PRESET (gpu), JOB_TIMEOUT (540 s per run), EXTRA (more `capsid pipeline` flags), DATA (.data/amazon-beauty),
# VECTORS (.data/beauty_vectors.npy). Logs and results under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-logs}
mkdir -p "$OUT"
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-15} PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
date -u | tee "$OUT/date.txt"
pids=()
for job in "$@"; do
  set -- $job
  v=$1; s=$2
  timeout "${JOB_TIMEOUT:-540}" $PY -m capsid.cli pipeline --data "${DATA:-.data/amazon-beauty}" --vectors "${VECTORS:-.data/beauty_vectors.npy}" \
    --tokenizer "$v" --seeds "$s" --preset "${PRESET:-gpu}" --device cuda --out "$OUT/runs" ${EXTRA:-} \
    > "$OUT/$v-seed$s.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "pid $p rc=$?"; done
for f in "$OUT"/*-seed*.log; do echo "== $f"; tail -c 400 "$f"; echo; done
# flat copies of the small per-run files (the run folders also hold checkpoints)
for d in "$OUT"/runs/*/*/seed*; do
  [ -d "$d" ] || continue
  tag="$(basename "$(dirname "$d")")-$(basename "$d")"
  for f in results.json stage1_log.jsonl stage2_log.jsonl; do [ -f "$d/$f" ] && cp "$d/$f" "$OUT/$tag.$f"; done
done
rm -rf "$OUT/runs"
