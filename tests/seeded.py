"""Deterministic, well-scaled weights and inputs, shared by the tests and the fixture generator.

Each tensor is drawn from its own generator seeded by (seed, key), so the values depend only on the name and
shape, not on module order: the official code and ours get identical weights from identical state-dict names.
Norm running statistics are non-trivial so eval-mode BN is really exercised.
"""
from __future__ import annotations

import zlib

import torch


def seeded_state_dict(template: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    out = {}
    for key, ref in template.items():
        if not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
        if key.endswith("running_var"):
            t = 0.5 + torch.rand(ref.shape, generator=g)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            t = 0.1 * torch.randn(ref.shape, generator=g)
        elif ref.dim() == 1:  # norm scale
            t = 0.5 + 0.5 * torch.rand(ref.shape, generator=g)
        else:  # conv / linear: unit-gain fan-in scaling keeps activations O(1) through depth
            fan_in = ref[0].numel()
            t = torch.randn(ref.shape, generator=g) * (1.0 / fan_in) ** 0.5
        out[key] = t
    return out


def seeded_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def seeded_model(name: str, **kwargs) -> torch.nn.Module:
    """A registered model in eval mode with ``seeded_state_dict`` weights (running statistics too)."""
    import scnet

    model = scnet.create_model(name, **kwargs).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    return model


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64, so that float64 forms can be held to rounding (~1e-15)."""
    return float((a.double() - b.double()).norm() / b.double().norm())
