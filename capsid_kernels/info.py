"""``python -m capsid_kernels.info``: versions, the GPU, and the registry's kernels: which backend
serves which op, on what dtypes and sizes, and why it cannot run here. ``--json`` prints the
same as JSON.

Probing for a GPU happens only here (and in the ops when they run), never at import.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from . import __version__, _ext
from .registry import AUTO_RULES, BACKENDS, OPS, auto_order, dtype_name, records, select, unsupported_reason

EAGER_NOTE = ("the reference (SPEC.md as code): every op, any device, float64, float32 and bfloat16; "
              "where 'auto' falls back")


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
            per_dtype[dtype_name(dtype)] = {
                "auto": select(op, "auto", device_type, dtype),
                "auto_order": list(auto_order(op, dtype)),  # the priority list (registry.AUTO_ORDER)
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
        "kernels": records(device_type),  # one record per (op, backend) with a kernel, and why not here
        "eager": EAGER_NOTE,
        "ops": ops,
        "auto_rules": [rule.note for rule in AUTO_RULES],  # measured exceptions to the priority list
        "rules": [rule.as_dict() for rule in AUTO_RULES],  # the same as data
    }


def _limits(limits: dict) -> str:
    return ", ".join(f"{name} <= {value}" for name, value in limits.items()) or "none"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capsid_kernels.info", description=__doc__)
    parser.add_argument("--short", action="store_true", help="one line per kernel and per op")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    rep = report()
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"capsid-kernels {rep['capsid_kernels']}  python {rep['python']}  torch {rep['torch']} "
          f"(CUDA {rep['torch_cuda']})  triton {rep['triton']}")
    gpu = rep["gpu"]
    print("GPU: " + (f"{gpu['name']} (sm_{gpu['capability'].replace('.', '')}, {gpu['memory_gib']} GiB, "
                     f"{gpu['sms']} SMs)" if gpu else "none (ops run on CPU tensors)"))
    ext = rep["extension"]
    print("extension capsid_kernels._C: " + (f"built (cudart {ext['cudart_version']}, archs {ext['arch_list']})"
                                             if "error" not in ext else f"unavailable: {ext['error']}"))
    print(f"kernels (op, backend, device, dtypes, limits; why not on {rep['device']} tensors here):")
    for rec in rep["kernels"]:
        print(f"  {rec['op']:9s} {rec['backend']:6s} on {rec['device_type']}, {', '.join(rec['dtypes'])}; "
              f"limits: {_limits(rec['limits'])}")
        if not args.short:
            print(f"  {'':16s} {rec['note']}")
            why = dict.fromkeys(r for reasons in rec["why_not"].values() for r in reasons)
            print(f"  {'':16s} " + ("can run here" if not why else "cannot run here: " + "; ".join(why)))
    print(f"  {'every op':9s} {'eager':6s} {rep['eager']}")
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
