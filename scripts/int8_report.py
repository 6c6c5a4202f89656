"""int8 accuracy and speed of SC-Conv models (ONNX Runtime static quantization), written to docs/results/int8.

    python scripts/int8_report.py docs/results/int8 [--checkpoint runs/demo/scnet_demo-seed0/checkpoint-best.pth]

1. Fashion-MNIST: a model trained by ``make demo`` (the checkpoint), top-1 over all 10,000 test images, float32
   against int8 with each ``keep_fp32`` choice, calibrated on the first 512 training images.
2. SCNet-50, and torchvision's ResNet-50 as the control, with seeded weights whose batch norms were calibrated
   (running statistics of 64 real images: Fashion-MNIST test images at 224 px in 3 channels): relative error of the
   logits and top-1 agreement with float32 on 256 other images.
   For both, the float32 model's top-2 logit margin per image against the RMS of what int8 changed in that image's
   logits (``scnet.int8.top2_margins``): whether a gap in top-1 agreement comes from closer top classes.
3. Speed: SCNet-50 at 224 px, batch 1 and 8, every float32 path (eager deploy, compiled deploy, ONNX Runtime) and
   every int8 choice, timed round-robin in one process (``scnet.bench.run_bench``).
4. Trained models (``--runs``: ``scnet compare`` folders, e.g. ``runs/demo`` from ``make demo``): every SC and plain
   checkpoint in int8 (nothing kept in float) against its float32 self on ``--images`` test images of its own task,
   calibrated on its first 512 training images: top-1 of both, top-1 agreement, logit error and margins.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import scnet
from scnet.bench import Rounds, run_bench
from scnet.bench.cases import grid
from scnet.data import build_datasets
from scnet.int8 import KEEP_FP32, calibration_batches, logit_fidelity, quantize, top2_margins

CHOICES = list(KEEP_FP32)


def _logits(run, dataset, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """``run``'s logits for every image of a dataset of this package, and the labels, in dataset order."""
    outs, labels = [], []
    with torch.no_grad():
        for i in range(0, len(dataset), batch):
            x, y = dataset.batch(torch.arange(i, min(i + batch, len(dataset))))
            outs.append(run(x))
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def _top1(run, dataset) -> float:
    return _accuracy(*_logits(run, dataset))


def fashion_mnist(checkpoint: Path) -> dict:
    loaded = scnet.load_model(file=str(checkpoint))
    model = loaded.model.eval()
    train, test, _ = build_datasets("fashion_mnist", image_size=28)
    calib = calibration_batches(train, 512)
    row = dict(checkpoint=str(checkpoint), model=loaded.arch, test_images=len(test), calibration_images=512, fp32=_top1(model, test))
    for keep in tqdm(CHOICES, desc="Fashion-MNIST int8", leave=False):
        row[f"int8 ({keep})"] = _top1(quantize(model, calib, keep_fp32=keep), test)
    return row


def _images_224(dataset, start: int, count: int) -> torch.Tensor:
    """Real images for an ImageNet-shaped model: Fashion-MNIST at 224 px, the gray channel repeated 3 times."""
    x, _ = dataset.batch(torch.arange(start, start + count))
    return F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)


def _calibrate_norms(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """Running statistics of ``images`` in every batch norm (a cumulative average: momentum None), then eval mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for chunk in images.split(16):
            model(chunk)
    return model.eval()


def fidelity(name: str) -> dict:
    """How far int8 moves the logits of ``name`` (seeded weights, calibrated norms), per ``keep_fp32`` choice."""
    _, test, _ = build_datasets("fashion_mnist", image_size=28)
    torch.manual_seed(0)
    model = _calibrate_norms(scnet.load_model(name).model, _images_224(test, 0, 64))
    calib, held_out = _images_224(test, 64, 64).split(16), _images_224(test, 128, 256)
    with torch.no_grad():
        ref = torch.cat([model(x) for x in held_out.split(32)])
    row = dict(model=name, weights="seeded (torch.manual_seed(0)), batch norms calibrated on 64 images",
               calibration_images=64, compared_images=len(held_out))
    for keep in tqdm(CHOICES, desc=f"{name} int8", leave=False):
        q = quantize(model, list(calib), keep_fp32=keep)
        out = torch.cat([q(x) for x in held_out.split(32)])
        row[keep] = logit_fidelity(ref, out)
        if keep == "none":
            row["margins"] = _margin_summary(top2_margins(ref, out), keep_ratios=True)
    return row


def _margin_summary(m: dict, keep_ratios: bool = False) -> dict:
    """Medians of the top-2 margin, of int8's change and of their ratio, and the share of images whose margin is
    smaller than the change (ratio < 1: the images int8 can flip)."""
    row = dict(margin_median=float(m["margin"].median()), change_median=float(m["change_rms"].median()),
               ratio_median=float(m["ratio"].median()), below_one_pct=100.0 * float((m["ratio"] < 1).float().mean()))
    if keep_ratios:
        row["ratios"] = [round(float(v), 4) for v in m["ratio"]]
    return row


def trained_run(checkpoint: Path, images: int) -> dict:
    """int8 (nothing kept in float) against float32 for one trained checkpoint, on its own task's test images."""
    loaded = scnet.load_model(file=str(checkpoint))
    model = loaded.model.eval()
    config = (loaded.checkpoint or {}).get("config", {})
    train, test, _ = build_datasets(config["data"], config.get("data_dir"), 512, images, loaded.info.image_size)
    ref, y = _logits(model, test)
    out, _ = _logits(quantize(model, calibration_batches(train, 512)), test)
    return dict(checkpoint=str(checkpoint), model=loaded.arch, data=config["data"],
                recipe={k: config.get(k) for k in ("epochs", "limit_train", "batch_size")},  # how it was trained
                fp32=_accuracy(ref, y), int8=_accuracy(out, y), **logit_fidelity(ref, out), margins=_margin_summary(top2_margins(ref, out)))


def trained_runs(folders: list[Path], images: int) -> list[dict]:
    """Every seed's SC and plain run of each ``scnet compare`` folder."""
    checkpoints = {f: sorted(f.glob("*/checkpoint-best.pth")) for f in folders}
    missing = [str(f) for f, found in checkpoints.items() if not found]
    if missing:
        sys.exit(f"int8_report: no run with a checkpoint-best.pth in {', '.join(missing)}")
    every = sorted(c for found in checkpoints.values() for c in found)
    return [trained_run(c, images) for c in tqdm(every, desc="trained runs", leave=False)]


def speed(rounds: Rounds) -> dict:
    modes = ["deploy", "compiled", "onnx", *(f"int8{'' if k == 'none' else '_' + k}" for k in CHOICES)]
    return run_bench(grid(["scnet50"], modes, [1, 8], [224], baseline=None), rounds, baseline=None, memory=False)


def _speed_table(bench: dict) -> list[str]:
    rows = {(r["mode"], r["batch"]): r for r in bench["results"] if "images_per_s" in r}
    lines = ["| batch | " + " | ".join(m for m, b in rows if b == 1) + " | int8 / fastest float32 |", "|---|" + "---|" * (len(rows) // 2 + 1)]
    for batch in (1, 8):
        cells = {m: r["images_per_s"] for (m, b), r in rows.items() if b == batch}
        fastest = max(v for m, v in cells.items() if not m.startswith("int8"))
        best = max(v for m, v in cells.items() if m.startswith("int8"))
        lines.append(f"| {batch} | " + " | ".join(f"{v:.1f}" for v in cells.values()) + f" | {best / fastest:.2f}x |")
    return lines


def _decision(fm: dict, sc: dict, plain: dict, bench: dict) -> str:
    """What keeping the gate in float bought and cost, from the measurements, and whether that supports the default."""
    speed = {(r["mode"], r["batch"]): r["images_per_s"] for r in bench["results"] if "images_per_s" in r}
    cost = [100.0 * (1 - speed["int8_gate", b] / speed["int8", b]) for b in (1, 8)]
    helped = sc["gate"]["rel_error"] < 0.9 * sc["none"]["rel_error"] or fm["int8 (gate)"] - fm["int8 (none)"] >= 0.1
    same_as_plain = abs(sc["none"]["rel_error"] - plain["none"]["rel_error"]) <= 0.1 * plain["none"]["rel_error"]
    return (f"**What stays in float, and why:** keeping the gate in float moved Fashion-MNIST top-1 by "
            f"{fm['int8 (gate)'] - fm['int8 (none)']:+.2f} points and SCNet-50's logit error from {sc['none']['rel_error']:.3f} "
            f"to {sc['gate']['rel_error']:.3f}, and cost {cost[0]:.0f} % / {cost[1]:.0f} % of int8's speed at batch 1 / 8. "
            f"With everything in int8, SCNet-50's error is {'about' if same_as_plain else 'unlike'} the plain ResNet-50's "
            f"({plain['none']['rel_error']:.3f}). "
            + ("The gate in float helped: `keep_fp32=\"gate\"` is worth its cost here." if helped else
               "The gate in float bought nothing measurable, which is why the default (`keep_fp32=\"none\"`) quantizes everything."))


def margin_table(sc: dict, plain: dict) -> list[str]:
    lines = ["| model | top-1 agreement | median top-2 margin | median int8 change (RMS) | median margin / change | "
             "images with margin < change |", "|---|---|---|---|---|---|"]
    for label, row in (("SCNet-50", sc), ("ResNet-50", plain)):
        m = row["margins"]
        lines.append(f"| {label} | {row['none']['top1_agreement']:.1f} % | {m['margin_median']:.4f} | {m['change_median']:.4f} | "
                     f"{m['ratio_median']:.2f} | {m['below_one_pct']:.1f} % |")
    return lines


def _margin_finding(sc: dict, plain: dict) -> str:
    """What the margins say about the agreement gap, from the numbers."""
    a, b = sc["margins"], plain["margins"]
    gap = plain["none"]["top1_agreement"] - sc["none"]["top1_agreement"]
    closer = a["ratio_median"] < b["ratio_median"]
    return (f"SCNet-50 agrees with its float32 self on {gap:.1f} points fewer images than ResNet-50 does. Measured per image, "
            f"its top-2 margin is {a['ratio_median']:.2f} times int8's change in the median, against {b['ratio_median']:.2f} "
            f"for ResNet-50, and {a['below_one_pct']:.1f} % of its images have a margin smaller than the change against "
            f"{b['below_one_pct']:.1f} %: " + ("the gap is explained by closer top classes of the random-weight logits, "
            "not by a larger int8 error." if closer else "the margins do not explain the gap."))


def trained_table(rows: list[dict]) -> list[str]:
    lines = ["| task | model | float32 top-1 | int8 top-1 | top-1 agreement | logits' relative error | median margin / change | "
             "margin < change |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["margins"]
        lines.append(f"| {r['data']} ({r.get('recipe', {}).get('epochs', '?')} epochs) | {r['model']} | {r['fp32']:.2f} % | {r['int8']:.2f} % ({r['int8'] - r['fp32']:+.2f}) | "
                     f"{r['top1_agreement']:.2f} % | {r['rel_error']:.4f} | {m['ratio_median']:.1f} | {m['below_one_pct']:.2f} % |")
    return lines


def _trained_finding(rows: list[dict]) -> str:
    """SC against plain twins over the trained runs: top-1 change and agreement, from the numbers."""
    sc = [r for r in rows if not r["model"].endswith("_plain")]
    plain = [r for r in rows if r["model"].endswith("_plain")]
    changes = [r["int8"] - r["fp32"] for r in rows]
    mean = lambda rs, k: sum(r[k] for r in rs) / max(1, len(rs))  # noqa: E731
    return (f"On trained models int8 moves top-1 by {min(changes):+.2f} to {max(changes):+.2f} points and agrees with float32 on "
            f"{min(r['top1_agreement'] for r in rows):.2f}-{max(r['top1_agreement'] for r in rows):.2f} % of the images. "
            f"The SC models agree on {mean(sc, 'top1_agreement'):.2f} % on average, their plain twins on "
            f"{mean(plain, 'top1_agreement'):.2f} %, with logit errors of {mean(sc, 'rel_error'):.4f} and {mean(plain, 'rel_error'):.4f}: "
            + (f"trained top-2 margins are {min(r['margins']['ratio_median'] for r in rows):.0f} or more times int8's change in the "
               "median, so the random-weight gap above does not carry over." if min(r["margins"]["ratio_median"] for r in rows) >= 10
               else "some trained models have margins close to int8's change."))


def plot_margins(sc: dict, plain: dict, path: Path) -> None:
    """The distribution of margin / change per image for both networks, log scale: left of 1, int8 can flip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    values = [np.clip(np.array(r["margins"]["ratios"]), 1e-3, None) for r in (sc, plain)]
    bins = np.logspace(np.log10(min(v.min() for v in values)), np.log10(max(v.max() for v in values)), 40)
    for v, label in zip(values, ("SCNet-50", "ResNet-50")):
        ax.hist(v, bins=bins, histtype="step", linewidth=1.6, label=f"{label} (median {np.median(v):.2f})")
    ax.axvline(1.0, color="k", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("float32 top-2 margin / RMS of int8's change, per image")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, report: dict) -> None:
    fm, fid, bench, command = report["fashion_mnist"], report["fidelity"], report["speed"], report["command"]
    sc, plain = fid["scnet50"], fid["resnet50"]
    lines = [
        "# int8 inference (ONNX Runtime static quantization, QDQ)", "",
        f"Written by `{command}` on {bench['machine']}. Weights are int8 per output channel, activations uint8 per "
        "tensor (MinMax calibration); ONNX Runtime's CPU provider fuses the quantize/dequantize pairs into int8 kernels. "
        "`keep_fp32` chooses what stays in float: `none` (everything ONNX Runtime can quantize, the default), `gate` "
        "(the calibration gate's Sigmoid and Mul, the pattern post-training quantization is known to break) or `convs` "
        "(all but the convolutions and the classifier).", "",
        f"## Fashion-MNIST ({fm['model']} trained by `make demo`, all {fm['test_images']:,} test images)", "",
        "| float32 | " + " | ".join(f"int8, keep_fp32={k}" for k in CHOICES) + " |", "|---|" + "---|" * len(CHOICES),
        f"| {fm['fp32']:.2f} % | " + " | ".join(f"{fm[f'int8 ({k})']:.2f} % ({fm[f'int8 ({k})'] - fm['fp32']:+.2f})" for k in CHOICES) + " |", "",
        f"Calibrated on the first {fm['calibration_images']} training images.", "",
        f"## SCNet-50 beside ResNet-50 ({sc['weights']}; {sc['compared_images']} other images)", "",
        "| keep_fp32 | SCNet-50: logits' relative error | top-1 agreement | ResNet-50 (torchvision): relative error | top-1 agreement |",
        "|---|---|---|---|---|",
        *(f"| {k} | {sc[k]['rel_error']:.3f} | {sc[k]['top1_agreement']:.1f} % | {plain[k]['rel_error']:.3f} | "
          f"{plain[k]['top1_agreement']:.1f} % |" for k in CHOICES), "",
        "Images: Fashion-MNIST test images at 224 px, the gray channel in all three (no ImageNet here); the logits of "
        "random weights have no meaning, but how far int8 moves them does, and the plain ResNet-50 under the same "
        "procedure shows how much of that is SC-Conv's.", "",
        "### Why the top-1 agreement differs: the top-2 margins (everything in int8)", "",
        *margin_table(sc, plain), "", _margin_finding(sc, plain), "", "![margins](margins.png)", "",
        "## Speed: SCNet-50, 224 px, images per second", "",
        *_speed_table(bench), "",
        "Modes: deploy = eager fused float32 (oneDNN), compiled = torch.compile of it (inductor, freezing), onnx = ONNX "
        f"Runtime float32, int8* = ONNX Runtime int8 by keep_fp32; {bench['repeats']} rounds round-robin, median. ONNX "
        "Runtime runs with torch's thread count (the machine line above).", "",
        _decision(fm, sc, plain, bench), "",
    ]
    if report.get("trained"):
        lines += ["## Trained models: int8 against float32 on their own tasks", "",
                  f"Every checkpoint of `{' '.join(report['runs'])}` (SC and plain twins), everything in int8, calibrated on "
                  f"the first 512 training images, compared on the first {report['trained'][0]['images']:,} test images.", "",
                  *trained_table(report["trained"]), "", _trained_finding(report["trained"]), ""]
    plot_margins(sc, plain, out / "margins.png")
    (out / "README.md").write_text("\n".join(lines))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/scnet_demo-seed0/checkpoint-best.pth"))
    parser.add_argument("--rewrite", action="store_true", help="only write README.md again from OUT/int8.json")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="scnet compare folders whose trained models to measure")
    parser.add_argument("--images", type=int, default=5000, help="test images per trained model (default 5000)")
    Rounds.add_options(parser)
    args = parser.parse_args(argv)
    if args.rewrite:
        write(args.out, json.loads((args.out / "int8.json").read_text()))
        return
    if not args.checkpoint.is_file():
        sys.exit(f"int8_report: {args.checkpoint} not found; make it with `make demo` or pass --checkpoint")
    command = "python scripts/int8_report.py " + " ".join(argv)
    report = dict(command=command, fashion_mnist=fashion_mnist(args.checkpoint), fidelity={n: fidelity(n) for n in ("scnet50", "resnet50")},
                  runs=[str(r) for r in args.runs], trained=trained_runs(args.runs, args.images), speed=speed(Rounds.from_options(args)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8.json").write_text(json.dumps(report, indent=2))
    write(args.out, report)
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
