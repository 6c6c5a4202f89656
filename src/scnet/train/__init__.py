"""Training tools over the library: configuration, engine and the run orchestration."""
from .config import ConfigError, TrainConfig, load_yaml, merge_config
from .engine import EpochBatches, SeededSamples, evaluate, save_checkpoint, train_one_epoch, warmup_cosine
from .compare import StudyPlan, compare
from .checkpoint_eval import evaluate_checkpoint
from .runner import fit

__all__ = [
    "ConfigError", "EpochBatches", "StudyPlan", "compare", "SeededSamples", "TrainConfig", "evaluate", "evaluate_checkpoint", "fit",
    "load_yaml", "merge_config", "save_checkpoint", "train_one_epoch", "warmup_cosine",
]
