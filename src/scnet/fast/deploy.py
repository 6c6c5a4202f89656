"""Inference fast path: ``deploy(model)`` rewrites an eval-mode model into fewer, fused kernels.

Why: SC-Conv does a little less arithmetic than the 3x3 convolution it replaces, but the training-time graph runs
about twice as many convolutions (half-width), a norm after each, and five element-wise passes for the
calibration gate. On a CPU those extra passes over memory, not the multiply-adds, set the speed. In eval mode
every norm is a fixed per-channel affine map, so the whole network can be rewritten with the same outputs:

- every batch norm is folded into the convolution before it (conv weight scaled, bias added);
- the two half-width 1x1 convolutions of an SC bottleneck become one full-width 1x1 (the authors' own
  equivalence) followed by channel slices;
- ReLU, the residual sum and the gate product run inside the convolution that produces their input (oneDNN's
  fused post-ops, on CPU), instead of as separate passes;
- the nearest-neighbour upsample of the calibration is a broadcast (never materialised) when the map divides
  by the pooling rate, and the sigmoid runs in place;
- activations are channels_last, the layout oneDNN computes in, so no layout conversions happen per layer;
- on a GPU, each convolution followed by a ReLU runs as one cuDNN call with the bias, the residual sum and the
  ReLU in its epilogue; the shortcut's bias moves into that epilogue too; the merged 1x1 runs as its two
  halves (cuDNN reads only contiguous inputs, so slicing its output would cost a copy); and the calibration's
  gate (K2's and K3's biases, sum, sigmoid, product) is one Triton kernel (``gate_triton.py``) instead
  of five memory-bound passes (left to plain PyTorch, the bias adds alone were a large share of a GPU's time:
  docs/results/bench-gpu).

The fused form of each reference module (``SelfCalibration``/``SCConv``, the bottlenecks, a ResNet's stem) is in
``inference.py`` (``deploy_form``), all built from ``fusion.py``'s ``FusedConv``. ``deploy`` only walks the model,
swaps in those forms and picks the backend. Under ``torch.compile``, ``torch.export``/ONNX, TorchScript, or for
other dtypes the fused modules run plain ``conv2d`` + element-wise ops (portable and still folded), which the
compiler is free to fuse itself. ``backend="portable"`` forces that path.

Unsupported parts are never silently wrong: a model in training mode raises ``ValueError``; a norm that
cannot be folded (GroupNorm, batch norm without running statistics) leaves that block as it was, listed in
the returned model's ``deploy_report`` (``strict=True`` raises instead).
"""
# No ``from __future__ import annotations``: TorchScript reads these modules' annotations as real types.
import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

from .fusion import Unfoldable
from .inference import deploy_form, foreign_subclass, has_form

__all__ = ["DeployReport", "cuda_graph", "deploy", "relative_error"]

BACKENDS = ("auto", "portable")
STEM = "stem"  # the report's name for a root module fused in place (a ResNet's stem)


@dataclass
class DeployReport:
    """What ``deploy`` rewrote, and what it left as it was and why."""

    fused: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    check_error: Optional[float] = None  # relative error against the model on ``deploy(check=...)``'s input

    def __str__(self) -> str:
        lines = [f"deploy: {len(self.fused)} modules fused, {len(self.kept)} kept as they were"]
        lines += [f"  kept {name}: {why}" for name, why in self.kept.items()]
        return "\n".join(lines)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def _fuse(name: str, module: nn.Module, onednn: bool, report: DeployReport, strict: bool) -> nn.Module:
    """``module``'s deploy form, recorded in ``report``; a part that cannot be folded is kept and reported as it
    was, or raises if ``strict``. The caller knows that ``module`` has a form."""
    try:
        made = deploy_form(module, onednn)
    except Unfoldable as err:
        if strict:
            raise ValueError(f"deploy cannot fuse {name or STEM}: {err}") from None
        report.kept[name or STEM] = str(err)
        return module
    report.fused[name or STEM] = STEM if made is module else type(made).__name__  # the root fuses in place (a stem)
    return made


def _check_deployable(model: nn.Module, backend: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"deploy expects an nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if model.training:
        raise ValueError("deploy needs a model in eval mode: it folds the norms' running statistics, "
                         "which training mode keeps updating; call model.eval() first")


def _memory_format(model: nn.Module, channels_last: bool) -> torch.memory_format:
    """channels_last for 2-D weights, its 3-D form for a model whose convolutions are all 3-D (one ``Module.to``
    applies one format to every 4-D and 5-D tensor), else as is."""
    ranks = {p.dim() for p in model.parameters()} & {4, 5}
    if not channels_last or not ranks:
        return torch.contiguous_format
    if ranks == {4}:
        return torch.channels_last
    return torch.channels_last_3d if ranks == {5} else torch.preserve_format  # 2-D and 3-D: no one format fits


def deploy(model: nn.Module, *, channels_last: bool = True, backend: str = "auto", strict: bool = False,
           check: Optional[torch.Tensor] = None, rtol: float = 1e-4) -> nn.Module:
    """A fused copy of an eval-mode ``model`` for inference: same outputs (up to float rounding), faster.

    Works on every SCNet/plain-twin model of this package (stem, bottlenecks and shortcuts fused) and on any
    model holding ``SCConv`` layers, e.g. one made by ``scnet.convert`` (each SCConv fused; the rest as is).
    The input model is not modified.

    Args:
        model: a model in eval mode (``model.eval()``); training mode raises ``ValueError`` because folding
            uses the norms' running statistics, which training would go on changing.
        channels_last: store the copy's weights channels_last and feed its convolutions channels_last
            activations (the layout oneDNN and cuDNN compute in).
        backend: "auto" uses oneDNN's fused post-ops for eager CPU inference where available, plain ops
            elsewhere; "portable" always plain ops (what ONNX/TorchScript/compilers see in any case).
        strict: raise ``ValueError`` instead of keeping a block that cannot be fused (e.g. GroupNorm) or a subclass of
            one of this package's classes written elsewhere (kept otherwise: it may have its own forward).
        check: an input to run both the model and its copy on; the copy must agree within ``rtol`` (relative error
            of the whole output), else ``ValueError``. The error is kept as ``deploy_report.check_error``.
        rtol: the tolerance of ``check``.

    Modules are swapped by exact type (as ``fast_train`` swaps them), never by ``isinstance``.
    Returns the fused model, with a ``deploy_report`` attribute (``DeployReport``).
    """
    _check_deployable(model, backend)
    onednn = backend == "auto"
    fused_model = copy.deepcopy(model)
    report = DeployReport()
    # Outermost first; a fused or kept module's children are no longer visited. The root comes last (a ResNet's stem).
    for name, module in list(fused_model.named_modules()):
        if any(name.startswith(done + ".") for done in (*report.fused, *report.kept)):
            continue
        if name and has_form(module):
            _set_module(fused_model, name, _fuse(name, module, onednn, report, strict))
        elif name and foreign_subclass(module) is not None:
            _keep_foreign(name, module, report, strict)
    if has_form(fused_model):
        fused_model = _fuse("", fused_model, onednn, report, strict)
    elif foreign_subclass(fused_model) is not None:  # a trunk subclassed elsewhere: its blocks fused, its stem kept
        _keep_foreign("", fused_model, report, strict)
    # Convolutions follow their weight's layout, so from the first convolution on every activation is in the
    # chosen layout too, without converting the input.
    fused_model = fused_model.to(memory_format=_memory_format(fused_model, channels_last))
    fused_model.deploy_report = report
    if check is not None:
        _check_copy(model, fused_model, check, rtol)
    return fused_model


def _keep_foreign(name: str, module: nn.Module, report: DeployReport, strict: bool) -> None:
    """A subclass of one of ours written elsewhere may compute something else in its own forward: it is kept whole
    (its children too, as its forward may rely on them), never replaced by the fused form of its base class."""
    why = (f"{type(module).__name__} extends {foreign_subclass(module)} outside scnet and may have its own forward: kept "
           f"as it is (deploy swaps only this package's classes)")
    if strict:
        raise ValueError(f"deploy cannot fuse {name or STEM}: {why}")
    report.kept[name or STEM] = why  # the loop then skips everything under it (the root: only its own stem is kept)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| over the whole batch: how far a fast form's (or an engine's) outputs are from the
    reference's."""
    out, ref = out.detach().float(), ref.detach().float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def _check_copy(model: nn.Module, fused: nn.Module, example: torch.Tensor, rtol: float) -> None:
    """The copy against the model it came from on ``example``: within ``rtol`` (relative error), else ``ValueError``."""
    with torch.inference_mode():
        error = relative_error(fused(example), model(example))
    fused.deploy_report.check_error = error
    if not error <= rtol:  # NaN fails too
        raise ValueError(f"deploy's copy differs from the model on the given input by {error:.2e} (relative), more than "
                         f"rtol {rtol:g}; {fused.deploy_report}")


def cuda_graph(model: nn.Module, example: torch.Tensor, warmup: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    """Record one inference call of ``model`` on ``example`` as a CUDA graph; return a function that replays it.

    Why: a deployed SCNet-50 issues over 200 kernels per call, and Python issues them more slowly than a fast
    GPU runs them, at batch 1 by far and on an H200 even at batch 128. A replayed graph issues them all at once.
    The warm-up calls (before recording) let cuDNN choose its algorithms and Triton compile its kernel.

    The returned function takes inputs of exactly ``example``'s shape, dtype and device (``ValueError``
    otherwise), copies them into the recorded input and returns the recorded output, which the next call
    overwrites: clone it to keep it.
    """
    if example.device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA tensor, got one on {example.device}")
    static_in = example.clone()  # keeps the layout (channels_last stays channels_last)
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.inference_mode(), torch.cuda.stream(side):  # warm up off the default stream, as recording requires
        for _ in range(warmup):
            model(static_in)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = model(static_in)

    def replay(x: torch.Tensor) -> torch.Tensor:
        if x.shape != static_in.shape or x.dtype != static_in.dtype or x.device != static_in.device:
            raise ValueError(f"this graph was recorded for {tuple(static_in.shape)} {static_in.dtype} inputs on "
                             f"{static_in.device}, got {tuple(x.shape)} {x.dtype} on {x.device}")
        static_in.copy_(x)
        graph.replay()
        return static_out

    return replay
