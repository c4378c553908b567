"""Backend selection, by its former name: the records, priority lists and checks live in
``capsid_kernels.registry`` (one record per op and backend); this module re-exports its public
names so ``from capsid_kernels.backends import select`` keeps working."""

from __future__ import annotations

from .registry import (  # noqa: F401  (re-exports)
    AUTO_ORDER,
    BACKENDS,
    OPS,
    PREFERENCE,
    BackendUnavailable,
    auto_order,
    select,
    unsupported_reason,
)

__all__ = ["AUTO_ORDER", "BACKENDS", "OPS", "PREFERENCE", "BackendUnavailable", "auto_order", "select",
           "unsupported_reason"]
