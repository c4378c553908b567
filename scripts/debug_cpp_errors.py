"""Diagnose how a C++ operator error reaches Python on this host: each variant in a subprocess.

Prints the return code and the last line of each; used to chase a crash seen with torch 2.11.
"""

import subprocess
import sys

VARIANTS = {
    "raw op, no python registration": (
        "import torch, importlib; importlib.import_module('capsid_kernels._C');"
        "torch.ops.capsid_C.squash_forward(torch.ones(3, dtype=torch.int64))"),
    "raw op, shape error": (
        "import torch, importlib; importlib.import_module('capsid_kernels._C');"
        "torch.ops.capsid_C.squash_backward(torch.ones(3), torch.ones(4))"),
    "after _ext.load (fake + autograd registered)": (
        "import torch, capsid_kernels._ext as e; e.load();"
        "torch.ops.capsid_C.squash_forward(torch.ones(3, dtype=torch.int64))"),
    "after _ext.load, float input (no error)": (
        "import torch, capsid_kernels._ext as e; e.load();"
        "print(torch.ops.capsid_C.squash_forward(torch.ones(3)))"),
}

for name, code in VARIANTS.items():
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    tail = (res.stderr.strip().splitlines() or res.stdout.strip().splitlines() or [""])[-1]
    print(f"{name:48s} rc={res.returncode:4d}  {tail[:160]}")
