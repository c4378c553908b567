"""Importing touches no GPU; the info command reports every op."""

import subprocess
import sys

import capsid_kernels.info


def test_import_leaves_cuda_uninitialised():
    code = (
        "import torch, capsid_kernels, capsid_gr, capsid_gr.data, capsid_gr.cli;"
        "import capsid_kernels.info;"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised by import';"
        "print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_info_reports_every_op_and_why_not(capsys):
    assert capsid_kernels.info.main([]) == 0
    text = capsys.readouterr().out
    for op in ("squash", "route", "tokenize"):
        assert op in text
    assert "triton: no Triton kernel" in text
    assert "at most 128 beams" in text  # the cuda beam step's limit, behind auto's silent-looking fallback
    rep = capsid_kernels.info.report()
    for op, per_dtype in rep["ops"].items():
        for entry in per_dtype.values():
            assert entry["auto"] in ("eager", "cuda", "triton")
            if entry["auto"] == "eager":
                assert set(entry["why_not"]) == {"triton", "cuda"}
