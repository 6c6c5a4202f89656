"""Test-wide settings: deterministic property tests and a fixed thread count."""
from __future__ import annotations

import torch
from hypothesis import settings

# Same examples on every run and machine, nothing written into the checkout.
settings.register_profile("scnet", derandomize=True, database=None, deadline=None)
settings.load_profile("scnet")
torch.manual_seed(0)
