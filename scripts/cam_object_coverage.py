"""Grad-CAM against the object, over many Fashion-MNIST test images, for two trained checkpoints.

    python scripts/cam_object_coverage.py SC_CHECKPOINT PLAIN_CHECKPOINT OUT_DIR [--images N] [--layer layer4]

Fashion-MNIST objects sit on a black background, so a pixel brighter than 10% of white is "object". For each
model the CAM of the true class is compared with that mask (``scnet.viz.cam_mask_overlap``); the means and
their standard errors go to coverage.json and coverage.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from scnet.data import build_datasets
from scnet.viz import cam_mask_overlap, gradcam
from scnet.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sc")
    parser.add_argument("plain")
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--layer", default="layer4")
    args = parser.parse_args()
    _, val, info = build_datasets("fashion_mnist", limit_val=args.images)
    x = torch.stack([val[i][0] for i in range(len(val))])  # (N, 1, 28, 28), normalised
    labels = [int(val[i][1]) for i in range(len(val))]
    masks = (x[:, 0] * info.std[0] + info.mean[0]).numpy() > 0.1  # (N, 28, 28)
    rows = {}
    for path in (args.sc, args.plain):
        loaded = load_model(file=path)
        model, label = loaded.model, loaded.label
        with torch.no_grad():
            correct = (model(x).argmax(1) == torch.tensor(labels)).float().mean().item()
        stats = {}
        for start in range(0, len(x), 100):  # batches keep the memory of the hooks small
            part = cam_mask_overlap(gradcam(model, x[start:start + 100], args.layer, labels[start:start + 100]).cams, masks[start:start + 100])
            for k, v in part.items():
                stats.setdefault(k, []).append(v)
        stats = {k: np.concatenate(v) for k, v in stats.items()}
        rows[label] = dict(accuracy=correct, **{k: dict(mean=float(v.mean()), sem=float(v.std(ddof=1) / np.sqrt(len(v)))) for k, v in stats.items()})
        rows[label]["_per_image"] = {k: v.tolist() for k, v in stats.items()}
    sc, plain = rows.values()
    diff = {k: np.asarray(sc["_per_image"][k]) - np.asarray(plain["_per_image"][k]) for k in sc["_per_image"]}
    paired = {k: dict(mean=float(v.mean()), sem=float(v.std(ddof=1) / np.sqrt(len(v)))) for k, v in diff.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(dict(images=len(x), layer=args.layer, models={k: {m: v for m, v in r.items() if m != "_per_image"}
                                                                                                  for k, r in rows.items()}, paired_difference=paired), indent=2))
    lines = [f"# Grad-CAM ({args.layer}, true class) against the object, {len(x)} Fashion-MNIST test images", "",
             "| model | accuracy on these images | CAM mass on the object | object pixels with CAM >= 0.5 | image area with CAM >= 0.5 |",
             "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {100 * r['accuracy']:.1f}% | " + " | ".join(
            f"{100 * r[k]['mean']:.1f} ± {100 * r[k]['sem']:.1f}%" for k in ("mass_on_object", "object_covered", "area")) + " |")
    lines.append("| SC - plain (paired, per image) | | " + " | ".join(
        f"{100 * paired[k]['mean']:+.1f} ± {100 * paired[k]['sem']:.1f}" for k in ("mass_on_object", "object_covered", "area")) + " |")
    lines += ["", "Means over images ± their standard error; the last row is the mean per-image difference (percentage points).", ""]
    (out / "coverage.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
