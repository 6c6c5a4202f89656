"""Speed: the faster forms of the reference modules, swapped in explicitly, each tested equal to what it replaces.

- ``deploy(model)``: the inference forms (``inference.py``): norms folded, element-wise work inside the convolutions'
  calls (oneDNN on CPU, cuDNN and a Triton gate kernel on GPU; ``fusion.py``).
- ``fast_train(model)``: the training forms (``training.py``): stacked norms, the memory-lean calibration
  (``gate.py``, ``norm.py``, ``recompute.py``). ``scnet train`` applies it unless told not to.

Nothing in ``scnet.layers`` or ``scnet.models`` imports this package: the reference reads like the paper.
"""
from .deploy import DeployReport, cuda_graph, deploy
from .fusion import FusedConv, fold_conv_norm, onednn_fusion_available
from .training import fast_train
from ..models.registry import register_build_option

# Any trainer gets the training forms by asking for them: create_model(..., fast_train=True), timm's too.
register_build_option("fast_train", fast_train)

__all__ = ["DeployReport", "FusedConv", "cuda_graph", "deploy", "fast_train", "fold_conv_norm", "onednn_fusion_available"]
