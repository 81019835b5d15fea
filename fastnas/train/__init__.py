"""The search loop, checkpoints, devices and precision."""

from fastnas.train.config import SearchConfig
from fastnas.train.search import SearchResult, SearchRunner, resume_search, run_search

__all__ = ["SearchConfig", "SearchResult", "SearchRunner", "resume_search", "run_search"]
