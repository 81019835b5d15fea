"""The search loop, the retraining loop, the sweep harness, checkpoints, devices and precision."""

from fastnas.train.config import ResolvedSearchConfig, SearchConfig
from fastnas.train.search import SearchResult, SearchRunner, resume_search, run_search
from fastnas.train.train_config import ResolvedTrainConfig, TrainConfig

__all__ = [
    "ResolvedSearchConfig",
    "ResolvedTrainConfig",
    "SearchConfig",
    "SearchResult",
    "SearchRunner",
    "TrainConfig",
    "resume_search",
    "run_search",
]
