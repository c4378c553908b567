"""Stage 2: learning a deterministic next item, frozen parameters, resume, no leaks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from capsid_gr.data import SequenceDataset
from capsid_gr.eval import BeamValidation, evaluate
from capsid_gr.generator import Generator, GeneratorConfig
from capsid_gr.stage2 import Stage2Config, train_stage2, training_samples, training_windows

from test_generator import tiny_capsid

SMALL = GeneratorConfig(layers=2, heads=2, hidden=32, ffn=64, dropout=0.1, max_positions=128)


def deterministic_dataset(n_items=30, n_users=120, length=8, seed=0) -> SequenceDataset:
    """next item = (7 i + 3) mod n: a permutation, so the last item decides the next one."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        s = [int(rng.integers(n_items))]
        for _ in range(length - 1):
            s.append((7 * s[-1] + 3) % n_items)
        seqs.append(np.array(s))
    return SequenceDataset(n_items=n_items, sequences=seqs, name="deterministic")


def _run(items, data, cfg, out_dir=None, **kw):
    model = Generator(items.vocab_size, SMALL, token_init=items.token_init, has_init=items.has_init, seed=cfg.seed)
    split = data.split(max_history=cfg.max_history)
    return train_stage2(model, items, split, data.popularity(), cfg, out_dir=out_dir, show_progress=False,
                        validation=BeamValidation(), **kw), split


# Tiny models: one intra-op thread avoids oversubscribing shared 2-core runners (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_learns_deterministic_next_item():
    """Soft history inputs, a merge, targets, masks and shifts all have to be right for this."""
    items, _, _ = tiny_capsid(n=30, merges=True)
    data = deterministic_dataset()
    cfg = Stage2Config(epochs=80, lr=1e-2, batch_size=64, eval_every=20, num_beams=20, patience=3,
                       targets_per_user=None, max_history=5)
    torch.manual_seed(0)
    res, split = _run(items, data, cfg)
    hist = split.test.histories()
    out = evaluate(res.recommender, hist, split.test.target, num_beams=20, ks=(1, 10), tiers=data.tiers())
    # items with identical SIDs cannot be told apart; Recall@10 still reaches 1 if the SID is right
    assert out["recall@10"] > 0.95, out
    # first token: 5 capsules, chance 0.2; measured 0.75-1.0 over seeds 0-2 at this budget
    assert out["token_top1"][0] > 0.7


def test_frozen_parameters_bit_identical():
    items, tok, x = tiny_capsid(n=30, merges=True)
    before_tok = {k: v.clone() for k, v in tok.state_dict().items()}
    before_src = [tuple(t.clone() for t in layer) for layer in items.routing.layers]
    before_paths = [list(p) for p in items.paths]
    data = deterministic_dataset()
    cfg = Stage2Config(epochs=2, lr=1e-2, batch_size=64, eval_every=1, num_beams=10, targets_per_user=2)
    res, _ = _run(items, data, cfg)
    adapter = res.inputs.adapter
    assert adapter is not None and float(adapter.U[0].abs().sum()) > 0  # the adapters did learn
    for depth, (W, b, D) in enumerate(before_src):
        assert torch.equal(getattr(adapter, f"W{depth}"), W) and torch.equal(getattr(adapter, f"b{depth}"), b)
        assert torch.equal(getattr(adapter, f"D{depth}"), D)
        assert all(torch.equal(a, b) for a, b in zip(items.routing.layers[depth], (W, b, D)))
    assert torch.equal(adapter.x, items.routing.x)
    assert all(torch.equal(v, tok.state_dict()[k]) for k, v in before_tok.items())
    assert items.paths == before_paths
    assert not any(p.requires_grad for p in adapter.buffers())


def test_resume_reproduces_uninterrupted_run(tmp_path):
    items, _, _ = tiny_capsid(n=30, merges=True)
    data = deterministic_dataset(n_users=60)
    cfg = Stage2Config(epochs=4, lr=3e-3, batch_size=32, eval_every=2, num_beams=10, targets_per_user=2)
    full, _ = _run(items, data, cfg, out_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    def interrupt(record):
        if record["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        _run(items, data, cfg, out_dir=tmp_path / "b", on_epoch_end=interrupt)
    torch.manual_seed(123)  # a resumed run must not depend on the global RNG state
    resumed, _ = _run(items, data, cfg, out_dir=tmp_path / "b")
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(full.inputs.adapter.U[1], resumed.inputs.adapter.U[1])


def test_resume_refuses_other_settings(tmp_path):
    items, _, _ = tiny_capsid(n=30, merges=False)
    data = deterministic_dataset(n_users=40)
    cfg = Stage2Config(epochs=1, batch_size=32, num_beams=10, targets_per_user=1)
    _run(items, data, cfg, out_dir=tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        _run(items, data, Stage2Config(epochs=1, batch_size=16, num_beams=10, targets_per_user=1), out_dir=tmp_path)


def test_training_samples_never_leak_held_out_items():
    data = deterministic_dataset(n_users=50, length=6)
    split = data.split(max_history=50)
    samples = training_samples(split.train)
    for u, seq in enumerate(data.sequences):
        rows = samples[samples[:, 0] == u]
        assert rows[:, 1].max() == len(seq) - 3  # the last training position; valid/test never targets
        assert np.array_equal(split.train[u], seq[:-2])
        assert np.array_equal(split.valid.history[u, : split.valid.length[u]], seq[:-2])
        assert split.valid.target[u] == seq[-2] and split.test.target[u] == seq[-1]
        assert np.array_equal(split.test.history[u, : split.test.length[u]], seq[:-1])


def test_length_buckets_keep_every_sample_once_and_cut_padding():
    from capsid_gr.stage2.samples import bucketed_batches

    rng = np.random.default_rng(3)
    samples = np.stack([np.arange(2000) % 97, rng.geometric(0.12, 2000)], 1)  # skewed, like real histories
    plain = bucketed_batches(samples, 64, 50, 1, np.random.default_rng(0))
    bucketed = bucketed_batches(samples, 64, 50, 8, np.random.default_rng(0))
    for batches in (plain, bucketed):
        seen = np.concatenate(batches)
        assert len(seen) == len(samples)
        assert sorted(map(tuple, seen)) == sorted(map(tuple, samples))
        assert max(len(b) for b in batches) == 64
    width = lambda bs: np.mean([np.minimum(b[:, 1], 50).max() for b in bs])  # noqa: E731
    assert width(bucketed) < 0.6 * width(plain)
    again = bucketed_batches(samples, 64, 50, 8, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(bucketed, again))


def test_time_budget_stops_after_a_validated_epoch_and_resumes_under_another(tmp_path):
    items, _, _ = tiny_capsid(n=30, merges=False)
    data = deterministic_dataset(n_users=40)
    cfg = Stage2Config(epochs=6, lr=3e-3, batch_size=32, eval_every=4, num_beams=10, targets_per_user=2,
                       max_seconds=0.0)
    res, _ = _run(items, data, cfg, out_dir=tmp_path)
    assert len(res.history) == 1 and res.history[0]["stopped_by"] == "time"
    assert "val_recall@10" in res.history[0] and res.best_epoch == 0 and res.stopped_early
    # the budget is not part of the run's identity: a longer one resumes the same checkpoint
    more, _ = _run(items, data, dataclasses.replace(cfg, max_seconds=None), out_dir=tmp_path)
    assert [r["epoch"] for r in more.history] == list(range(6))
    assert more.history[0] == res.history[0]
    with pytest.raises(ValueError, match="max_seconds"):
        Stage2Config(max_seconds=-1.0)


def test_training_windows_cover_every_target_once():
    train = [np.arange(n) for n in (0, 1, 2, 5, 12, 23)]
    for h in (1, 3, 5, 50):
        wins = training_windows(train, h)
        for u, seq in enumerate(train):
            targets = []
            for _, e in wins[wins[:, 0] == u]:
                start = max(0, e - h - 1)
                assert 1 <= e - start <= h + 1
                targets += list(seq[start + 1: e])
            assert sorted(targets) == list(seq[1:])  # every item but the first, once
    with pytest.raises(ValueError, match="max_history"):
        training_windows(train, 0)


def test_sequence_batches_learn_and_refuse_soft_inputs():
    items, _, _ = tiny_capsid(n=30, merges=True)
    data = deterministic_dataset()
    cfg = Stage2Config(epochs=60, lr=1e-2, batch_size=16, eval_every=20, num_beams=20, patience=3,
                       max_history=5, soft_inputs=False, sequence_batches=True)
    torch.manual_seed(0)
    res, split = _run(items, data, cfg)
    out = evaluate(res.recommender, split.test.histories(), split.test.target, num_beams=20, ks=(1, 10),
                   tiers=data.tiers())
    assert out["recall@10"] > 0.95, out
    with pytest.raises(ValueError, match="soft_inputs=False"):
        Stage2Config(sequence_batches=True)
    with pytest.raises(ValueError, match="targets_per_user"):
        Stage2Config(sequence_batches=True, soft_inputs=False, targets_per_user=2)
