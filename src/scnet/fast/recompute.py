"""Keep a cheap tensor out of autograd's saved tensors and recompute it in backward.

Why: in training, an SC bottleneck keeps 12.5 feature maps of its 3x3 width for backward where ResNet's keeps 12:
the extra half is K3's raw output, which its norm's backward needs. The output of the merged 1x1's norm and ReLU
is one whole map more, saved by the ReLU and by each of its readers (K1, K3, the pool, the gate), and it is one
norm pass over the 1x1's raw output, which that norm keeps anyway. Saving a recipe instead of the map takes
SCNet-50's training peak below ResNet-50's for one such pass per block in backward (docs/results/train-cpu-gap).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch

from .fusion import running_eagerly

__all__ = ["recomputed", "can_recompute"]


class _Recipe:
    """The recomputation of one tensor, done at most once per backward and shared by every reader."""

    def __init__(self, base: torch.Tensor, make: Callable[[], torch.Tensor]) -> None:
        self.size, self.stride, self.dtype, self.make = base.size(), base.stride(), base.dtype, make
        self.value: Optional[torch.Tensor] = None

    def get(self) -> torch.Tensor:
        if torch.is_grad_enabled():  # create_graph=True: the recomputation carries no graph of its own
            raise RuntimeError("double backward (create_graph=True) is not supported through a recomputed tensor (the SC "
                               "bottleneck's training fast path); run the model in eval mode or with frozen norms for "
                               "higher-order gradients")
        if self.value is None:
            value = self.make()
            # The saved views need base's geometry and type; a recipe may compute in another (a wider type, a dense layout).
            if value.stride() != self.stride or value.storage_offset() != 0 or value.dtype != self.dtype:
                value = torch.empty_strided(self.size, self.stride, dtype=self.dtype, device=value.device).copy_(value)
            self.value = value
        return self.value


class _Saved:
    """What autograd keeps in place of a view of the recomputed tensor: its geometry and the shared recipe."""

    __slots__ = ("recipe", "size", "stride", "offset")

    def __init__(self, recipe: _Recipe, t: torch.Tensor) -> None:
        self.recipe, self.size, self.stride, self.offset = recipe, t.size(), t.stride(), t.storage_offset()


def can_recompute() -> bool:
    """Whether saved-tensor hooks of our own may be used here: eager autograd with no other hooks in force.

    Another scope's hooks (activation checkpointing, ``save_on_cpu``) would not see what ours take, so the plain
    path is kept under them; ``disable_saved_tensors_hooks`` forbids hooks altogether.
    """
    graph = torch._C._autograd
    top = getattr(graph, "_top_saved_tensors_default_hooks", None)
    enabled = getattr(graph, "_saved_tensors_hooks_is_enabled", None)
    if top is None or enabled is None or not running_eagerly():  # a tracer or compiler records its own graph
        return False
    return enabled() and top(False) is None


@contextlib.contextmanager
def recomputed(base: torch.Tensor, make: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Within this scope, tensors that autograd saves and that share ``base``'s storage are not kept: backward gets
    ``make()``, called once, viewed as each of them.

    ``base`` must stay alive and unchanged for the whole scope (so that no other tensor can take its storage), its
    storage offset must be 0, and ``make()`` must return its values (in any layout or floating type: they are
    copied into ``base``'s when they differ). The caller checks ``can_recompute()``.
    """
    if base.storage_offset() != 0:
        raise ValueError(f"recomputed() needs a tensor at the start of its storage, got storage offset {base.storage_offset()}")
    ptr, device = base.untyped_storage().data_ptr(), base.device
    recipe = _Recipe(base, make)

    def pack(t: torch.Tensor) -> object:
        if t.device == device and t.untyped_storage().data_ptr() == ptr:
            return _Saved(recipe, t)
        return t

    def unpack(saved: object) -> torch.Tensor:
        if isinstance(saved, _Saved):
            return saved.recipe.get().as_strided(saved.size, saved.stride, saved.offset)
        return saved  # type: ignore[return-value]

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
