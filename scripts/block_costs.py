"""Where SCNet-50 and ResNet-50 differ in time, part by part: the stem and each of the 16 bottlenecks of the two
networks, timed alternately on the inputs they see at 224 px, with each part's multiply-adds.

Two settings: ``train`` (one forward and backward of the part in training mode, channels_last) and ``infer``
(deploy(scnet50)'s part against torchvision ResNet-50's eager part, both channels_last, inference mode; the
comparison of the "deploy vs resnet50 eager" target). Each figure is the median over rounds of the median of a
round's calls; within a round the two parts alternate, each after one untimed call. glibc keeps freed memory for
reuse (as ``scnet train`` runs): otherwise which part pays for page-faulting fresh memory depends on what ran before
it, and the same part's time moves by up to 2x between otherwise equal runs. Also timed: batch norm's
backward with a channel-slice gradient against a contiguous one (why the SC block stacks its norms).

    python scripts/block_costs.py --out docs/results/train-cpu-gap/blocks
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

import scnet
from scnet.hostmem import keep_freed_memory
from scnet.profile import count_macs, describe_machine

Parts = list[tuple[str, nn.Module]]


def _median_ms(fn: Callable[[], None], calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def parts(model: nn.Module) -> Parts:
    """The stem (everything before layer1) and every bottleneck, named ``layer<i>.<j>``."""
    children = list(model.named_children())
    first = next(i for i, (name, _) in enumerate(children) if name == "layer1")
    stem = nn.Sequential(*[m for _, m in children[:first]])
    blocks = [(f"layer{i}.{j}", b) for i in range(1, 5) for j, b in enumerate(getattr(model, f"layer{i}"))]
    return [("stem", stem), *blocks]


def _inputs(ps: Parts, x: torch.Tensor) -> list[torch.Tensor]:
    ins = []
    with torch.no_grad():
        for _, p in ps:
            ins.append(x)
            x = p(x)
    return ins


def _step(part: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    if not train:
        def infer() -> None:
            with torch.inference_mode():
                part(x)
        return infer
    x = x.detach().clone().requires_grad_(True)

    def step() -> None:
        x.grad = None
        part(x).sum().backward()
    return step


def networks() -> dict[str, nn.Module]:
    """SCNet-50 (its training fast forms) and torchvision ResNet-50, seeded, channels_last, in training mode."""
    cl = torch.channels_last
    torch.manual_seed(0)
    return {"scnet": scnet.fast_train(scnet.create_model("scnet50").to(memory_format=cl).train()),
            "resnet": torchvision.models.resnet50().to(memory_format=cl).train()}


def part_macs(model: nn.Module, ins: list[torch.Tensor]) -> list[float]:
    """Multiply-adds per image of each part of an eager network (a deployed one does the same arithmetic)."""
    return [count_macs(p, tuple(x.shape[1:])) / 1e6 for (_, p), x in zip(parts(model), ins)]


def part_costs(setting: str, batch: int, rounds: int, calls: int) -> list[dict]:
    """One row per part: each network's median ms, SCNet's speed relative to ResNet's, multiply-adds per image."""
    eager = networks()
    nets = eager
    if setting == "infer":  # deploy(scnet50) against eager ResNet-50, as the target compares them
        nets = {"scnet": scnet.deploy(eager["scnet"].eval()), "resnet": eager["resnet"].eval()}
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=torch.channels_last)
    both = {name: parts(net) for name, net in nets.items()}
    ins = {name: _inputs(ps, x) for name, ps in both.items()}
    # Counted on the eager networks: count_macs does not see a deployed part's fused convolutions.
    macs = {name: part_macs(eager[name], ins[name]) for name in both}
    rows = []
    for k, (part_name, _) in enumerate(both["scnet"]):
        steps = {name: _step(both[name][k][1], ins[name][k], setting == "train") for name in both}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                step()  # settle: this part's memory and weights, not the other's
                times[name].append(_median_ms(step, calls))
        ms = {name: statistics.median(v) for name, v in times.items()}
        rows.append(dict(part=part_name, side=ins["scnet"][k].shape[-1], scnet_ms=ms["scnet"], resnet_ms=ms["resnet"],
                         speed_ratio=ms["resnet"] / ms["scnet"], scnet_mmacs=macs["scnet"][k], resnet_mmacs=macs["resnet"][k]))
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


def _mac_rate_ratio(row: dict) -> float:
    """How fast SCNet's part turns arithmetic into time, relative to ResNet's: its speed ratio times its share of MACs."""
    return row["speed_ratio"] * row["scnet_mmacs"] / row["resnet_mmacs"] if row["resnet_mmacs"] else float("nan")


def _table(setting: str, rows: list[dict]) -> list[str]:
    what = {"train": "one training step (forward + backward) of each part",
            "infer": "one inference call of each part: deploy(scnet50)'s against torchvision ResNet-50's eager one"}[setting]
    lines = [f"## {setting}: {what}", "",
             "| part | input side | SCNet ms | ResNet-50 ms | SCNet speed / ResNet's | SCNet MMACs / image | ResNet-50 MMACs / image | "
             "SCNet MACs per ms / ResNet's |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['side']} | {r['scnet_ms']:.1f} | {r['resnet_ms']:.1f} | {r['speed_ratio']:.2f}x | {r['scnet_mmacs']:.0f} | "
              f"{r['resnet_mmacs']:.0f} | {_mac_rate_ratio(r):.2f}x |" for r in rows]
    sc, rn = sum(r["scnet_ms"] for r in rows), sum(r["resnet_ms"] for r in rows)
    strided = [r for r in rows if r["part"] in ("layer2.0", "layer3.0", "layer4.0")]
    gap_strided = sum(r["scnet_ms"] - r["resnet_ms"] for r in strided)
    total = dict(scnet_ms=sc, resnet_ms=rn, speed_ratio=rn / sc, scnet_mmacs=sum(r["scnet_mmacs"] for r in rows),
                 resnet_mmacs=sum(r["resnet_mmacs"] for r in rows))
    lines += [f"| **all** | | **{sc:.1f}** | **{rn:.1f}** | **{rn / sc:.2f}x** | {total['scnet_mmacs']:.0f} | "
              f"{total['resnet_mmacs']:.0f} | {_mac_rate_ratio(total):.2f}x |", "",
              f"SCNet's parts take {sc - rn:+.1f} ms in all; the three stride-2 blocks (layer2.0, layer3.0, layer4.0) account for "
              f"{gap_strided:+.1f} ms of it.", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--settings", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rewrite", action="store_true", help="re-render blocks.md from the folder's blocks.json, measuring nothing")
    args = p.parse_args()
    if args.rewrite:
        report = json.loads((args.out / "blocks.json").read_text())
    else:
        keep_freed_memory()
        report = dict(machine=describe_machine(), threads=torch.get_num_threads(), batch=args.batch, rounds=args.rounds, calls=args.calls,
                      parts={s: part_costs(s, args.batch, args.rounds, args.calls) for s in args.settings},
                      norm_backward=norm_backward(args.batch, 4 * args.calls))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "blocks.json").write_text(json.dumps(report, indent=1))
    lines = [f"# SCNet-50 and ResNet-50 part by part, batch {report['batch']}, 224 px, channels_last", "",
             f"Machine: {report['machine']}. `python scripts/block_costs.py --rounds {report.get('rounds', args.rounds)} "
             f"--calls {report.get('calls', args.calls)} --out {args.out}`", ""]
    for setting, rows in report["parts"].items():
        lines += _table(setting, rows)
    nb = report["norm_backward"]
    lines += [f"Batch norm backward, 32 channels at 56 px: {nb['slice_ms']:.2f} ms with a channel-slice gradient, "
              f"{nb['contiguous_ms']:.2f} ms with a contiguous one.", ""]
    (args.out / "blocks.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
