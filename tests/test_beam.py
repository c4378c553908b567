"""Trie-constrained beam step and search: exact against brute force; CUDA against the torch step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import capsid_kernels as ck
from capsid_kernels.decode.beam_step import StepOutput, beam_step, beam_step_eager
from capsid_kernels.decode.search import initial_beams
from capsid_kernels.decode.trie import EOS, PAD, build_trie
from test_trie import all_paths

from conftest import poison_cuda_cache

V = 12
NEG_INF = float("-inf")


def table_step_fn(table: torch.Tensor):
    """A 'model' whose logits depend only on the beam's trie node (= its prefix)."""
    return lambda beams: table[beams.node.clamp(min=0).long()]


def exhaustive(trie, table):
    """(score, leaf) of every item path under table-logits, best first, in float64."""
    logp = torch.log_softmax(table.double(), dim=-1)
    out = []
    for codes, leaf in all_paths(trie):
        node, s = 0, 0.0
        for tok in codes:
            toks, kids = trie.children(node)
            s += float(logp[node, tok])
            node = kids[toks.index(tok)]
        s += float(logp[node, EOS])
        out.append((s, leaf))
    return sorted(out, key=lambda x: -x[0])


def step_reference(logits, node, score, finished, trie, b):
    """One step by enumeration: candidates sorted by (-score, beam, token), top B per query."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows = logits.shape[0]
    res = []
    for q in range(rows // b):
        cands = []
        for beam in range(b):
            r = q * b + beam
            n = int(node[r])
            if n < 0:
                continue
            if bool(finished[r]):
                cands.append((float(score[r]), beam, PAD, n, True, r))
                continue
            toks, kids = trie.children(n)
            for tok, kid in zip(toks, kids):
                s = float(score[r].float() + logp[r, tok])
                cands.append((s, beam, tok, kid, tok == EOS, r))
        cands = [c for c in cands if c[0] > NEG_INF]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        for j in range(b):
            if j < len(cands):
                s, _, tok, kid, fin, r = cands[j]
                res.append((tok, r, kid, s, fin))
            else:
                res.append((PAD, q * b + j, -1, NEG_INF, True))
    return res


def as_rows(out):
    return list(zip(out.token.tolist(), out.parent.tolist(), out.node.tolist(), out.score.tolist(),
                    out.finished.tolist()))


sids = st.lists(st.lists(st.integers(3, V - 1), min_size=1, max_size=4), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(sids, st.integers(0, 2**31 - 1), st.booleans())
def test_search_with_enough_beams_equals_exhaustive(paths, seed, spiky):
    trie = build_trie([p + [EOS] for p in paths], V)
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(trie.num_nodes, V, generator=g) * (8.0 if spiky else 1.0)
    truth = exhaustive(trie, table)
    b = trie.num_leaves + int(torch.randint(0, 3, (1,), generator=g))  # at least every path
    res = ck.beam_search(table_step_fn(table), trie, b, 2, backend="eager")
    for q in range(2):
        got = [(float(s), int(leaf)) for s, leaf in zip(res.scores[q], res.leaves[q])]
        assert len([x for x in got if x[1] >= 0]) == len(truth)
        for (s, leaf), (ts, tleaf) in zip(got, truth):
            assert s == pytest.approx(ts, abs=1e-4)
            if leaf != tleaf:  # only a near tie may swap order
                assert abs(dict((lf, sc) for sc, lf in truth)[leaf] - ts) < 1e-4
        assert all(s == NEG_INF and leaf == -1 for s, leaf in got[len(truth):])  # empty, never invalid
        assert bool(res.node[q, len(truth):].eq(-1).all())


@settings(max_examples=60, deadline=None)
@given(sids, st.integers(0, 2**31 - 1), st.integers(1, 6), st.booleans())
def test_step_equals_enumeration_including_ties(paths, seed, b, integer_logits):
    """Random beam states (live, finished, empty) and logits with many exact ties."""
    trie = build_trie([p + [EOS] for p in paths], V)
    g = torch.Generator().manual_seed(seed)
    q = 3
    rows = q * b
    if integer_logits:
        logits = torch.randint(-2, 2, (rows, V), generator=g).float()
    else:
        logits = torch.randn(rows, V, generator=g)
    node = torch.randint(-1, trie.num_nodes, (rows,), generator=g).to(torch.int32)
    ends = trie.is_end(node.clamp(min=0)) & (node >= 0)
    finished = (ends & (torch.rand(rows, generator=g) < 0.5)) | (node < 0)
    score = torch.where(node >= 0, torch.randint(-3, 0, (rows,), generator=g).float(), NEG_INF)
    out = beam_step(logits, node, score, finished, trie, b, backend="eager")
    assert as_rows(out) == step_reference(logits, node, score, finished, trie, b)


def test_invalid_token_mass_never_escapes_the_trie():
    paths = [[3, 4, EOS], [3, 5, 6, EOS], [7, EOS]]
    trie = build_trie(paths, V)
    allowed = {(3, 4), (3, 5, 6), (7,)}

    def step_fn(beams):
        logits = torch.full((beams.node.numel(), V), -5.0)
        logits[:, 8:] = 60.0  # nearly all mass on tokens that are never children
        return logits

    res = ck.beam_search(step_fn, trie, 4, 2, backend="eager")
    leaves = {leaf: codes for codes, leaf in all_paths(trie)}
    for q in range(2):
        for s, leaf in zip(res.scores[q].tolist(), res.leaves[q].tolist()):
            if leaf >= 0:
                assert leaves[leaf] in allowed and s > NEG_INF and s < -60  # a real (tiny) log-prob
            else:
                assert s == NEG_INF


def test_minus_inf_children_leave_beams_empty_not_penalised():
    trie = build_trie([[3, EOS], [4, EOS]], V)

    def step_fn(beams):
        logits = torch.zeros(beams.node.numel(), V)
        logits[:, 4] = NEG_INF  # item [4] has probability 0: it is not a result
        return logits

    res = ck.beam_search(step_fn, trie, 3, 1, backend="eager")
    assert res.leaves[0].tolist()[1:] == [-1, -1]
    assert res.scores[0, 1:].tolist() == [NEG_INF, NEG_INF]
    assert res.items[0].tolist() == [0, -1, -1]


def test_top_k_items_expand_collisions_by_popularity():
    paths = [[3, EOS], [3, EOS], [4, EOS], [3, EOS]]
    trie = build_trie(paths, V, item_ids=torch.tensor([5, 6, 7, 8]), popularity=torch.tensor([1.0, 3.0, 0.0, 1.0]))
    logits = torch.zeros(V)
    logits[3] = 2.0

    res = ck.beam_search(lambda beams: logits.expand(beams.node.numel(), V), trie, 2, 1, top_k=5, backend="eager")
    assert res.items[0].tolist() == [6, 5, 8, 7, -1]
    assert res.item_scores[0, :3].unique().numel() == 1 and res.item_scores[0, 4] == NEG_INF


def test_single_item_trie_and_one_beam():
    trie = build_trie([[9, 4, EOS]], V)
    res = ck.beam_search(lambda b: torch.randn(b.node.numel(), V), trie, 1, 3, backend="eager")
    assert res.items.tolist() == [[0], [0], [0]]


def test_eager_op_passes_opcheck():
    trie = build_trie([[3, 4, EOS], [3, EOS], [5, EOS]], V)
    beams = initial_beams(2, 3, "cpu")
    logits = torch.randn(6, V)
    torch.library.opcheck(beam_step_eager, (logits, beams.node, beams.score, beams.finished, trie.child_start,
                                            trie.token, trie.end_bits, 3, trie.max_fanout, PAD, EOS))


FREE_PAD, FREE_EOS = V - 2, V - 1  # ids the codes of other_ids_case's trie (3 .. 9) leave unused


def other_ids_case(device):
    """Beams (live, finished, empty) in a trie whose codes leave FREE_PAD and FREE_EOS unused,
    logits in the trie's numbering, and the same logits with EOS's column swapped to FREE_EOS."""
    paths = [[3, 4, EOS], [3, 5, 6, EOS], [3, EOS], [7, 8, EOS], [9, EOS], [7, 9, 3, EOS]]
    trie = build_trie(paths, V, device=device)  # end nodes 1, 3, 4, 6, 8, 9
    b = 4
    node = torch.tensor([0, 1, -1, -1, 4, 6, 8, 5, 9, 3, 2, 7], dtype=torch.int32, device=device)
    finished = torch.tensor([0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool, device=device)
    score = torch.tensor([0, -1, NEG_INF, NEG_INF, -0.5, -2, -1.5, -1, -2.5, -0.7, -1.2, -0.9], device=device)
    logits = torch.randn(3 * b, V, generator=torch.Generator().manual_seed(3)).to(device)
    logits[:, EOS] += 2.0  # live end nodes take EOS
    moved = logits.clone()
    moved[:, [EOS, FREE_EOS]] = logits[:, [FREE_EOS, EOS]]
    return trie, b, (node, score, finished), logits, moved


def assert_moved_ids(native, moved, pad, eos):
    """``moved`` (a step given ``pad``/``eos`` and the swapped logits) selected what ``native``
    did and wrote the ids it was given; the swap only reorders the log-sum-exp's summands, so
    scores agree to float32 rounding."""
    tok, parent, node, score, fin = native
    assert bool((tok == EOS).any()) and bool((tok == PAD).any())  # the case writes both ids
    assert torch.equal(moved[0], torch.where(tok == EOS, eos, torch.where(tok == PAD, pad, tok)))
    for name, a, c in (("parent", parent, moved[1]), ("node", node, moved[2]), ("finished", fin, moved[4])):
        assert torch.equal(a, c), name
    torch.testing.assert_close(moved[3], score)


def test_eager_step_reads_and_writes_the_token_ids_it_is_given():
    trie, b, (node, score, fin), logits, moved = other_ids_case("cpu")
    args = (trie.child_start, trie.token, trie.end_bits, b, trie.max_fanout)
    native = beam_step_eager(logits, node, score, fin, *args, PAD, EOS)
    assert_moved_ids(native, beam_step_eager(moved, node, score, fin, *args, FREE_PAD, FREE_EOS), FREE_PAD, FREE_EOS)


def test_step_compiles_with_torch_compile():
    trie = build_trie([[3, 4, EOS], [3, EOS], [5, 6, EOS]], V)
    beams = initial_beams(2, 3, "cpu")
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(11))
    from capsid_kernels.decode.beam_step_torch import beam_step_torch

    args = (logits, beams.node, beams.score, beams.finished, trie.child_start, trie.token, trie.end_bits, 3,
            trie.max_fanout, PAD, EOS)
    eager = beam_step_torch(*args)
    compiled = torch.compile(beam_step_torch, dynamic=False)(*args)
    # inductor fuses log-softmax differently, so scores agree to rounding, not bit for bit;
    # the selection (tokens, parents, nodes, finished flags) must be identical
    tok_e, parent_e, node_e, score_e, fin_e = eager
    tok_c, parent_c, node_c, score_c, fin_c = compiled
    assert torch.isfinite(score_e).sum() >= 3  # the step selected real candidates
    for name, a, c in (("token", tok_e, tok_c), ("parent", parent_e, parent_c), ("node", node_e, node_c),
                       ("finished", fin_e, fin_c)):
        assert torch.equal(a, c), name
    torch.testing.assert_close(score_c, score_e, rtol=1e-6, atol=1e-6)


def test_hf_processor_masks_to_children():
    from capsid_kernels.decode.hf import TrieLogitsProcessor

    trie = build_trie([[3, 4, EOS], [3, 5, 6, EOS], [7, EOS]], V)
    ids = torch.tensor([[1, 3], [1, 3], [1, 7], [1, 9], [1, 7]])
    ids = torch.cat([ids, torch.tensor([[4], [5], [EOS], [3], [8]])], dim=1)
    scores = torch.randn(5, V)
    out = TrieLogitsProcessor(trie)(ids, scores)
    allowed = [[EOS], [6], [PAD], [], []]
    for r, toks in enumerate(allowed):
        fin = torch.isfinite(out[r]).nonzero().flatten().tolist()
        assert fin == toks
        assert torch.equal(out[r, toks], scores[r, toks])


# --------------------------------------------------------------------------- GPU

def synthetic_trie(n_items: int, branch: int, seed: int, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 5, (n_items,), generator=g)
    codes = torch.randint(3, 3 + branch, (n_items, 4), generator=g)
    paths = torch.zeros(n_items, 5, dtype=torch.int64)
    for i in range(n_items):
        paths[i, : lengths[i]] = codes[i, : lengths[i]]
        paths[i, lengths[i]] = EOS
    return build_trie(paths, 3 + branch + 7, device=device)


def random_beams(trie, q, b, g, device="cuda"):
    rows = q * b
    node = torch.randint(-1, trie.num_nodes, (rows,), generator=g).to(torch.int32)
    ends = trie.to("cpu").is_end(node.clamp(min=0)) & (node >= 0)
    finished = (ends & (torch.rand(rows, generator=g) < 0.3)) | (node < 0)
    score = torch.where(node >= 0, -torch.rand(rows, generator=g) * 5, NEG_INF)
    return node.to(device), score.to(device), finished.to(device)


def assert_steps_agree(a, b_out, logits, b):
    """Same tokens/parents/nodes/flags; scores within fp32 rounding (a near tie may swap)."""
    same = (a.token == b_out.token) & (a.parent == b_out.parent) & (a.node == b_out.node)
    if not bool(same.all()):
        bad = (~same).nonzero().flatten()
        # only a near tie may differ: the swapped candidates' scores agree to rounding
        assert torch.allclose(a.score[bad], b_out.score[bad], rtol=1e-5, atol=1e-5), bad[:5]
        assert bad.numel() <= max(2, a.token.numel() // 1000)
    torch.testing.assert_close(a.score, b_out.score, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.finished, b_out.finished)
    assert not bool(torch.isnan(a.score).any())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q,b,branch", [(1, 1, 5), (3, 7, 40), (16, 50, 300), (5, 128, 30), (2, 33, 1000)])
def test_cuda_step_matches_torch_step(q, b, branch, dtype):
    trie = synthetic_trie(3000, branch, seed=q * 1000 + b)
    g = torch.Generator().manual_seed(b)
    for trial in range(3):
        node, score, finished = random_beams(trie, q, b, g)
        logits = (torch.randn(q * b, trie.vocab_size, generator=g) * 3).to("cuda", dtype)
        if trial == 2:
            logits[:, ::3] = NEG_INF  # -inf logits: candidates with no probability are never selected
        poison_cuda_cache()
        cu = beam_step(logits, node, score, finished, trie, b, backend="cuda")
        ref = beam_step(logits.float() if dtype == torch.float32 else logits, node, score, finished, trie, b,
                        backend="eager")
        assert_steps_agree(cu, ref, logits, b)


@pytest.mark.gpu
@pytest.mark.parametrize("vocab_pad", [0, 1, 3])  # odd row lengths: unaligned rows take the scalar edges
def test_cuda_search_matches_torch_search(vocab_pad):
    paths = torch.tensor([[3, 4, EOS, 0], [3, 5, 6, EOS], [7, EOS, 0, 0], [3, 4, 8, EOS], [9, 9, 9, EOS]])
    trie = build_trie(paths, 10 + vocab_pad, device="cuda")
    g = torch.Generator().manual_seed(vocab_pad)
    table = torch.randn(trie.num_nodes, trie.vocab_size, generator=g).cuda()
    a = ck.beam_search(table_step_fn(table), trie, 8, 4, backend="cuda")
    b = ck.beam_search(table_step_fn(table), trie, 8, 4, backend="eager")
    assert torch.equal(a.leaves, b.leaves) and torch.equal(a.items, b.items)
    torch.testing.assert_close(a.scores, b.scores)


@pytest.mark.gpu
def test_cuda_op_passes_opcheck():
    from capsid_kernels import _ext

    _ext.load()
    trie = synthetic_trie(200, 8, seed=1)
    beams = initial_beams(2, 4, "cuda")
    logits = torch.randn(8, trie.vocab_size, device="cuda")
    torch.library.opcheck(torch.ops.capsid_C.beam_step.default,
                          (logits, beams.node, beams.score, beams.finished, trie.child_start, trie.token,
                           trie.end_bits, 4, PAD, EOS))


@pytest.mark.gpu
def test_cuda_step_reads_and_writes_the_token_ids_it_is_given():
    from capsid_kernels import _ext

    _ext.load()
    trie, b, (node, score, fin), logits, moved = other_ids_case("cuda")
    args = (trie.child_start, trie.token, trie.end_bits, b)
    native = torch.ops.capsid_C.beam_step(logits, node, score, fin, *args, PAD, EOS)
    other = torch.ops.capsid_C.beam_step(moved, node, score, fin, *args, FREE_PAD, FREE_EOS)
    assert_moved_ids(native, other, FREE_PAD, FREE_EOS)
    eager = beam_step_eager(moved, node, score, fin, *args, trie.max_fanout, FREE_PAD, FREE_EOS)
    assert_steps_agree(StepOutput(*other), StepOutput(*eager), moved, b)


_BAD_IDS_CHILD = """
import sys, torch
sys.path.insert(0, "tests")
from capsid_kernels import _ext
from test_beam import EOS, PAD, V, other_ids_case
_ext.load()
trie, b, (node, score, fin), logits, _ = other_ids_case("cuda")
args = (trie.child_start, trie.token, trie.end_bits, b)
for pad, eos in ((PAD, V), (-1, EOS)):
    try:
        torch.ops.capsid_C.beam_step(logits, node, score, fin, *args, pad, eos)
        print("no error for pad=%d eos=%d" % (pad, eos))
    except RuntimeError as e:
        print(str(e).splitlines()[0])
"""


@pytest.mark.gpu
def test_cuda_step_refuses_token_ids_outside_the_row():
    """The raw op's range checks of pad/eos. Run in a child process: on the H100 (torch 2.11,
    CUDA 13.0, 2026-12-07) this call segfaulted instead of raising, which ended the whole GPU
    test session; a crash now fails this test alone. The public beam_step hands the trie's
    own ids, so it never reaches this path."""
    import subprocess
    import sys

    from conftest import REPO, child_env

    res = subprocess.run([sys.executable, "-c", _BAD_IDS_CHILD], cwd=REPO, env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, f"the child ended with {res.returncode} (a negative code is a signal): " \
                                f"{res.stderr[-2000:]}"
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith(f"eos: expected a token id in [0, V = {V}), got {V}"), lines
    assert lines[1].startswith(f"pad: expected a token id in [0, V = {V}), got -1"), lines


@pytest.mark.gpu
def test_hf_t5_adapter_matches_beam_search():
    transformers = pytest.importorskip("transformers")
    from capsid_kernels.decode.hf import TrieLogitsProcessor

    torch.manual_seed(0)
    vocab = 16
    paths = [[3, 4, EOS], [3, 5, 6, EOS], [7, EOS], [8, 9, 10, EOS], [3, 4, 11, EOS]]
    trie = build_trie(paths, vocab, device="cuda")
    cfg = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                decoder_start_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    model = transformers.T5ForConditionalGeneration(cfg).cuda().eval()
    enc = torch.randint(3, vocab, (2, 6), device="cuda")
    b = 6
    with torch.no_grad():
        out = model.generate(enc, num_beams=b, num_return_sequences=3, max_new_tokens=trie.max_len + 1,
                             logits_processor=transformers.LogitsProcessorList([TrieLogitsProcessor(trie)]),
                             length_penalty=0.0, early_stopping=True, do_sample=False,
                             return_dict_in_generate=True, output_scores=True)
        hist = {"ids": torch.full((2 * b, 1), 1, device="cuda")}

        def step_fn(beams):
            if beams.step > 0:
                hist["ids"] = torch.cat([hist["ids"][beams.parent], beams.tokens[:, None]], dim=1)
            return model(input_ids=enc.repeat_interleave(b, 0), decoder_input_ids=hist["ids"]).logits[:, -1].float()

        res = ck.beam_search(step_fn, trie, b, 2, backend="eager")
    valid = {tuple(p[:-1]) for p in paths}
    seqs = out.sequences.view(2, 3, -1)
    for q in range(2):
        for k in range(3):
            toks = seqs[q, k, 1:].tolist()
            assert EOS in toks and tuple(toks[: toks.index(EOS)]) in valid  # HF may pad after EOS
        leaves = {leaf: codes for codes, leaf in all_paths(trie.to("cpu"))}
        best = seqs[q, 0, 1:].tolist()
        best = best[: best.index(EOS)]
        assert tuple(best) == leaves[int(res.leaves[q, 0])]
        assert float(out.sequences_scores.view(2, 3)[q, 0]) == pytest.approx(float(res.scores[q, 0]), abs=1e-3)


@pytest.mark.gpu
def test_wide_beam_auto_warns_and_cuda_refuses():
    import importlib

    import warnings

    from capsid_kernels import registry

    bs = importlib.import_module("capsid_kernels.decode.beam_step")  # the package re-exports a function by that name

    trie = build_trie([[3, 4, EOS], [3, EOS], [5, EOS]], V, device="cuda")
    b = bs.MAX_CUDA_BEAMS + 1
    beams = initial_beams(1, b, "cuda")
    logits = torch.randn(b, V, generator=torch.Generator().manual_seed(5)).cuda()
    with pytest.raises(ValueError, match=f"num_beams={b} exceeds the CUDA kernel's limit {bs.MAX_CUDA_BEAMS}"):
        beam_step(logits, beams.node, beams.score, beams.finished, trie, b, backend="cuda")
    registry.reset_fallback_warnings()
    with pytest.warns(ck.BackendFallbackWarning, match=f"cuda: num_beams={b} exceeds the CUDA kernel's limit"):
        got = beam_step(logits, beams.node, beams.score, beams.finished, trie, b, backend="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per (op, reasons): the same wide beam again is silent
        beam_step(logits, beams.node, beams.score, beams.finished, trie, b, backend="auto")
    ref = beam_step(logits, beams.node, beams.score, beams.finished, trie, b, backend="eager")
    for a, e in zip(got, ref):
        assert torch.equal(a, e)


# --------------------------------------------------------------------------- caller token layouts

T5_LIKE = ck.TokenLayout(pad=0, bos=0, eos=1, first_code=6, num_codes=V - 3)  # text ids 2..5, codes 6..14


def caller_table(trie, caller_vocab, seed):
    """Random caller logits per node, and the trie-numbered table with the same softmax built
    by hand: codes/EOS/PAD read their caller columns, BOS carries every other column's mass."""
    g = torch.Generator().manual_seed(seed)
    caller = torch.randn(trie.num_nodes, caller_vocab, generator=g, dtype=torch.float64) * 2
    native = torch.empty(trie.num_nodes, V, dtype=torch.float64)
    native[:, 3:] = caller[:, 6: 6 + V - 3]
    native[:, EOS], native[:, PAD] = caller[:, 1], caller[:, 0]
    rest = [2, 3, 4, 5] + list(range(6 + V - 3, caller_vocab))
    native[:, 1] = torch.logsumexp(caller[:, rest], dim=1)
    torch.testing.assert_close(torch.logsumexp(native, 1), torch.logsumexp(caller, 1))
    return caller.float(), native.float()


@pytest.mark.parametrize("caller_vocab", [15, 19])  # exactly the codes, and padded with 4 more text ids
def test_search_in_a_caller_layout_equals_the_native_search(caller_vocab):
    trie = build_trie([[3, 4, EOS], [3, 5, 6, EOS], [7, EOS], [8, 9, 10, EOS], [3, 4, 11, EOS], [11, EOS]], V)
    caller, native = caller_table(trie, caller_vocab, caller_vocab)
    seen = []

    def caller_step(beams):
        if beams.step:
            seen.append(beams.tokens.clone())
        return caller[beams.node.clamp(min=0).long()]

    got = ck.beam_search(caller_step, trie, 5, 3, backend="eager", layout=T5_LIKE)
    want = ck.beam_search(table_step_fn(native), trie, 5, 3, backend="eager")
    assert torch.equal(got.leaves, want.leaves) and torch.equal(got.items, want.items)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    toks = torch.cat(seen)
    assert ((toks >= 6) & (toks < 15) | (toks == 1) | (toks == 0)).all()  # caller ids only
    assert (toks == 1).any()  # EOS shown as the caller's EOS


def test_hf_processor_in_a_caller_layout():
    from capsid_kernels.decode.hf import TrieLogitsProcessor

    lay = ck.TokenLayout(pad=0, bos=0, eos=1, first_code=20, num_codes=V - 3)
    trie = build_trie(lay.trie_paths(torch.tensor([[20, 21, 1, 0], [20, 22, 23, 1], [24, 1, 0, 0]])), lay.trie_vocab_size)
    assert torch.equal(trie.token, build_trie([[3, 4, EOS], [3, 5, 6, EOS], [7, EOS]], V).token)
    ids = torch.tensor([[0, 20, 21], [0, 20, 22], [0, 24, 1], [0, 26, 20], [0, 24, 25], [0, 5, 20], [0, 20, 5]])
    scores = torch.randn(7, 40)
    out = TrieLogitsProcessor(trie, layout=lay)(ids, scores)
    allowed = [[1], [23], [0], [], [], [], []]  # EOS; a child; PAD once finished; off-trie and text tokens: none
    for r, toks in enumerate(allowed):
        assert torch.isfinite(out[r]).nonzero().flatten().tolist() == toks
        assert torch.equal(out[r, toks], scores[r, toks])
    with pytest.raises(ValueError, match="scores: expected V >= 29"):
        TrieLogitsProcessor(trie, layout=lay)(ids, scores[:, :28])


def test_token_layout_names_bad_arguments():
    with pytest.raises(ValueError, match="TokenLayout.eos"):
        ck.TokenLayout(pad=1, bos=0, eos=1)
    with pytest.raises(ValueError, match="TokenLayout.bos: 7 lies inside the code block"):
        ck.TokenLayout(pad=0, bos=7, eos=1, first_code=5, num_codes=4)
    with pytest.raises(ValueError, match="TokenLayout.first_code"):
        ck.TokenLayout(first_code=-1)
    with pytest.raises(ValueError, match="row 1 has token 4 at position 0"):
        T5_LIKE.trie_paths(torch.tensor([[6, 1], [4, 1]]))
    trie = build_trie([[3, 4, EOS]], V)
    with pytest.raises(ValueError, match="num_codes=3"):
        ck.beam_search(table_step_fn(torch.zeros(3, V)), trie, 2, 1,
                       layout=ck.TokenLayout(pad=0, bos=0, eos=1, first_code=6, num_codes=3))
    with pytest.raises(ValueError, match="step_fn: expected logits over at least 15"):
        ck.beam_search(lambda b: torch.zeros(b.node.numel(), 14), trie, 2, 1, layout=T5_LIKE)
    assert torch.equal(T5_LIKE.trie_paths(torch.tensor([[6, 14, 1, 0]])), torch.tensor([[3, 11, EOS, PAD]]))
