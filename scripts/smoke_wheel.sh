#!/usr/bin/env bash
# Build the wheel and sdist, check them, install the wheel into a fresh venv (no editable install, no source tree
# on the path) and use it there as a user would: scnet --version, scnet info, a forward pass, a few training steps.
#
#   scripts/smoke_wheel.sh [PYTHON]      (from the repository root; PYTHON has build and twine, default .venv/bin/python)
set -euo pipefail
PY=${1:-.venv/bin/python}
REPO=$(pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m build --no-isolation --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
rm -rf build  # setuptools' scratch folder
"$PY" -m twine check --strict "$WORK"/dist/*
WHEEL=$(ls "$WORK"/dist/*.whl)
echo "wheel: $(basename "$WHEEL"), $(python3 -m zipfile -l "$WHEEL" | tail -n +2 | wc -l) files"
python3 -m venv "$WORK/venv"
# The pinned versions of CI for what the wheel depends on (torch from this machine's disk), nothing else.
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check -c requirements-ci.txt "$WHEEL"
cd "$WORK"  # outside the source tree: only the installed package can be imported
unset PYTHONPATH
"$WORK/venv/bin/scnet" --version
"$WORK/venv/bin/python" - "$REPO" <<'PY'
import sys
from pathlib import Path

import torch

import scnet

assert "site-packages" in scnet.__file__ and not Path(scnet.__file__).is_relative_to(sys.argv[1]), scnet.__file__
model = scnet.create_model("scnet_demo", num_classes=10, in_chans=1).eval()
with torch.no_grad():
    logits = model(torch.randn(2, 1, 28, 28))
assert logits.shape == (2, 10) and torch.isfinite(logits).all()
print(f"forward pass: scnet {scnet.__version__} from {scnet.__file__}, logits {tuple(logits.shape)}")
PY
"$WORK/venv/bin/python" -c "from scnet.train import load_yaml; assert load_yaml('imagenet/scnet50')['model'] == 'scnet50'; print('bundled recipe imagenet/scnet50: found')"
"$WORK/venv/bin/scnet" info --models 'scnet_demo*' --input-size 32
"$WORK/venv/bin/scnet" train --data synthetic --batch-size 32 --epochs 1 --out "$WORK/run" | tail -n 2
test -f "$WORK/run/checkpoint-last.pth" && test -f "$WORK/run/weights-best.safetensors"
echo "smoke test of the installed wheel: passed"
