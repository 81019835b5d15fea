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
