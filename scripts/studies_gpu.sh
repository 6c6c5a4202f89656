#!/usr/bin/env bash
# The study two CPU cores cannot afford: Pathfinder at 9 dashes with the data and training it needs to be learned
# (the Long Range Arena trains on about 200,000 images), as a learning curve of the demo SCNet against its plain twin.
# One call on a machine with a CUDA GPU; the curve resumes where it stopped (run it again), and what it has
# measured so far is packed into OUT_DIR/curve.tgz (reports and per-run records, no checkpoints) when it ends,
# however it ends; unpack it into docs/results/learning-curves/ and run scripts/learning_curves_figure.py.
#
#   scripts/studies_gpu.sh OUT_DIR [SECONDS]       (from the repository root; SECONDS: the time limit, default 480)
#
# Sizes and seeds can be narrowed for a short lease or a CPU check: SIZES="50000 200000" SEEDS="0 1" EPOCHS=10.
set -uo pipefail
OUT=${1:?usage: scripts/studies_gpu.sh OUT_DIR [SECONDS]}
LIMIT=${2:-480}
SIZES=${SIZES:-25000 50000 100000 200000}
SEEDS=${SEEDS:-0 1}
EPOCHS=${EPOCHS:-10}
POOL=${POOL:-200000}
NAME=pathfinder9
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RUN=runs/curves/$NAME

# Committed records first: a curve measured in part on an earlier lease continues.
if [ -d "docs/results/learning-curves/$NAME" ]; then
    (cd "docs/results/learning-curves/$NAME" && find . -type f \( -name study.json -o -name compare-run.json -o -name log.csv \)) |
        while read -r f; do mkdir -p "$RUN/$(dirname "$f")"; [ -e "$RUN/$f" ] || cp "docs/results/learning-curves/$NAME/$f" "$RUN/$f"; done
fi
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
t0=$SECONDS
# shellcheck disable=SC2086  # the sizes and seeds are lists of words
timeout "$LIMIT" $PY -m scnet compare --models scnet_demo --data pathfinder32-9 --limit-train "$POOL" --limit-val 10000 \
    --epochs "$EPOCHS" --batch-size 128 --channels-last --jobs 2 --train-sizes $SIZES --seeds $SEEDS --out "$RUN" \
    > "$OUT/curve.log" 2>&1
echo "== curve: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/curve.log"
tail -n 20 "$OUT/curve.log"
(cd "$RUN" && find . -type f \( -name 'report.*' -o -name study.json -o -name compare-run.json -o -name log.csv \) -print0 |
    tar czf "$OUT/curve.tgz" --null -T -)
echo "results: $OUT/curve.tgz"
