"""Loads the compiled extension ``capsid_kernels._C`` on first use, never at import.

Loading registers the C++ operators (namespace ``capsid_C``); this module then adds their
fake (meta) implementations and autograd so they behave like the Python custom ops.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Optional

_state: dict = {"tried": False, "module": None, "error": None}


def _register_python_parts() -> None:
    import torch

    from .ops import squash_cuda_autograd

    torch.library.register_fake("capsid_C::squash_forward")(lambda z: torch.empty_like(z))
    torch.library.register_fake("capsid_C::squash_backward")(lambda grad, z: torch.empty_like(z))
    squash_cuda_autograd.register()

    from .decode.beam_step_torch import step_fake

    if hasattr(torch.ops.capsid_C, "beam_step"):  # a build older than the op still loads
        torch.library.register_fake("capsid_C::beam_step")(lambda logits, *rest: step_fake(logits))


def load() -> Optional[object]:
    """The extension module, or None; ``error()`` then says why."""
    if _state["tried"]:
        return _state["module"]
    _state["tried"] = True
    if os.environ.get("CAPSID_DISABLE_EXTENSION") == "1":
        _state["error"] = "CAPSID_DISABLE_EXTENSION=1 is set"
        return None
    if importlib.util.find_spec("capsid_kernels._C") is None:
        _state["error"] = (
            "the C++/CUDA extension capsid_kernels._C is not built: install with a CUDA toolkit and a "
            "CUDA build of torch present (and CAPSID_SKIP_CUDA_BUILD unset), see README"
        )
        return None
    try:
        module = importlib.import_module("capsid_kernels._C")
        _register_python_parts()
    except Exception as exc:  # a stale or mismatched build: report it, do not crash the import
        _state["error"] = f"capsid_kernels._C failed to load: {type(exc).__name__}: {exc}"
        return None
    _state["module"] = module
    return module


def error() -> Optional[str]:
    """Why the extension is unavailable (None when it loaded)."""
    load()
    return _state["error"]


def build_info() -> dict:
    """What the extension was compiled with (empty when it is not loaded)."""
    module = load()
    return dict(module.build_info()) if module is not None else {}
