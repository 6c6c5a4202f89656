"""The training configuration: one typed block of defaults, overridden by a YAML file, then by CLI flags."""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

__all__ = ["TrainConfig", "ConfigError", "load_yaml", "merge_config"]


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


@dataclass
class TrainConfig:
    model: str = "scnet_demo"
    stem_type: Optional[str] = None  # override the model's stem, e.g. "small" for 28-32 px images
    norm_layer: Optional[str] = None  # override the model's norm: "batchnorm", "groupnorm"
    sync_bn: bool = False  # synchronise batch-norm statistics across processes (GPU only)
    data: str = "fashion_mnist"
    data_dir: Optional[str] = None
    download: bool = False
    image_size: int = 224  # imagefolder only; the other datasets have their native size
    epochs: int = 5
    batch_size: int = 128
    opt: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: Optional[float] = None
    ema_decay: Optional[float] = None  # e.g. 0.999 keeps an exponential moving average of the weights
    amp: bool = False  # bf16 autocast on CPU, fp16 (with a grad scaler) on GPU
    channels_last: bool = False
    workers: int = 0
    seed: int = 0
    limit_train: Optional[int] = None
    limit_val: Optional[int] = None
    out: Optional[str] = None  # default runs/<model>-<data>-seed<seed>
    resume: Optional[str] = None

    def validate(self) -> "TrainConfig":
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "image_size": self.image_size}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.opt not in ("sgd", "adamw"):
            raise ConfigError(f"--opt must be sgd or adamw, got {self.opt!r}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in (0, 1), got {self.ema_decay}")
        if self.out is None:
            self.out = str(Path("runs") / f"{self.model}-{self.data}-seed{self.seed}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_keys(values: dict[str, Any], source: str) -> None:
    known = [f.name for f in fields(TrainConfig)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"unknown key {key!r} in {source}" + (f"; did you mean {close[0]!r}?" if close else ""))


def load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of option: value")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    _check_keys(values, path)
    return values


def merge_config(yaml_values: Optional[dict[str, Any]] = None, flags: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Defaults, then the YAML file, then the flags the user actually gave (None means "not given")."""
    values: dict[str, Any] = {}
    for layer in (yaml_values or {}, {k: v for k, v in (flags or {}).items() if v is not None}):
        _check_keys(layer, "the options")
        values.update(layer)
    return TrainConfig(**values).validate()
