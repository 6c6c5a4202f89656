"""What a training run writes as it goes, besides its checkpoints: log.csv, curves.png, config.yaml, TensorBoard."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["LOG_FIELDS", "plot_curves", "tensorboard", "write_log", "yaml_text"]

LOG_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "images_per_s", "seconds")


def write_log(out: Path, history: list[dict[str, Any]]) -> None:
    """log.csv, one row per epoch, written whole (``files.write_text_atomically``)."""
    import io

    from ..files import write_text_atomically

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=LOG_FIELDS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
    write_text_atomically(out / "log.csv", text.getvalue())


def plot_curves(out: Path, history: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (with label smoothing)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "s-", label="val")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; log.csv always exists
        return None
    return SummaryWriter(str(out / "tensorboard"))


def yaml_text(values: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)
