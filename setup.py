"""Build and install capsid-kernels.

The CUDA extension ``capsid_kernels._C`` is built whenever a CUDA build of torch and a CUDA
toolkit are present, with or without a GPU. ``CAPSID_SKIP_CUDA_BUILD=1`` skips it; a CPU-only
torch installs the pure-Python package. ``CAPSID_FORCE_CUDA_BUILD=1`` turns every reason for
skipping the build into an error (use it where the extension must exist). ``TORCH_CUDA_ARCH_LIST`` picks the architectures
(default "8.0;9.0": A100 and H100); ``MAX_JOBS`` caps parallel compiles (default: one per core
and per 4 GB of memory, so a 2-core, 24 GB machine builds with 2 jobs).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


def _log(msg: str) -> None:
    print(f"[capsid-kernels setup] {msg}", file=sys.stderr)


def _find_cuda_home() -> str | None:
    """The toolkit root whose lib64 holds libcudart (torch's own guess can pick the wrong parent)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")) and glob.glob(
            os.path.join(root, "lib*", "libcudart.so*")
        ):
            return root
    return None


def _max_jobs() -> str:
    """One nvcc job per core, but no more than one per 4 GB of memory."""
    if os.environ.get("MAX_JOBS"):
        return os.environ["MAX_JOBS"]
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8.0
    return str(max(1, min(os.cpu_count() or 1, int(mem_gb // 4))))


def _skip(reason: str):
    """No extension: an error under CAPSID_FORCE_CUDA_BUILD=1, otherwise said and the pure-Python package."""
    if os.environ.get("CAPSID_FORCE_CUDA_BUILD") == "1":
        raise RuntimeError(f"capsid-kernels: CAPSID_FORCE_CUDA_BUILD=1 but the CUDA extension cannot be built: {reason}")
    _log(f"{reason}: installing the pure-Python package only (every op runs on its eager reference; "
         "CAPSID_FORCE_CUDA_BUILD=1 makes this an error)")
    return [], {}


def _extensions():
    if os.environ.get("CAPSID_SKIP_CUDA_BUILD") == "1":
        if os.environ.get("CAPSID_FORCE_CUDA_BUILD") == "1":
            raise RuntimeError("capsid-kernels: CAPSID_SKIP_CUDA_BUILD=1 and CAPSID_FORCE_CUDA_BUILD=1 contradict")
        _log("CAPSID_SKIP_CUDA_BUILD=1: building the pure-Python package only")
        return [], {}
    try:
        import torch
    except ImportError:
        return _skip("torch is not importable at build time (install torch first and build with "
                     "pip install --no-build-isolation .)")
    if torch.version.cuda is None:
        return _skip(f"torch {torch.__version__} is a CPU build")
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        return _skip("no CUDA toolkit (nvcc + libcudart) found; set CUDA_HOME")
    os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    os.environ["MAX_JOBS"] = _max_jobs()
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    _log(f"building capsid_kernels._C with CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={archs}, "
         f"MAX_JOBS={os.environ['MAX_JOBS']}")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    # torch's CUDA wheel ships headers (cusparse.h, ...) that some toolkits lack.
    includes = [os.path.join(HERE, "csrc")]
    try:
        import nvidia  # type: ignore[import-not-found]

        for base in nvidia.__path__:
            includes += sorted(glob.glob(os.path.join(base, "*", "include")))
    except ImportError:
        pass
    define = [("CAPSID_ARCH_LIST", f'"{archs}"')]
    ext = CUDAExtension(
        name="capsid_kernels._C",
        sources=sources,
        include_dirs=includes,
        define_macros=define,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3",
                                                                   "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

packages = find_packages(include=["capsid_kernels", "capsid_kernels.*"])
# the reference GR system: import name capsid_gr (``capsid`` is another project's on the package index);
# its dependencies are the `gr` extra
packages += ["capsid_gr"] + [f"capsid_gr.{p}" for p in find_packages(os.path.join(HERE, "python", "capsid_gr"))]

setup(packages=packages, ext_modules=ext_modules, cmdclass=cmdclass)
