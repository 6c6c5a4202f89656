"""The SCNet family and its plain twins: variants as data over one trunk, registered here and in timm.

Each variant is a row of keyword arguments; the caller's keyword arguments win over it. Every SC variant
``X`` has a twin ``X_plain``: the same row with the plain ``Bottleneck`` in place of ``SCBottleneck``, so
convolution parameter counts are equal and comparisons are like for like.

Importing this module registers every variant in scnet's registry and in timm's (``timm.create_model``),
with a timm ``pretrained_cfg`` derived from each name's ``ModelSpec`` (``default_spec``: the weight table's, else
ImageNet's at the stem's size).
"""
from __future__ import annotations

from typing import Any, Callable

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model as timm_register_model

from .blocks import Bottleneck, SCBottleneck
from .registry import apply_build_options, register_model, split_build_options
from .resnet import STEM_STRIDES, ResNet
from .spec import IMAGENET_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from .weights import PRETRAINED, filter_state_dict

__all__ = ["ARCHS", "OFFICIAL_CODE", "build_model", "default_spec", "plain_twin", "sc_twin"]

_R50 = dict(layers=(3, 4, 6, 3))
_R101 = dict(layers=(3, 4, 23, 3))
_V1D = dict(stem_type="deep", avg_down=True, avd=True)
_32X4D = dict(cardinality=32, base_width=4)

# The architectures of the official code (MCG-NKU/SCNet): their state-dict names, shapes and outputs are tested equal.
OFFICIAL_CODE = ("scnet50", "scnet101", "scnet50_v1d", "scnet101_v1d")

# name -> (trunk arguments, one-line description). The plain twins are derived, not listed.
ARCHS: dict[str, tuple[dict[str, Any], str]] = {
    "scnet50": (dict(**_R50), "SCNet-50 (official weights: 77.81% ImageNet top-1)"),
    "scnet101": (dict(**_R101), "SCNet-101 (official weights: 78.94% ImageNet top-1)"),
    "scnet50_v1d": (dict(**_R50, stem_width=32, **_V1D), "SCNet-50 v1d: deep stem, avg-pool shortcuts, avd (official weights: 80.47%)"),
    "scnet101_v1d": (dict(**_R101, stem_width=64, **_V1D), "SCNet-101 v1d (no official weights were released)"),
    # SCNeXt: ResNeXt's 32x4d width; each SC half is half of ResNeXt's width with 32 groups, so the four
    # grouped 3x3s hold exactly the conv parameters of ResNeXt's one.
    "scnext50_32x4d": (dict(**_R50, **_32X4D), "SCNeXt-50 32x4d"),
    "scnext101_32x4d": (dict(**_R101, **_32X4D), "SCNeXt-101 32x4d"),
    "sescnet50": (dict(**_R50, attn_layer="se"), "SE-SCNet-50: SCNet-50 with squeeze-and-excitation (reduction 16)"),
    # The training tools' demo model: one block per stage for 28-32 px images, stages at 14-2 px after the stem's
    # max-pool. Widths 24-48-96-192 give SC halves of 12+ channels, because oneDNN runs 8-channel convs poorly
    # (its speed and accuracy: docs/results/demo-throughput, docs/results/fashion-mnist-demo).
    "scnet_demo": (dict(layers=(1, 1, 1, 1), widths=(24, 48, 96, 192), stem_type="small_pool"), "Small demo SCNet for 28-32 px images (1.1 M params)"),
}


def plain_twin(name: str) -> str:
    """The registered name of ``name``'s plain twin (``name`` itself when it is already a twin)."""
    return name if name.endswith("_plain") else f"{name}_plain"


def sc_twin(name: str) -> str:
    """The SC model of a pair (``name`` itself when it is not a plain twin)."""
    return name.removesuffix("_plain")


def _arch_args(name: str) -> dict[str, Any]:
    args, _ = ARCHS[sc_twin(name)]
    return dict(args, block=SCBottleneck if sc_twin(name) == name else Bottleneck)


def default_spec(name: str) -> ModelSpec:
    """What ``name`` expects as built: its published weights' spec, else ImageNet's description at the size its stem
    was made for (32 px and no crop for the small stems, 224 px and ImageNet's crop for the others)."""
    if name in PRETRAINED:
        return PRETRAINED[name]
    small = STEM_STRIDES[_arch_args(name).get("stem_type") or ""][0] == 1  # a stem for 32 px images: no strided conv
    return ModelSpec("imagenet", 1000, 3, 32 if small else 224, IMAGENET_MEAN, IMAGENET_STD, (),
                     crop_pct=1.0 if small else IMAGENET_CROP_PCT, arch=name, origin="https://github.com/MCG-NKU/SCNet")


def _timm_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained cfg: ``default_spec``'s, with what only the architecture knows."""
    stem = _arch_args(name).get("stem_type")
    conv_stride, pool_stride = STEM_STRIDES[stem or ""]
    spec = default_spec(name)
    last_map = spec.image_size // (conv_stride * pool_stride * 8)  # the stages stride 8 in all
    return spec.timm_cfg(min_input_size=(3, 16, 16) if conv_stride == 1 else (3, 32, 32), pool_size=(last_map, last_map),
                         first_conv="conv1.0" if stem == "deep" else "conv1", classifier="fc", license="mit",
                         paper_name="Improving Convolutional Networks with Self-Calibrated Convolutions")


_NAMES = [n for base in ARCHS for n in (base, plain_twin(base))]
# timm reads this module's ``default_cfgs`` when a builder is registered, so it must exist first.
default_cfgs = generate_default_cfgs({(f"{n}.mcg_in1k" if n in PRETRAINED else n): _timm_cfg(n) for n in _NAMES})


def build_model(name: str, pretrained: bool = False, **kwargs: Any) -> ResNet:
    """The one builder behind every name, through timm's ``build_model_with_cfg``.

    timm's builder fills ``pretrained_cfg``, handles ``features_only``/``out_indices`` and, for
    ``timm.create_model(..., pretrained=True)``, loads weights (adapting ``num_classes``/``in_chans``)
    after ``filter_state_dict``. ``scnet.create_model`` loads official weights itself (hash-checked, with
    offline instructions) and calls this with ``pretrained=False``.
    """
    return build_model_with_cfg(
        ResNet, name, pretrained, pretrained_filter_fn=filter_state_dict,
        **{**_arch_args(name), **kwargs},
    )


def _make_builder(name: str) -> Callable[..., ResNet]:
    base = sc_twin(name)
    description = ARCHS[base][1] if base == name else f"Plain twin of {base}: the same trunk with a plain ResNet bottleneck"

    def builder(pretrained: bool = False, **kwargs: Any) -> ResNet:
        own, options = split_build_options(kwargs)  # e.g. fast_train=True: applied once the model is built
        return apply_build_options(build_model(name, pretrained, **own), options)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (f"{description}.\n\nKeyword arguments go to ``scnet.ResNet`` and override the variant's; "
                       "``fast_train=True`` returns it with the training fast forms (``scnet.fast_train``).")
    return builder


for _name in _NAMES:
    # Bound in this module as timm's builders are: timm's register_model lists each name in ``__all__``, so
    # ``from scnet.models.scnet import *`` needs the attribute.
    globals()[_name] = timm_register_model(register_model(_make_builder(_name)))
