"""Run ``scnet <args>`` with the model in float64 (a test driver, also usable under torchrun).

Float32 training amplifies rounding differences step after step, so two runs that sum gradients in a different
order (one process vs two) drift apart by ~1e-5 within a few epochs. In float64 the same drift stays ~1e-13,
which lets a test check DDP equivalence across epoch boundaries with a tight tolerance.
"""
import sys

import torch

import scnet.train.runner as runner
from scnet.cli import main

_build = runner.build_model_for


def _build_float64(cfg, info):
    model = _build(cfg, info).double()
    model.register_forward_pre_hook(lambda module, args: (args[0].double(),))
    return model


runner.build_model_for = _build_float64

if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    sys.exit(main(sys.argv[1:]))
