"""The Pathfinder generator, measured: samples of every level, generation speed, the no-shortcut check on a large
sample, and what backtracking changes in the curves' statistics.

    python scripts/pathfinder_report.py --out docs/results/pathfinder

- speed: 100,000 images of the hardest levels (32 and 64 px, length 14) made from scratch (no cache) with the
  default worker processes (one per core);
- no shortcut: logistic regressions on raw pixels, on ink statistics (bright and inked pixel counts, intensity sum)
  and on the distance between the two markers, fitted on --probe-train images and scored on --probe-test others;
  the marker distance is a real (weak) cue of the task's design, shown so that nobody mistakes it for a leak;
- backtracking: geometry of curves drawn by rejection alone (the original's rule: a stuck curve redraws the image)
  against the default (a stuck curve backs up), on the levels where rejection alone is affordable.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

import scnet.data.pathfinder_gen as gen
from scnet.profile import describe_machine

LEVELS = [(32, 6), (32, 9), (32, 14), (64, 6), (64, 9), (64, 14)]


def _speed(count: int) -> list[dict]:
    rows = []
    for size, length in [(32, 14), (64, 14)]:
        start = time.perf_counter()
        gen.pathfinder(count, size, length, seed=7, cache=False, progress=False)
        seconds = time.perf_counter() - start
        rows.append(dict(size=size, length=length, images=count, seconds=seconds, images_per_s=count / seconds))
        print(f"{size} px, length {length}: {count:,} images in {seconds:.0f} s")
    return rows


def _geometry(scenes: gen.Scenes) -> dict[str, float]:
    """Mean turn between consecutive target dashes, mean end-to-end distance of a target, mean marker distance."""
    targets = scenes.dashes[:, :2]  # (N, 2, L, 4)
    direction = np.arctan2(targets[..., 2] - targets[..., 0], targets[..., 3] - targets[..., 1])
    turn = np.abs(np.angle(np.exp(1j * np.diff(direction, axis=-1))))
    end_to_end = np.linalg.norm(targets[:, :, -1, 2:4] - targets[:, :, 0, 0:2], axis=-1)
    return dict(turn_deg=float(np.degrees(turn).mean()), end_to_end=float(end_to_end.mean()),
                marker_distance=float(np.linalg.norm(scenes.markers[:, 0] - scenes.markers[:, 1], axis=-1).mean()))


def _backtracking(count: int) -> list[dict]:
    rows = []
    for size, length in [(32, 6), (32, 14), (64, 6)]:
        spec = gen.pathfinder_spec(size, length)
        for backtracks in (0, spec.backtracks):
            variant = dataclasses.replace(spec, backtracks=backtracks)
            scenes = gen.Scenes.empty(variant, count)
            kept = gen._targets(scenes, np.random.default_rng(0))
            scenes = scenes.subset(kept)
            gen._markers(scenes, np.random.default_rng(1))
            rows.append(dict(size=size, length=length, backtracks=backtracks, kept=float(kept.mean()), **_geometry(scenes)))
    return rows


def _shortcuts(train: int, test: int) -> list[dict]:
    rows = []
    for size, length in LEVELS:
        scenes, images = gen.pathfinder_scenes(train + test, size, length, seed=11)
        labels = torch.from_numpy(scenes.labels)
        distance = np.linalg.norm(scenes.markers[:, 0] - scenes.markers[:, 1], axis=-1)
        rows.append(dict(size=size, length=length, train=train, test=test,
                         pixels=gen.linear_probe(torch.from_numpy(images).flatten(1), labels, train),
                         ink=gen.linear_probe(gen.ink_statistics(images), labels, train),
                         marker_distance=gen.linear_probe(np.stack([distance, distance ** 2], 1), labels, train)))
        print(f"{size} px, length {length}: " + ", ".join(f"{k} {100 * rows[-1][k]:.1f}%" for k in ("pixels", "ink", "marker_distance")))
    return rows


def _samples(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(LEVELS), 8, figsize=(12, 1.65 * len(LEVELS) + 0.4))
    for row, (size, length) in zip(axes, LEVELS):
        scenes, images = gen.pathfinder_scenes(8, size, length, seed=0)
        for ax, image, label in zip(row, images, scenes.labels):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{size} px, len {length}: {'joined' if label else 'apart'}", fontsize=7)
            ax.set_axis_off()
    fig.suptitle("The first Pathfinder training images of each level (label: do the two markers end one curve?)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(report: dict, out: str) -> str:
    lines = ["# The Pathfinder generator, measured", "", f"Command: `python scripts/pathfinder_report.py --out {out}`", "",
             f"Machine: {report['machine']}. Generator version {report['version']}.", "", "![samples](samples.png)", "",
             "## Speed: 100,000 images from scratch, one process per core", "", "| level | seconds | img/s |", "|---|---|---|"]
    lines += [f"| {r['size']} px, length {r['length']} | {r['seconds']:.0f} | {r['images_per_s']:,.0f} |" for r in report["speed"]]
    s = report["shortcuts"]
    lines += ["", f"## No shortcut: held-out accuracy of logistic regressions ({s[0]['train']:,} training, {s[0]['test']:,} test "
              f"images per level; a coin's accuracy has sd {50 / s[0]['test'] ** 0.5:.1f} points)", "",
              "| level | raw pixels | ink statistics | marker distance |", "|---|---|---|---|"]
    lines += [f"| {r['size']} px, length {r['length']} | {100 * r['pixels']:.1f}% | {100 * r['ink']:.1f}% | "
              f"{100 * r['marker_distance']:.1f}% |" for r in s]
    lines += ["", "Ink statistics: bright-pixel count, inked-pixel count and intensity sum. Marker distance: the distance "
              "between the two markers (and its square). Both targets start 7 px (32 px) or 12 px (64 px) apart and have the "
              "same length, so whether the far marker ends the same curve changes its distance to the near marker only "
              "a little: that is the task's own weak cue (the original generator's too), which no model needs to follow a "
              "curve to use, and it caps what a model could get without following curves at about that accuracy.", "",
              "## Backtracking against rejection alone", "",
              "The original redraws a whole image when a target curve cannot continue; this generator lets the curve back up "
              "first (`backtracks` dashes in all), since at 64 px and length 14 rejection alone keeps about 1 image in 800. "
              "Where rejection alone is affordable, the two give curves of the same statistics:", "",
              "| level | backtracks | images kept | mean turn (deg) | end-to-end (px) | marker distance (px) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} px, length {r['length']} | {r['backtracks']} | {100 * r['kept']:.1f}% | {r['turn_deg']:.1f} | "
              f"{r['end_to_end']:.1f} | {r['marker_distance']:.1f} |" for r in report["backtracking"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speed-images", type=int, default=100_000)
    p.add_argument("--probe-train", type=int, default=20_000)
    p.add_argument("--probe-test", type=int, default=5_000)
    p.add_argument("--out", default="runs/pathfinder")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _samples(out / "samples.png")
    report = dict(machine=describe_machine(), version=gen.GENERATOR_VERSION, speed=_speed(args.speed_images),
                  shortcuts=_shortcuts(args.probe_train, args.probe_test), backtracking=_backtracking(4000))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "README.md").write_text(_markdown(report, args.out))
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
