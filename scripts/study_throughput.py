"""Training throughput of the demo SCNet and its plain twin on the studies' inputs: Pathfinder (32 px, 2 classes)
and cluttered Fashion-MNIST (60 px, 10 classes), in one process.

Whole training steps (batch gathering and augmentation, forward, backward, SGD update) of the four cases are timed
round-robin, so a slower stretch of the machine hits every case alike; each step runs on ``--threads`` torch
threads, the setting of a study's training processes (``scnet compare --jobs 2`` gives each run one thread of
two). Writes throughput.json and throughput.md in --out.

    python scripts/study_throughput.py --out docs/results/study-throughput
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

import scnet
from scnet.data import build_datasets
from scnet.profile import count_macs, describe_machine
from scnet.train.engine import EpochBatches, TensorBatches

DATA = {"pathfinder32-14": 32, "cluttered_fashion_mnist": 60}


def _case(name: str, data: str, batch: int):
    train_set, _, info = build_datasets(data, limit_train=4 * batch, limit_val=1)
    model = scnet.create_model(name, in_chans=info.in_chans, num_classes=info.num_classes)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    batches = TensorBatches(train_set, EpochBatches(len(train_set), batch, shuffle=True, drop_last=True, seed=0), 0, augment=True)
    stream = iter(())

    def steps(count: int) -> float:
        nonlocal stream
        start = time.perf_counter()
        for _ in range(count):
            pair = next(stream, None)
            if pair is None:
                stream = iter(batches)
                pair = next(stream)
            x, y = pair
            loss = crit(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / count

    return dict(model=name, data=data, size=info.image_size, macs=count_macs(model, info.input_size), step=steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a study's runs)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="round-robin rounds (default 5)")
    p.add_argument("--out", default="runs/study-throughput")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = [_case(m, d, args.batch_size) for d in DATA for m in ("scnet_demo_plain", "scnet_demo")]
    for case in cases:
        case["step"](2)  # warm-up: oneDNN primitive creation
    times = [[] for _ in cases]
    for _ in range(args.rounds):
        for case, t in zip(cases, times):
            t.append(case["step"](args.steps))
    rows = [dict(model=c["model"], data=c["data"], size=c["size"], macs_per_image=c["macs"],
                 images_per_s=args.batch_size / statistics.median(t), spread_pct=100 * (max(t) - min(t)) / statistics.median(t))
            for c, t in zip(cases, times)]
    report = dict(machine=describe_machine(), threads=args.threads, batch_size=args.batch_size, rows=rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(report, indent=2))
    lines = ["# Training throughput on the studies' inputs", "",
             f"Command: `python scripts/study_throughput.py --out {args.out}`", "",
             f"Machine: {report['machine']}. {args.threads} torch thread(s), batch {args.batch_size}, channels_last; whole "
             "training steps timed round-robin (median of the rounds; spread: (slowest - fastest) / median).", "",
             "| data | px | model | MMACs / image | img/s | spread |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['size']} | {r['model']} | {r['macs_per_image'] / 1e6:.1f} | {r['images_per_s']:.0f} | "
                     f"{r['spread_pct']:.0f}% |")
    for data in DATA:
        plain, sc = (next(r for r in rows if r["data"] == data and r["model"] == m) for m in ("scnet_demo_plain", "scnet_demo"))
        lines.append(f"\n{data}: SC trains at {sc['images_per_s'] / plain['images_per_s']:.2f}x the plain twin's img/s.")
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
