"""One training step (forward + backward) of each stage's stride-1 block, SCNet's against torchvision's ResNet-50
bottleneck, and batch norm's backward with a channel-slice gradient against a contiguous one: where the CPU
training gap of docs/results/train-cpu-gap sits.

Blocks of the two kinds are timed alternately, several rounds; each figure is the median of its calls.

    python scripts/train_blocks.py --out docs/results/train-cpu-gap/blocks
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torchvision

from scnet.models.blocks import SCBottleneck

STAGES = [(256, 64, 56), (512, 128, 28), (1024, 256, 14), (2048, 512, 7)]  # (in channels, planes, side) of ResNet-50


def _median_ms(fn: Callable[[], None], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _block_step(block: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        block(x).sum().backward()
    return step


def blocks(batch: int, rounds: int, calls: int) -> list[dict]:
    rows = []
    for inplanes, planes, side in STAGES:
        torch.manual_seed(0)
        x = torch.randn(batch, inplanes, side, side).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        steps = {name: _block_step(b.to(memory_format=torch.channels_last).train(), x) for name, b in
                 (("scnet", SCBottleneck(inplanes, planes)), ("resnet", torchvision.models.resnet.Bottleneck(inplanes, planes)))}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                step()  # settle: this block's memory and weights, not the other's
                times[name].append(_median_ms(step, calls))
        ms = {name: statistics.median(v) for name, v in times.items()}
        rows.append(dict(side=side, channels=inplanes, scnet_ms=ms["scnet"], resnet_ms=ms["resnet"], speed_ratio=ms["resnet"] / ms["scnet"]))
    return rows


def norm_backward(batch: int, calls: int, channels: int = 32, side: int = 56) -> dict:
    """A 32-channel norm's backward at 56 px: the gradient a channel slice of a twice-wider tensor, or contiguous."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(channels)
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    wide = torch.randn(batch, 2 * channels, side, side).contiguous(memory_format=torch.channels_last)
    grads = {"slice": wide[:, :channels], "contiguous": wide[:, :channels].contiguous(memory_format=torch.channels_last)}
    out = {}
    for name, g in grads.items():
        step = lambda g=g: torch.autograd.grad(norm(x), x, g)  # noqa: E731
        step()
        out[f"{name}_ms"] = _median_ms(step, calls)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    report = dict(threads=torch.get_num_threads(), batch=args.batch, blocks=blocks(args.batch, args.rounds, args.calls),
                  norm_backward=norm_backward(args.batch, 4 * args.calls))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "blocks.json").write_text(json.dumps(report, indent=1))
    lines = [f"# One training step per block, batch {args.batch}, channels_last, {report['threads']} threads", "",
             "| side | in channels | SCNet block ms | ResNet-50 block ms | SCNet speed / ResNet's |", "|---|---|---|---|---|"]
    lines += [f"| {r['side']} | {r['channels']} | {r['scnet_ms']:.1f} | {r['resnet_ms']:.1f} | {r['speed_ratio']:.2f}x |" for r in report["blocks"]]
    nb = report["norm_backward"]
    lines += ["", f"Batch norm backward, 32 channels at 56 px: {nb['slice_ms']:.2f} ms with a channel-slice gradient, "
              f"{nb['contiguous_ms']:.2f} ms with a contiguous one.", ""]
    (args.out / "blocks.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
