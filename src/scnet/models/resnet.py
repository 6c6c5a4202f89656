"""The generic ResNet trunk shared by SCNet and its plain twins.

Child names (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1..4``, ``fc``) and the index keys of the deep
stem and of ``downsample`` are those of the official SCNet code: weight compatibility requires them, and
torchvision's ``IntermediateLayerGetter``/FPN helpers and timm's feature wrappers rely on the first ones.
"""

import contextlib
from typing import Any, Callable, Optional, Sequence, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models._features import feature_take_indices
from timm.models import checkpoint_seq

from ..layers import NormLayer, check_image_batch, get_norm_layer

__all__ = ["ResNet", "STEM_STRIDES", "STEM_TYPES"]

# Each stem's (conv stride, pool stride): the one place the stem's downsampling is stated; the trunk's feature
# reductions, the pool module and timm's pool size all follow from it.
STEM_STRIDES = {"": (2, 2), "deep": (2, 2), "small": (1, 1), "small_pool": (1, 2)}
STEM_TYPES = tuple(STEM_STRIDES)


def _stage_strides(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) for the four stages; dilation replaces stride below ``output_stride``."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    plan, net_stride, dilation = [], 4, 1
    for stride in (1, 2, 2, 2):
        if net_stride * stride > output_stride and stride > 1:
            dilation *= stride
            stride = 1
        else:
            net_stride *= stride
        plan.append((stride, dilation))
    return plan


def _make_stem(stem_type: str, in_chans: int, stem_width: int, out_width: int, norm_layer: NormLayer, act_layer: Callable[..., nn.Module]) -> tuple[nn.Module, int]:
    """The stem conv(s) before ``bn1``: returns (module, out_channels). The deep stem ends at ``2 * stem_width``."""
    if stem_type == "deep":
        # Index keys conv1.0/.1/.3/.4/.6 are the official v1d ones; the last conv's norm is the trunk's bn1.
        return nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False),
            norm_layer(stem_width),
            act_layer(inplace=True),
            nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
            norm_layer(stem_width),
            act_layer(inplace=True),
            nn.Conv2d(stem_width, stem_width * 2, 3, stride=1, padding=1, bias=False),
        ), stem_width * 2
    if STEM_STRIDES[stem_type][0] == 1:
        # For 28-32 px images (CIFAR, Fashion-MNIST): a full-resolution 3x3 (small_pool then max-pools it by 2).
        return nn.Conv2d(in_chans, out_width, 3, stride=1, padding=1, bias=False), out_width
    return nn.Conv2d(in_chans, out_width, 7, stride=2, padding=3, bias=False), out_width


def _make_stem_pool(stem_type: str) -> nn.Module:
    """The pool after the stem: none for "small", 2x2 for "small_pool", ResNet's 3x3/2 otherwise.

    Why "small_pool": a 28 px image keeps its full-resolution first conv but the stages run at 14-2 px, a quarter
    of the positions of "small", so a small net trains several times faster (the demo model's results:
    docs/results/fashion-mnist-demo).
    """
    conv_stride, pool_stride = STEM_STRIDES[stem_type]
    if pool_stride == 1:
        return nn.Identity()
    return nn.MaxPool2d(2) if conv_stride == 1 else nn.MaxPool2d(3, stride=2, padding=1)


def _make_downsample(inplanes: int, outplanes: int, stride: int, avg_down: bool, norm_layer: NormLayer) -> nn.Sequential:
    if not avg_down:
        return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), norm_layer(outplanes))
    # ResNet-D shortcut. Index 0 stays a (parameter-free) pool even at stride 1 so the conv/norm keep the
    # official keys downsample.1/.2.
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(inplanes, outplanes, 1, stride=1, bias=False), norm_layer(outplanes))


def _check_trunk_args(stem_type: str, layers: Sequence[int], widths: Sequence[int], in_chans: int, num_classes: int,
                      drop_rate: float, frozen_stages: int, drop_path_rate: float = 0.0) -> None:
    """A ``ValueError`` naming the first bad constructor argument."""
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
        raise ValueError(f"frozen_stages must be an integer from -1 (nothing frozen) to 4 (stem and all 4 stages), got {frozen_stages!r}")
    if stem_type not in STEM_TYPES:
        raise ValueError(f"stem_type must be one of {STEM_TYPES}, got {stem_type!r}")
    if len(layers) != 4 or any(n < 1 for n in layers):
        raise ValueError(f"layers must give 4 positive block counts, got {list(layers)}")
    if len(widths) != 4 or any(w < 1 for w in widths):
        raise ValueError(f"widths must give 4 positive stage widths, got {list(widths)}")
    for name, value, low in (("in_chans", in_chans, 1), ("num_classes", num_classes, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def drop_path_rates(layers: Sequence[int], rate: float) -> list[list[float]]:
    """Each block's stochastic-depth probability, per stage: rising linearly from 0 at the first block to ``rate`` at
    the last, over the whole network (timm's ResNet rule, so a recipe's ``drop_path_rate`` means the same here)."""
    total = sum(layers)
    rates = [rate * i / max(total - 1, 1) for i in range(total)]
    starts = [sum(layers[:k]) for k in range(len(layers))]
    return [rates[start:start + count] for start, count in zip(starts, layers)]


class ResNet(nn.Module):
    """A ResNet built from any bottleneck class, with the timm backbone API.

    Args:
        block: the residual block class (``SCBottleneck`` or the plain ``Bottleneck``).
        layers: blocks per stage.
        num_classes: classifier outputs; 0 gives pooled features.
        in_chans: input image channels.
        cardinality: groups of the 3x3s; with ``base_width`` the width rule ``int(planes * base_width / 64) * cardinality``.
        base_width: the 3x3 width per group at planes 64 (see ``cardinality``).
        stem_type: "" (7x7/2 + max-pool), "deep" (three 3x3, v1d), "small" (3x3/1, no max-pool, 28-32 px) or
            "small_pool" (3x3/1, then a 2x2 max-pool).
        stem_width: first width of the deep stem.
        widths: the four stages' bottleneck planes (outputs are 4x); the 7x7 and small stems output widths[0].
        avg_down: ResNet-D shortcut (average pool, then a stride-1 1x1).
        avd: the stride of each stage's first block moves to a 3x3 average pool after its 3x3s.
        output_stride: 32, 16 or 8; lower values dilate the last stages instead of striding them.
        global_pool: timm pool type for the head ("avg", "max", "avgmax", "" for none).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, the largest block's drop probability (``drop_path_rates``); 0 (the
            default) builds no drop path at all, so the official models' outputs are unchanged.
        norm_layer: a norm class/callable or a name ("batchnorm", "groupnorm", "frozenbn").
        act_layer: activation class, called with ``inplace=True``.
        attn_layer: channel attention after each block's last norm (a timm name such as "se"), or None.
        zero_init_last: zero the last norm of every block (not done by the official code).
        frozen_stages: -1 trains everything; 0 freezes the stem; N also layer1..layerN (at most 4). Frozen parts
            get no gradients and stay in eval mode through ``train()``: the convention of detection and pose
            fine-tuning (mmdet/mmpose's ``frozen_stages``).
        norm_eval: keep every norm in eval mode while training (running statistics frozen, as with small
            detection batches), the affine parameters still trained unless frozen.
        block_args: extra keyword arguments for every block (e.g. ``pooling_r``, ``upsample_mode``).
        device: where to create the parameters (``device="meta"`` allocates nothing), as timm's factory argument.
        dtype: the parameters' precision, as timm's factory argument.
    """

    def __init__(
        self,
        block: Type[nn.Module],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        cardinality: int = 1,
        base_width: int = 64,
        stem_type: str = "",
        stem_width: int = 64,
        widths: Sequence[int] = (64, 128, 256, 512),
        avg_down: bool = False,
        avd: bool = False,
        output_stride: int = 32,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Union[str, NormLayer] = "batchnorm",
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        attn_layer: Optional[str] = None,
        zero_init_last: bool = False,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        block_args: Optional[dict[str, Any]] = None,
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        _check_trunk_args(stem_type, layers, widths, in_chans, num_classes, drop_rate, frozen_stages, drop_path_rate)
        self.frozen_stages, self.norm_eval = frozen_stages, bool(norm_eval)
        # Build under the requested device so nothing is allocated elsewhere first (timm's meta-device contract).
        with torch.device(device) if device is not None else contextlib.nullcontext():
            norm_layer = get_norm_layer(norm_layer)
            if norm_layer is None:
                raise ValueError("the ResNet trunk needs a norm_layer")
            self.num_classes = num_classes
            self.in_chans = in_chans
            self.drop_rate = drop_rate
            self.input_owner = type(self).__name__  # for error messages; a plain str so TorchScript compiles it

            reduction = self._make_stem_layers(stem_type, in_chans, stem_width, widths[0], norm_layer, act_layer)
            common = dict(cardinality=cardinality, base_width=base_width, norm_layer=norm_layer, act_layer=act_layer,
                          attn_layer=attn_layer, **(block_args or {}))
            rates = drop_path_rates(layers, float(drop_path_rate))
            for idx, (planes, blocks, (stride, dilation)) in enumerate(zip(widths, layers, _stage_strides(output_stride))):
                # avd also applies to the first block of stages 2-4 when dilation removed their stride (a 3x3/1 blur).
                first_avd = avd and (stride > 1 or idx > 0)
                stage = self._make_stage(block, planes, blocks, stride, dilation, first_avd, avg_down, common,
                                         rates[idx] if drop_path_rate else None)
                self.add_module(f"layer{idx + 1}", stage)
                reduction *= stride
                self.feature_info.append(dict(num_chs=self.inplanes, reduction=reduction, module=f"layer{idx + 1}"))

            self.num_features = self.head_hidden_size = self.inplanes
            self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
            self._init_weights(zero_init_last)
        if dtype is not None:
            self.to(dtype=dtype)
        self.grad_checkpointing = False
        self._freeze()

    def _make_stem_layers(self, stem_type: str, in_chans: int, stem_width: int, out_width: int, norm_layer: NormLayer,
                          act_layer: Callable[..., nn.Module]) -> int:
        """conv1, bn1, relu and maxpool (official names); returns the stem's total reduction."""
        self.conv1, self.inplanes = _make_stem(stem_type, in_chans, stem_width, out_width, norm_layer, act_layer)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = act_layer(inplace=True)
        self.maxpool = _make_stem_pool(stem_type)
        conv_stride, pool_stride = STEM_STRIDES[stem_type]
        self.feature_info = [dict(num_chs=self.inplanes, reduction=conv_stride, module="relu")]
        return conv_stride * pool_stride

    def _make_stage(self, block: Type[nn.Module], planes: int, blocks: int, stride: int, dilation: int, first_avd: bool,
                    avg_down: bool, common: dict[str, Any], drop_paths: Optional[list[float]] = None) -> nn.Sequential:
        """One stage; ``common`` holds the keyword arguments every block gets (width rule, layers, block_args);
        ``drop_paths`` each block's stochastic depth (None: the argument is not passed, for blocks that lack it)."""
        outplanes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != outplanes:
            downsample = _make_downsample(self.inplanes, outplanes, stride, avg_down, common["norm_layer"])
        # As the official code: a dilated stage's first block uses half the dilation (1 for 2, 2 for 4).
        first_dilation = 1 if dilation in (1, 2) else 2
        each = [{} if drop_paths is None else dict(drop_path=p) for p in drop_paths or [None] * blocks]
        stage = [block(self.inplanes, planes, stride, downsample, dilation=first_dilation, avd=first_avd, **common, **each[0])]
        self.inplanes = outplanes
        stage += [block(outplanes, planes, 1, None, dilation=dilation, avd=False, **common, **each[i]) for i in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_last: bool) -> None:
        # The official initialisation: He-normal (fan_out) convs, norms at weight 1 / bias 0, default Linear.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def _frozen_modules(self) -> list[nn.Module]:
        stem = [self.conv1, self.bn1] if self.frozen_stages >= 0 else []
        return stem + self._stages()[:max(self.frozen_stages, 0)]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    @torch.jit.ignore
    def train(self, mode: bool = True) -> "ResNet":
        """As ``nn.Module.train``, but frozen stages (``frozen_stages``) and, with ``norm_eval``, every norm stay in
        eval mode, so their running statistics never move."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                        m.eval()
        return self

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for layer-wise learning-rate decay: the stem, then stages or single blocks."""
        return dict(stem=r"^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (memory for compute)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head on the model's device and dtype; ``global_pool=None`` keeps the current pooling."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        ref = self.conv1.weight if isinstance(self.conv1, nn.Conv2d) else self.conv1[0].weight
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, device=ref.device, dtype=ref.dtype,
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def _stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Union[int, list[int], None] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """Feature maps of the stem (index 0) and the four stages (1-4), timm's contract.

        ``indices``: None for all, an int n for the last n, or a list (negative counts from the end).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(5, indices)
        self._check_input(x)
        x = self.relu(self.bn1(self.conv1(x)))
        feats = [x] if 0 in take else []
        x = self.maxpool(x)
        stages = self._stages()[:max_index] if stop_early else self._stages()
        for idx, stage in enumerate(stages, start=1):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if idx in take:
                feats.append(x)
        return feats if intermediates_only else (x, feats)

    def prune_intermediate_layers(self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the last requested feature (and the head); returns the kept indices.

        As timm's: when stages go, the features end at the last kept tap, so ``num_features`` becomes its channels,
        and the head, sized for the old final features, goes whatever ``prune_head`` says.
        """
        take, max_index = feature_take_indices(5, indices)
        for name in ("layer1", "layer2", "layer3", "layer4")[max_index:]:
            setattr(self, name, nn.Sequential())  # empty, as timm keeps them: checkpoint_seq iterates a stage
        if max_index == 0:  # the stem tap is taken before the max-pool, so the features must end there too
            self.maxpool = nn.Identity()
        stages_gone = max_index < 4
        if stages_gone:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or stages_gone:
            self.reset_classifier(0, "")
        return take

    def _check_input(self, x: torch.Tensor) -> None:
        check_image_batch(x, self.in_chans, self.input_owner, None if torch.jit.is_scripting() else self._first_weight())

    @torch.jit.unused
    def _first_weight(self) -> Optional[torch.Tensor]:
        return next(self.parameters(), None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unpooled last-stage map, (N, num_features, H/32, W/32) at output_stride 32."""
        self._check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)  # (N, num_features)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
