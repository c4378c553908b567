#!/usr/bin/env bash
# Issue 9 scale study on a host with (at least) two GPUs: sharded tokenization of a large
# synthetic catalogue, one Stage-2 epoch and sharded evaluation, on 1 GPU and on 2 GPUs.
# Writes $OUT/distributed_bench.jsonl (one row per world size) and $OUT/scaling.json
# (throughput ratios and scaling efficiency = speed-up / world size), and prints both.
#
#   OUT=runs/dist bash scripts/multi_gpu_check.sh            # defaults: 2M items, 200k users
#   ITEMS=8000000 USERS=1000000 OUT=runs/dist bash scripts/multi_gpu_check.sh
set -euo pipefail
OUT=${OUT:-runs/distributed}
ITEMS=${ITEMS:-2000000}
USERS=${USERS:-200000}
DIM=${DIM:-256}
PY=${PY:-python}
export NCCL_NVLS_ENABLE=0          # NVLink multicast stays off (KINDS.md)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
mkdir -p "$OUT"
ROWS="$OUT/distributed_bench.jsonl"
: > "$ROWS"
ARGS=(bench --items "$ITEMS" --users "$USERS" --dim "$DIM" --out "$ROWS")
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.csv"
for N in 1 2; do
  echo "== $N GPU(s) =="
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((N - 1))) \
    $PY -m torch.distributed.run --standalone --nproc_per_node "$N" -m capsid_gr.distributed.run "${ARGS[@]}" \
    2>&1 | tee "$OUT/bench_world$N.log"
done
$PY - "$ROWS" "$OUT/scaling.json" <<'PYEOF'
import json, sys
rows = {r["world"]: r for r in map(json.loads, open(sys.argv[1]))}
one, two = rows[1], rows[2]
out = {"device": two["device"], "items": two["items"], "users": two["users"]}
for key in ("tokenize_items_per_s", "stage2_samples_per_s", "eval_queries_per_s"):
    speedup = two[key] / one[key]
    out[key] = {"1gpu": one[key], "2gpu": two[key], "speedup": speedup, "efficiency": speedup / 2}
out["peak_memory_gib"] = {"1gpu": one["peak_memory_gib"], "2gpu": two["peak_memory_gib"]}
json.dump(out, open(sys.argv[2], "w"), indent=2)
print(json.dumps(out, indent=2))
PYEOF
