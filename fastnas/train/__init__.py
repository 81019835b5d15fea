"""The search loop, the retraining loop, the sweep harness, checkpoints, devices and precision."""

from fastnas.train.retrain_config import ResolvedTrainConfig, TrainConfig
from fastnas.train.search import SearchResult, SearchRunner, resume_search, run_search
from fastnas.train.search_config import ResolvedSearchConfig, SearchConfig

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
