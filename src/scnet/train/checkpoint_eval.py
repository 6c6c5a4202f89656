"""``evaluate_checkpoint``: a finished (or running) training run's accuracy, read back from its checkpoint alone.

Apart from the run itself: it needs the checkpoint's recipe and the one loading path, nothing of a run's state, and
``scnet eval`` calls it on any machine and with any engine.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from ..data import build_datasets
from ..data.loading import loader_options
from ..engines import EngineModel
from ..load import BareWeightsError, load_model
from .config import ConfigError, TrainConfig
from .engine import evaluate

__all__ = ["evaluate_checkpoint"]


def _classes(info: Any, unit: str = "") -> str:
    """A class count and the first class names, for a message."""
    shown = ", ".join(info.classes[:4])
    return f"{info.num_classes}{unit}: {shown}{', ...' if info.num_classes > 4 else ''}"


def evaluate_checkpoint(
    checkpoint: str, data: Optional[str] = None, data_dir: Optional[str] = None, limit_val: Optional[int] = None,
    batch_size: Optional[int] = None, workers: int = 0, use_ema: bool = False, engine: str = "torch",
) -> dict[str, Any]:
    """Accuracy of a training checkpoint on its dataset's validation split (or another one given by name), its model
    run by ``engine`` (``scnet.engines``: eager PyTorch, its fused form, ONNX Runtime or OpenVINO)."""
    try:
        loaded = load_model(file=checkpoint, use_ema=use_ema)
    except BareWeightsError:
        loaded = None
    if loaded is None or loaded.checkpoint is None:
        raise ConfigError(f"{checkpoint} is not a training checkpoint of this tool (no config/model entries)")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"{{batch_size}} must be a positive integer, got {batch_size!r}", "batch_size")
    state = loaded.checkpoint
    cfg = TrainConfig(**state["config"])
    cfg.data = data or cfg.data
    cfg.data_dir = data_dir if data_dir is not None else cfg.data_dir
    cfg.limit_val = limit_val if limit_val is not None else cfg.limit_val
    _, val_set, info = build_datasets(cfg.data, cfg.data_dir, 1, cfg.limit_val, cfg.image_size, cfg.download, cfg.seed, cfg.bad_images,
                                      val_data=cfg.val_data)
    if tuple(info.classes) != tuple(loaded.info.classes):  # another label set: an accuracy would mean nothing
        raise ConfigError(f"{checkpoint} was trained on {loaded.info.name} ({_classes(loaded.info, ' classes')}); {info.name} has other "
                          f"classes ({_classes(info)}); evaluate it on data with its own classes")
    loader = DataLoader(val_set, batch_size=batch_size or cfg.batch_size, shuffle=False, **loader_options(workers))
    model = loaded.model if engine == "torch" else EngineModel(loaded.model, engine)
    result = evaluate(model, loader, torch.device("cpu"))
    return dict(checkpoint=str(checkpoint), model=cfg.model, data=info.name, epoch=state.get("epoch"), engine=engine, **result)
