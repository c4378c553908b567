"""Every configuration dataclass checks its fields' types and ranges on construction
(capsid_gr.checks.check_config), and the `--set` parser hands it JSON values (issue 21)."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from capsid_gr.checks import _base, check_config
from capsid_gr.pipeline import PRESETS, _section_class, preset_settings

SECTIONS = [k for k, v in PRESETS["cpu"].items() if isinstance(v, dict)]


def _scalar_fields(cls):
    return [(f, _base(f.type)[0]) for f in dataclasses.fields(cls) if _base(f.type)[0] in ("bool", "int", "float")]


@pytest.mark.parametrize("section", SECTIONS)
def test_every_preset_section_constructs(section):
    for preset in PRESETS.values():
        _section_class(section)(**preset[section])


WRONG = {
    "bool": st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=True)),
    "int": st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=5), st.integers(max_value=-1)),
    "float": st.one_of(st.booleans(), st.just(math.nan), st.just(math.inf), st.text(max_size=5),
                       st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)),
}


# Fields whose documented range reaches below 0: a negative value is wrong only below this bound.
LOWER = {
    ("CapsIDConfig", "tau"): -math.inf,  # tau > 1 or eps < 0 switch a stop rule off (config.py)
    ("CapsIDConfig", "eps"): -math.inf,
    ("SemanticBPEConfig", "theta_start"): -1.0,  # cosine thresholds in [-1, 1]
    ("SemanticBPEConfig", "theta_end"): -1.0,
}


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_wrong_type_or_negative_value_is_a_value_error_naming_the_field(data):
    section = data.draw(st.sampled_from(SECTIONS))
    cls = _section_class(section)
    fields = _scalar_fields(cls)
    if not fields:
        return
    f, base = data.draw(st.sampled_from(fields))
    value = data.draw(WRONG[base])
    if base == "int" and isinstance(value, float) and value.is_integer():
        value = value + 0.5
    lower = LOWER.get((cls.__name__, f.name), 0.0)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        assume(value < lower)  # a finite number in range is not wrong
    with pytest.raises(ValueError, match=rf"{f.name}"):
        cls(**{f.name: value})


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=30))
def test_set_values_never_raise_anything_but_a_clear_error(text):
    """Any `--set fit.lr=<text>`: accepted, or ValueError / ArgumentTypeError naming the field."""
    from capsid_gr.pipeline import parse_override

    try:
        section, field, value = parse_override(f"fit.lr={text}")
    except argparse.ArgumentTypeError as e:
        assert "--set" in str(e)
        return
    try:
        got = preset_settings(argparse.Namespace(preset="cpu", set=[(section, field, value)]))
    except ValueError as e:
        assert "fit.lr" in str(e) or "FitConfig.lr" in str(e)
        return
    assert isinstance(got["fit"]["lr"], (int, float)) and got["fit"]["lr"] > 0


def test_check_config_messages_name_class_field_and_elide():
    @dataclasses.dataclass
    class C:
        n: int = 1
        x: float = 0.5
        flag: bool = True
        opt: "Optional[float]" = None

        def __post_init__(self):
            check_config(self, {"x": (0.0, 1.0)})

    C(opt=None)
    with pytest.raises(ValueError, match=r"C.x: expected a finite number in \[0.0, 1.0\], got 1.5"):
        C(x=1.5)
    with pytest.raises(ValueError, match=r"C.n: expected an integer .* got True"):
        C(n=True)
    with pytest.raises(ValueError) as err:
        C(flag="y" * 10_000)
    assert "C.flag: expected a bool" in str(err.value) and len(str(err.value)) < 120
