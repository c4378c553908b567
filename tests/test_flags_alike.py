"""Issue 17: every subcommand spells the same thing the same way (dataset name, seeds, vector
sources, tokenizer lists), and the old spellings still parse to the same values."""

from __future__ import annotations

import pytest

from capsid_gr.cli import build_parser


def parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("cmd", ["tokenize", "run", "pipeline"])
def test_tokenizer_lists_take_spaces_commas_or_both(cmd):
    want = ["capsid", "rqkmeans", "gaoq"]
    for form in (["capsid", "rqkmeans", "gaoq"], ["capsid,rqkmeans,gaoq"], ["capsid,rqkmeans", "gaoq"]):
        assert parse(cmd, "--tokenizer", *form).tokenizer == want


def test_unknown_tokenizer_in_a_comma_list_is_named(capsys):
    with pytest.raises(SystemExit):
        parse("pipeline", "--tokenizer", "capsid,nope")
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("name_flag", ["--name", "--data-name"])
@pytest.mark.parametrize("seed_flag", ["--seed", "--seeds"])
@pytest.mark.parametrize("src_flag", ["--sources", "--vector-sources"])
def test_data_flags_are_the_same_in_tokenize_vectors_and_pipeline(name_flag, seed_flag, src_flag):
    flags = [name_flag, "Toys", seed_flag, "3", src_flag, "content,attr"]
    tok, vec, pipe = parse("tokenize", *flags), parse("vectors", *flags), parse("pipeline", *flags)
    for a in (tok, vec):
        assert (a.data_name, a.seed, a.sources) == ("Toys", 3, ["content", "attr"])
    assert (pipe.name, pipe.seeds, pipe.vector_sources) == ("Toys", [3], ["content", "attr"])


def test_a_one_seed_command_refuses_several_by_name(capsys):
    with pytest.raises(SystemExit):
        parse("tokenize", "--seeds", "0", "1")
    err = capsys.readouterr().err
    assert "--seeds: this command fits one seed, got 2" in err and "capsid pipeline --seeds" in err
    assert parse("pipeline", "--seeds", "0", "1").seeds == [0, 1]


def test_pipeline_maps_tokenizer_aliases_to_registry_names():
    assert parse("pipeline", "--tokenizer", "capsid+bpe,hard", "gaoq").tokenizer == ["capsid", "capsid-hard", "gaoq"]


def test_an_empty_name_list_is_refused_and_the_flag_named_once(capsys):
    with pytest.raises(SystemExit):
        parse("tokenize", "--sources", ",")
    assert "--sources: expected at least one name, got none" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("pipeline", "--tokenizer", "nope")
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line][0]
    assert "nope" in err and err.count("--tokenizer") == 1, err
    assert parse("pipeline", "--anchors", "knn", "--tokenizer").tokenizer == []  # anchors only


@pytest.mark.parametrize("argv", [["encode"], ["distributed", "bench"]])
def test_encode_and_distributed_take_seeds_too(argv):
    assert parse(*argv, "--seeds", "4").seed == 4 and parse(*argv, "--seed", "5").seed == 5
