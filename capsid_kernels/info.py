"""``python -m capsid_kernels.info``: versions, the GPU, and which backend serves which op.

Probing for a GPU happens only here (and in the ops when they run), never at import.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from . import __version__, _ext
from .backends import BACKENDS, OPS, auto_order, select, unsupported_reason


def _device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def report() -> dict:
    """Everything ``info`` prints, as data (for logs and bench results)."""
    device_type = _device_type()
    gpu = None
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "capability": f"{props.major}.{props.minor}",
               "memory_gib": round(props.total_memory / 2**30, 1), "sms": props.multi_processor_count}
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    ops = {}
    for op in OPS:
        per_dtype = {}
        for dtype in (torch.float32, torch.bfloat16):
            reasons = {b: unsupported_reason(op, b, device_type, dtype) for b in BACKENDS}
            per_dtype[str(dtype).replace("torch.", "")] = {
                "auto": select(op, "auto", device_type, dtype),
                "auto_order": list(auto_order(op, dtype)),  # measured order (backends.AUTO_ORDER)
                "why_not": {b: r for b, r in reasons.items() if r is not None},
            }
        ops[op] = per_dtype
    return {
        "capsid_kernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "device": device_type,
        "gpu": gpu,
        "extension": _ext.build_info() or {"error": _ext.error()},
        "ops": ops,
        "auto_rules": _auto_rules(),
    }


def _auto_rules() -> list[str]:
    """The shape rules that make 'auto' pick another backend than its dtype order says."""
    from .decode.beam_step import AUTO_RULE as BEAM_RULE
    from .ops.route_cuda import AUTO_RULE as ROUTE_RULE

    return [ROUTE_RULE, BEAM_RULE]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capsid_kernels.info", description=__doc__)
    parser.add_argument("--short", action="store_true", help="one line per op")
    args = parser.parse_args(argv)
    rep = report()
    print(f"capsid-kernels {rep['capsid_kernels']}  python {rep['python']}  torch {rep['torch']} "
          f"(CUDA {rep['torch_cuda']})  triton {rep['triton']}")
    gpu = rep["gpu"]
    print("GPU: " + (f"{gpu['name']} (sm_{gpu['capability'].replace('.', '')}, {gpu['memory_gib']} GiB, "
                     f"{gpu['sms']} SMs)" if gpu else "none (ops run on CPU tensors)"))
    ext = rep["extension"]
    print("extension capsid_kernels._C: " + (f"built (cudart {ext['cudart_version']}, archs {ext['arch_list']})"
                                             if "error" not in ext else f"unavailable: {ext['error']}"))
    print(f"backends for {rep['device']} tensors:")
    for op, per_dtype in rep["ops"].items():
        for dtype, entry in per_dtype.items():
            print(f"  {op:9s} {dtype:9s} auto -> {entry['auto']}  (tries {', '.join(entry['auto_order'])}, then eager)")
            if not args.short:
                for backend, reason in entry["why_not"].items():
                    print(f"  {'':9s} {'':9s}   {backend}: {reason}")
    for rule in rep["auto_rules"]:
        print(f"shape rule: {rule}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
