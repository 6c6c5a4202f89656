#!/usr/bin/env bash
# The studies behind the README's "What SC-Conv buys": the demo SCNet against its plain twin, paired by seed, on
# Pathfinder 32 px at curve lengths 6, 9 and 14, and on cluttered Fashion-MNIST (accuracy and localization).
# Every study resumes where it stopped (run it again after an interruption); the runs stay in runs/, the reports
# are copied to docs/results/. About 5 CPU-hours on 2 cores (the two runs of a pair train at once, one thread each).
#
#     bash scripts/what_sc_buys.sh [STUDY ...]      # STUDY: len6 len9 len14 cluttered (default: all, in that order)
set -euo pipefail
cd "$(dirname "$0")/.."
SCNET=${SCNET:-.venv/bin/scnet}
PY=${PY:-.venv/bin/python}
COMMON=(--models scnet_demo --seeds 0 1 2 3 4 --until-resolved 1.0 --max-seeds 7 --batch-size 128 --channels-last --jobs 2)

copy_report() {  # run folder -> docs/results folder: the report files and each run's record, not its checkpoints
    local f
    mkdir -p "$2"
    for f in report.md report.json report.png localization.png cams.png; do
        if [ -f "$1/$f" ]; then cp "$1/$f" "$2/"; fi
    done
    for f in "$1"/*/compare-run.json; do
        if [ -f "$f" ]; then mkdir -p "$2/$(basename "$(dirname "$f")")"; cp "$f" "$2/$(basename "$(dirname "$f")")/"; fi
    done
}

restore_runs() {  # docs/results folder -> run folder: the committed run records it lacks (a study continues anywhere)
    local f run
    for f in "$1"/*/compare-run.json; do
        [ -f "$f" ] || continue
        run=$2/$(basename "$(dirname "$f")")
        if [ ! -e "$run/compare-run.json" ]; then mkdir -p "$run"; cp "$f" "$run/"; fi
    done
}

for study in "${@:-len6 len9 len14 cluttered}"; do
    for name in $study; do
        case "$name" in
            len6|len9|len14)
                length=${name#len}
                "$SCNET" compare "${COMMON[@]}" --data "pathfinder32-$length" --limit-train 50000 --limit-val 10000 --epochs 6 \
                    --out "runs/pathfinder32-$length"
                copy_report "runs/pathfinder32-$length" "docs/results/pathfinder-study/$name" ;;
            cluttered)  # seeds 5-7 added for the localization scores (the first five pairs' records rebuilt from report.json)
                restore_runs docs/results/cluttered-fashion-mnist-study runs/cluttered
                "$SCNET" compare --models scnet_demo --seeds 0 1 2 3 4 5 6 7 --batch-size 128 --channels-last --jobs 2 \
                    --data cluttered_fashion_mnist --limit-train 30000 --epochs 4 --out runs/cluttered
                copy_report runs/cluttered docs/results/cluttered-fashion-mnist-study ;;
            *) echo "unknown study $name (len6, len9, len14, cluttered)" >&2; exit 2 ;;
        esac
    done
done
levels=()
for name in len6 len9 len14; do
    if [ -f "docs/results/pathfinder-study/$name/report.json" ]; then levels+=("docs/results/pathfinder-study/$name"); fi
done
if [ ${#levels[@]} -gt 0 ]; then
    "$PY" scripts/pathfinder_levels.py "${levels[@]}" --out docs/results/pathfinder-study
fi
