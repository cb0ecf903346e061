#!/usr/bin/env bash
# Everything to check and measure on a GPU machine, in one go (GPU time is scarce): the CUDA path of
# `hsnet train`/`evaluate` end to end on the sample's crops, then the GPU benchmarks. Each step has
# its own time limit and a failing step doesn't stop the others. Results and logs go to $OUT
# (default benchmarks/results/gpu); write the figures up in docs/performance.md.
#
#   bash benchmarks/gpu_session.sh     # from the repository root, after `make pipeline` made the crops
#   bash benchmarks/gpu_session.sh issue18   # what issue 18 still lacks, first call: the GPU tests, the
#                                            # fp32 MTCNN, the whole step as one CUDA graph against
#                                            # reduce-overhead (speed)
#   bash benchmarks/gpu_session.sh issue18b  # second call: the sample trained with whole-step (needs the
#                                            # crops) and evaluated, concurrent runs under MPS
#   bash benchmarks/gpu_session.sh issue18c  # a later lease: concurrent whole-step runs, the step profile
#   (each set's step limits fit one 600 s command of the device tool; carry .whl/ (the facenet-pytorch
#   wheel) and data/processed/sample)
#   STEPS="mtcnn concurrent" bash benchmarks/gpu_session.sh   # only the steps named
#
# On the device tool, whose $OUT brings back at most 8 files, give that folder as BRING_BACK:
#   BRING_BACK=$OUT bash benchmarks/gpu_session.sh issue18 2>&1 | tee $OUT/session.log
# The results are then written to a folder of their own (OUT is not read) and BRING_BACK gets two
# files, renewed after every step (a session cut short keeps what was measured): gpu_session.tgz
# (every result and log) and steps.txt (how each step ended).
#
# Where hsnet isn't installed (a bare GPU image with PyTorch), the package runs from the checkout;
# facenet-pytorch can come as a wheel in .whl/ (pip download --no-deps facenet-pytorch==2.5.3 -d .whl).
set -u
if [ -n "${BRING_BACK:-}" ]; then
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-session.XXXXXX") || exit 2  # BRING_BACK gets them packed: see above
  mkdir -p "$BRING_BACK" || exit 2
else
  OUT=${OUT:-benchmarks/results/gpu}  # not benchmarks/results itself: the CPU figures live there
fi
# every step below, by name (a step added below must be added here to be selectable)
ALL_STEPS="cuda_train cuda_evaluate gpu_eager input_pipeline gpu_reduce_overhead crop gpu_tests mtcnn
  device_data_whole_step sample_whole_step sample_whole_step_evaluate concurrent_whole_step concurrent_mps
  device_data_graphs device_data_profile concurrent device_data_eager sample_device sample_device_evaluate sample_host
  sample_host_evaluate"
case "${1:-}" in
  # what issue 18 still lacks, the most wanted first, in calls whose step limits each fit the device
  # tool's 600 s per command (a 15-minute lease holds the first, and the second if the steps end well
  # under their limits); the other
  # steps were measured on the H200 (benchmarks/results/h200/) and can be named in STEPS to rerun
  # (device_data_graphs again: the default path after this session's changes, and whole-step's yardstick)
  issue18) STEPS=${STEPS:-"gpu_tests mtcnn device_data_whole_step device_data_graphs"} ;;  # limits 585 s
  issue18b) STEPS=${STEPS:-"sample_whole_step sample_whole_step_evaluate concurrent_mps"} ;;  # limits 580 s
  issue18c) STEPS=${STEPS:-"concurrent_whole_step device_data_profile"} ;;  # limits 360 s
  "") ;;
  *) echo "unknown step set '$1': issue18, issue18b, issue18c, or none (every step)" >&2; exit 2 ;;
esac
words() { printf '%s' "$1" | tr -s ' \t\n' '   '; }  # STEPS on one line, no glob expansion
if [ -n "${STEPS+x}" ] && [ -z "$(words "$STEPS" | tr -d ' ')" ]; then
  echo "STEPS names no step; steps: $(words "$ALL_STEPS")" >&2; exit 2
fi
if [ -n "${STEPS:-}" ]; then
  set -f  # a '*' in STEPS is a name, not a glob
  for s in $(words "$STEPS" | tr ' ' '\n' | grep -v '^$'); do
    case " $(words "$ALL_STEPS") " in *" $s "*) ;; *) echo "unknown step '$s'; steps: $(words "$ALL_STEPS")" >&2; exit 2 ;; esac
  done
  set +f
fi
mkdir -p "$OUT"
bring_back() {  # renew BRING_BACK's two files from what OUT holds now
  [ -n "${BRING_BACK:-}" ] || return 0
  tar -czf "$BRING_BACK/.gpu_session.tgz.tmp" -C "$OUT" . && mv "$BRING_BACK/.gpu_session.tgz.tmp" "$BRING_BACK/gpu_session.tgz"
  if [ -f "$OUT/steps.txt" ]; then cp "$OUT/steps.txt" "$BRING_BACK/.steps.txt.tmp" && mv "$BRING_BACK/.steps.txt.tmp" "$BRING_BACK/steps.txt"; fi
}
export PYTHONUNBUFFERED=1 HSNET_CACHE_DIR=${HSNET_CACHE_DIR:-/tmp/hsnet-cache} MPLBACKEND=Agg
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}

selected() { case " $(words "${STEPS:-$1}") " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
step() {  # step NAME SECONDS COMMAND...: run with a limit, keep the log, say how it ended
  local name=$1 limit=$2
  shift 2
  selected "$name" || return 0
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  grep -v "img/s\]" "$OUT/$name.log" | tail -n 6
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  bring_back
}

CROPS=data/processed/sample/manifest.csv  # ignored by git: on the device machine only when carried
with_crops() {  # with_crops STEP...: true when the crops are here; else each selected STEP is said skipped
  [ -f "$CROPS" ] && return 0
  local name
  for name in "$@"; do
    if selected "$name"; then echo "== $name: skipped, no $CROPS (carry data/processed/sample)" | tee -a "$OUT/steps.txt"; fi
  done
  bring_back
  return 1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu_machine.txt"
$PY -c "import torch, facenet_pytorch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu_machine.txt"
bring_back

# 1. the CUDA path end to end: train (bf16, channels-last, fused Adam, device augmentation) and evaluate
if with_crops cuda_train cuda_evaluate; then
  ! selected cuda_train || rm -rf /tmp/hsnet-run  # evaluate only what this run trained
  # 200 s: train.compile auto is CUDA graphs here, ~2 minutes of compiling on a fresh machine (performance.md 6)
  step cuda_train 200 $PY -m hsnet train --data data/processed/sample --params params.yaml --dataset sample \
    --out /tmp/hsnet-run --no-mlflow --device cuda
  step cuda_evaluate 45 $PY -m hsnet evaluate --checkpoint /tmp/hsnet-run/best.pt --data data/processed/sample \
    --out "$OUT/cuda_eval" --no-mlflow --device cuda
fi
# 2. training speed at 224, batch 32: eager (the default), then with CUDA graphs
step gpu_eager 90 $PY -m benchmarks.gpu --out "$OUT"
step input_pipeline 75 $PY -m benchmarks.input_pipeline --out "$OUT"
step gpu_reduce_overhead 180 $PY -m benchmarks.gpu --compile reduce-overhead --out "$OUT"
# 3. MTCNN cropping on the GPU (and the CPU, same run)
step crop 75 $PY -m benchmarks.crop --out "$OUT"
# 4. issue 18, in the order of `issue18` (the most wanted first): the batched MTCNN against facenet-pytorch's
#    at 562x762, batch 16, all in full fp32 (hsnet's detector always is; the faces compared); training data held on the GPU (train.data_on_device) against the host pipeline
#    with CUDA graphs, then eager (train images/s and busy % at 224, batch 32), and where the CUDA-graph
#    step's host time goes (--profile: the work left outside the graphs); several trainings sharing
#    the GPU (aggregate images/s for 1, 2, 4, 8 processes, CUDA graphs, the data on the device); the
#    sample's accuracy with the data on the GPU against the host pipeline (eager: no compilation time)
#    Since the H200 session: the tests that need a GPU (the whole-step graphs against eager steps, the
#    TF32 switch), the whole step as one CUDA graph (train.compile whole-step: speed, the sample's accuracy,
#    concurrent runs), and concurrent runs under NVIDIA MPS (kernels of several processes at once).
step gpu_tests 150 $PY -m pytest -q -p no:cacheprovider tests/train/test_step.py tests/test_device.py \
  tests/data/test_mtcnn.py -k "(gpu or tf32 or fp32) and not cpu"
step mtcnn 75 $PY -m benchmarks.mtcnn --photos 64 --batch 16 --devices cuda --out "$OUT"
step device_data_whole_step 200 $PY -m benchmarks.device_data --compile whole-step --out "$OUT"
if with_crops sample_whole_step sample_whole_step_evaluate; then
  ! selected sample_whole_step || rm -rf /tmp/hsnet-whole-step  # evaluate only what this run trained
  step sample_whole_step 300 $PY -m hsnet train --data data/processed/sample --params params.yaml --dataset sample \
    --out /tmp/hsnet-whole-step --no-mlflow --device cuda --set train.compile=whole-step --set train.data_on_device=true
  step sample_whole_step_evaluate 40 $PY -m hsnet evaluate --checkpoint /tmp/hsnet-whole-step/best.pt \
    --data data/processed/sample --out "$OUT/sample_whole_step_eval" --no-mlflow --device cuda
fi
step concurrent_whole_step 240 $PY -m benchmarks.concurrent --runs 1,2,4,8 --seconds 10 --compile whole-step --out "$OUT"
step concurrent_mps 240 $PY -m benchmarks.concurrent --runs 1,2,4,8 --seconds 10 --mps --out "$OUT"
step device_data_graphs 160 $PY -m benchmarks.device_data --compile reduce-overhead --out "$OUT"
step device_data_profile 120 $PY -m benchmarks.device_data --profile --compile reduce-overhead --out "$OUT"
step concurrent 270 $PY -m benchmarks.concurrent --runs 1,2,4,8 --seconds 10 --out "$OUT"
step device_data_eager 75 $PY -m benchmarks.device_data --out "$OUT"
if with_crops sample_device sample_device_evaluate sample_host sample_host_evaluate; then
  for data in device host; do
    ! selected "sample_$data" || rm -rf "/tmp/hsnet-$data"  # evaluate only what this run trained
    flag=$([ $data = device ] && echo true || echo false)
    step sample_$data 80 $PY -m hsnet train --data data/processed/sample --params params.yaml --dataset sample \
      --out /tmp/hsnet-$data --no-mlflow --device cuda --set train.compile=false --set train.data_on_device=$flag
    step sample_${data}_evaluate 40 $PY -m hsnet evaluate --checkpoint /tmp/hsnet-$data/best.pt \
      --data data/processed/sample --out "$OUT/sample_${data}_eval" --no-mlflow --device cuda
  done
fi
