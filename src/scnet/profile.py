"""Parameter and multiply-add counts, measured rather than recalled."""
from __future__ import annotations

import os
import platform
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs", "describe_machine"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameter values in ``model`` (only those that require gradients with ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """Multiply-adds of one forward of a single image, for convolutions and linear layers.

    ``FlopCounterMode`` counts 2 FLOPs per multiply-add and only matmul/conv ops, so half its total is the
    "MAdds" column of the SCNet paper and README (which fvcore/thop/ptflops also report). Works on the meta
    device, where it costs no arithmetic.
    """
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def describe_machine(device: torch.device = torch.device("cpu")) -> str:
    """CPU model and thread count, or the GPU name, with the torch version: the line every report carries."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
