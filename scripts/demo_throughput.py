"""Training throughput of the demo SCNet and its plain twin, before and after the fast CPU path, in one process.

"before": the first demo model (widths 16-32-64-128 at 28 px, 8-channel SC halves in its first stage) fed by the
per-sample path (a DataLoader over ``SeededSamples``, which seeds the RNG for every image; the images themselves
are prepared as today, so the first path, with torchvision transforms per image, was slower still). "after": the current
``scnet_demo`` fed by ``TensorBatches`` (batches gathered and augmented in memory). Each case times whole training
steps on Fashion-MNIST (data, forward, backward, SGD update), round-robin, so a slower stretch of the machine hits
every case alike. Writes throughput.json and throughput.md in --out.

    python scripts/demo_throughput.py --compile --out docs/results/demo-throughput
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import scnet
from scnet.bench import matmul_roof
from scnet.data import build_datasets
from scnet.profile import count_macs, describe_machine
from scnet.train.engine import EpochBatches, SeededSamples, TensorBatches

BEFORE = dict(widths=(16, 32, 64, 128), stem_type="small")  # the first scnet_demo row


def _loader(train_set, path: str, batch: int):
    batches = EpochBatches(len(train_set), batch, shuffle=True, drop_last=True, seed=0)
    if path == "per-sample":
        return DataLoader(SeededSamples(train_set, 0), batch_sampler=batches)
    return TensorBatches(train_set, batches, 0, augment=True)


def _case(name: str, version: str, train_set, batch: int):
    model = scnet.create_model(name, in_chans=1, num_classes=10, **(BEFORE if version == "before" else {}))
    model = model.to(memory_format=torch.channels_last).train()
    macs = count_macs(model, (1, 28, 28))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    net = torch.compile(model) if version == "after, --compile" else model  # what `scnet train --compile` does
    batches = iter(_loader(train_set, "per-sample" if version == "before" else "tensor", batch))
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)

    def steps(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            x, y = next(batches)
            loss = crit(net(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / count

    return dict(model=name, version=version, macs=macs, step=steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="timed steps per round (default 6)")
    p.add_argument("--rounds", type=int, default=4, help="round-robin rounds (default 4)")
    p.add_argument("--compile", action="store_true", help="also time the current models under torch.compile (compiling takes minutes)")
    p.add_argument("--out", default="runs/demo-throughput")
    args = p.parse_args()
    train_set, _, _ = build_datasets("fashion_mnist")
    roofs = [matmul_roof(torch.device("cpu"))]
    versions = ("before", "after") + (("after, --compile",) if args.compile else ())
    cases = [_case(n, v, train_set, args.batch_size) for v, n in itertools.product(versions, ("scnet_demo_plain", "scnet_demo"))]
    times: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for i, case in enumerate(cases):
        case["step"](3)  # warm-up: oneDNN primitive creation, and compilation for the compiled cases
    for _ in range(args.rounds):
        for i, case in enumerate(cases):
            times[i].append(case["step"](args.steps))
        roofs.append(matmul_roof(torch.device("cpu")))  # the best of all rounds: a busy moment must not lower the roof
    roof = max(roofs)
    rows = []
    for i, case in enumerate(cases):
        sec = statistics.median(times[i])
        ips = args.batch_size / sec
        gflops = 3 * 2 * case["macs"] * ips / 1e9  # backward ~ twice the forward
        rows.append(dict(model=case["model"], version=case["version"], macs_per_image=case["macs"], images_per_s=ips,
                         gflops=gflops, roof_fraction=gflops / roof, spread_pct=100 * (max(times[i]) - min(times[i])) / sec))
    report = dict(machine=describe_machine(), threads_per_process=torch.get_num_threads(), matmul_roof_gflops=roof,
                  batch_size=args.batch_size, rows=rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(report, indent=2))
    lines = ["# Demo training throughput, before and after the fast CPU path", "",
             f"Command: `python scripts/demo_throughput.py{' --compile' if args.compile else ''} --out {args.out}`", "",
             f"Machine: {report['machine']}. Matmul roof: {roof:.0f} GFLOP/s (fp32, 2048^3). Batch {args.batch_size}, "
             "channels_last, Fashion-MNIST 28 px, whole training steps (data, forward, backward, SGD) timed round-robin.", "",
             "| version | model | MMACs / image | img/s | GFLOP/s | of roof | spread |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['version']} | {r['model']} | {r['macs_per_image'] / 1e6:.1f} | {r['images_per_s']:.0f} | {r['gflops']:.1f} | "
                     f"{100 * r['roof_fraction']:.0f}% | {r['spread_pct']:.0f}% |")
    by = {(r["version"], r["model"]): r for r in rows}
    for model in ("scnet_demo_plain", "scnet_demo"):
        ratios = [f"{by[(v, model)]['images_per_s'] / by[('before', model)]['images_per_s']:.1f}x ({v})" for v in versions[1:]]
        lines.append(f"\n{model}: {', '.join(ratios)} the img/s of before.")
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
