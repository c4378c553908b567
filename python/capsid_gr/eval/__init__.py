"""Retrieval and evaluation (SPEC §7-8): generator + trie beam -> top-K items -> metrics; the
sharded evaluation; Stage 2's validation (`BeamValidation`); brute force for tests.

`ranking_metrics`, `recall_at`, `ndcg_at`, `target_rank` live in capsid_gr.ranking (foundation,
so training can score validation without importing retrieval) and `autocast` in
capsid_gr.generator; both are re-exported here for the old import paths."""

from ..generator import autocast
from ..ranking import ndcg_at, ranking_metrics, recall_at, target_rank
from .brute_force import brute_force_topk, path_scores
from .decode import Recommender, build_item_trie
from .evaluate import evaluate
from .teacher_forced import teacher_forced_scores
from .validation import BeamValidation

__all__ = ["BeamValidation", "Recommender", "autocast", "brute_force_topk", "build_item_trie", "evaluate", "ndcg_at",
           "path_scores", "ranking_metrics", "recall_at", "target_rank", "teacher_forced_scores"]
