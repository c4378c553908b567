#!/usr/bin/env bash
# Issue 16, first exploration on one GPU (seed 0): anchors, the encoder-decoder generator, vectors.
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 FIT_SECONDS=${FIT_SECONDS:-300} JOB_TIMEOUT=${JOB_TIMEOUT:-500} VECTORS=.data/beauty_vectors_content_cooc.npy
bash scripts/beauty_job.sh "@markov,markov1 0" "@sasrec 0" "@sasrec 0 --set sasrec.dropout=0.5" \
  "@sasrec 0 --set sasrec.hidden=128 --set sasrec.ffn=512" \
  "rqkmeans 0" "rqkmeans 0 --vectors .data/beauty_vectors_content.npy" \
  "rqkmeans 0 --vectors .data/beauty_vectors_content_collab_attr.npy" \
  "rqkmeans 0 --set encdec.positions=\"absolute\"" \
  "rqkmeans 0 --set encdec.enc_layers=4 --set encdec.dec_layers=4 --set encdec.ffn=1024" \
  "rqkmeans 0 --set encdec.dropout=0.3" "capsid-dedup 0" "rqkmeans 0 --generator decoder --set stage2.max_seconds=300"
