"""Issue 17: the token-id layout (PAD, BOS, EOS, the first code id) is defined once, in
capsid_kernels.decode.trie; everything else imports it, and the CUDA beam step's compiled
constants are checked against it so the two cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import capsid_kernels.decode as dec

ROOT = Path(__file__).resolve().parents[1]
ASSIGN = re.compile(r"^\s*(?:PAD\s*,\s*BOS\s*,\s*EOS|PAD|BOS|EOS|FIRST_CODE|NO_TOKEN)\s*(?:,[^=]*)?=", re.M)


def test_the_token_ids_are_assigned_in_one_module():
    homes = [str(f.relative_to(ROOT)) for d in ("capsid_kernels", "python") for f in (ROOT / d).rglob("*.py")
             if ASSIGN.search(f.read_text())]
    assert homes == ["capsid_kernels/decode/trie.py"], homes


def test_the_cuda_step_compiles_the_same_ids():
    src = (ROOT / "csrc" / "beam_step.cu").read_text()
    m = re.search(r"constexpr int kPad = (\d+), kEos = (\d+);", src)
    assert m, "csrc/beam_step.cu: the kPad/kEos line moved; keep it matched to capsid_kernels.decode.trie"
    assert (int(m.group(1)), int(m.group(2))) == (dec.PAD, dec.EOS)


def test_the_gr_system_reads_the_kernel_package_ids():
    from capsid_gr import bpe
    from capsid_gr.generator import items

    for mod in (bpe.vocab, items):
        assert (mod.PAD, mod.BOS, mod.EOS, mod.FIRST_CODE) == (dec.PAD, dec.BOS, dec.EOS, dec.FIRST_CODE)
