#!/usr/bin/env bash
# One device call: several Beauty pipeline runs side by side on one GPU (the models are small).
# Usage: bash scripts/beauty_job.sh "<variant> <seed> [pipeline flags]" ...
#   e.g. "capsid 0" "rqkmeans 0" "capsid 0 --set tokenizer.tau=0.95"  (a run with flags is filed as <variant>-<n>)
#   "@markov 0", "@sasrec 1": an anchor (capsid pipeline --anchors NAME) instead of a tokenizer;
#   "@markov,markov1 0" runs several anchors in one process.
# Env: PRESET (gpu), JOB_TIMEOUT (540 s per run), EXTRA (more `capsid pipeline` flags), DATA (.data/amazon-beauty),
# VECTORS (.data/beauty_vectors.npy), S2_SECONDS (Stage 2's time budget per run, stage2.max_seconds; unset = none).
# Logs and results under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-logs}
mkdir -p "$OUT"
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-15} PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
date -u | tee "$OUT/date.txt"
pids=()
n=0
for job in "$@"; do
  set -- $job
  v=$1; s=$2; shift 2
  n=$((n + 1)); tag=$v; [ $# -gt 0 ] && tag="$v-$n"
  printf '%s\t%s\n' "$n" "$job" >> "$OUT/jobs.tsv"
  out="$OUT/runs"; [ $# -gt 0 ] && out="$OUT/runs-$n"
  if [ "${v#@}" != "$v" ]; then what=(--anchors ${v#@}); what=(${what[@]//,/ } --tokenizer); v=${v#@}; v=${v//,/+}; tag=$v; [ $# -gt 0 ] && tag="$v-$n"
  else what=(--tokenizer "$v"); fi
  timeout "${JOB_TIMEOUT:-540}" $PY -m capsid_gr.cli pipeline --data "${DATA:-.data/amazon-beauty}" --vectors "${VECTORS:-.data/beauty_vectors.npy}" \
    "${what[@]}" --seeds "$s" --preset "${PRESET:-gpu}" --device cuda --out "$out" ${S2_SECONDS:+--set stage2.max_seconds=$S2_SECONDS} ${FIT_SECONDS:+--set fit.max_seconds=$FIT_SECONDS} ${EXTRA:-} "$@" \
    > "$OUT/$tag-seed$s.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "pid $p rc=$?"; done
for f in "$OUT"/*-seed*.log; do echo "== $f"; tail -c 400 "$f"; echo; done
# flat copies of the small per-run files (the run folders also hold checkpoints)
for d in "$OUT"/runs*/*/*/seed*; do
  [ -d "$d" ] || continue
  run=$(basename "$(dirname "$(dirname "$(dirname "$d")")")"); run=${run#runs}
  tag="$(basename "$(dirname "$d")")$run-$(basename "$d")"
  for f in results.json stage1_log.jsonl stage2_log.jsonl fit_log.jsonl beam_lists.npz; do [ -f "$d/$f" ] && cp "$d/$f" "$OUT/$tag.$f"; done
done
rm -rf "$OUT"/runs*
# one archive, since a device call returns a limited number of files (beam lists, from --save-lists, stay
# beside it: a returned file holds at most 16 MiB)
tar czf "$OUT/beauty_job.tgz" -C "$OUT" $(cd "$OUT" && ls | grep -v -e beauty_job.tgz -e '\.npz$') \
  && find "$OUT" -maxdepth 1 -type f ! -name beauty_job.tgz ! -name '*.npz' -delete && echo "archive: beauty_job.tgz"
