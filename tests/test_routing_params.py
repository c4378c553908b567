"""RoutingParams and ExecutionOptions (issue 17, item 3): the routing's defaults are written once, in
RoutingParams, and passed whole; execution options are a separate dataclass outside every identity."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels.config import ROUTING_FIELDS, EXECUTION
from capsid_kernels.ops._route_common import op_routing, op_scalars

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("capsid_kernels", "python", "bench", "scripts", "examples")  # every tree but the tests
HOME = REPO / "capsid_kernels" / "config.py"


def _source_files():
    for top in SOURCES:
        yield from sorted((REPO / top).rglob("*.py"))


def parameter_defaults(node: ast.AST) -> list[tuple[ast.arg, ast.expr]]:
    """(parameter, default) of every parameter of a function or lambda node that has a default."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return []
    a = node.args
    positional = a.posonlyargs + a.args
    pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
    return pairs + [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]


def _routing_defaults_outside_home(path: pathlib.Path) -> list[str]:
    """Every place in `path` that writes a default for a routing field as a literal: a function
    parameter named rounds/mode/eta/tau/eps with a default, or a class field of that name set to a
    constant (outside RoutingParams itself)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        found += [f"{path.relative_to(REPO)}:{arg.lineno} parameter {arg.arg}" for arg, _ in parameter_defaults(node)
                  if arg.arg in ROUTING_FIELDS]
        if isinstance(node, ast.ClassDef) and node.name != "RoutingParams":
            for stmt in node.body:
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and stmt.target.id in ROUTING_FIELDS and isinstance(stmt.value, ast.Constant)):
                    found.append(f"{path.relative_to(REPO)}:{stmt.lineno} field {node.name}.{stmt.target.id}")
    return found


def test_routing_defaults_are_written_once():
    # no signature or config class re-states a routing default; RoutingParams is the one home
    offenders = [hit for path in _source_files() for hit in _routing_defaults_outside_home(path)]
    assert offenders == []
    # and the literal of the default tau appears in one source file only: config.py, once
    literal = repr(ck.RoutingParams().tau)
    holders = {p.relative_to(REPO).as_posix(): p.read_text().count(literal) for p in _source_files()
               if literal in p.read_text()}
    assert holders == {HOME.relative_to(REPO).as_posix(): 1}


def test_every_default_comes_from_routing_params():
    r, c, ex = ck.RoutingParams(), ck.CapsIDConfig(), ck.ExecutionOptions()
    assert c.routing == r and c.execution == ex
    assert ck.CapsIDTokenizer(ck.CapsIDConfig(d=8, capsules=4, capsule_dim=4, max_length=2)).layers[0].routing == r
    assert ck.CapsuleLayer(8, 4, 4).routing == r and ck.CapsuleLayer(8, 4, 4).execution == ex
    assert set(c.to_dict()) == {"d", "capsules", "capsule_dim", "max_length", *ROUTING_FIELDS, *EXECUTION}


@pytest.mark.parametrize("field, value, said", [
    ("rounds", 0, "rounds: expected an integer >= 1, got 0"),
    ("rounds", True, "rounds: expected an integer >= 1, got True"),
    ("mode", "soft-ish", "mode: expected one of ('soft', 'hard'), got 'soft-ish'"),
    ("eta", 0.0, "eta: expected a residual step > 0, got 0.0"),
    ("tau", float("nan"), "tau: expected a finite number, got nan"),
    ("eps", "0.1", "eps: expected a finite number, got '0.1'"),
])
def test_routing_params_name_the_field_what_was_expected_and_what_came(field, value, said):
    with pytest.raises(ValueError) as e:
        ck.RoutingParams(**{field: value})
    assert str(e.value) == said
    with pytest.raises(ValueError, match=field):  # the same check wherever the value comes in
        ck.CapsIDConfig(**{field: value})


@pytest.mark.parametrize("field, value, said", [
    ("backend", "fast", "backend: expected 'auto' or one of"),
    ("precision", "fp8", "precision: expected one of ('exact', 'tf32'), got 'fp8'"),
    ("check_inputs", 1, "check_inputs: expected a bool, got 1"),
])
def test_execution_options_name_the_field(field, value, said):
    with pytest.raises(ValueError, match=rf"^{said}".replace("(", r"\(").replace(")", r"\)")):
        ck.ExecutionOptions(**{field: value})


def test_execution_options_are_not_part_of_the_identity():
    base = ck.CapsIDConfig(d=8)
    other = dataclasses.replace(base, backend="eager", precision="tf32", check_inputs=False)
    assert other.identity() == base.identity() and other.routing == base.routing
    assert dataclasses.replace(base, tau=0.5).identity() != base.identity()


def _layer(n=37, d=12, k=5, dc=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return (r, torch.randn(k, dc, d, generator=g, dtype=torch.float64) / dc ** 0.5,
            torch.randn(k, dc, generator=g, dtype=torch.float64) / dc ** 0.5,
            torch.linalg.qr(torch.randn(d, dc, generator=g, dtype=torch.float64))[0])


def test_keywords_are_the_same_as_passing_the_dataclass():
    r, W, b, D = _layer()
    p = ck.RoutingParams(rounds=2, mode="hard", eta=0.7, tau=0.3, eps=0.5)
    whole = ck.route(r, W, b, D, p, need_weights=True, need_onorm=True)
    keywords = ck.route(r, W, b, D, rounds=2, mode="hard", eta=0.7, tau=0.3, eps=0.5, need_weights=True,
                        need_onorm=True)
    mixed = ck.route(r, W, b, D, ck.RoutingParams(rounds=2, mode="hard", eta=0.7), tau=0.3, eps=0.5,
                     need_weights=True, need_onorm=True)
    for a, c in ((whole, keywords), (whole, mixed)):
        for x, y in zip(a, c):
            assert torch.equal(x, y)
    assert not torch.equal(whole.residual, ck.route(r, W, b, D).residual)  # the parameters matter
    layers = [(W, b, D)] * 3
    s = ck.tokenize(r, layers, p)
    assert torch.equal(s.sids, ck.tokenize(r, layers, rounds=2, mode="hard", eta=0.7, tau=0.3, eps=0.5).sids)


def test_wrong_routing_arguments_are_refused():
    r, W, b, D = _layer()
    with pytest.raises(TypeError, match="unexpected keyword argument 'temperature'; the routing keywords are "
                                        "rounds, mode, eta, tau, eps"):
        ck.route(r, W, b, D, temperature=0.5)
    with pytest.raises(TypeError, match="routing: expected a capsid_kernels.RoutingParams, got dict"):
        ck.tokenize(r, [(W, b, D)], {"tau": 0.5})
    with pytest.raises(ValueError, match="tau: expected a finite number, got inf"):
        ck.route(r, W, b, D, tau=float("inf"))
    with pytest.raises(TypeError, match="routing: expected a capsid_kernels.RoutingParams, got tuple"):
        ck.CapsuleLayer(12, 5, 6, routing=(3, "soft"))


def test_op_scalars_are_built_in_one_function_and_read_back():
    for p in (ck.RoutingParams(), ck.RoutingParams(rounds=1, mode="hard", eta=0.5, tau=2.0, eps=-1.0)):
        scalars = op_scalars(p)
        assert [type(v) for v in scalars] == [int, bool, float, float, float]
        assert op_routing(*scalars) == p


def test_the_tokenizer_routes_every_depth_with_its_config():
    cfg = ck.CapsIDConfig(d=12, capsules=5, capsule_dim=6, max_length=3, tau=0.3, eps=0.5, mode="hard")
    tok = ck.CapsIDTokenizer(cfg, seed=1).double()
    r, *_ = _layer()
    out = tok.route_depth(2, r, need_weights=True, need_onorm=True)
    ref = ck.route(r, tok.layers[2].W, tok.layers[2].b, tok.layers[2].D, cfg.routing, last=True, need_weights=True,
                   need_onorm=True)
    for x, y in zip(out, ref):
        assert torch.equal(x, y)
