"""Does the exported graph's form, or where int8 leaves the calibration branch in float, change a trained model's
int8 accuracy? Every (form, keep_fp32) pair on trained checkpoints, against the float32 model on its own test images.

    python scripts/int8_forms.py runs/curves/fashion/n60000/*-seed0/checkpoint-last.pth --out docs/results/int8/forms

Forms as ``scnet.fast.onnx_form`` writes them ("export": the model's own graph); each int8 file calibrated on the
first 512 training images of the model's task (``int8.calibration_batches``), as ``scnet export --int8`` does.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

import scnet
from scnet.bench.cases import ONNX_FORMS
from scnet.data import build_datasets
from scnet.int8 import KEEP_FP32, calibration_batches, logit_fidelity, quantize

sys.path.insert(0, str(Path(__file__).parent))
from int8_report import _accuracy, _logits  # noqa: E402  (the int8 report's own logits and top-1)

FORMS = ("export", *ONNX_FORMS)


def one_checkpoint(checkpoint: Path, forms: list[str], keeps: list[str], images: int) -> list[dict]:
    loaded = scnet.load_model(file=str(checkpoint))
    model = loaded.model.eval()
    config = (loaded.checkpoint or {}).get("config", {})
    train, test, _ = build_datasets(config["data"], config.get("data_dir"), 512, images, loaded.info.image_size)
    ref, y = _logits(model, test)
    calib = calibration_batches(train, 512)
    rows = []
    for form in forms:
        for keep in keeps:
            rewrites = None if form == "export" else ONNX_FORMS[form]
            out, _ = _logits(quantize(model, calib, keep_fp32=keep, rewrites=rewrites), test)
            rows.append(dict(checkpoint=str(checkpoint), model=loaded.arch, data=config["data"], form=form, keep_fp32=keep,
                             fp32=_accuracy(ref, y), int8=_accuracy(out, y), **logit_fidelity(ref, out)))
    return rows


def markdown(rows: list[dict], command: str) -> list[str]:
    lines = ["# int8 accuracy per exported form and quantize/dequantize placement, on trained models", "",
             f"Command: `{command}`", "",
             "| model | checkpoint | form | kept in float | float32 top-1 (%) | int8 top-1 (%) | top-1 agreement (%) | logit rel. error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | `{r['checkpoint']}` | {r['form']} | {r['keep_fp32']} | {r['fp32']:.2f} | {r['int8']:.2f} | "
                     f"{r['top1_agreement']:.2f} | {r['rel_error']:.4f} |")
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--forms", nargs="+", choices=FORMS, default=["export", "fold", "rw"])
    p.add_argument("--keeps", nargs="+", choices=KEEP_FP32, default=["none", "branch"])
    p.add_argument("--images", type=int, default=2000, help="test images per model (default 2000)")
    p.add_argument("--out", type=Path, default=Path("runs/int8-forms"))
    args = p.parse_args(argv)
    command = "python scripts/int8_forms.py " + " ".join(shlex.quote(a) for a in argv)
    rows = [r for c in tqdm(args.checkpoints, desc="checkpoints") for r in one_checkpoint(c, args.forms, args.keeps, args.images)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "forms.json").write_text(json.dumps(dict(command=command, rows=rows), indent=2))
    (args.out / "forms.md").write_text("\n".join(markdown(rows, command)) + "\n")
    print("\n".join(markdown(rows, command)[4:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
