"""Build script: the Python packages and the optional ``fastnas._C`` extension.

The extension (``csrc/``) registers fastnas operators with the PyTorch dispatcher. It is built
when torch and a C++ compiler are present; its CUDA part is added when a CUDA toolkit is found
(``CUDA_HOME``) and torch is a CUDA build. Without any of these the package still installs and
imports, and every operator falls back to its PyTorch reference.

Settings (environment variables):
- ``FASTNAS_BUILD_EXT=0``: skip the extension entirely.
- ``FASTNAS_BUILD_CUDA=0``: build only the CPU part even where CUDA is available.
- ``CUDA_HOME``, ``TORCH_CUDA_ARCH_LIST``: the usual torch.utils.cpp_extension settings; see
  DEVELOPERS.md for compiling the CUDA sources on a machine without a GPU.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = find_packages(include=["fastnas", "fastnas.*"])  # fastnas/kernels links to the top-level kernels/


def _extra_cuda_includes() -> list[str]:
    """Header folders of the pip-installed CUDA libraries (the local toolkit may lack cuBLAS headers)."""
    site = sysconfig.get_paths()["purelib"]
    return [p for p in glob.glob(os.path.join(site, "nvidia", "*", "include")) if os.path.isdir(p)]


def _locate_cuda_home() -> None:
    """Point ``CUDA_HOME`` at the toolkit that owns ``nvcc`` (``/usr/local/bin/nvcc`` is often a link into
    ``/usr/local/cuda/bin``; torch would otherwise take ``/usr/local`` and miss the toolkit headers)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


def _extensions() -> tuple[list, dict]:
    if os.environ.get("FASTNAS_BUILD_EXT", "1") == "0":
        return [], {}
    _locate_cuda_home()
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # torch missing: pure-Python install
        print(f"fastnas: not building the C++ extension ({exc})", file=sys.stderr)
        return [], {}

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))) + sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
    )
    want_cuda = (
        os.environ.get("FASTNAS_BUILD_CUDA", "1") != "0"
        and cpp_extension.CUDA_HOME is not None
        and torch.version.cuda is not None
    )
    # C++20: torch >= 2.10 headers require it. -g0: no debug info (Python's CFLAGS add -g), ~25% faster.
    cxx_flags = ["-O3", "-std=c++20", "-g0"]
    if want_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = cpp_extension.CUDAExtension(
            name="fastnas._C",
            sources=cpp_sources + cuda_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("FASTNAS_WITH_CUDA", "1")],
            # The pip CUDA headers go *after* the toolkit's (-idirafter): they only fill in what the toolkit
            # lacks (cuBLAS/cuSPARSE headers that torch's CUDA headers include). The .cu kernels need none.
            extra_compile_args={
                "cxx": [*cxx_flags, *(f for d in _extra_cuda_includes() for f in ("-idirafter", d))],
                "nvcc": ["-O3", "--use_fast_math", "-std=c++20"],
            },
        )
    else:
        ext = cpp_extension.CppExtension(
            name="fastnas._C",
            sources=cpp_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()
setup(packages=PACKAGES, ext_modules=ext_modules, cmdclass=cmdclass)
