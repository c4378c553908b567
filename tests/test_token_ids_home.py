"""Issue 17: the token-id layout (PAD, BOS, EOS, the first code id) is defined once, in
capsid_kernels.decode.trie; everything else imports it. The CUDA beam step fixes no id: it
takes PAD and EOS as op arguments, and capsid_kernels.decode.beam_step passes them from that
one home to every backend."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import torch

import capsid_kernels.decode as dec
from capsid_kernels.decode import trie as trie_module
from capsid_kernels.decode.search import initial_beams

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"PAD", "BOS", "EOS", "FIRST_CODE", "NO_TOKEN"}
STEP = importlib.import_module("capsid_kernels.decode.beam_step")  # the package re-exports a function by that name


def assigned_ids(source: str) -> list[str]:
    """Token-id names bound by an assignment in ``source``: plain, annotated (``PAD: int = 0``),
    augmented, walrus, and inside tuple/list/starred targets in any order."""
    found = []

    def bound(target: ast.AST) -> None:
        if isinstance(target, ast.Name) and target.id in NAMES:
            found.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                bound(elt)
        elif isinstance(target, ast.Starred):
            bound(target.value)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                bound(target)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            bound(node.target)
    return found


def test_the_scan_sees_every_assignment_form():
    for src in ("PAD, BOS, EOS = 0, 1, 2", "PAD: int = 0", "EOS: Final[int] = 2", "x, BOS = 1, 2",
                "[FIRST_CODE, *rest] = ids", "EOS += 1", "if (PAD := 0) == 0: pass", "class C:\n    EOS = 2"):
        assert assigned_ids(src), src
    for src in ("pad = 0", "PAD_TOKEN = -1", "from .trie import EOS, PAD", "from x import PAD_TOKEN as NO_TOKEN",
                "f(PAD=0)", "PAD == 0", "tok = EOS"):
        assert not assigned_ids(src), src


def test_the_token_ids_are_assigned_in_one_module():
    homes = [str(f.relative_to(ROOT)) for d in ("capsid_kernels", "python") for f in sorted((ROOT / d).rglob("*.py"))
             if assigned_ids(f.read_text())]
    assert homes == ["capsid_kernels/decode/trie.py"], homes


# A constant or default that would fix a token id in C++: `constexpr int kEos = 2`, `int pad = 0`
# (also a schema default `int pad=0`), `#define EOS_ID 2`.
CSRC_ID = re.compile(r"\b(?:k|k_)?(?:pad|bos|eos|first_?code)(?:_?(?:id|token))?\s*=\s*-?\d"
                     r"|#\s*define\s+\w*(?:PAD|BOS|EOS|FIRST_CODE)\w*\s+-?\d", re.I)


def csrc_files() -> list[Path]:
    return sorted(p for p in (ROOT / "csrc").rglob("*") if p.suffix in {".cu", ".cuh", ".cpp", ".h", ".hpp"})


def test_the_csrc_scan_sees_a_fixed_id():
    for src in ("constexpr int kPad = 0, kEos = 2;", "const int EOS = 2;", "int pad=0", "#define CAPSID_EOS 2",
                "constexpr int kFirstCode = 3;", "static const int64_t eos_id = 2;"):
        assert CSRC_ID.search(src), src
    for src in ("int pad, int eos", "tok = eos;", "kBD = 128;  // d padded", "padded_dc(dc)", "head = vocab;"):
        assert not CSRC_ID.search(src), src


def test_csrc_fixes_no_token_id():
    assert csrc_files(), "csrc/: no C++/CUDA sources found"
    hits = [f"{p.relative_to(ROOT)}:{src[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
            for p in csrc_files() for src in [p.read_text()] for m in CSRC_ID.finditer(src)]
    assert not hits, hits


def test_the_cuda_step_takes_pad_and_eos_as_arguments():
    reg = (ROOT / "csrc" / "registration.cpp").read_text()
    schema = re.sub(r'"\s*"', "", reg)  # join the schema's adjacent string literals
    m = re.search(r'"(beam_step\([^"]*)"', schema)
    assert m, "csrc/registration.cpp: no beam_step schema"
    assert re.search(r"int num_beams, int pad, int eos\)", m.group(1)), m.group(1)  # required: no default id
    src = (ROOT / "csrc" / "beam_step.cu").read_text()
    for kernel, params in (("beam_candidates_kernel", ("int eos",)), ("beam_merge_kernel", ("int pad", "int eos")),
                           ("beam_step_cuda", ("int64_t pad", "int64_t eos"))):
        head = re.search(kernel + r"\(([^)]*)\)\s*\{", src)
        assert head, f"csrc/beam_step.cu: {kernel} not found"
        for param in params:
            assert param in head.group(1), f"{kernel}: expected a parameter {param!r}"


def test_the_python_call_passes_the_ids_from_their_one_home(monkeypatch):
    # beam_step imports PAD and EOS from the trie module (the only module that assigns them) ...
    imported = {a.name for node in ast.walk(ast.parse(Path(STEP.__file__).read_text()))
                if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module == "trie" for a in node.names}
    assert {"PAD", "EOS"} <= imported
    assert (STEP.PAD, STEP.EOS) == (trie_module.PAD, trie_module.EOS) == (dec.PAD, dec.EOS)
    # ... and hands those names, not literals, to every backend: sentinel ids must reach both.
    monkeypatch.setattr(STEP, "PAD", 10)
    monkeypatch.setattr(STEP, "EOS", 11)
    got = {}

    def recorder(name):
        def op(*args):
            got[name] = args[-2:]
            return STEP.step_fake(args[0])
        return op

    monkeypatch.setattr(STEP, "beam_step_eager", recorder("eager"))
    monkeypatch.setattr(torch.ops.capsid_C, "beam_step", recorder("cuda"), raising=False)
    monkeypatch.setattr(STEP._ext, "load", lambda: None)
    trie = dec.build_trie([[3, 4, dec.EOS], [5, dec.EOS]], 12)
    beams = initial_beams(1, 2, "cpu")
    for backend in ("eager", "cuda"):
        monkeypatch.setattr(STEP, "dispatch", lambda *a, backend=backend, **k: backend)
        STEP.beam_step(torch.zeros(2, 12), beams.node, beams.score, beams.finished, trie, 2, backend=backend)
    assert got == {"eager": (10, 11), "cuda": (10, 11)}


def test_the_gr_system_reads_the_kernel_package_ids():
    from capsid_gr import bpe
    from capsid_gr.generator import items

    for mod in (bpe.vocab, items):
        assert (mod.PAD, mod.BOS, mod.EOS, mod.FIRST_CODE) == (dec.PAD, dec.BOS, dec.EOS, dec.FIRST_CODE)
