"""Where every capsid_gr module sits in the pipeline (issue 17, item 5), in data-flow order.

A module may import modules of its own stage or of an earlier one, never of a later one, and the
package has no import cycles; tests/test_gr_layout.py walks the import graph with ``ast`` and holds
the code to this table, and fails on a module the table does not name (a new module is placed here
first). README "Layout" shows the same table by folder.

Decisions worth knowing:

* foundation holds what every stage may use and that imports nothing of capsid_gr above it:
  atomic writes, config checks, checkpoint I/O (was stage1/checkpoint.py), the process-group
  context and differentiable gather (collective/, was distributed/context.py and gather.py) and
  the ranking metrics (ranking.py, was eval/metrics.py), so training validates and checkpoints
  without importing retrieval, Stage 1's code or the distributed launcher. The one training loop
  (loop/: schedules, early stopping, the checkpointed epochs) is foundation too: Stage 1 (a
  tokenizer stage), Stage 2 and the sequential fit all drive it.
* tokenizers includes bpe/ and stage1/. In CAPSID the SemanticBPE merge gate is part of the
  tokenizer: Stage 1 trains it jointly with the capsule layers (L_BPE is a term of Stage 1's loss,
  SPEC §4-5) and its merges are part of the tokenizer's output. Stage 1 is tokenizer pretraining
  (SPEC §4), so it sits with the tokenizers, not with generator training.
* items is the one record that turns any tokenizer's SIDs and merges into the generator's token
  paths (SPEC §6 ids): generator/items.py, the only module of generator/ below the generator.
* training is Stage 2 (generator training, SPEC §6) and the sequential fit of the encoder-decoder
  and SASRec. Its validation beam search is retrieval, so it is handed in
  (``train_stage2(..., validation=capsid_gr.eval.BeamValidation())``), never imported.
* retrieval is the trie-constrained beam, evaluation, the sharded evaluation and the anchors
  (Markov, item-kNN, SASRec rows of the same table). metrics is the tokenizer metrics.
* runs wires the stages: the pipeline, the CLI and its flag helpers, the jobs, the torchrun
  launcher (distributed/), catalogue encoding, the terminal report and the figure.
"""

from __future__ import annotations

STAGES = ("foundation", "data", "vectors", "tokenizers", "items", "generator", "training", "retrieval",
          "metrics", "runs")
"""In pipeline order; a module may import only modules of its own stage or an earlier one."""


def _package(name: str, *modules: str) -> tuple[str, ...]:
    return (f"capsid_gr.{name}", *(f"capsid_gr.{name}.{m}" for m in modules))


def _modules(*names: str) -> tuple[str, ...]:
    return tuple(f"capsid_gr.{n}" for n in names)


LAYOUT: dict[str, tuple[str, ...]] = {
    "foundation": ("capsid_gr", *_modules("atomic", "checks", "checkpoint", "ranking"),
                   *_package("collective", "context", "gather"), *_package("loop", "ddp", "epochs", "schedule", "stopping")),
    "data": _package("data", "amazon", "dataset", "synthetic"),
    "vectors": _package("vectors", "attributes", "build", "collaborative", "config", "content", "diagnostics"),
    "tokenizers": (*_package("tokenizer", "forward", "hamr", "inference", "losses", "schedules"),
                   *_package("baselines", "gaoq", "rqkmeans", "rqvae"),
                   *_package("bpe", "build", "config", "gate", "merges", "pairs", "vocab"),
                   *_package("stage1", "init", "train")),
    "items": _modules("generator.items"),
    "generator": (*_package("generator", "batch", "config", "model", "seq", "soft_input"),),
    "training": _package("stage2", "config", "fit", "samples", "train"),
    "retrieval": (*_package("eval", "brute_force", "decode", "evaluate", "sharded", "rerank", "teacher_forced", "validation"),
                  *_package("anchors", "knn", "markov")),
    "metrics": _package("metrics", "tokenizer"),
    "runs": (*_modules("cli", "pipeline", "encode", "flags", "routing_flags", "report", "plots", "_layout"),
             *_package("jobs", "fit_tokenizer", "tokenize", "tokenizers"), *_package("distributed", "fit", "run", "tokenize")),
}


def stage_of(module: str) -> int:
    """The index in STAGES of a capsid_gr module's stage; KeyError for a module the table lacks."""
    for i, stage in enumerate(STAGES):
        if module in LAYOUT[stage]:
            return i
    raise KeyError(f"{module} has no stage in capsid_gr/_layout.py")
