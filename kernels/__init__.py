"""Triton kernels of fastnas, importable as ``fastnas.kernels``.

One file per fused op, each next to the plain PyTorch reference it must match, wrapped in
``torch.library.custom_op`` with a fake implementation so ``torch.compile`` can trace it. On a machine
without a GPU the tests run them under ``TRITON_INTERPRET=1`` (set in ``tests/conftest.py`` before any
kernel module is imported). The C++/CUDA operators live in ``csrc/`` and load as ``fastnas._C``.
"""
