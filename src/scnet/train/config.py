"""The training configuration: one typed block of defaults, overridden by a YAML file, then by CLI flags."""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..errors import SettingError

__all__ = ["TrainConfig", "ConfigError", "bundled_configs", "config_path", "load_yaml", "merge_config", "option"]


DEFAULT_EPOCHS = 5
LR_PER_256 = 0.2  # the peak learning rate of a 256-image batch
MAX_LR = 1000.0  # far above any sane rate (linear scaling at a 64k batch gives 51); 1e308 overflows the update


class ConfigError(SettingError):
    """A configuration value or key is wrong; the message names it (the option's keyword, or its flag in the CLI)."""


MAX_YAML_BYTES = 1 << 20  # a recipe is a few hundred bytes; a megabyte is no recipe
MAX_YAML_NODES = 10_000  # values in a file once its aliases are expanded (an alias bomb expands to billions)


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters without building the whole of it: a message never prints an
    unbounded value (a YAML alias bomb is a few hundred bytes whose repr would exhaust memory)."""
    import reprlib

    cut = reprlib.Repr()
    cut.maxlevel, cut.maxlist, cut.maxtuple, cut.maxdict, cut.maxstring, cut.maxother, cut.maxlong = 2, 4, 4, 4, limit, limit, 40
    short = cut.repr(value)
    return short if len(short) <= limit else short[: limit - 3] + "..."


def _stem_types() -> tuple[str, ...]:
    from ..models.resnet import STEM_TYPES

    return STEM_TYPES


def _schedules() -> tuple[str, ...]:
    from .engine import SCHEDULES

    return SCHEDULES


def _bad_image_policies() -> tuple[str, ...]:
    from ..data import BAD_IMAGE_POLICIES

    return BAD_IMAGE_POLICIES


def choices_of(name: str) -> Optional[tuple[str, ...]]:
    """The allowed values of ``TrainConfig`` field ``name`` (its flag's choices), or None when any value goes."""
    choices = next(f for f in fields(TrainConfig) if f.name == name).metadata.get("choices")
    return choices() if callable(choices) else choices


def option(default: Any, help: str, choices: Union[tuple[str, ...], Callable[[], tuple[str, ...]], None] = None) -> Any:
    """A configuration field with the help text and choices of its ``scnet train`` flag (the CLI is made from these).

    ``help`` may name ``{default}``; ``choices`` may be a function, called when the parser is built.
    """
    return field(default=default, metadata=dict(help=help, choices=choices))


@dataclass
class TrainConfig:
    """Every option of a training run. One field is one ``scnet train`` flag (``--batch-size`` for ``batch_size``)."""

    model: str = option("scnet_demo", "registered model (default {default}, the small demo SCNet)")
    stem_type: Optional[str] = option(None, "override the model's stem ('small' or 'small_pool' for 28-32 px images)", _stem_types)
    norm_layer: Optional[str] = option(None, "override the model's norm layer", ("batchnorm", "groupnorm"))
    sync_bn: bool = option(False, "synchronise batch norm across processes (GPU)")
    pretrained: bool = option(False, "start from the model's published ImageNet weights (a classifier of another size "
                                     "starts fresh; another input channel count is adapted, as timm does)")
    checkpoint: Optional[str] = option(None, "start from these weights: a training checkpoint, release, official .pth or "
                                              "bare weights of the same model (a new head as with --pretrained)")
    frozen_stages: int = option(-1, "freeze the stem (0) and the first N stages (1-4): no gradients, eval mode; "
                                    "-1 trains everything (default)")
    norm_eval: bool = option(False, "keep every norm in eval mode while training (running statistics frozen)")
    data: str = option("fashion_mnist", "fashion_mnist, cluttered_fashion_mnist, cifar10, cifar100, imagefolder, synthetic, "
                                        "pathfinderSIZE-LENGTH (generated, e.g. pathfinder32-14: size 32 or 64, length 6, 9 or 14), "
                                        "wds:FOLDER (shards written by scnet shard), wds:PATTERN (WebDataset shards, e.g. "
                                        "'wds:/data/train-{{000000..000127}}.tar' or 'wds:pipe:aws s3 cp s3://b/train-{{0..9}}.tar -', "
                                        "with --val-data) or hf:PATH (a saved Hugging Face DatasetDict; hf:PATH#image=COL,label=COL "
                                        "names its columns) (default {default})")
    val_data: Optional[str] = option(None, "the validation shards of --data wds:PATTERN, as wds:PATTERN")
    data_dir: Optional[str] = option(None, "dataset folder (Fashion-MNIST defaults to the Debian package's); for Pathfinder, where "
                                              "generated images are cached (default ~/.cache/scnet/data)")
    download: bool = option(False, "download Fashion-MNIST if it is not found")
    image_size: int = option(224, "imagefolder crop size (default {default}); the other datasets have their native size")
    bad_images: str = option("error", "imagefolder: stop at an unreadable image file (default) or leave them all out",
                             _bad_image_policies)
    epochs: Optional[int] = option(None, f"default {DEFAULT_EPOCHS}; with --resume, the run's own")
    batch_size: int = option(256, "global batch size (default {default})")
    accum_steps: int = option(1, "split each process's share of a batch into this many micro-batches, one backward "
                                 "each and one update: the same update in 1/N of the activation memory (batch norm "
                                 "then sees micro-batch statistics) (default {default})")
    opt: str = option("sgd", "optimiser (default {default}); lamb is timm's LAMB (layer-wise adaptive, as ResNet strikes back "
                             "trains with; give it its own --lr, e.g. 5e-3 at batch 2048)", ("sgd", "adamw", "lamb"))
    lr: Optional[float] = option(None, f"peak learning rate (default {LR_PER_256} x batch size / 256, the linear scaling rule)")
    momentum: float = option(0.9, "SGD momentum (default {default})")
    nesterov: bool = option(True, "Nesterov momentum (default); --no-nesterov for plain momentum, as the PyTorch ImageNet example")
    weight_decay: float = option(5e-4, "default {default}; none on norms and biases unless --decay-all")
    decay_all: bool = option(False, "weight decay on every parameter, norms and biases too (the PyTorch ImageNet example)")
    warmup_epochs: float = option(0.75, "linear warm-up before the decay (default {default})")
    schedule: str = option("linear", "learning-rate decay after the warm-up: linear or cosine to 0 at the end (linear is "
                                     "best for short runs), or step (x lr-gamma at each of --lr-milestones) (default {default})",
                           _schedules)
    lr_milestones: Optional[list[int]] = option(None, "epochs at which --schedule step multiplies the learning rate by "
                                                       "--lr-gamma (default 30 60 90, the paper's)")
    lr_gamma: float = option(0.1, "the step schedule's factor (default {default})")
    label_smoothing: float = option(0.1, "default {default}")
    bce_loss: bool = option(False, "binary cross-entropy on one-hot targets (timm's BinaryCrossEntropy, smoothed by "
                                   "--label-smoothing), as ResNet strikes back trains, instead of softmax cross-entropy")
    drop_path: float = option(0.0, "stochastic depth: the last block's probability of dropping its residual branch in "
                                   "training, rising linearly from 0 at the first block (timm's drop_path_rate; e.g. 0.05 "
                                   "in ResNet strikes back's A2 recipe) (default {default}: none)")
    clip_grad: Optional[float] = option(None, "clip the gradient norm to this value")
    ema_decay: Optional[float] = option(None, "keep an EMA of the weights with this decay, e.g. 0.999")
    reprob: float = option(0.0, "random erasing: the probability that a training image has a random rectangle replaced "
                                "by noise (timm's RandomErasing, per-pixel mode; e.g. 0.25 in timm's recipes) (default "
                                "{default}: none)")
    auto_augment: Optional[str] = option(None, "a per-image augmentation policy after the crop and flip, as timm spells it: "
                                               "RandAugment rand-m9-mstd0.5-inc1 (ResNet strikes back: rand-m7-mstd0.5-inc1), "
                                               "augmix-m5-w3, original, 3a, or trivialaugment (torchvision's)")
    mixup: float = option(0.0, "mixup's alpha: each batch blended with itself reversed, weight ~ Beta(alpha, alpha), the "
                               "targets too (timm's Mixup; e.g. 0.1-0.2) (default {default}: none)")
    cutmix: float = option(0.0, "cutmix's alpha: a box of each image replaced by its partner's (timm's; e.g. 1.0) "
                                "(default {default}: none)")
    mixup_switch_prob: float = option(0.5, "with both mixup and cutmix, the probability a batch is cut rather than "
                                           "blended (default {default})")
    amp: bool = option(False, "mixed precision (bf16 autocast on CPU, fp16 with a grad scaler on GPU)")
    channels_last: bool = option(False, "NHWC memory format")
    fast_train: bool = option(True, "train through the fast forms of the SC layers and bottlenecks (scnet.fast_train: "
                                    "the reference's numbers up to float rounding, faster and in less memory); "
                                    "--no-fast-train runs the reference forms")
    compile: bool = option(False, "torch.compile the model for training (inductor; the first steps compile; needs a C++ "
                                  "compiler on CPU)")
    workers: Optional[int] = option(None, "data-loading processes of an image folder, shards or a Hugging Face dataset "
                                          "(default: one fewer than the CPUs this process may use, shared among "
                                          "torchrun's processes on the machine, at most 8; 0: in the training process); "
                                          "the in-memory sets need none")
    seed: int = option(0, "default {default}")
    limit_train: Optional[int] = option(None, "use only N training images: the first N, or of an imagefolder (sorted by "
                                              "class) a fixed draw with each class its share")
    limit_val: Optional[int] = option(None, "use only N validation images (as --limit-train)")
    train_subset: Optional[int] = option(None, "train on N images drawn from the training set (after --limit-train) at "
                                               "random, each class its share, seeded by --seed, a smaller N's images inside "
                                               "a larger one's; an epoch stays as long as the whole set, so the steps and "
                                               "schedule do not change, only the data")
    out: Optional[str] = option(None, "run directory (default runs/<model>-<data>-seed<seed>)")
    resume: Optional[str] = option(None, "run directory or checkpoint to continue from; the run continues in that "
                                         "directory (or, with --out, in a copy of it), with its own recipe")
    checkpoint_every: Optional[int] = option(None, "also checkpoint every N steps inside an epoch (a crash loses at most N)")
    dist_timeout: float = option(600.0, "multi-process runs: seconds one collective waits for the other processes; a "
                                        "process that stops answering ends the run after this long (default {default:g})")

    def validate(self) -> "TrainConfig":
        """Check every value (a YAML file can hold any type); raise ``ConfigError`` naming the option and the value."""
        if self.epochs is None and not self.resume:
            self.epochs = DEFAULT_EPOCHS
        for name in ("batch_size", "image_size", "accum_steps"):
            _number(name, getattr(self, name), low=1, integer=True)
        for name in ("epochs", "checkpoint_every", "limit_train", "limit_val", "train_subset"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), low=1, integer=True)
        if self.workers is not None:
            _number("workers", self.workers, low=0, integer=True)
        _number("dist_timeout", self.dist_timeout, low=0, low_open=True)
        _number("frozen_stages", self.frozen_stages, low=-1, high=4, integer=True)
        if self.pretrained and self.checkpoint:
            raise ConfigError("give {pretrained} or {checkpoint}, not both: they are two starting points", "pretrained", "checkpoint")
        _number("seed", self.seed, low=0, high=2**63 - 1, integer=True)  # what torch.manual_seed takes
        if self.lr is None:  # Goyal et al.'s rule: a smaller batch takes proportionally smaller steps
            self.lr = LR_PER_256 * self.batch_size / 256
        _number("lr", self.lr, low=0, high=MAX_LR, low_open=True)
        _number("momentum", self.momentum, low=0, high=1, high_open=True)
        _number("weight_decay", self.weight_decay, low=0)
        _number("warmup_epochs", self.warmup_epochs, low=0)
        _number("lr_gamma", self.lr_gamma, low=0, high=1, low_open=True)
        if self.schedule == "step" and self.lr_milestones is None:
            self.lr_milestones = [30, 60, 90]  # the paper's recipe
        if self.lr_milestones is not None:
            if not isinstance(self.lr_milestones, list) or not self.lr_milestones:
                raise ConfigError(f"{{lr_milestones}} must be a list of epochs, got {self.lr_milestones!r}", "lr_milestones")
            for m in self.lr_milestones:
                _number("lr_milestones", m, low=1, integer=True)
            if self.lr_milestones != sorted(set(self.lr_milestones)):
                raise ConfigError(f"{{lr_milestones}} must ascend, each epoch once, got {self.lr_milestones}", "lr_milestones")
        if self.epochs is not None and self.warmup_epochs > self.epochs:
            raise ConfigError(f"{{warmup_epochs}} {self.warmup_epochs:g} is longer than the run's {self.epochs} {{epochs}}: the "
                              f"learning rate would never reach its peak", "warmup_epochs", "epochs")
        _number("label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        _number("drop_path", self.drop_path, low=0, high=1, high_open=True)
        _number("reprob", self.reprob, low=0, high=1)
        if self.clip_grad is not None:
            _number("clip_grad", self.clip_grad, low=0, low_open=True)
        if self.ema_decay is not None:
            _number("ema_decay", self.ema_decay, low=0, high=1, low_open=True, high_open=True)
        for name in ("opt", "bad_images", "schedule"):  # the choices of their flags, from the fields' metadata
            choices = choices_of(name)
            if getattr(self, name) not in choices:
                raise ConfigError(f"{{{name}}} must be one of {', '.join(choices)}, got {getattr(self, name)!r}", name)
        for name in ("model", "data"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{{{name}}} must be a name, got {shown(getattr(self, name))}", name)
        _check_types(self)
        _check_augmentation(self)
        if self.out is None and not self.resume:  # a resumed run continues where its checkpoint is
            self.out = str(Path("runs") / f"{self.model}-{self.data.partition(':')[0]}-seed{self.seed}")  # wds:/a/b: "wds"
        return self

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (mixup or cutmix): the targets are soft and carry the label smoothing."""
        return bool(self.mixup or self.cutmix)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_augmentation(cfg: "TrainConfig") -> None:
    """Mixup's and cutmix's numbers, and a policy timm (or torchvision) has and this Pillow can run."""
    _number("mixup", cfg.mixup, low=0)
    _number("cutmix", cfg.cutmix, low=0)
    _number("mixup_switch_prob", cfg.mixup_switch_prob, low=0, high=1)
    if cfg.auto_augment is not None:
        from ..data.policies import check_policy

        try:
            check_policy(cfg.auto_augment)
        except ValueError as e:
            raise ConfigError(f"{{auto_augment}} {e}", "auto_augment") from None


def _check_types(cfg: "TrainConfig") -> None:
    """Booleans must be booleans (YAML's "false" in quotes is a string, and a non-empty string is true) and paths
    and names strings (a YAML number or list is not a path)."""
    import typing

    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        value, hint = getattr(cfg, f.name), hints[f.name]
        named = "{" + f.name + "}"
        if hint is bool and not isinstance(value, bool):
            raise ConfigError(f"{named} must be true or false, got {shown(value)}" +
                              (" (a string: write it without quotes)" if isinstance(value, str) else ""), f.name)
        if hint in (str, Optional[str]) and value is not None and not isinstance(value, str):
            raise ConfigError(f"{named} must be a string, got {shown(value)}", f.name)


def _number(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None, integer: bool = False,
            low_open: bool = False, high_open: bool = False) -> None:
    """``value`` must be a finite number (an integer if ``integer``) within the bounds; booleans are not numbers."""
    named = "{" + name + "}"
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ConfigError(f"{named} must be {'an integer' if integer else 'a finite number'}, got {shown(value)}", name)
    if low is not None and (value < low or (low_open and value == low)):
        bound = "a positive integer" if integer and low == 1 else f"{'>' if low_open else '>='} {low:g}"
        raise ConfigError(f"{named} must be {bound}, got {shown(value)}", name)
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(f"{named} must be {'<' if high_open else '<='} {high if integer else format(high, 'g')}, got {shown(value)}", name)


def _check_keys(values: dict[str, Any], source: str) -> None:
    known = [f.name for f in fields(TrainConfig)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"unknown key {shown(key)} in {source}" + (f"; did you mean {close[0]!r}?" if close else ""))


_BUNDLED = Path(__file__).resolve().parents[1] / "configs"  # the package's recipes (package data)


def bundled_configs() -> list[str]:
    """The recipes shipped inside the package, by the names ``--config`` takes (e.g. ``imagenet/scnet50``)."""
    return sorted(str(p.relative_to(_BUNDLED).with_suffix("")) for p in _BUNDLED.rglob("*.yaml"))


def config_path(name: str) -> Path:
    """A YAML file's path, or a bundled recipe's for its name (``imagenet/scnet50``, with or without ``.yaml``).

    Why: the recipes live inside the package so that ``pip install`` users have them too; a file of that name in
    the working directory still comes first.
    """
    path = Path(name)
    if path.exists():
        return path
    bundled = _BUNDLED / path.with_suffix(".yaml")
    if not path.is_absolute() and bundled.is_file():
        return bundled
    raise ConfigError(f"no config file {name!r}, and no bundled recipe of that name; bundled: {', '.join(bundled_configs())}")


MAX_YAML_DEPTH = 32  # a recipe is a mapping of values and short lists: two or three levels


def _expanded_nodes(node: Any, memo: dict[int, int], depth: int = 0) -> int:
    """How many values ``node`` holds once every alias is expanded, counted on the graph (linear time); refuses
    nesting deeper than MAX_YAML_DEPTH (a few thousand brackets would exhaust the recursion of any reader)."""
    import yaml

    if depth > MAX_YAML_DEPTH:
        raise _TooDeep()
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a node that contains itself counts once (PyYAML refuses to construct it anyway)
    count = 1
    if isinstance(node, yaml.SequenceNode):
        count += sum(_expanded_nodes(child, memo, depth + 1) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        count += sum(_expanded_nodes(k, memo, depth + 1) + _expanded_nodes(v, memo, depth + 1) for k, v in node.value)
    memo[id(node)] = count
    return count


class _TooDeep(Exception):
    pass


def _read_yaml(path: Path) -> Any:
    """The file's value, read within bounds: a regular file (a FIFO would wait forever, /dev/zero fill memory) of at
    most MAX_YAML_BYTES, nested at most MAX_YAML_DEPTH deep, at most MAX_YAML_NODES values after aliases."""
    import yaml

    try:
        if not path.is_file():
            raise ConfigError(f"{path} is not a regular file (a folder, FIFO or device); a config is a YAML file")
        with path.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise ConfigError(f"{path} is more than {MAX_YAML_BYTES:,} bytes; a config file is at most {MAX_YAML_BYTES:,}")
        text = raw.decode("utf-8-sig")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_nodes(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{path} holds more than {MAX_YAML_NODES:,} values once its aliases (&, *) are expanded; "
                              f"a config file is a few options")
        return yaml.safe_load(text)
    except (RecursionError, _TooDeep):
        raise ConfigError(f"{path} nests its values more than {MAX_YAML_DEPTH} levels deep; a config file is a few options") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def load_yaml(path: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The options in a YAML file or bundled recipe (``config_path``), with those of the file its ``base`` names."""
    if not isinstance(path, str):
        raise ConfigError(f"a config file is named by a path, got {shown(path)}")
    resolved = config_path(path).resolve()
    if resolved in _seen:
        raise ConfigError(f"{resolved} is its own base (through {' -> '.join(p.name for p in (*_seen, resolved))}); "
                          f"a base names another file")
    values = _read_yaml(resolved) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{resolved} must hold a mapping of option: value")
    named = next((k for k in values if not isinstance(k, str)), None)
    if named is not None:
        raise ConfigError(f"key {shown(named)} in {resolved} is not a name; options are named, e.g. epochs: 5")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    base = values.pop("base", None)  # a file's options over those of the file it names (relative to it)
    _check_keys(values, str(resolved))
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"base in {resolved} must name a YAML file, got {shown(base)}")
    return {**load_yaml(str(resolved.parent / base), (*_seen, resolved)), **values}


def merge_config(yaml_values: Optional[dict[str, Any]] = None, flags: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Defaults, then the YAML file, then the flags the user actually gave (None means "not given")."""
    values: dict[str, Any] = {}
    for layer in (yaml_values or {}, {k: v for k, v in (flags or {}).items() if v is not None}):
        _check_keys(layer, "the options")
        values.update(layer)
    return TrainConfig(**values).validate()
