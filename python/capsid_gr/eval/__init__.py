"""Evaluation (SPEC §7-8): generator + trie beam -> top-K items -> metrics; brute force for tests."""

from .brute_force import brute_force_topk, path_scores
from .decode import Recommender, autocast, build_item_trie
from .evaluate import evaluate
from .metrics import ndcg_at, ranking_metrics, recall_at, target_rank
from .teacher_forced import teacher_forced_scores

__all__ = ["Recommender", "autocast", "brute_force_topk", "build_item_trie", "evaluate", "ndcg_at",
           "path_scores", "ranking_metrics", "recall_at", "target_rank", "teacher_forced_scores"]
