"""ExecutionOptions passed whole to the functional ops (issue 17, item 3): ``execution=`` beside the loose
keywords, which replace its fields (``config.execution_options``, as ``routing_params`` does for
RoutingParams), and no signature re-stating the default backend, precision or input check."""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels import modules
from capsid_kernels.config import EXECUTION, EXECUTION_ALIASES, HOT_PATH, execution_options
from capsid_kernels.decode.trie import EOS, build_trie
from test_routing_params import parameter_defaults

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "capsid_kernels"
KEYWORDS = (*EXECUTION, *EXECUTION_ALIASES)  # backend, precision, check_inputs, check_finite, check_values
DEFAULT_LITERALS = tuple(getattr(ck.ExecutionOptions(), f) for f in EXECUTION)  # "auto", "exact", True
V = 12


def _layer(seed: int, n=41, d=11, k=7, dc=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    return (r, torch.randn(k, dc, d, generator=g, dtype=dtype) / dc ** 0.5,
            torch.randn(k, dc, generator=g, dtype=dtype) / dc ** 0.5, torch.randn(d, dc, generator=g, dtype=dtype))


def _equal(a, b) -> None:
    assert type(a) is type(b)
    for x, y in zip(a, b):
        if isinstance(x, tuple):  # StackOutput.depths
            for rx, ry in zip(x, y):
                _equal(rx, ry)
        else:
            assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_route_with_execution_equals_the_keyword_spelling(dtype, mode):
    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # fresh inputs every run
    r, W, b, D = _layer(seed, dtype=dtype)
    kw = dict(mode=mode, last=True, need_weights=True, need_onorm=True)
    whole = ck.route(r, W, b, D, execution=ck.ExecutionOptions(backend="eager", precision="exact"), **kw)
    loose = ck.route(r, W, b, D, backend="eager", precision="exact", **kw)
    plain = ck.route(r, W, b, D, **kw)
    _equal(whole, loose)
    _equal(whole, plain)


def test_tokenize_squash_and_beam_ops_with_execution_equal_the_keyword_spelling():
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    x, W, b, D = _layer(seed, n=29)
    layers = [(W, b, D)] * 3
    ex = ck.ExecutionOptions(backend="eager", precision="exact", check_inputs=True)
    _equal(ck.tokenize(x, layers, execution=ex, need_weights=True, batch_size=7),
           ck.tokenize(x, layers, backend="eager", precision="exact", check_inputs=True, need_weights=True,
                       batch_size=7))
    _equal(ck.tokenize(x, layers, execution=ex, outputs=("sids", "lengths"), int_dtype=torch.int16),
           ck.tokenize(x, layers, backend="eager", outputs=("sids", "lengths"), int_dtype=torch.int16))
    z = torch.randn(13, 6, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ck.squash(z, execution=ex), ck.squash(z, backend="eager", check_finite=True))

    trie = build_trie([[3, 4, EOS], [3, EOS], [5, 6, EOS], [5, 7, EOS]], V)
    table = torch.randn(trie.num_nodes, V, generator=torch.Generator().manual_seed(seed + 1))
    step_fn = lambda beams: table[beams.node.clamp(min=0).long()]  # noqa: E731
    got = ck.beam_search(step_fn, trie, 3, 2, execution=ex)
    want = ck.beam_search(step_fn, trie, 3, 2, backend="eager", check_values=True)
    assert torch.equal(got.leaves, want.leaves) and torch.equal(got.scores, want.scores)


def test_a_keyword_replaces_the_execution_field():
    r, W, b, D = _layer(3)
    bad = r.clone()
    bad[4, 2] = float("nan")
    # backend: triton cannot run CPU tensors, the keyword's eager can
    with pytest.raises(ck.BackendUnavailable, match="backend='triton'"):
        ck.route(r, W, b, D, execution=ck.ExecutionOptions(backend="triton"))
    _equal(ck.route(r, W, b, D, execution=ck.ExecutionOptions(backend="triton"), backend="eager"),
           ck.route(r, W, b, D, backend="eager"))
    # the input check, both ways, under each op's spelling of it
    with pytest.raises(ValueError, match="r: row 4 has a non-finite value"):
        ck.route(bad, W, b, D, execution=ck.ExecutionOptions(check_inputs=False), check_finite=True)
    ck.route(bad, W, b, D, execution=ck.ExecutionOptions(), check_finite=False)
    with pytest.raises(ValueError, match="z: row 4 has a non-finite value"):
        ck.squash(bad, execution=ck.ExecutionOptions(check_inputs=False), check_finite=True)
    x = r.clone()
    x[5] = 0.0
    with pytest.raises(ValueError, match="5"):
        ck.tokenize(x, [(W, b, D)], execution=ck.ExecutionOptions(check_inputs=False), check_inputs=True)
    ck.tokenize(x, [(W, b, D)], execution=ck.ExecutionOptions(), check_inputs=False)
    trie = build_trie([[3, EOS], [4, EOS]], V)
    logits = torch.zeros(2, V)
    logits[0, 1] = float("nan")
    step = (torch.tensor([0, -1], dtype=torch.int32), torch.tensor([0.0, float("-inf")]), torch.tensor([False, True]))
    with pytest.raises(ValueError, match="logits: expected finite values or -inf, got NaN"):
        ck.beam_step(logits, *step, trie, 2, execution=ck.ExecutionOptions(check_inputs=False), check_values=True)
    ck.beam_step(logits, *step, trie, 2, execution=ck.ExecutionOptions(), check_values=False)
    # precision, through the helper every op calls (tf32 has no effect on CPU to observe)
    base = ck.ExecutionOptions(backend="eager", precision="tf32", check_inputs=False)
    assert execution_options(base, {"precision": "exact"}) == ck.ExecutionOptions("eager", "exact", False)
    assert execution_options(base, {"precision": None, "backend": None}) is base  # None: "the field"
    assert execution_options(None, {}) == ck.ExecutionOptions()
    assert execution_options(None, {}, default=HOT_PATH) is HOT_PATH


def test_the_defaults_are_execution_options_fields():
    r, W, b, D = _layer(4)
    bad = r.clone()
    bad[0, 0] = float("inf")
    ck.route(bad, W, b, D)  # route and squash default to HOT_PATH: no value check in a hot path
    ck.squash(bad)
    assert HOT_PATH == ck.ExecutionOptions(check_inputs=False)
    with pytest.raises(ValueError, match="r: row 0"):
        ck.route(bad, W, b, D, execution=ck.ExecutionOptions())  # what the modules pass: checks
    with pytest.raises(ValueError, match="item"):
        ck.tokenize(bad, [(W, b, D)])  # tokenize and the beam ops start from ExecutionOptions()


@pytest.mark.parametrize("call", ["route", "tokenize", "squash", "beam_step", "beam_search"])
@pytest.mark.parametrize("execution, exc, said", [
    ({"backend": "eager"}, TypeError, "execution: expected None or a capsid_kernels.ExecutionOptions, got dict"),
    ("eager", TypeError, "execution: expected None or a capsid_kernels.ExecutionOptions, got str"),
    (ck.RoutingParams(), TypeError, "execution: expected None or a capsid_kernels.ExecutionOptions, got RoutingParams"),
])
def test_a_wrong_execution_is_refused_naming_it(call, execution, exc, said):
    with pytest.raises(exc, match=f"^{said}$"):
        _call(call, execution=execution)


@pytest.mark.parametrize("call, keyword, value, said", [
    ("route", "backend", "fast", "backend: expected 'auto' or one of"),
    ("route", "precision", "fp8", r"precision: expected one of \('exact', 'tf32'\), got 'fp8'"),
    ("route", "check_finite", 1, r"check_finite: expected None or a bool \(ExecutionOptions.check_inputs\), got 1"),
    ("squash", "check_finite", "yes", "check_finite: expected None or a bool"),
    ("squash", "backend", "gpu", "backend: expected 'auto' or one of"),
    ("tokenize", "check_inputs", 0, "check_inputs: expected a bool, got 0"),
    ("tokenize", "backend", "fast", "backend: expected 'auto' or one of"),
    ("tokenize", "precision", "bf16", "precision: expected one of"),
    ("beam_step", "check_values", "no", "check_values: expected None or a bool"),
    ("beam_search", "backend", "fast", "backend: expected 'auto' or one of"),
])
def test_a_wrong_keyword_is_refused_naming_it(call, keyword, value, said):
    with pytest.raises(ValueError, match=f"^{said}"):
        _call(call, **{keyword: value})


def test_an_unknown_execution_keyword_is_refused():
    with pytest.raises(TypeError, match="unexpected keyword argument 'device'; the execution keywords are "
                                        "backend, precision, check_inputs"):
        execution_options(None, {"device": "cpu"})


def _call(name: str, **kw):
    r, W, b, D = _layer(5, n=6)
    if name == "route":
        return ck.route(r, W, b, D, **kw)
    if name == "tokenize":
        return ck.tokenize(r, [(W, b, D)] * 2, **kw)
    if name == "squash":
        return ck.squash(r, **kw)
    trie = build_trie([[3, EOS], [4, EOS]], V)
    if name == "beam_step":
        return ck.beam_step(torch.zeros(2, V), torch.tensor([0, -1], dtype=torch.int32),
                            torch.tensor([0.0, float("-inf")]), torch.tensor([False, True]), trie, 2, **kw)
    return ck.beam_search(lambda beams: torch.zeros(beams.node.shape[0], V), trie, 2, 1, **kw)


def test_the_modules_pass_execution_whole(monkeypatch):
    seen = []
    for name in ("route", "tokenize"):
        real = getattr(modules, name)
        monkeypatch.setattr(modules, name, lambda *a, _real=real, **kw: seen.append(kw) or _real(*a, **kw))
    ex = ck.ExecutionOptions(backend="eager", precision="tf32", check_inputs=False)
    tok = ck.CapsIDTokenizer(ck.CapsIDConfig(d=11, capsules=7, capsule_dim=5, max_length=2, backend="eager",
                                             precision="tf32", check_inputs=False))
    x = _layer(6)[0]
    tok.tokenize(x)
    tok.route_depth(0, x)
    ck.CapsuleLayer(11, 7, 5, execution=ex)(x)
    assert len(seen) == 3
    for kw in seen:
        assert kw["execution"] == ex and not set(kw) & set(KEYWORDS)


# ---- one home for the defaults: no signature writes "auto", "exact" or True for these options


def _restated_defaults(source: str, where: str) -> list[str]:
    """Every function parameter named like an execution option (``KEYWORDS``) whose default is written
    as the literal of an ExecutionOptions default ("auto", "exact", True) instead of None."""
    found = []
    for node in ast.walk(ast.parse(source)):
        found += [f"{where}:{arg.lineno} {arg.arg}={d.value!r}" for arg, d in parameter_defaults(node)
                  if arg.arg in KEYWORDS and isinstance(d, ast.Constant)
                  and any(d.value == lit and type(d.value) is type(lit) for lit in DEFAULT_LITERALS)]
    return found


def test_the_scan_finds_a_restated_default():
    src = ("def f(x, backend='auto'):\n    pass\n"
           "def g(*, precision='exact', check_inputs=True, check_values=True, backend=None):\n    pass\n")
    assert [h.split(" ", 1)[1] for h in _restated_defaults(src, "t")] == [
        "backend='auto'", "precision='exact'", "check_inputs=True", "check_values=True"]


def test_no_signature_restates_an_execution_default():
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py"))
                 for hit in _restated_defaults(path.read_text(), str(path.relative_to(REPO)))]
    assert offenders == []


@pytest.mark.parametrize("op, keywords", [
    (ck.route, ("backend", "precision", "check_finite")),
    (ck.tokenize, ("backend", "precision", "check_inputs")),
    (ck.squash, ("backend", "check_finite")),
    (ck.beam_step, ("backend", "check_values")),
    (ck.beam_search, ("backend", "check_values")),
])
def test_every_public_op_takes_execution_keyword_only(op, keywords):
    params = inspect.signature(op).parameters
    assert params["execution"].kind is inspect.Parameter.KEYWORD_ONLY and params["execution"].default is None
    assert {name: params[name].default for name in keywords} == dict.fromkeys(keywords)
    assert set(params) & set(KEYWORDS) == set(keywords)


def test_compiled_route_takes_execution():
    torch._dynamo.reset()
    r, W, b, D = _layer(7)
    ex = ck.ExecutionOptions(backend="eager", precision="exact", check_inputs=False)

    def f(r, W, b, D):
        out = ck.route(r, W, b, D, execution=ex, need_weights=True)
        return out.residual, out.weights, out.token

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(r, W, b, D)
    want = f(r, W, b, D)
    assert torch.equal(got[2], want[2])
    for g, w in zip(got[:2], want[:2]):  # compiled floats: float32 closeness, as test_ops' compile test
        torch.testing.assert_close(g, w)
