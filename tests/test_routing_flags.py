"""--rounds/--mode/--tau/--eps/--eta: one set of routing flags for every command that builds a CAPSID tokenizer, each
reaching the CapsIDConfig it builds, each checked before any work (issue 17)."""

from __future__ import annotations

import json

import pytest

import capsid_kernels as ck
from capsid_gr.cli import build_parser, main


def _encode(tmp_path, *flags) -> dict:
    out = tmp_path / f"enc{len(list(tmp_path.iterdir()))}.json"
    assert main(["encode", "--items", "300", "--device", "cpu", "--quiet", "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_encode_routing_flags_reach_the_config_and_change_the_sids(tmp_path):
    base = _encode(tmp_path)
    assert base["config"]["tau"] == ck.CapsIDConfig().tau and base["config"]["rounds"] == ck.CapsIDConfig().rounds
    low = _encode(tmp_path, "--tau", "0.05", "--rounds", "1", "--eps", "100", "--eta", "0.9")
    assert (low["config"]["tau"], low["config"]["rounds"], low["config"]["eps"], low["config"]["eta"]) == (
        0.05, 1, 100.0, 0.9)
    # a residual threshold above every residual norm: every SID stops at its first token
    assert low["diagnostics"]["mean_length"] == pytest.approx(1.0)
    assert base["diagnostics"]["mean_length"] > 1.0


def test_both_commands_take_the_same_routing_flags_with_the_kernel_defaults():
    parser = build_parser()
    for cmd in (["encode"], ["tokenize"]):
        args = parser.parse_args(cmd)
        assert all(getattr(args, f) is None for f in ("rounds", "tau", "eps", "eta"))  # None: CapsIDConfig's value
        args = parser.parse_args([*cmd, "--tau", "0.9", "--rounds", "2"])
        assert (args.tau, args.rounds) == (0.9, 2)


@pytest.mark.parametrize("cmd", [["encode", "--items", "10"], ["tokenize", "--items", "10"]])
@pytest.mark.parametrize("flag, value, said", [("--rounds", "0", "rounds: expected an integer >= 1, got 0"),
                                               ("--tau", "nan", "tau"), ("--eta", "inf", "eta")])
def test_bad_routing_values_are_refused_before_any_work(tmp_path, capsys, cmd, flag, value, said):
    rc = main([*cmd, "--device", "cpu", "--quiet", "--out", str(tmp_path / "o"), flag, value]
              if cmd[0] == "tokenize" else [*cmd, "--device", "cpu", "--quiet", flag, value])
    assert rc == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_every_command_that_builds_a_capsid_tokenizer_takes_the_same_routing_flags():
    parser = build_parser()
    flags = ["--rounds", "2", "--mode", "hard", "--tau", "0.9", "--eps", "0.2", "--eta", "0.8"]
    for cmd in (["encode"], ["tokenize"], ["run"], ["pipeline"], ["distributed", "bench"]):
        args = parser.parse_args(cmd)
        assert all(getattr(args, f) is None for f in ("rounds", "mode", "tau", "eps", "eta")), cmd
        args = parser.parse_args([*cmd, *flags])
        assert (args.rounds, args.mode, args.tau, args.eps, args.eta) == (2, "hard", 0.9, 0.2, 0.8), cmd


def test_pipeline_routing_flags_reach_the_tokenizer_settings_after_set(tmp_path, capsys):
    from capsid_gr import pipeline

    args = build_parser().parse_args(["pipeline", "--set", "tokenizer.tau=0.5", "--tau", "0.7", "--rounds", "1"])
    tok = pipeline.preset_settings(args)["tokenizer"]
    assert (tok["tau"], tok["rounds"]) == (0.7, 1)  # the flag wins over --set, as it is the more specific
    assert ck.CapsIDConfig(d=4, **tok).routing == ck.RoutingParams(rounds=1, tau=0.7)
    rc = main(["pipeline", "--tau", "nan", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "tau: expected a finite number, got nan" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
