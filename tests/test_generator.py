"""The generator: token layout, soft inputs, cached vs uncached decoding, warm start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import capsid_kernels as ck
from capsid_gr.bpe import MergeTable
from capsid_gr.generator import (
    BOS,
    EOS,
    PAD,
    IGNORE,
    Generator,
    GeneratorConfig,
    ItemInputs,
    RoutingAdapter,
    embed_batch,
    from_capsid,
    from_paths,
    make_batch,
    make_sequence_batch,
)

# Tiny models: one intra-op thread avoids oversubscribing shared 2-core runners (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = GeneratorConfig(layers=2, heads=2, hidden=16, ffn=32, dropout=0.0, max_positions=128)


def tiny_capsid(n=30, d=16, merges=True, seed=0):
    """A real (untrained) CAPSID tokenization of random vectors, with one merge if asked."""
    cfg = ck.CapsIDConfig(d=d, capsules=(5, 4, 3), capsule_dim=8, max_length=3, tau=0.99, eps=1e-6)
    tok = ck.CapsIDTokenizer(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    out = tok.tokenize(x)
    table = None
    if merges:
        base = 3 + sum(cfg.capsules_per_depth)
        s = out.sids[0]
        pair = (3 + int(s[0]), 3 + 5 + int(s[1]))
        table = MergeTable(base, [pair])
    logit = np.array([0.3]) if merges else None
    return from_capsid(tok, x, out.sids, table, logit), tok, x


def test_layout_and_labels():
    items = from_paths([[3, 4, EOS], [5, EOS], [3, 6, 7, EOS]], vocab_size=8)
    b = make_batch(items.paths, [np.array([0, 1]), np.array([2])], targets=[2, 1])
    # row 0: [BOS 3 4 EOS 5 EOS | 3 6 7], row 1 left-padded
    assert b.prefix_len == 6 and b.tokens.shape == (2, 9)
    assert b.tokens[0].tolist() == [BOS, 3, 4, EOS, 5, EOS, 3, 6, 7]
    assert b.labels[0, 5:].tolist() == [3, 6, 7, EOS] and (b.labels[0, :5] == IGNORE).all()
    assert b.tokens[1].tolist() == [0, BOS, 3, 6, 7, EOS, 5, 0, 0]
    assert b.key_valid[1].tolist() == [False] + [True] * 6 + [False] * 2
    assert b.labels[1, 5:].tolist() == [5, EOS, IGNORE, IGNORE]
    assert b.positions[1, 1:7].tolist() == [0, 1, 2, 3, 4, 5]
    assert b.sid_pos[0].tolist() == [0, 1, 2, 3, 1, 2, 1, 2, 3]
    # history slots point at the right (item, position in path)
    u = b.unique.tolist()
    assert [u[s] for s in b.hist_slot[0, 1:6].tolist()] == [0, 0, 0, 1, 1]
    assert b.hist_slot[0, 0] == -1 and b.hist_slot[0, 6:].eq(-1).all()
    # an empty history: the prompt is BOS alone, which carries the first label
    e = make_batch(items.paths, [np.zeros(0, np.int64)], targets=[1])
    assert e.tokens[0].tolist() == [BOS, 5] and e.labels[0].tolist() == [5, EOS] and e.prefix_len == 1


def test_history_truncated_to_most_recent():
    items = from_paths([[3, EOS], [4, EOS], [5, EOS]], vocab_size=6)
    b = make_batch(items.paths, [np.array([0, 1, 2])], max_history=2)
    assert b.tokens[0].tolist() == [BOS, 4, EOS, 5, EOS]


def _decode_logits(model, inputs, items, hist, path):
    """Logits for every step of `path`: uncached (full forward) and cached (prefill + steps)."""
    b = make_batch(items.paths, [hist], None)
    emb = embed_batch(model, inputs, b)
    logits0, prefix = model.prefill(emb, b.positions, b.sid_pos, b.key_valid)
    cache = model.empty_beam_cache(1, emb.device, emb.dtype)
    cached = [logits0[0]]
    for j, t in enumerate(path[:-1]):
        cached.append(model.decode_step(torch.tensor([t]), torch.tensor([j + 1]), j, prefix, cache, 1)[0])
    full = make_batch(items.paths, [hist], None)
    # teacher-forced uncached run: append the path tokens by hand
    toks = torch.cat([full.tokens[0], torch.tensor(path[:-1], dtype=torch.int64)])[None]
    e = torch.cat([emb[0], model.embed(torch.tensor(path[:-1], dtype=torch.int64))])[None]
    pos = torch.arange(toks.shape[1])[None]
    sid = torch.cat([full.sid_pos[0], torch.arange(1, len(path))])[None]
    logits = model(e, pos, sid, torch.ones_like(toks, dtype=torch.bool))[0, full.prefix_len - 1:]
    return torch.stack(cached), logits


@pytest.mark.parametrize("soft", [False, True])
def test_cached_equals_uncached(soft):
    torch.manual_seed(0)
    items, _, _ = tiny_capsid()
    model = Generator(items.vocab_size, TINY, token_init=items.token_init, has_init=items.has_init).double()
    adapter = RoutingAdapter(items, seed=1) if soft else None
    if adapter is not None:
        with torch.no_grad():  # a non-zero adapter, so the check covers the adapted routing too
            for u in adapter.U:
                u.normal_(0, 0.01)
    inputs = ItemInputs(items, adapter)
    with torch.no_grad():
        for hist in (np.array([3, 1, 4, 1, 5]), np.array([7])):
            cached, full = _decode_logits(model, inputs, items, hist, items.paths[2])
            torch.testing.assert_close(cached, full, rtol=1e-10, atol=1e-10)


def test_cached_beams_with_padding_and_reorder():
    """Two queries of different prefix lengths, three beams, a reorder in the middle."""
    items, _, _ = tiny_capsid(merges=False)
    model = Generator(items.vocab_size, TINY, seed=3).double().eval()
    inputs = ItemInputs(items)
    hists = [np.array([1, 2, 3, 4]), np.array([5])]
    with torch.no_grad():
        b = make_batch(items.paths, hists, None)
        emb = embed_batch(model, inputs, b)
        _, prefix = model.prefill(emb, b.positions, b.sid_pos, b.key_valid)
        cache = model.empty_beam_cache(6, emb.device, emb.dtype)
        seq = torch.tensor([[3, 9], [4, 10], [5, 11], [6, 9], [7, 10], [3, 11]])
        model.decode_step(seq[:, 0], torch.ones(6, dtype=torch.long), 0, prefix, cache, 3)
        perm = torch.tensor([2, 0, 1, 5, 3, 4])
        cache.reorder(perm)
        seq = torch.stack([seq[perm, 0], seq[:, 1]], 1)
        got = model.decode_step(seq[:, 1], torch.full((6,), 2), 1, prefix, cache, 3)
        for r in range(6):
            h = hists[r // 3]
            one = make_batch(items.paths, [h], None)
            e = torch.cat([embed_batch(model, inputs, one)[0], model.embed(seq[r])])[None]
            n = e.shape[1]
            sid = torch.cat([one.sid_pos[0], torch.tensor([1, 2])])[None]
            want = model(e, torch.arange(n)[None], sid, torch.ones(1, n, dtype=torch.bool))[0, -1]
            torch.testing.assert_close(got[r], want, rtol=1e-10, atol=1e-10)


def test_soft_inputs_match_stage1_routing_at_init():
    """With U = 0 the soft input at depth l is sum_k c*_k E_lk of Stage 1's own routing."""
    items, tok, x = tiny_capsid(merges=False)
    model = Generator(items.vocab_size, TINY, token_init=items.token_init, has_init=items.has_init)
    inputs = ItemInputs(items, RoutingAdapter(items))
    with torch.no_grad():
        rows = inputs.rows(model.tok.weight, torch.arange(items.n_items))
        full = tok.tokenize(x, need_weights=True)
    E = model.tok.weight
    offsets = items.depth_offsets()
    for i in range(items.n_items):
        r = x[i: i + 1] / x[i].norm()
        for depth, layer in enumerate(tok.layers):
            if depth >= len(items.paths[i]) - 1:
                break
            o = layer(r, need_weights=True)
            want = o.weights[0] @ E[offsets[depth]: offsets[depth] + items.capsules[depth]]
            torch.testing.assert_close(rows[i, depth], want.detach(), rtol=1e-5, atol=1e-6)
            r = o.residual
        assert torch.equal(rows[i, len(items.paths[i]) - 1], E[EOS].detach())


def test_merged_position_input():
    items, _, _ = tiny_capsid(merges=True)
    assert items.vocab_size == items.base_vocab + 1 and items.paths[0][0] == items.base_vocab
    model = Generator(items.vocab_size, TINY, token_init=items.token_init, has_init=items.has_init)
    adapter = RoutingAdapter(items)
    inputs = ItemInputs(items, adapter)
    nomerge = ItemInputs(from_capsid(*_unmerged(items)), RoutingAdapter(from_capsid(*_unmerged(items))))
    with torch.no_grad():
        got = inputs.rows(model.tok.weight, torch.tensor([0]))[0, 0]
        soft = nomerge.rows(model.tok.weight, torch.tensor([0]))[0, :2]
        g = torch.sigmoid(torch.tensor(0.3))
        want = g * model.tok.weight[items.base_vocab] + (1 - g) * soft.mean(0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the warm start of a merged token is the mean of its parts (before the common rescale)
    a, b = items.merges[0]
    torch.testing.assert_close(items.token_init[items.base_vocab], 0.5 * (items.token_init[a] + items.token_init[b]))


def _unmerged(items):
    src = items.routing
    tok = ck.CapsIDTokenizer(ck.CapsIDConfig(d=16, capsules=(5, 4, 3), capsule_dim=8, max_length=3,
                                             tau=0.99, eps=1e-6))
    with torch.no_grad():
        for layer, (W, b, D) in zip(tok.layers, src.layers):
            layer.W.copy_(W)
            layer.b.copy_(b)
            layer.D.copy_(D)
    codes = np.where(items.base_sids >= 0, items.base_sids - items.depth_offsets()[None], -1)
    return tok, src.x, torch.as_tensor(codes)


def test_warm_start_rows_follow_centres():
    items, tok, _ = tiny_capsid(merges=False)
    model = Generator(items.vocab_size, GeneratorConfig(layers=1, heads=2, hidden=16, ffn=16), token_init=items.token_init,
                      has_init=items.has_init)
    E = model.tok.weight.detach()[3:]
    C = torch.cat(tok.centres()).detach()
    cos_e = torch.nn.functional.cosine_similarity(E[:, None], E[None], dim=-1)
    cos_c = torch.nn.functional.cosine_similarity(C[:, None], C[None], dim=-1)
    torch.testing.assert_close(cos_e, cos_c, rtol=1e-4, atol=1e-5)  # d == hidden: directions kept


def test_positions_limit_is_explained():
    items = from_paths([[3, EOS]], vocab_size=4)
    model = Generator(4, GeneratorConfig(layers=1, heads=1, hidden=8, ffn=8, max_positions=4))
    b = make_batch(items.paths, [np.zeros(5, dtype=np.int64)], None)
    with pytest.raises(ValueError, match="max_positions"):
        model(embed_batch(model, ItemInputs(items), b), b.positions, b.sid_pos, b.key_valid)


def test_sequence_batch_layout_and_labels():
    items = from_paths([[3, 4, EOS], [5, EOS], [3, 6, 7, EOS]], vocab_size=8)
    b = make_sequence_batch(items.paths, [np.array([0, 1, 2]), np.array([1, 0]), np.array([2])])
    assert b.prefix_len == 1 and b.tokens.shape == (3, 10)
    assert b.tokens[0].tolist() == [BOS, 3, 4, EOS, 5, EOS, 3, 6, 7, EOS]
    # item 1 (5 EOS) is predicted from item 0's EOS, item 2 from item 1's; item 0 is no target
    assert b.labels[0].tolist() == [IGNORE] * 3 + [5, EOS, 3, 6, 7, EOS, IGNORE]
    assert b.tokens[1].tolist() == [PAD] * 4 + [BOS, 5, EOS, 3, 4, EOS]
    assert b.labels[1].tolist() == [IGNORE] * 6 + [3, 4, EOS, IGNORE]
    assert (b.labels[2] == IGNORE).all() and b.tokens[2, -5:].tolist() == [BOS, 3, 6, 7, EOS]
    assert b.sid_pos[0].tolist() == [0, 1, 2, 3, 1, 2, 1, 2, 3, 4]
    assert b.positions[1, 4:].tolist() == [0, 1, 2, 3, 4, 5] and not b.key_valid[1, :4].any()
    assert b.unique.numel() == 0 and (b.hist_slot == -1).all()


def test_sequence_batch_logits_equal_prefix_rows():
    """One whole-sequence row gives every target token the logits of its own prefix row."""
    torch.manual_seed(0)
    items, _, _ = tiny_capsid(n=30, merges=True)
    model = Generator(items.vocab_size, TINY, token_init=items.token_init, has_init=items.has_init).double().eval()
    inputs = ItemInputs(items)
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 30, size=int(rng.integers(2, 7))) for _ in range(5)]
    pm = items.path_matrix()

    def label_logits(b):
        logits = model(embed_batch(model, inputs, b), b.positions, b.sid_pos, b.key_valid)
        lab = b.labels[:, b.prefix_len - 1:]
        keep = lab != IGNORE
        return logits[:, b.prefix_len - 1:][keep], lab[keep]

    seq_logits, seq_lab = label_logits(make_sequence_batch(pm, seqs))
    hist = [q[:t] for q in seqs for t in range(1, len(q))]
    tgt = [int(q[t]) for q in seqs for t in range(1, len(q))]
    pre_logits, pre_lab = label_logits(make_batch(pm, hist, tgt))
    assert torch.equal(seq_lab, pre_lab)  # same targets, same order
    torch.testing.assert_close(seq_logits, pre_logits, rtol=1e-10, atol=1e-10)


def test_disambiguation_tokens_make_every_path_unique():
    """A tokenizer that collides (K = 2 x 2 over 30 items): colliding items get one more token,
    ordered by popularity, unique items keep their path, and the new tokens enter hard."""
    cfg = ck.CapsIDConfig(d=8, capsules=(2, 2), capsule_dim=4, max_length=2, tau=0.99, eps=1e-6)
    tok = ck.CapsIDTokenizer(cfg, seed=0)
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    sids = tok.tokenize(x).sids
    plain = from_capsid(tok, x, sids)
    pop = np.random.default_rng(0).integers(0, 100, size=30).astype(float)
    items = from_capsid(tok, x, sids, disambiguate=True, popularity=pop)
    groups: dict = {}
    for i, p in enumerate(plain.paths):
        groups.setdefault(tuple(p), []).append(i)
    assert max(len(g) for g in groups.values()) > 1  # the case collides
    assert len({tuple(p) for p in items.paths}) == 30
    start = plain.vocab_size
    assert items.n_dedup == max(len(g) for g in groups.values()) and items.vocab_size == start + items.n_dedup
    for g in groups.values():
        if len(g) == 1:
            assert items.paths[g[0]] == plain.paths[g[0]]
            continue
        order = sorted(g, key=lambda i: (-pop[i], i))
        for j, i in enumerate(order):
            assert items.paths[i] == plain.paths[i][:-1] + [start + j, EOS]
    assert not items.has_init[start:].any() and items.has_init[3:start].all()
    lay = items.layout()
    for i, p in enumerate(items.paths):
        for j, t in enumerate(p[:-1]):
            assert (lay["depth_a"][i, j] == -1) == (t >= start)
    # the soft-input rows keep the disambiguation position hard
    model = Generator(items.vocab_size, TINY, token_init=items.token_init, has_init=items.has_init)
    inputs = ItemInputs(items, RoutingAdapter(items, seed=0))
    ids = torch.arange(30)
    rows = inputs.rows(model.tok.weight, ids)
    hard = model.tok.weight[inputs.paths[ids]]
    is_dedup = inputs.paths[ids] >= start
    assert is_dedup.any() and torch.equal(rows[is_dedup], hard[is_dedup])
    with pytest.raises(ValueError, match="popularity"):
        from_capsid(tok, x, sids, disambiguate=True, popularity=np.ones(3))
