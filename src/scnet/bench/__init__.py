"""``scnet bench``: throughput, latency and peak memory, always side by side with torchvision's ResNet-50.

Split by concern: ``cases`` (the modes as data, building a case, the torch settings a run uses), ``timing`` (the
round-robin timing core and the matmul roof), ``memory`` (peak memory, on CPU in a spawned process),
``profiling`` (time per kernel or operator, by category) and ``report`` (JSON, Markdown, plot).
"""
from .cases import DTYPES, MODES, BenchCase, grid, torch_settings
from .memory import cpu_peak_memory
from .profiling import kernel_breakdown, kernel_category, write_breakdown
from .report import write_report
from .timing import Rounds, matmul_roof, run_bench

__all__ = ["BenchCase", "Rounds", "DTYPES", "MODES", "cpu_peak_memory", "grid", "kernel_breakdown", "kernel_category", "matmul_roof", "run_bench",
           "torch_settings", "write_breakdown", "write_report"]
