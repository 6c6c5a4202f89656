#!/usr/bin/env bash
# The GPU measurements of docs/results/bench-gpu, in one call: the GPU checks first, then the benchmarks
# (about 9 minutes on an H200, most of it cuDNN choosing algorithms and inductor compiling).
# Each step has its own time limit, so one slow step (compilation) cannot take the others' results with it,
# and everything measured so far is packed into OUT/results.tgz after every step.
#
#   scripts/bench_gpu.sh OUT_DIR        (from the repository root, on a machine with a CUDA GPU)
set -uo pipefail
OUT=${1:?usage: scripts/bench_gpu.sh OUT_DIR}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$WORK/gpu.txt"
$PY -c "import torch, torchvision, timm, triton; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'triton', triton.__version__)" | tee -a "$WORK/gpu.txt"
$PY -c "import scnet" || { echo "scnet does not import here"; exit 1; }

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its log, repack the results
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$WORK/steps.txt"
    grep -v -e '^USDT' -e 'profiler_st' "$WORK/$name.log" | tail -n 30
    tar czf "$OUT/results.tgz" -C "$WORK" .
}

BENCH=("$PY" -m scnet bench --device "${DEVICE:-cuda}")
step checks 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py
step bf16 200 "${BENCH[@]}" --dtype bf16 --models scnet50 scnet50_plain --modes eager eager_cl deploy_portable deploy graph deploy_graph \
    --batch-sizes 1 32 128 --repeats 10 --warmup 3 --out "$WORK/bf16"
# Training under bf16 autocast: the lean product with the Triton forward and backward kernels, eager and compiled.
step train 300 "${BENCH[@]}" --dtype bf16 --models scnet50 scnet50_plain --modes train_cl train_compiled --batch-sizes 128 \
    --repeats 10 --warmup 3 --out "$WORK/train"
step breakdown 60 "${BENCH[@]}" --breakdown --dtype bf16 --models scnet50 --modes eager_cl deploy_portable deploy --batch-sizes 128 \
    --repeats 3 --warmup 2 --out "$WORK/breakdown"
step fp16 60 "${BENCH[@]}" --dtype fp16 --models scnet50 --modes eager_cl deploy_portable deploy deploy_graph --batch-sizes 128 \
    --repeats 10 --warmup 3 --out "$WORK/fp16"
step compiled 150 "${BENCH[@]}" --dtype bf16 --models scnet50 --modes eager_cl deploy deploy_graph compiled --batch-sizes 128 \
    --repeats 10 --warmup 2 --out "$WORK/compiled"
echo "results: $OUT/results.tgz"
