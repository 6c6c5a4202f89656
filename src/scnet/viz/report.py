"""Figures and tables for ``scnet cam`` and ``scnet erf``: one PNG per image, a contact sheet, ERF heatmaps."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..models.spec import ModelSpec
from .erf import THRESHOLDS

__all__ = ["display_image", "write_box_cams", "write_cam_figures", "write_erf_report"]


def display_image(x: torch.Tensor, info: ModelSpec) -> np.ndarray:
    """A normalised (C, H, W) model input back as an (H, W, 3) float image in [0, 1] for display."""
    mean = torch.tensor(info.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=x.dtype).view(-1, 1, 1)
    img = (x.detach().cpu() * std + mean).clamp(0, 1)  # (C, H, W)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()  # (H, W, 3)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colorbar(fig, axes, label: str) -> None:
    """A colorbar of the plain (opaque) colormap: the overlays' alpha would wash its colours out."""
    import matplotlib as mpl

    mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0.0, 1.0), cmap="jet")
    bar = fig.colorbar(mappable, ax=axes, fraction=0.025, pad=0.02)
    bar.set_label(label, fontsize=8)


def _percent(p: float) -> str:
    return f"{100 * p:.0f}%" if p >= 0.1 else f"{100 * p:.1f}%"


def _overlay(ax, image: np.ndarray, cam: np.ndarray, title: str):
    ax.imshow(image, interpolation="nearest")
    shown = ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="bilinear",
                      extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return shown


def write_cam_figures(out: Path, names: Sequence[str], columns: Sequence[dict[str, Any]]) -> list[Path]:
    """One PNG per image (the image, then each model's Grad-CAM overlay) and ``contact_sheet.png``.

    ``columns``: one dict per model with ``label``, ``images`` (display images, (H, W, 3)), ``result``
    (a ``CamResult``) and ``classes`` (class names).
    """
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def caption(col: dict[str, Any], i: int) -> str:
        r = col["result"]
        return f"{col['label']}\n{col['classes'][r.classes[i]]} ({_percent(r.probs[i])})"

    for i, name in enumerate(names):
        fig, axes = plt.subplots(1, len(columns) + 1, figsize=(3.2 * (len(columns) + 1) + 0.8, 3.6))
        axes[0].imshow(columns[0]["images"][i], interpolation="nearest")
        axes[0].set_title(f"{Path(name).name}\n(input, {columns[0]['images'][i].shape[1]}x{columns[0]['images'][i].shape[0]} px)", fontsize=9)
        axes[0].set_axis_off()
        for ax, col in zip(axes[1:], columns):
            _overlay(ax, col["images"][i], col["result"].cams[i], caption(col, i))
        _colorbar(fig, list(axes), "Grad-CAM (0 = none, 1 = strongest)")
        fig.suptitle(f"Grad-CAM at {columns[0]['result'].layer} for each model's predicted class", fontsize=10)
        path = out / f"{Path(name).stem}-cam.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    # Contact sheet: images down, models across.
    rows = len(names)
    fig, axes = plt.subplots(rows, len(columns) + 1, figsize=(2.3 * (len(columns) + 1) + 0.8, 2.4 * rows), squeeze=False)
    for i, name in enumerate(names):
        axes[i][0].imshow(columns[0]["images"][i], interpolation="nearest")
        axes[i][0].set_title(Path(name).name, fontsize=8)
        axes[i][0].set_axis_off()
        for j, col in enumerate(columns, start=1):
            _overlay(axes[i][j], col["images"][i], col["result"].cams[i], caption(col, i))
            axes[i][j].title.set_fontsize(7)
    _colorbar(fig, axes.ravel().tolist(), "Grad-CAM (0 = none, 1 = strongest)")
    sheet = out / "contact_sheet.png"
    fig.savefig(sheet, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [*written, sheet]


def write_box_cams(path: Path, images: Sequence[np.ndarray], boxes: np.ndarray, titles: Sequence[str],
                   columns: Sequence[dict[str, Any]], heading: str) -> Path:
    """A page of Grad-CAMs with each object's box: images down, then one column per model.

    ``images``: display images (H, W, 3); ``boxes`` (N, 4: y0, x0, y1, x1, end exclusive); ``titles``: one per image
    (e.g. the true class); ``columns``: one dict per model with ``label``, ``cams`` (N, H, W) and ``captions`` (N,).
    """
    from matplotlib.patches import Rectangle

    plt = _plt()
    rows = len(images)
    fig, axes = plt.subplots(rows, len(columns) + 1, figsize=(2.5 * (len(columns) + 1) + 0.8, 2.6 * rows + 0.5), squeeze=False)
    height = fig.get_figheight()
    fig.subplots_adjust(top=1 - 0.75 / height, bottom=0.01, hspace=0.35, wspace=0.05)
    for i, image in enumerate(images):
        y0, x0, y1, x1 = (int(v) for v in boxes[i])
        panels = [(axes[i][0], None, titles[i])] + [(axes[i][j], c["cams"][i], f"{c['label']}\n{c['captions'][i]}")
                                                    for j, c in enumerate(columns, start=1)]
        for ax, cam, title in panels:
            if cam is None:
                ax.imshow(image, interpolation="nearest")
                ax.set_title(title, fontsize=8)
                ax.set_axis_off()
            else:
                _overlay(ax, image, cam, title)
                ax.title.set_fontsize(7)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1.2))
    _colorbar(fig, axes.ravel().tolist(), "Grad-CAM (0 = none, 1 = strongest)")
    fig.suptitle(heading, fontsize=10, y=1 - 0.12 / height)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_erf_report(out: Path, maps: dict[str, dict[str, np.ndarray]], ratios: dict[str, dict[str, dict]],
                     description: str, command: str = "") -> None:
    """erf.png (stages down, models across, log-scaled), erf.json, erf.md and erf.npz (the raw maps)."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    labels = list(maps)
    stages = list(next(iter(maps.values())))
    fig, axes = plt.subplots(len(stages), len(labels), figsize=(3.0 * len(labels) + 1.2, 2.9 * len(stages) + 0.4), squeeze=False)
    height = fig.get_figheight()
    fig.subplots_adjust(top=1 - 0.95 / height, bottom=0.02, hspace=0.32, wspace=0.05)
    shown = None
    for i, stage in enumerate(stages):
        for j, label in enumerate(labels):
            data = maps[label][stage]
            # log10(1 + x/max * 1e3): the tails that hold most of the area stay visible next to the peak.
            shown = axes[i][j].imshow(np.log10(1 + 1e3 * data / data.max()) / 3.0, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            r = ratios[label][stage]
            axes[i][j].set_title(f"{label} · {stage}\n50%: {100 * r['50%']['area_ratio']:.1f}% of the image, "
                                 f"99%: {100 * r['99%']['area_ratio']:.1f}%", fontsize=8)
            axes[i][j].set_axis_off()
    bar = fig.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02)
    bar.set_label("gradient magnitude, log10(1 + 1000 x / max) / 3", fontsize=8)
    fig.suptitle(f"Effective receptive field of the centre unit\n({description})", fontsize=10, y=1 - 0.12 / height)
    fig.savefig(out / "erf.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    np.savez_compressed(out / "erf.npz", **{f"{label}/{stage}": maps[label][stage] for label in labels for stage in stages})
    (out / "erf.json").write_text(json.dumps(dict(command=command, inputs=description, thresholds=list(THRESHOLDS), ratios=ratios), indent=2))
    keys = [f"{round(100 * t)}%" for t in THRESHOLDS]
    lines = [f"# Effective receptive fields ({description})", ""] + ([f"Command: `{command}`", ""] if command else [])
    lines += ["Area ratio: the smallest square centred on the centre pixel that holds the given share of the total "
              "gradient magnitude, as a percentage of the image (side in pixels in brackets).", "",
              "| stage | model | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for stage in stages:
        for label in labels:
            r = ratios[label][stage]
            lines.append(f"| {stage} | {label} | " + " | ".join(f"{100 * r[k]['area_ratio']:.1f}% ({r[k]['side']})" for k in keys) + " |")
    lines += ["", "![ERF heatmaps](erf.png)", ""]
    (out / "erf.md").write_text("\n".join(lines))
