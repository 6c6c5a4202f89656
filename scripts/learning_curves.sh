#!/usr/bin/env bash
# The learning curves behind the README's "What SC-Conv buys": the demo SCNet against its plain twin at several
# training-set sizes per task, every run with the steps of the whole set (only the data varies), paired by seed.
# Each curve resumes where it stopped, here or on another machine: the committed per-run records (compare-run.json,
# log.csv; no checkpoints) are copied back into runs/curves/ first, and every finished run is read back, not trained
# again. The reports and records go to docs/results/learning-curves/ after each curve.
#
#     bash scripts/learning_curves.sh [CURVE ...]     # CURVE: pathfinder6 cluttered fashion (default: all, in that order)
#     bash scripts/learning_curves.sh publish CURVE   # copy what a running curve has finished so far to docs/
#
# About 15 minutes of both cores per pair at 32 px (2 cores, one thread per run); see each curve's README for its cost.
set -euo pipefail
cd "$(dirname "$0")/.."
SCNET=${SCNET:-.venv/bin/scnet}
PY=${PY:-.venv/bin/python}
DOCS=docs/results/learning-curves
COMMON=(--models scnet_demo --channels-last --jobs 2)
KEEP=(-name 'report.*' -o -name 'localization.png' -o -name 'cams.png' -o -name study.json -o -name compare-run.json -o -name log.csv)

restore() {  # committed records -> the run folder, where it lacks them
    local src=$DOCS/$1 dst=runs/curves/$1 f
    [ -d "$src" ] || return 0
    (cd "$src" && find . -type f \( -name study.json -o -name compare-run.json -o -name log.csv \)) | while read -r f; do
        if [ ! -e "$dst/$f" ]; then mkdir -p "$dst/$(dirname "$f")"; cp "$src/$f" "$dst/$f"; fi
    done
}

publish() {  # the run folder's reports and per-run records -> docs (checkpoints and weights stay in runs/)
    local src=runs/curves/$1 dst=$DOCS/$1 f
    (cd "$src" && find . -type f \( "${KEEP[@]}" \)) | while read -r f; do
        # a run still training keeps its log here: its record goes out with its result, never half-written
        if [ "$(basename "$f")" = log.csv ] && [ ! -e "$src/$(dirname "$f")/compare-run.json" ]; then continue; fi
        mkdir -p "$dst/$(dirname "$f")"; cp "$src/$f" "$dst/$f"
    done
}

curve() {  # NAME, then scnet compare's arguments
    local name=$1; shift
    restore "$name"
    "$SCNET" compare "${COMMON[@]}" --out "runs/curves/$name" "$@"
    publish "$name"
}

main() {
    if [ "${1:-}" = publish ]; then
        publish "${2:?publish which curve?}"
        return 0
    fi
    local name common
    for name in ${@:-pathfinder6 cluttered fashion}; do
        case "$name" in
            pathfinder6)  # 50,000 generated images, 6 epochs: the committed length-6 study's recipe at its largest size,
                # whose five pairs are the 50,000 point (records rebuilt from its report.json); a seed-0 pilot at 10,000
                # and 15,000 put the transition between them, hence five pairs at 10,000, 12,000 and 15,000
                common=(--data pathfinder32-6 --limit-train 50000 --limit-val 10000 --epochs 6 --batch-size 128)
                curve pathfinder6 "${common[@]}" --train-sizes 7500 10000 12000 15000 20000 50000 --seeds 0 1 2
                curve pathfinder6 "${common[@]}" --train-sizes 10000 12000 15000 50000 --seeds 0 1 2 3 4 ;;
            cluttered)  # 60,000 canvases, 2 epochs: the steps of the committed cluttered study (30,000 for 4 epochs)
                curve cluttered --data cluttered_fashion_mnist --epochs 2 --batch-size 128 --train-sizes 2000 6000 20000 60000 \
                    --seeds 0 1 2 ;;
            fashion)  # the main job's recipe (all 60,000 images, 5 epochs) at every size
                curve fashion --data fashion_mnist --epochs 5 --train-sizes 500 1500 5000 15000 60000 --seeds 0 1 2 ;;
            *) echo "unknown curve $name (pathfinder6, cluttered, fashion)" >&2; return 2 ;;
        esac
    done
    "$PY" scripts/learning_curves_figure.py "$DOCS" --out "$DOCS"
}

main "$@"; exit $?  # one line: bash has read the whole script before any curve runs, so editing it then is safe
