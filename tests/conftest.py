"""Test configuration: Triton kernels run in the interpreter on CPU-only machines (this must be set
before any kernel module is imported), and tests get helpers for the shared data folder.

Tests that read ``../shared`` (the datasets, the NAS-Bench-201 table, REFERENCE.md) call
:func:`require_shared`: when the file is missing they *fail*, so CI can never pass while skipping them;
set ``FASTNAS_ALLOW_MISSING_SHARED=1`` to skip them instead (a machine without the shared folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED_DIR / "data"

ALLOW_MISSING_SHARED = "FASTNAS_ALLOW_MISSING_SHARED"


def require_shared(path: Path) -> Path:
    """``path`` (a file under ../shared) if it exists; otherwise fail, or skip when
    ``FASTNAS_ALLOW_MISSING_SHARED=1``."""
    if path.is_file():
        return path
    message = f"{path} is missing: the tests need ../shared beside the repository"
    if os.environ.get(ALLOW_MISSING_SHARED) == "1":
        pytest.skip(f"{message} ({ALLOW_MISSING_SHARED}=1)")
    pytest.fail(f"{message}; check it out there, or set {ALLOW_MISSING_SHARED}=1 to skip these tests")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny networks (faster, and much faster on a busy machine);
    use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def interrupt_search_at(monkeypatch: pytest.MonkeyPatch, epoch: int, config: Any) -> None:
    """Run the search ``config`` until epoch ``epoch`` (0-based) starts, where a KeyboardInterrupt stops
    it as a user's Ctrl-C would: the run directory holds what a killed run leaves behind."""
    from fastnas import run_search
    from fastnas.train.search import SearchRunner

    train_epoch = SearchRunner.train_epoch

    def interrupted(self: SearchRunner, current: int) -> Any:
        if current == epoch:
            raise KeyboardInterrupt
        return train_epoch(self, current)

    with monkeypatch.context() as patch:
        patch.setattr(SearchRunner, "train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_search(config, progress=False)


def tiny_search(tmp_path: Path, method: str, **overrides: Any) -> Any:
    """A search small enough for a test (digits, 32 images, batch 16, C=4, 3 cells, 2 epochs, CPU) into
    ``tmp_path / "run"``; ``overrides`` replace any field (None restores the method's default)."""
    from fastnas import SearchConfig

    values: dict[str, Any] = {
        "method": method,
        "dataset": "digits",
        "limit": 32,
        "batch_size": 16,
        "C": 4,
        "layers": 3,
        "epochs": 2,
        "seed": 0,
        "device": "cpu",
        "out_dir": str(tmp_path),
        "run_name": "run",
    }
    values.update(overrides)
    return SearchConfig(**values)
