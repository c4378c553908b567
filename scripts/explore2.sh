#!/usr/bin/env bash
# Issue 16, second exploration on one GPU (seed 0, 10 runs sharing, as in beauty_final.sh A):
# how fast the encoder-decoder and SASRec learn within the time budget (learning rate, batch, dropout, window).
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 FIT_SECONDS=${FIT_SECONDS:-300} JOB_TIMEOUT=${JOB_TIMEOUT:-470} VECTORS=.data/beauty_vectors_content_cooc.npy
bash scripts/beauty_job.sh "rqkmeans 0" "rqkmeans 0 --set fit.lr=2e-3" "rqkmeans 0 --set fit.lr=3e-3" \
  "rqkmeans 0 --set fit.lr=5e-3" "rqkmeans 0 --set fit.batch_size=512 --set fit.lr=2e-3" \
  "rqkmeans 0 --set encdec.dropout=0.1" "rqkmeans 0 --set fit.max_history=20" \
  "@sasrec 0" "@sasrec 0 --set fit.lr=2e-3" "@sasrec 0 --set fit.lr=3e-3"
