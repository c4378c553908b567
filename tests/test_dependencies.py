"""The kernel package needs torch and numpy only; the GR system's extra stays out of it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GR_ONLY = ("tqdm", "safetensors", "sklearn", "scipy", "transformers")


def test_kernel_package_imports_no_gr_dependency():
    # torch itself may import tqdm (torch.hub) when it is installed: count only what capsid_kernels adds
    code = ("import sys, torch, numpy; before = set(sys.modules); "
            "import capsid_kernels, capsid_kernels.decode, capsid_kernels.modules, capsid_kernels.reference; "
            f"bad = [m for m in {GR_ONLY!r} if m in sys.modules and m not in before]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"capsid_kernels imported GR-only packages: {out.stdout.strip()}"


def test_gr_package_says_which_extra_is_missing():
    # scipy hidden (sys.modules[name] = None makes find_spec return None and the import fail): capsid_gr
    # must name it and the extra, not fail deep inside one of its modules
    code = "import sys; sys.modules['scipy'] = None; import capsid_gr"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "scipy" in out.stderr and "capsid-kernels[gr]" in out.stderr, out.stderr[-500:]


def test_pyproject_base_dependencies_are_torch_and_numpy():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(d.split(">")[0].split("=")[0].split("<")[0].strip() for d in meta["dependencies"])
    assert names == ["numpy", "torch"], names
    assert {"tqdm", "safetensors", "scikit-learn", "scipy"} <= {
        d.split(">")[0].strip() for d in meta["optional-dependencies"]["gr"]}
