#!/usr/bin/env bash
# Issue 16's Beauty table on one GPU, in two device calls (each under 10 minutes):
#   bash scripts/beauty_final.sh A   # Markov anchors, SASRec x3, RQ-KMeans x3, GAOQ x3 (10 processes)
#   bash scripts/beauty_final.sh B   # RQ-VAE x3, CAPSID x3, and 4 seed-0 learning-rate probes (10 processes)
#   bash scripts/beauty_final.sh S   # one call for all: anchors, SASRec/RQ-KMeans x3, GAOQ/RQ-VAE/CAPSID seed 0, 3 probes
#   bash scripts/beauty_final.sh R   # one call for issue 16's rows: anchors, SASRec x3 (200 epochs), RQ-KMeans x3 at
#                                    # batch 512 / lr 2e-3, the preset's seed 0 as control, one dropout probe, GPU tests
#   FIT_SECONDS=470 JOB_TIMEOUT=540 bash scripts/beauty_final.sh E   # RQ-KMeans x3 at 120 epochs, seed 0 with
#                                    # 4 + 4 layers / FFN 1024 and at 200 epochs, and the GPU tests (5 runs)
#   FIT_SECONDS=480 JOB_TIMEOUT=560 bash scripts/beauty_final.sh G   # the 4 + 4-layer / FFN-1024 encoder-decoder:
#                                    # RQ-KMeans x3, and seed-0 probes on it, one change each (item ids, item
#                                    # features, untied output, width 256, dropout 0.3), the Markov anchors (9 runs)
#   FIT_SECONDS=380 JOB_TIMEOUT=450 bash scripts/beauty_final.sh H   # builds the extension first (G had none, so
#                                    # validation decoded on the eager beam step), then the 4 + 4 model: RQ-KMeans
#                                    # x3, item features, width 256, dropout 0.3 (6 runs) beside the GPU tests
#   FIT_SECONDS=420 JOB_TIMEOUT=480 bash scripts/beauty_final.sh I   # the 4 + 4 model with item features (H's best
#                                    # probe): RQ-KMeans seeds 1, 2, and seed 0 of GAOQ, RQ-VAE, CAPSID, CAPSID + dedup
#   FIT_SECONDS=380 JOB_TIMEOUT=470 bash scripts/beauty_final.sh J   # seed-0 probes on the gpu preset (weighted
#                                    # vectors, label smoothing, dropout 0.1, width 256), SASRec, the GPU tests
#   EXTRA="--set fit.prior_alphas=[0,0.1,0.2,0.4]" FIT_SECONDS=360 JOB_TIMEOUT=470 bash scripts/beauty_final.sh L
#                                    # GAOQ x2, RQ-KMeans, RQ-VAE, CAPSID + dedup, CAPSID on the auto-weighted
#                                    # vectors (.data/beauty_vectors_c075.npy), each also with the popularity
#                                    # correction chosen on validation, beside the GPU tests
#   EXTRA="--sim-betas 0,0.5,1,2,4" FIT_SECONDS=340 JOB_TIMEOUT=460 bash scripts/beauty_final.sh M
#                                    # RQ-KMeans x3, RQ-VAE seeds 1, 2, GAOQ seed 2 (c075 vectors, similarity
#                                    # re-ranking chosen on validation), beside the GPU tests
#   EXTRA="--sim-betas 0,0.5,1,2,4" FIT_SECONDS=140 JOB_TIMEOUT=230 bash scripts/beauty_final.sh N
#                                    # the GPU tests (-v, test by test) beside one RQ-KMeans run (short call)
#   FIT_SECONDS=380 JOB_TIMEOUT=480 bash scripts/beauty_final.sh Q
#                                    # the GPU tests beside RQ-KMeans x3 and GAOQ seed 0 keeping their beams
#                                    # (--save-lists) for scripts/rerank_lists.py
#   FIT_SECONDS=330 JOB_TIMEOUT=440 bash scripts/beauty_final.sh V   (capsid-unique without SemanticBPE: one change)
#                                    # Q's runs and capsid-unique seed 0 (uniqueness-aware stop, Stage 1 cut to
#                                    # its warm-up epoch), all keeping their beams, beside the GPU tests
#   FIT_SECONDS=230 JOB_TIMEOUT=300 TEST_TIMEOUT=300 bash scripts/beauty_final.sh W
#                                    # a short call: the GPU tests beside RQ-KMeans x3 keeping their beams
#   FIT_SECONDS=330 JOB_TIMEOUT=500 bash scripts/beauty_final.sh U
#                                    # the rest of issue 16's table on the auto-weighted vectors, keeping their
#                                    # beams: RQ-VAE seeds 1, 2, GAOQ seed 2, CAPSID seed 0 (GPU tests: TESTS=1)
#   bash scripts/beauty_final.sh P   # seed-0 probes, one change each: SASRec epochs/lr, the encoder-decoder's
#                                    # item-id inputs, lr, epochs, width, dropout (10 processes)
# G, H and I name the encoder-decoder flags they ran with, so they reproduce after the gpu preset took
# I's settings (4 + 4 layers, FFN 1024, item features) as its own; the cases above G ran with the preset of
# the commit their results file names.
# Vectors: .data/beauty_vectors_content_cooc.npy (capsid vectors --data DIR --sources content,cooc --save ...).
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 FIT_SECONDS=${FIT_SECONDS:-420} JOB_TIMEOUT=${JOB_TIMEOUT:-580} \
  VECTORS=${VECTORS:-.data/beauty_vectors_content_cooc.npy}
case "${1:-A}" in
  A) bash scripts/beauty_job.sh "@markov,markov1 0" "@sasrec 0" "@sasrec 1" "@sasrec 2" \
       "rqkmeans 0" "rqkmeans 1" "rqkmeans 2" "gaoq 0" "gaoq 1" "gaoq 2" ;;
  B) bash scripts/beauty_job.sh "rqvae 0" "rqvae 1" "rqvae 2" "capsid 0" "capsid 1" "capsid 2" \
       "rqkmeans 0 --set fit.lr=2e-3" "rqkmeans 0 --set fit.lr=3e-3" \
       "rqkmeans 0 --set fit.batch_size=512 --set fit.lr=2e-3" "@sasrec 0 --set fit.lr=2e-3" ;;
  S) # everything in one call when only one comes (13 processes): the anchors, SASRec and RQ-KMeans x3 on the
     # preset, GAOQ, RQ-VAE and CAPSID seed 0, and three seed-0 probes
     bash scripts/beauty_job.sh "@markov,markov1 0" "@sasrec 0" "@sasrec 1" "@sasrec 2" \
       "rqkmeans 0" "rqkmeans 1" "rqkmeans 2" "gaoq 0" "rqvae 0" "capsid 0" \
       "rqkmeans 0 --set encdec.item_ids=true" "rqkmeans 0 --set fit.lr=2e-3" "@sasrec 0 --set fit.epochs=200" ;;
  R) (SKIP_FULL=1 MAX_JOBS=6 OUT=${OUT:-gpu-logs}/gpu_check timeout 560 bash scripts/gpu_check.sh > /dev/null 2>&1) &
     S="--set fit.epochs=200 --set fit.patience=40"; B="--set fit.batch_size=512 --set fit.lr=2e-3"
     O=${OUT:-gpu-logs}  # three folders so each group's seeds share one tag (beauty_table.py groups by tag)
     OUT=$O/anchors EXTRA="$S" bash scripts/beauty_job.sh "@markov,markov1 0" "@sasrec 0" "@sasrec 1" "@sasrec 2" &
     OUT=$O/big_batch EXTRA="$B" bash scripts/beauty_job.sh "rqkmeans 0" "rqkmeans 1" "rqkmeans 2" \
       "rqkmeans 0 --set encdec.dropout=0.1" &
     OUT=$O/preset bash scripts/beauty_job.sh "rqkmeans 0" &
     wait ;;
  E) (SKIP_FULL=1 MAX_JOBS=6 OUT=${OUT:-gpu-logs}/gpu_check timeout 500 bash scripts/gpu_check.sh > /dev/null 2>&1) &
     OUT=${OUT:-gpu-logs}/e120 EXTRA="--set fit.epochs=120" bash scripts/beauty_job.sh "rqkmeans 0" "rqkmeans 1" "rqkmeans 2" \
       "rqkmeans 0 --set encdec.enc_layers=4 --set encdec.dec_layers=4 --set encdec.ffn=1024" \
       "rqkmeans 0 --set fit.epochs=200"
     wait ;;
  G) OUT=${OUT:-gpu-logs}/deep EXTRA="--set encdec.enc_layers=4 --set encdec.dec_layers=4 --set encdec.ffn=1024 --set encdec.item_features=false" \
       bash scripts/beauty_job.sh "@markov,markov1 0" "rqkmeans 0" "rqkmeans 1" "rqkmeans 2" \
       "rqkmeans 0 --set encdec.item_ids=true" "rqkmeans 0 --set encdec.item_features=true" \
       "rqkmeans 0 --set encdec.tied_output=false" "rqkmeans 0 --set encdec.hidden=256" \
       "rqkmeans 0 --set encdec.dropout=0.3" ;;
  H) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     (SKIP_BUILD=1 SKIP_FULL=1 OUT=$O/gpu_check timeout 480 bash scripts/gpu_check.sh > "$O/gpu_check.txt" 2>&1) &
     OUT=$O/deep EXTRA="--set encdec.enc_layers=4 --set encdec.dec_layers=4 --set encdec.ffn=1024 --set encdec.item_features=false" \
       bash scripts/beauty_job.sh "rqkmeans 0" "rqkmeans 1" "rqkmeans 2" "rqkmeans 0 --set encdec.item_features=true" \
       "rqkmeans 0 --set encdec.hidden=256" "rqkmeans 0 --set encdec.dropout=0.3"
     wait ;;
  I) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     OUT=$O/feat EXTRA="--set encdec.enc_layers=4 --set encdec.dec_layers=4 --set encdec.ffn=1024 --set encdec.item_features=true" \
       bash scripts/beauty_job.sh "rqkmeans 1" "rqkmeans 2" "gaoq 0" "rqvae 0" "capsid 0" "capsid-dedup 0" ;;
  J) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)  # seed-0 probes on the gpu preset, one change each, beside
     # the GPU tests: the control, content + 0.75 x cooc vectors (.data/beauty_vectors_c075.npy), label smoothing 0.1,
     # dropout 0.1, width 256; and SASRec (every row also reports the history-removed metrics)
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     (SKIP_BUILD=1 SKIP_FULL=1 OUT=$O/gpu_check timeout 480 bash scripts/gpu_check.sh > "$O/gpu_check.txt" 2>&1) &
     OUT=$O/probe bash scripts/beauty_job.sh "rqkmeans 0" "rqkmeans 0 --vectors .data/beauty_vectors_c075.npy" \
       "rqkmeans 0 --set encdec.label_smoothing=0.1" "rqkmeans 0 --set encdec.dropout=0.1" \
       "rqkmeans 0 --set encdec.hidden=256" "@sasrec 0"
     wait ;;
  L) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)  # the issue-16 table's other tokenizers on the auto-weighted
     # vectors (content + 0.75 x cooc, what --block-weights auto builds on Beauty), beside the GPU tests
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     (SKIP_BUILD=1 SKIP_FULL=1 OUT=$O/gpu_check timeout 480 bash scripts/gpu_check.sh > "$O/gpu_check.txt" 2>&1) &
     OUT=$O/c075 VECTORS=.data/beauty_vectors_c075.npy bash scripts/beauty_job.sh "gaoq 0" "gaoq 1" "rqkmeans 0" \
       "rqvae 0" "capsid-dedup 0" "capsid 0"
     wait ;;
  M) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)  # seeds 1, 2 of RQ-KMeans and RQ-VAE, seed 2 of GAOQ and
     # RQ-KMeans seed 0 on the auto-weighted vectors, each also re-ranked by similarity to the last item
     # (--sim-betas, chosen on validation), beside the GPU tests (after the C++ argument checks moved)
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     (SKIP_BUILD=1 SKIP_FULL=1 OUT=$O/gpu_check timeout 480 bash scripts/gpu_check.sh > "$O/gpu_check.txt" 2>&1) &
     OUT=$O/c075 VECTORS=.data/beauty_vectors_c075.npy bash scripts/beauty_job.sh "rqkmeans 0" "rqkmeans 1" \
       "rqkmeans 2" "rqvae 1" "rqvae 2" "gaoq 2"
     wait ;;
  N) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)  # a short call (little device time left): the GPU tests,
     # written test by test, beside one RQ-KMeans run with the similarity re-ranking on the c075 vectors
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     (PYTHONPATH="$PWD:$PWD/python" timeout ${TEST_TIMEOUT:-300} python3 -m pytest -v -m gpu -p no:cacheprovider \
        --continue-on-collection-errors > "$O/pytest_gpu.log" 2>&1; echo "gpu tests rc=$?" >> "$O/pytest_gpu.log") &
     OUT=$O/c075 VECTORS=.data/beauty_vectors_c075.npy bash scripts/beauty_job.sh "rqkmeans 0"
     wait ;;
  Q) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)  # the GPU tests test by test beside four runs on the
     # auto-weighted vectors that keep their beams (--save-lists) for offline re-ranking studies
     # (scripts/rerank_lists.py): RQ-KMeans x3 and GAOQ seed 0
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     (PYTHONPATH="$PWD:$PWD/python" timeout ${TEST_TIMEOUT:-400} python3 -m pytest -v -m gpu -p no:cacheprovider \
        --continue-on-collection-errors > "$O/pytest_gpu.log" 2>&1; echo "gpu tests rc=$?" >> "$O/pytest_gpu.log") &
     OUT=$O/q VECTORS=.data/beauty_vectors_c075.npy EXTRA="--save-lists" bash scripts/beauty_job.sh "rqkmeans 0" \
       "rqkmeans 1" "rqkmeans 2" "gaoq 0"
     wait ;;
  V) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)  # Q's runs plus CAPSID with the uniqueness-aware stop
     # (capsid-unique, Stage 1 cut to its warm-up epoch, which early stopping picks in every CAPSID run)
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     (PYTHONPATH="$PWD:$PWD/python" timeout ${TEST_TIMEOUT:-400} python3 -m pytest -v -m gpu -p no:cacheprovider \
        --continue-on-collection-errors > "$O/pytest_gpu.log" 2>&1; echo "gpu tests rc=$?" >> "$O/pytest_gpu.log") &
     OUT=$O/v VECTORS=.data/beauty_vectors_c075.npy EXTRA="--save-lists" bash scripts/beauty_job.sh "rqkmeans 0" \
       "rqkmeans 1" "rqkmeans 2" "gaoq 0" "capsid-unique 0 --set stage1.epochs=1 --set stage1.lambda_bpe=0"
     wait ;;
  W) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)  # a short call: the GPU tests beside RQ-KMeans x3 keeping beams
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     (PYTHONPATH="$PWD:$PWD/python" timeout ${TEST_TIMEOUT:-300} python3 -m pytest -v -m gpu -p no:cacheprovider \
        --continue-on-collection-errors > "$O/pytest_gpu.log" 2>&1; echo "gpu tests rc=$?" >> "$O/pytest_gpu.log") &
     OUT=$O/w VECTORS=.data/beauty_vectors_c075.npy EXTRA="--save-lists" bash scripts/beauty_job.sh "rqkmeans 0" \
       "rqkmeans 1" "rqkmeans 2"
     wait ;;
  U) O=${OUT:-gpu-logs}; mkdir -p "$O"; t=$(date +%s)  # RQ-VAE x2, GAOQ, CAPSID with their beams (see the header)
     TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 setup.py -q build_ext --inplace > "$O/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - t )) s"
     python3 -c "import capsid_kernels._C" || exit 1
     [ -n "${TESTS:-}" ] && (PYTHONPATH="$PWD:$PWD/python" timeout ${TEST_TIMEOUT:-400} python3 -m pytest -v -m gpu -p no:cacheprovider \
        --continue-on-collection-errors ${TESTS_K:+-k "$TESTS_K"} > "$O/pytest_gpu.log" 2>&1; echo "gpu tests rc=$?" >> "$O/pytest_gpu.log") &
     OUT=$O/u VECTORS=.data/beauty_vectors_c075.npy EXTRA="--save-lists" bash scripts/beauty_job.sh "rqvae 1" \
       "rqvae 2" "gaoq 2" "capsid 0"
     wait ;;
  P) bash scripts/beauty_job.sh "@markov,markov1 0" "@sasrec 0" "@sasrec 0 --set fit.epochs=200" \
       "@sasrec 0 --set fit.epochs=200 --set fit.lr=2e-3" "rqkmeans 0" "rqkmeans 0 --set encdec.item_ids=true" \
       "rqkmeans 0 --set fit.lr=2e-3" "rqkmeans 0 --set fit.epochs=120" \
       "rqkmeans 0 --set encdec.hidden=256 --set encdec.ffn=1024" "rqkmeans 0 --set encdec.dropout=0.1"
     rm -rf .probe && mkdir -p .probe && tar xzf "$OUT/beauty_job.tgz" -C .probe ;;  # F reads it on a warm machine
  F) # seeds 1, 2 of the probes that won on validation NDCG@10 (preset where P's results are not here),
     # and seed 0 of GAOQ, RQ-VAE and CAPSID with the winning encoder-decoder flags
     ENC=$(python3 scripts/pick_probe.py .probe rqkmeans); SAS=$(python3 scripts/pick_probe.py .probe @sasrec)
     echo "encdec flags: ${ENC:-preset}; sasrec flags: ${SAS:-preset}" | tee "${OUT:-gpu-logs}/picked.txt"
     OUT=${OUT:-gpu-logs}/sasrec EXTRA="$SAS" bash scripts/beauty_job.sh "@sasrec 1" "@sasrec 2" &
     OUT=${OUT:-gpu-logs}/encdec EXTRA="$ENC" bash scripts/beauty_job.sh "rqkmeans 1" "rqkmeans 2" "gaoq 0" \
       "rqvae 0" "capsid 0" &
     wait ;;
esac
