"""From a reference to a model with its weights, in three steps: resolve (the only code that reads), build (a registry
lookup, no I/O), load (``weights.load_weights``, the single sink).

A reference is a registered name (with ``pretrained``: the published file, downloaded and hash-checked), a file
(a training checkpoint or release, which describes its own model; an official ``.pth``, recognised by its published
name; bare weights for a given name), or a model in timm's Hub layout (``local-dir:PATH``, ``hf-hub:ORG/NAME``).
``resolve`` turns any of them into a ``Resolved``: the architecture, the arguments the source itself declares and
the tensors to load, in order. ``create_model`` and ``scnet.load_model`` are this path with two different results
(a bare module; a module with what it expects); the training runner starts from weights the same way.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..files import HUB_PREFIXES, check_arch, is_training_checkpoint, read_checkpoint, read_hub_config, tensor_shapes
from . import registry
from .spec import ModelSpec
from .weights import PRETRAINED, load_weights, pretrained_file

__all__ = ["BareWeightsError", "Resolved", "resolve", "state_dict_of", "create_model", "load_checkpoint", "load_pretrained"]

Tensors = dict[str, torch.Tensor]


class BareWeightsError(ValueError):
    """A weight file without the model's description, loaded without a model name."""


@dataclass(frozen=True)
class Resolved:
    """What a reference names: ``arch`` built with ``model_args`` (what the source itself declares; a caller's
    arguments win), then each of ``weights`` (tensors, where they came from) loaded in order."""

    arch: str
    model_args: dict[str, Any] = field(default_factory=dict)
    weights: tuple[tuple[Tensors, str], ...] = ()
    checkpoint: Optional[dict[str, Any]] = None  # a training checkpoint or release as read: config, data_info, history
    spec: Optional[ModelSpec] = None  # what the source says the model is and expects (published weights, a run's file)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # a Hub model's description (size, mean/std, labels)

    @property
    def trained(self) -> bool:
        """A run's own file: the model and its weights must fit exactly (no classifier or channel allowance)."""
        return self.checkpoint is not None


def state_dict_of(obj: dict, path: Union[str, Path], arch: Optional[str] = None) -> Tensors:
    """The flat state dict inside a file's contents as ``read_checkpoint`` returns them, unwrapping the usual
    containers (timm's and ours: EMA weights first). With ``arch``, a file that declares another architecture is
    refused (``check_arch``)."""
    if arch is not None:
        check_arch(obj, path, arch)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor)")
    return obj


def resolve(name: Optional[str] = None, file: Union[str, Path, None] = None, *, pretrained: bool = False,
            use_ema: bool = False, described: bool = True) -> Resolved:
    """Any reference as what to build and what to load (see the module's docstring); every file is read here, once.

    ``described=False`` takes a file that describes its own model (a training checkpoint, a release) as weights
    for ``name`` as the caller will build it: fine-tuning a run's weights for other classes, say.

    Raises ``BareWeightsError`` for bare weights without a model name, ``ValueError`` for a file of another model
    than ``name``, ``WeightsUnavailableError`` for ``pretrained`` where no weights were published.
    """
    if name is not None and name.startswith(HUB_PREFIXES):
        return _hub(name)
    weights: list[tuple[Tensors, str]] = []
    spec: Optional[ModelSpec] = None
    if file is not None:
        obj = read_checkpoint(file)  # the one read of the file
        if described and is_training_checkpoint(obj):
            return _trained(str(file), obj, name, use_ema)
        name = name or _official_arch(Path(file))
        if not name:
            raise BareWeightsError(f"{file} holds bare weights: give the model's name too")
        ours = name if name in registry.list_models() else None  # our files name their architecture: checked
        weights.append((state_dict_of(obj, file, ours), str(file)))
        spec = _declared_spec(obj, name) if described else None
    if not name:
        raise ValueError("give a model name or a checkpoint")
    if pretrained:
        path = pretrained_file(name)
        weights.insert(0, (state_dict_of(read_checkpoint(path), path, name), str(path)))
        spec = PRETRAINED[name] if file is None else spec  # a file loaded over them says what it is, if it can
    return Resolved(name, {} if spec is None else spec.build_args, tuple(weights), spec=spec)


def _declared_spec(obj: dict[str, Any], arch: str) -> Optional[ModelSpec]:
    """The spec a weights file carries (``scnet export`` releases: their ``data_info``), or None."""
    declared = obj.get("data_info")
    return dataclasses.replace(ModelSpec.from_dict(declared), arch=arch) if isinstance(declared, dict) else None


def _official_arch(path: Path) -> Optional[str]:
    """The model whose published file this is, by its name (``scnet50-dc6a7e87.pth``), or None."""
    return next((name for name, spec in PRETRAINED.items() if spec.filename == path.name), None)


# A training configuration's settings that are the builder's arguments (left out at their defaults).
_TUNING = (("frozen_stages", -1), ("norm_eval", False))


def _trained(path: str, obj: dict[str, Any], name: Optional[str], use_ema: bool) -> Resolved:
    """A training checkpoint or a release of one: the model its configuration names, shaped for its dataset."""
    config, info = obj["config"], obj["data_info"]
    arch = config["model"]
    if name and name != arch:
        raise ValueError(f"{path} holds {arch}, not {name}")
    key = "model_ema" if use_ema else "model"
    if not isinstance(obj.get(key), dict):
        raise ValueError(f"{path} has no {'EMA ' if use_ema else ''}weights (no '{key}' entry)")
    spec = dataclasses.replace(ModelSpec.from_dict(info), arch=arch, model_args=config_args(config))
    return Resolved(arch, spec.build_args, ((obj[key], path),), obj, spec)


def config_args(config: dict[str, Any]) -> dict[str, Any]:
    """The builder's arguments a training configuration sets (besides the dataset's classes and channels)."""
    args = {k: config[k] for k in ("stem_type", "norm_layer") if config.get(k) is not None}
    args.update({k: config[k] for k, default in _TUNING if config.get(k, default) != default})
    if config.get("drop_path"):  # the configuration's name for the trunk's drop_path_rate (timm's train.py's)
        args["drop_path_rate"] = config["drop_path"]
    return args


def _hub(ref: str) -> Resolved:
    """A model saved in timm's Hub layout: its architecture and saved arguments (checked against the weights file's
    header before anything is allocated), its weights and its ``pretrained_cfg`` (input size, mean/std, labels)."""
    config, weights = read_hub_config(ref)
    arch = config["architecture"]
    if arch not in registry.list_models():
        close = difflib.get_close_matches(arch, registry.list_models(), n=3)
        raise ValueError(f"{ref}: config.json names architecture {arch!r}, which is not an scnet model"
                         + (f" (did you mean {', '.join(close)}?)" if close else "") + "; load it with timm.create_model instead")
    saved = dict(config.get("model_args") or {})
    if config.get("num_classes") is not None:
        saved["num_classes"] = config["num_classes"]
    _check_hub_shapes(ref, arch, saved, weights)
    cfg = dict(config.get("pretrained_cfg") or {})
    if "label_names" in config:  # timm's top-level place for them
        cfg.setdefault("label_names", config["label_names"])
    for key in ("input_size", "min_input_size", "mean", "std"):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    cfg.update(source=ref.partition(":")[0], file=ref)
    return Resolved(arch, saved, ((read_checkpoint(weights)["model"], ref),), pretrained_cfg=cfg)


def _check_hub_shapes(ref: str, arch: str, saved: dict[str, Any], weights: Path) -> None:
    """Refuse a Hub folder whose config.json does not describe its weights, before anything is allocated: the model
    its config describes is built on the meta device (no memory) and each tensor's shape compared with the weights
    file's header (a config saying 10^9 classes for 2-class weights once asked for terabytes)."""
    try:
        with torch.device("meta"):
            outline = registry.build(arch, **saved)
    except TypeError as e:  # an argument the builder does not take
        raise ValueError(f"{ref}: config.json's model_args are not arguments of {arch} ({e})") from None
    held = tensor_shapes(weights)
    args = ", ".join(f"{k}={v}" for k, v in saved.items() if k != "num_classes") or "none"
    for key, tensor in outline.state_dict().items():
        if key in held and tuple(tensor.shape) != held[key]:
            raise ValueError(f"{ref}: config.json describes {key} as {tuple(tensor.shape)}, but model.safetensors holds "
                             f"{held[key]} (num_classes {saved.get('num_classes')}, model_args {args}): the config is "
                             f"not this file's")


def build(resolved: Resolved, **kwargs: Any) -> nn.Module:
    """The model ``resolved`` names, built (no I/O) with its declared arguments and the caller's over them, and its
    weights loaded. A run's own file must fit exactly; other weights may leave a classifier of another size at its
    initialisation and are adapted to other input channels (``load_weights``)."""
    args = {**resolved.model_args, **{k: v for k, v in kwargs.items() if v is not None}}
    model = registry.create_any_model(resolved.arch, **args)
    classifier, described = ("fc", None) if not resolved.trained else (None, f"{resolved.arch} on {resolved.spec.name}")
    for tensors, source in resolved.weights:
        load_weights(model, tensors, source, classifier=classifier, name=described)
    if resolved.pretrained_cfg:
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **resolved.pretrained_cfg}
    return model


def create_model(name: str, pretrained: bool = False, checkpoint_path: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """Build a registered model (``resolve`` -> build -> load).

    Keyword arguments whose value is None are dropped, so tools can pass "use the default" without knowing
    each model's defaults. ``name`` may also be ``local-dir:PATH`` or ``hf-hub:ORG/NAME``: a model in timm's Hub
    layout (``scnet.export.export_hf``), built and loaded from its ``config.json`` and ``model.safetensors`` (the
    caller's arguments win, e.g. another ``num_classes``: the classifier then stays at its init).
    ``pretrained=True`` loads the official weights of ``name``; ``checkpoint_path`` then loads a local
    ``.pth``/``.safetensors`` file over them (or over the random init), shaped as the caller builds it.

    Raises ``ValueError`` for an unknown name (naming the closest ones) or a weight file that does not fit the model,
    ``WeightsUnavailableError`` for ``pretrained=True`` where no weights were published or they cannot be fetched.
    """
    if not name.startswith(HUB_PREFIXES):
        registry.get_model_builder(name)  # an unknown name, said first
    return build(resolve(name, checkpoint_path, pretrained=pretrained, described=False), **kwargs)


def load_checkpoint(model: nn.Module, path: Union[str, Path], strict: bool = True, classifier: Optional[str] = "fc",
                    arch: Optional[str] = None) -> nn.Module:
    """Load a weight file into an existing ``model`` (``load_weights``). With ``arch`` (the model's registered name),
    a file declaring another architecture is refused up front."""
    return load_weights(model, state_dict_of(read_checkpoint(path), path, arch), str(path), strict, classifier)


def load_pretrained(model: nn.Module, name: str, cache_dir: Union[str, Path, None] = None, progress: bool = True) -> nn.Module:
    """Load the published weights of ``name`` into ``model``."""
    return load_checkpoint(model, pretrained_file(name, cache_dir, progress))
