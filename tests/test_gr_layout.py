"""capsid_gr's layout (issue 17, item 5; CPU, reads the source only): every module has a stage
in capsid_gr/_layout.py, no module imports a module of a later stage, and there are no import
cycles. The graph is tests/test_import_cycles.py's (module- and function-level imports,
relative and absolute, `if TYPE_CHECKING:` skipped), walked over capsid_gr instead of
capsid_kernels.
"""

from __future__ import annotations

import pathlib

import capsid_gr
from capsid_gr._layout import LAYOUT, STAGES, stage_of

from test_import_cycles import find_cycles, import_graph

PACKAGE = "capsid_gr"
ROOT = pathlib.Path(capsid_gr.__file__).resolve().parent


def gr_graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE, ROOT)


def later_stage_imports(graph: dict[str, set[str]]) -> list[str]:
    """'importer (stage) -> imported (later stage)' for every edge that points up the pipeline."""
    bad = []
    for src in sorted(graph):
        for dst in sorted(graph[src]):
            if stage_of(dst) > stage_of(src):
                bad.append(f"{src} ({STAGES[stage_of(src)]}) -> {dst} ({STAGES[stage_of(dst)]})")
    return bad


def test_the_graph_sees_capsid_gr_imports():
    graph = gr_graph()
    assert "capsid_gr.tokenizer.inference" in graph["capsid_gr.stage1.train"]  # relative, module level
    assert "capsid_gr.collective" in graph["capsid_gr.stage1.train"]  # `from ..collective import gather_forward`
    assert "capsid_gr.stage2" in graph["capsid_gr.pipeline"]  # a function-level import


def test_every_module_has_a_stage_and_the_table_is_not_stale():
    modules = set(gr_graph())
    listed = {m for stage in STAGES for m in LAYOUT[stage]}
    assert set(LAYOUT) == set(STAGES)
    assert not modules - listed, f"modules without a stage (add them to capsid_gr/_layout.py): {sorted(modules - listed)}"
    assert not listed - modules, f"capsid_gr/_layout.py names modules that do not exist: {sorted(listed - modules)}"
    assert sum(len(v) for v in LAYOUT.values()) == len(listed), "a module is listed in two stages"


def test_no_import_of_a_later_stage():
    bad = later_stage_imports(gr_graph())
    assert not bad, "imports of a later stage in capsid_gr:\n" + "\n".join(bad)


def test_the_stage_check_catches_an_upward_import():
    graph = {"capsid_gr.stage2.train": {"capsid_gr.eval"}, "capsid_gr.eval": {"capsid_gr.generator"},
             "capsid_gr.generator": set()}
    assert later_stage_imports(graph) == ["capsid_gr.stage2.train (training) -> capsid_gr.eval (retrieval)"]


def test_no_import_cycles():
    cycles = find_cycles(gr_graph())
    assert not cycles, "import cycles in capsid_gr:\n" + "\n".join(" -> ".join(c) for c in cycles)
