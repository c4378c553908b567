"""CPU smoke tests of the training benchmarks (issue 7): bench/routing.py's whole-stack rows and
bench/stage1_backends.py --smoke, on tiny shapes. Triton cannot run on CPU tensors, so its rows
must say why instead of timing anything. Together well under a minute."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import pytest
import torch

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts bench/ and python/ on sys.path, as when run as a script
    return module


routing = _load("routing")
stage1_backends = _load("stage1_backends")
from harness import env_info  # noqa: E402  (bench/ is on sys.path now)

SMALL = dict(K=8, dc=4, d=16)
ENV_KEYS = ("gpu", "torch", "triton", "date", "commit")


def _positive(row: dict, keys) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value, row)


def test_stack_loss_is_stage1_loss(one_torch_thread):
    """The bench's stack loss equals Stage 1's loss terms on a CapsIDTokenizer, value and gradients."""
    import capsid_kernels as ck
    from capsid_gr.stage1 import Stage1Config
    from capsid_gr.tokenizer import losses
    from capsid_gr.tokenizer.forward import forward_all_depths
    from capsid_kernels.reference import route_reference

    cfg = ck.CapsIDConfig(d=SMALL["d"], capsules=SMALL["K"], capsule_dim=SMALL["dc"], backend="eager")
    tok = ck.CapsIDTokenizer(cfg, seed=3, dtype=torch.float64)
    x = torch.randn(37, cfg.d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    params = [t for m in tok.layers for t in (m.W, m.b, m.D)]
    s1 = Stage1Config()

    a = forward_all_depths(tok, x, need_weights=True)
    spread = losses.spread_loss([m.centres() for m in tok.layers],
                                [w[a.reached[:, j]] for j, w in enumerate(a.weights)], s1.margin_start)
    want = (s1.lambda_route * losses.route_loss(a.x0, a.x_hat) + s1.lambda_spread * spread
            + s1.lambda_len * losses.length_loss(a.confidence, a.residual_norm, cfg.tau, cfg.eps))
    got = routing.stack_loss(lambda r, W, b, D, **kw: route_reference(r, W, b, D, rounds=cfg.rounds, **kw), x, params)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for g, w in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_train_stack_rows_cpu(one_torch_thread):
    rows = routing.train_stack_rows([48], ["fp32", "bf16"], env_info(), 100.0, backends=("eager", "triton"),
                                    dims=SMALL, device="cpu")
    assert [(r["dtype"], r["backend"]) for r in rows] == [("fp32", "eager"), ("fp32", "triton"),
                                                         ("bf16", "eager"), ("bf16", "triton")]
    for r in rows:
        assert r["op"] == "route_train_stack"
        assert r["shapes"] == {"N": 48, "K": 8, "d_c": 4, "d": 16, "T": routing.ROUNDS, "L_max": 6, "mode": "soft",
                               "preset": "custom", "loss": "route+spread+len"}
        assert all(k in r for k in ENV_KEYS)
        if r["backend"] == "eager":
            assert "error" not in r
            _positive(r, ("median_ms", "min_ms", "max_ms", "repeats", "ns_per_item", "ns_per_item_layer"))
            assert r["tflops"] >= 0  # rounded to 3 decimals: 0.0 at these CPU shapes
            assert r["repeats"] >= 3 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert r["ns_per_item"] == pytest.approx(6 * r["ns_per_item_layer"], rel=1e-3)
            assert r["speedup_vs_eager"] == 1.0
        else:  # no CUDA tensors: the row records why and carries no timing
            assert r["error"].startswith("unavailable:") and "CUDA" in r["error"]
            assert "median_ms" not in r and "speedup_vs_eager" not in r


def test_routing_rejects_bad_train_flags(capsys):
    with pytest.raises(SystemExit) as e:
        routing.main(["--train-stack", "--train-stack-backends", "eager,cuda"])
    assert e.value.code == 2 and "--train-stack-backends" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        routing.main(["--train-stack", "--train-precs", "fp16"])
    assert "--train-precs" in capsys.readouterr().err


def test_stage1_backends_smoke(tmp_path, one_torch_thread):
    assert stage1_backends.main(["--smoke", "--device", "cpu", "--synthetic", "400", "--backends", "eager,triton",
                                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "stage1_backends_smoke.json").read_text())
    by = {r["backend"]: r for r in rows}
    assert set(by) == {"eager", "triton", "rqkmeans"}
    eager = by["eager"]
    assert eager["op"] == "stage1" and "error" not in eager and all(k in eager for k in ENV_KEYS)
    assert eager["shapes"]["N"] == 400 and eager["shapes"]["epochs"] == 1 and eager["epochs_run"] == 1
    _positive(eager, ("seconds", "median_ms", "init_s", "mean_epoch_s", "warmup_s", "best_val_route",
                      "speedup_vs_rqkmeans"))
    assert len(eager["epoch_s"]) == 1 and eager["epoch_s"][0] > 0 and eager["other_s"] >= 0
    assert eager["init_s"] + eager["epoch_s"][0] <= eager["seconds"]
    assert eager["speedup_vs_eager"] == 1.0
    assert by["triton"]["error"].startswith("unavailable:") and "seconds" not in by["triton"]
    assert by["rqkmeans"]["op"] == "tokenizer_fit"
    _positive(by["rqkmeans"], ("seconds", "median_ms"))


def test_stage1_backends_rejects_bad_flags(tmp_path, capsys):
    for argv, flag in ((["--backends", "eager,fast"], "--backends"), (["--epochs", "0"], "--epochs"),
                       (["--vectors", str(tmp_path / "missing.npy")], "--synthetic N")):
        with pytest.raises(SystemExit) as e:
            stage1_backends.main(argv + ["--out", str(tmp_path)])
        assert e.value.code == 2 and flag in capsys.readouterr().err


def test_decode_bench_steppers_call_the_step_with_the_token_ids():
    """bench/decode.py's torch CSR stepper runs (on CPU) with the op's current signature and
    picks the same beams as the library's own eager step: a stale call (the CUDA step's PAD/EOS
    arguments, 04be45d) fails here instead of on the GPU."""
    decode = _load("decode")
    from capsid_kernels.decode.beam_step import beam_step
    from capsid_kernels.decode.search import initial_beams
    from capsid_kernels.decode.trie import EOS, FIRST_CODE, build_trie

    g = torch.Generator().manual_seed(3)
    paths = torch.randint(FIRST_CODE, FIRST_CODE + 6, (40, 3), generator=g)
    paths = torch.cat([paths, torch.full((40, 1), EOS)], 1)
    trie = build_trie(paths, FIRST_CODE + 6)
    q, b = 3, 4
    step = decode.make_steppers(trie, b, compiled=False)["torch_csr"]
    beams = initial_beams(q, b, "cpu")
    logits = torch.randn(q * b, trie.vocab_size, generator=g)
    got = step(logits, beams.node, beams.score, beams.finished)
    want = beam_step(logits, beams.node, beams.score, beams.finished, trie, b, backend="eager")
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # a second step from the first one's beams: every beam live, EOS reachable after 3 tokens
    logits2 = torch.randn(q * b, trie.vocab_size, generator=g)
    got2 = step(logits2, got[2], got[3], got[4])
    want2 = beam_step(logits2, want[2], want[3], want[4], trie, b, backend="eager")
    for x, y in zip(got2, want2):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
