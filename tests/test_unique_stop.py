"""The uniqueness-aware stop (SPEC §3, capsid_gr.tokenizer.inference.unique_stop_tokenize): checked
against a plain-Python reading of the rule on every depth's routing of every item, and against the
plain stop on the same tokenizer."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

import capsid_kernels as ck
from capsid_gr import pipeline
from test_pipeline import TINY
from capsid_gr.tokenizer.inference import held_for_uniqueness, tokenize_items, unique_stop_tokenize


def colliding_tokenizer(seed=0, n=300, k=4, depths=4, d=8):
    """A small tokenizer (few capsules a depth) on random items: the plain stop collides a lot."""
    cfg = ck.CapsIDConfig(d=d, capsules=k, max_length=depths, capsule_dim=4, rounds=2, tau=0.45, eps=0.5)
    tok = ck.CapsIDTokenizer(cfg, seed=seed, dtype=torch.float64)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    return tok, x


def rule_by_hand(tok, x):
    """Every depth routed for every item (routing an item never depends on another), then the
    rule read literally: an item that has had CONF or RESID stops at the first depth where no
    other item still routing has its SID so far; at L_max everything stops."""
    r = x / x.norm(dim=1, keepdim=True)
    tokens, reasons = [], []
    for depth in range(len(tok.layers)):
        out = tok.route_depth(depth, r)
        tokens.append(out.token.tolist())
        reasons.append(out.stop_reason.tolist())
        r = out.residual
    n, l_max = x.shape[0], len(tok.layers)
    first, length, active = {}, {}, set(range(n))
    for depth in range(l_max):
        for i in active:
            if i not in first and reasons[depth][i] in (ck.STOP_CONF, ck.STOP_RESID):
                first[i] = reasons[depth][i]
        shared = Counter(tuple(tokens[j][i] for j in range(depth + 1)) for i in active)
        stop = {i for i in active if depth == l_max - 1
                or (i in first and shared[tuple(tokens[j][i] for j in range(depth + 1))] == 1)}
        for i in stop:
            length[i] = depth + 1
        active -= stop
    sids = [[tokens[j][i] for j in range(length[i])] for i in range(n)]
    return sids, [first.get(i, ck.STOP_CAP) for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unique_stop_is_the_rule_read_by_hand(seed):
    tok, x = colliding_tokenizer(seed)
    out, held = unique_stop_tokenize(tok, x, batch_size=37)  # chunks that do not divide n
    sids, first = rule_by_hand(tok, x)
    lengths = out.lengths.tolist()
    assert lengths == [len(s) for s in sids]
    assert [row[:n] for row, n in zip(out.sids.tolist(), lengths)] == sids
    assert all(v == ck.PAD_TOKEN for row, n in zip(out.sids.tolist(), lengths) for v in row[n:])
    assert out.stop_reason.tolist() == first
    assert sum(held) > 0  # this tokenizer's plain stop collides, so the rule holds items back


@pytest.mark.parametrize("seed", [0, 1])
def test_unique_stop_extends_the_plain_sids_and_only_cap_items_still_collide(seed):
    tok, x = colliding_tokenizer(seed)
    plain = tokenize_items(tok, x)
    out = tokenize_items(tok, x, stop="unique")
    pl, ul = plain.lengths.numpy(), out.lengths.numpy()
    assert (ul >= pl).all() and (ul > pl).any()
    for i in range(x.shape[0]):  # the same token at every depth both rules reach
        assert out.sids[i, : pl[i]].tolist() == plain.sids[i, : pl[i]].tolist()
    keys = [tuple(row[:n]) for row, n in zip(out.sids.tolist(), ul.tolist())]
    count = Counter(keys)
    colliding = np.array([count[k] > 1 for k in keys])
    assert (ul[colliding] == len(tok.layers)).all()  # collisions are left only at L_max
    # (not "fewer collisions": held items can meet a larger group at L_max, as on this random tokenizer)
    # x̂ and the final residual are those at each item's own length, as the plain stop's at equal length
    same = ul == pl
    torch.testing.assert_close(out.recon[same], plain.recon[same], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.residual[same], plain.residual[same], rtol=0, atol=1e-12)
    unit = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out.recon + out.residual, unit, rtol=0, atol=1e-12)  # r_L = r_0 - Σ z (eta 1)


def test_held_for_uniqueness_and_errors():
    prefix = np.array([5, 5, 7, 9, 9, 9])
    wants = np.array([True, False, True, True, True, False])
    assert held_for_uniqueness(prefix, wants).tolist() == [True, False, False, True, True, False]
    tok, x = colliding_tokenizer(n=20)
    with pytest.raises(ValueError, match="stop: expected one of plain, unique, got 'first'"):
        tokenize_items(tok, x, stop="first")
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        unique_stop_tokenize(tok, x, batch_size=0)
    bad = x.clone()
    bad[3] = 0.0
    with pytest.raises(ValueError, match="item 3 is the zero vector"):
        unique_stop_tokenize(tok, bad)


def test_pipeline_capsid_unique_gives_every_item_its_own_leaf(tmp_path, monkeypatch):
    """capsid-unique end to end: every test target first in its leaf after the L_max disambiguation
    (capsid's are not). That only items at L_max still collide is checked on the SIDs above."""
    monkeypatch.setitem(pipeline.PRESETS, "tiny", TINY)
    rc = pipeline.main(["--preset", "tiny", "--tokenizer", "capsid", "capsid-unique", "--seeds", "0",
                        "--out", str(tmp_path), "--quiet", "--beams", "20", "--set", "stage2.soft_inputs=false"])
    assert rc == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = {r["variant"]: r for r in json.loads((folder / "results.json").read_text())}
    plain, unique = rows["capsid"], rows["capsid-unique"]
    assert plain["collision_rate"] > 0 and plain["not_first_in_leaf"] > 0  # this tiny tokenizer collides
    assert unique["not_first_in_leaf"] == 0  # with the L_max token every item has its own leaf
    assert 0.0 <= unique["recall@10"] <= 1.0
    assert 0.0 <= unique["recall@10"] <= 1.0


def test_stage1_ends_its_epochs_with_its_stop_rule(tmp_path):
    """Stage1Config.stop_rule = "unique": every epoch's logged collision rate and the final SIDs are
    the uniqueness-aware stop's (so epoch selection and the pair counts see them); a plain config
    stores no stop_rule (old checkpoints resume); a bad rule names the field."""
    from capsid_gr.stage1 import Stage1Config, train_stage1

    tok, x = colliding_tokenizer(n=200)
    tok = tok.float()
    x = x.float()
    w = np.ones(x.shape[0])
    cfg = Stage1Config(epochs=2, batch_size=64, val_fraction=0.1, stop_rule="unique", init=None)
    res = train_stage1(tok, x, w, cfg, out_dir=tmp_path, show_progress=False)
    out = tokenize_items(tok, x, stop="unique")  # the tokenizer ends in its best epoch's state
    best = next(r for r in res.history if r["epoch"] == res.best_epoch)
    assert best["collision_rate"] == pytest.approx(tok.diagnostics(out)["collision_rate"])
    assert best["mean_length"] == pytest.approx(float(out.lengths.double().mean()))
    plain = tok.diagnostics(tokenize_items(tok, x))
    assert best["mean_length"] > plain["mean_length"]
    assert cfg.to_dict()["stop_rule"] == "unique" and "stop_rule" not in Stage1Config().to_dict()
    with pytest.raises(ValueError, match="stop_rule: expected one of plain, unique, got 'first'"):
        Stage1Config(stop_rule="first")
