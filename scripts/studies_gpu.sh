#!/usr/bin/env bash
# The studies two CPU cores cannot afford, on a machine with a CUDA GPU (STUDY chooses; default pathfinder9):
#   pathfinder9  Pathfinder at 9 dashes with the data and training it needs to be learned (the Long Range Arena trains
#                on about 200,000 images), as a learning curve of the demo SCNet against its plain twin.
#   cluttered    more pairs of the cluttered Fashion-MNIST study (its committed recipe, seeds 0 to 44), for the
#                localization scores: their seed-to-seed spread (pointing game +-4.2 points after five pairs) needs
#                about 45 pairs to reach +-1, and scoring more test images cannot narrow it (every run already
#                scores all 10,000).
# One call; the study resumes where it stopped (run it again), and what it has measured so far is packed into
# OUT_DIR/curve.tgz (reports and per-run records, no checkpoints) when it ends, however it ends; unpack it into the
# study's docs folder (printed at the end) and, for a curve, run scripts/learning_curves_figure.py.
#
#   scripts/studies_gpu.sh OUT_DIR [SECONDS]       (from the repository root; SECONDS: the time limit, default 480)
#
# Sizes and seeds can be narrowed for a short lease or a CPU check: SIZES="50000 200000" SEEDS="0 1" EPOCHS=10.
set -uo pipefail
OUT=${1:?usage: scripts/studies_gpu.sh OUT_DIR [SECONDS]}
LIMIT=${2:-480}
STUDY=${STUDY:-pathfinder9}
case "$STUDY" in
    pathfinder9)
        SIZES=${SIZES:-25000 50000 100000 200000}; SEEDS=${SEEDS:-0 1}; EPOCHS=${EPOCHS:-10}; POOL=${POOL:-200000}
        DOCS=docs/results/learning-curves/pathfinder9; RUN=runs/curves/pathfinder9
        # shellcheck disable=SC2206  # the sizes are a list of words
        ARGS=(--data pathfinder32-9 --limit-train "$POOL" --limit-val 10000 --epochs "$EPOCHS" --train-sizes $SIZES) ;;
    cluttered)  # the committed study's recipe (scripts/what_sc_buys.sh), more seeds
        SEEDS=${SEEDS:-$(seq -s ' ' 0 44)}; EPOCHS=${EPOCHS:-4}
        DOCS=docs/results/cluttered-fashion-mnist-study; RUN=runs/cluttered
        ARGS=(--data cluttered_fashion_mnist --limit-train 30000 --epochs "$EPOCHS") ;;
    *) echo "unknown STUDY $STUDY (pathfinder9, cluttered)" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# Committed records first: a study measured in part on an earlier lease (or on a CPU) continues.
if [ -d "$DOCS" ]; then
    (cd "$DOCS" && find . -type f \( -name study.json -o -name compare-run.json -o -name log.csv \)) |
        while read -r f; do mkdir -p "$RUN/$(dirname "$f")"; [ -e "$RUN/$f" ] || cp "$DOCS/$f" "$RUN/$f"; done
fi
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
t0=$SECONDS
# shellcheck disable=SC2086  # the seeds are a list of words
timeout "$LIMIT" $PY -m scnet compare --models scnet_demo "${ARGS[@]}" --batch-size 128 --channels-last --jobs 2 \
    --seeds $SEEDS --out "$RUN" \
    > "$OUT/curve.log" 2>&1
echo "== $STUDY: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/curve.log"
tail -n 20 "$OUT/curve.log"
(cd "$RUN" && find . -type f \( -name 'report.*' -o -name localization.png -o -name cams.png -o -name study.json -o -name compare-run.json -o -name log.csv \) -print0 |
    tar czf "$OUT/curve.tgz" --null -T -)
echo "results: $OUT/curve.tgz (unpack into $DOCS)"
