"""Stage 1: the SPEC §4 losses on hand-computed inputs, the schedules' endpoints, the
all-depths forward against the stack, a short training run, and exact resumption."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import capsid_kernels as ck
from capsid_gr.data import SyntheticConfig, make_synthetic
from capsid_gr.stage1 import Stage1Config, load_checkpoint, train_stage1
from capsid_gr.tokenizer.inference import tokenize_items
from capsid_gr.tokenizer import forward_all_depths, losses, schedules


def test_route_loss_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x_hat = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    assert losses.route_loss(x, x_hat).item() == pytest.approx((0.25 + 1.0) / 2)


def test_centre_separation_by_hand():
    # cosines: (0,1) = 0, (0,2) = 0.6, (1,2) = 0.8; margin 0.5 -> threshold 0.5
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.6, 0.8]])
    want = 2 * (0.0 + 0.1 + 0.3) / 6  # ordered pairs k != k'
    assert losses.centre_separation(c, 0.5).item() == pytest.approx(want, abs=1e-6)
    assert losses.centre_separation(c[:1], 0.5).item() == 0.0


def test_usage_balance_by_hand():
    uniform = torch.full((5, 4), 0.25)
    assert losses.usage_balance(uniform).item() == pytest.approx(0.0, abs=1e-7)
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert losses.usage_balance(onehot).item() == pytest.approx(1.0, abs=1e-6)
    half = torch.tensor([[0.75, 0.25], [0.75, 0.25]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert losses.usage_balance(half).item() == pytest.approx((math.log(2) - h) / math.log(2), abs=1e-6)


def test_expected_length_by_hand():
    p = torch.tensor([[0.5, 0.5, 0.9], [1.0, 0.3, 0.3], [0.0, 0.0, 0.0]])
    # E[L] = 1 + (1 - p1) + (1 - p1)(1 - p2); the last p never counts
    want = torch.tensor([1 + 0.5 + 0.25, 1.0, 3.0])
    assert torch.allclose(losses.expected_length(p), want)


def test_soft_stop_and_length_loss_by_hand():
    q = torch.tensor([[0.82, 0.0]])
    r = torch.tensor([[1.0, 0.08]])
    p = losses.soft_stop(q, r, 0.82, 0.08)
    assert p[0, 0].item() == pytest.approx(0.5) and p[0, 1].item() == pytest.approx(0.5)
    # E[L] = 1 + (1 - 0.5) = 1.5 of L_max = 2
    assert losses.length_loss(q, r, 0.82, 0.08).item() == pytest.approx(0.75)


def test_schedules_hit_their_endpoints():
    epochs = 7
    first, last = schedules.progress(0, epochs), schedules.progress(epochs - 1, epochs)
    assert (first, last) == (0.0, 1.0)
    assert schedules.spread_margin(first) == pytest.approx(0.2)
    assert schedules.spread_margin(last) == pytest.approx(0.9)
    assert schedules.bpe_threshold(first) == pytest.approx(0.90)
    assert schedules.bpe_threshold(last) == pytest.approx(0.55)
    assert schedules.gumbel_temperature(first) == pytest.approx(1.0)
    assert schedules.gumbel_temperature(last) == pytest.approx(0.1)
    assert schedules.bpe_alpha(first, 0.6) == 1.0 and schedules.bpe_alpha(last, 0.6) == 0.6
    assert schedules.progress(0, 1) == 1.0  # a one-epoch run is all end values


def _small_tokenizer(k=12, l_max=4, tau=0.82, eps=0.08, seed=0, d=32):
    cfg = ck.CapsIDConfig(d=d, capsules=k, capsule_dim=16, max_length=l_max, tau=tau, eps=eps)
    return ck.CapsIDTokenizer(cfg, seed=seed)


def test_all_depths_forward_equals_the_stack():
    torch.manual_seed(0)
    x = torch.randn(97, 32)
    tok = _small_tokenizer(tau=0.05, eps=0.9)  # loose stops: items end at every depth
    with torch.no_grad():
        a = forward_all_depths(tok, x)
        s = tok.tokenize(x)
    assert len(set(s.lengths.tolist())) > 1
    assert torch.equal(a.lengths, s.lengths)
    assert torch.equal(a.stop_reason, s.stop_reason)
    sids = torch.where(a.reached, a.token, torch.full_like(a.token, ck.PAD_TOKEN))
    assert torch.equal(sids, s.sids)
    assert torch.allclose(a.x_hat, s.recon, atol=1e-6)


def _synthetic(n_items=240, n_users=200, d=32):
    data = make_synthetic(SyntheticConfig(n_items=n_items, n_users=n_users, d=d, seed=3))
    return data, torch.as_tensor(data.item_vectors), data.popularity().astype(float)


def test_short_stage1_lowers_route_loss_and_raises_utilisation(tmp_path):
    data, x, w = _synthetic()
    tok = _small_tokenizer(k=48, l_max=3)
    with torch.no_grad():
        before = tok.diagnostics(tok.tokenize(x))
        route_before = losses.route_loss(x / x.norm(dim=1, keepdim=True), tok.tokenize(x).recon).item()
    # lr 1e-2: four epochs of four steps is a short run; at 1e-3 it barely moves
    cfg = Stage1Config(epochs=4, batch_size=64, lr=1e-2, val_fraction=0.1)
    res = train_stage1(tok, x, w, cfg, out_dir=tmp_path, show_progress=False)
    with torch.no_grad():
        out = tok.tokenize(x)
    after = tok.diagnostics(out)
    route_after = losses.route_loss(x / x.norm(dim=1, keepdim=True), out.recon).item()
    assert route_after < 0.8 * route_before
    assert after["code_utilisation"] > before["code_utilisation"]
    assert len(res.history) == 4
    log = (tmp_path / "stage1_log.jsonl").read_text().splitlines()
    assert len(log) == 4 and '"train_route"' in log[0] and '"val_route"' in log[0]


class _Interrupt(Exception):
    pass


def _stop_after_first(record):
    """An `on_epoch_end` that interrupts a run once epoch 0's checkpoint is written."""
    if record["epoch"] == 0:
        raise _Interrupt


def test_checkpoint_resumes_to_the_same_state(tmp_path):
    data, x, w = _synthetic()
    cfg = Stage1Config(epochs=3, batch_size=128, val_fraction=0.1)
    straight = _small_tokenizer(seed=5)
    train_stage1(straight, x, w, cfg, out_dir=tmp_path / "a", show_progress=False)

    resumed = _small_tokenizer(seed=5)
    with pytest.raises(_Interrupt):
        train_stage1(resumed, x, w, cfg, out_dir=tmp_path / "b", show_progress=False, on_epoch_end=_stop_after_first)
    tensors, meta = load_checkpoint(tmp_path / "b" / "stage1.safetensors")
    assert meta["epoch"] == 0 and any(k.startswith("opt.") for k in tensors)
    fresh = _small_tokenizer(seed=99)  # different init: everything must come from the checkpoint
    res = train_stage1(fresh, x, w, cfg, out_dir=tmp_path / "b", show_progress=False)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    for (name, p), q in zip(straight.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(p, q), name


def test_resume_refuses_other_vectors(tmp_path):
    data, x, w = _synthetic()
    cfg = Stage1Config(epochs=1, batch_size=128)
    train_stage1(_small_tokenizer(), x, w, cfg, out_dir=tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="other settings or data"):
        train_stage1(_small_tokenizer(), x * 2 + 1, w, cfg, out_dir=tmp_path, show_progress=False)


def test_tokenize_items_matches_module():
    _, x, _ = _synthetic()
    tok = _small_tokenizer()
    with torch.no_grad():
        a, b = tokenize_items(tok, x, batch_size=50), tok.tokenize(x)
    assert torch.equal(a.sids, b.sids)
    assert np.isfinite(a.recon.numpy()).all()


def test_resume_accepts_another_backend_and_refuses_other_routing(tmp_path):
    import dataclasses

    import capsid_kernels as ck
    from capsid_gr.stage1.train import _tokenizer_identity

    _, x, w = _synthetic()
    tok = _small_tokenizer()
    cfg = Stage1Config(epochs=2, batch_size=128)

    with pytest.raises(_Interrupt):
        train_stage1(_small_tokenizer(), x, w, cfg, out_dir=tmp_path / "a", show_progress=False,
                     on_epoch_end=_stop_after_first)
    # same routing, other execution options (backend, precision, checks): resumes after epoch 0
    # and ends where the uninterrupted run ends (on the CPU every backend here is the reference)
    c = dataclasses.replace(tok.config, backend="eager", precision="tf32", check_inputs=not tok.config.check_inputs)
    resumed = ck.CapsIDTokenizer(c, seed=99)  # another init: everything must come from the checkpoint
    res = train_stage1(resumed, x, w, cfg, out_dir=tmp_path / "a", show_progress=False)
    assert [h["epoch"] for h in res.history] == [0, 1]
    train_stage1(tok, x, w, cfg, out_dir=tmp_path / "straight", show_progress=False)
    for (name, p), q in zip(tok.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    # other routing (tau): refused, naming the field and both values
    c = dataclasses.replace(tok.config, tau=tok.config.tau / 2)
    with pytest.raises(ValueError, match=rf"other settings or data \(tokenizer tau: checkpoint {tok.config.tau}, "
                                         rf"this run {tok.config.tau / 2}\)"):
        train_stage1(ck.CapsIDTokenizer(c, seed=5), x, w, cfg, out_dir=tmp_path / "a", show_progress=False)
    # an old checkpoint header (every field, execution options included) compares on the identity only
    assert _tokenizer_identity({**tok.config.to_dict(), "backend": "cuda"}, tok.config) == tok.config.identity()
    assert _tokenizer_identity(None, tok.config) is None
    assert set(ck.CapsIDConfig().to_dict()) - set(ck.CapsIDConfig().identity()) == {"backend", "precision",
                                                                                      "check_inputs"}


def test_stage1_semantic_bpe_merges_with_the_item_space_embedding(tmp_path):
    """SPEC §5: with the item-space token embedding SemanticBPE finds candidates and merges on a
    clustered catalogue (with codebook centres it found none); the candidates' cosines are those of
    `Stage1Result.token_emb`, which is the item-space embedding of the final SIDs, and every item
    round-trips through the merges."""
    from capsid_gr.bpe import item_space_embeddings, to_global
    from capsid_gr.bpe.pairs import pair_cosine

    data, x, w = _synthetic()
    tok = _small_tokenizer(k=16, l_max=3)
    cfg = Stage1Config(epochs=2, batch_size=128, lr=1e-2, val_fraction=0.1)
    res = train_stage1(tok, x, w, cfg, out_dir=tmp_path, show_progress=False)
    ks = tok.config.capsules_per_depth
    sids = tokenize_items(tok, x, cfg.eval_batch_size).sids.numpy()  # Stage 1's own call
    ids = to_global(sids, ks)
    emb = item_space_embeddings(ids, x, res.token_emb.shape[0])
    torch.testing.assert_close(res.token_emb, emb, rtol=0, atol=1e-12)
    assert len(res.candidates.pairs) > 0 and len(res.merges) > 0
    np.testing.assert_allclose(res.candidates.cos, pair_cosine(emb, res.candidates.pairs).numpy(), rtol=0, atol=1e-12)
    for row in ids:
        toks = [int(t) for t in row if t >= 0]
        assert res.merges.decode_item(res.merges.encode_item(toks)) == toks


def test_resume_refuses_a_checkpoint_from_the_centre_embedding(tmp_path):
    """A checkpoint whose gate was trained on codebook-centre features (no bpe_embedding in its
    header, before 2026-12-08) must not resume under the item-space embedding."""
    from capsid_gr.stage1.train import BPE_EMBEDDING, Stage1Config, _resume_mismatch

    cfg = Stage1Config()
    c = ck.CapsIDConfig()
    import json

    meta = json.loads(json.dumps({"config": cfg.to_dict(), "vectors": "d", "tokenizer_config": c.to_dict()}))
    assert "codebook-centre" in _resume_mismatch(meta, cfg, "d", c)
    assert _resume_mismatch({**meta, "bpe_embedding": BPE_EMBEDDING}, cfg, "d", c) is None
