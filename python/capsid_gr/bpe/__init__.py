"""SemanticBPE (SPEC §5): pair statistics, the merge gate, and the merge vocabulary."""

from .config import SemanticBPEConfig
from .gate import MergeGate, bpe_loss, relaxed_gate
from .merges import MergeTable
from .pairs import Candidates, PairCounts, check_item_weights, count_pairs, select_candidates
from .vocab import BOS, EOS, NO_TOKEN, PAD, base_vocab_size, item_space_embeddings, to_codes, to_global
from .build import build_merge_table

__all__ = [
    "BOS", "EOS", "NO_TOKEN", "PAD", "Candidates", "MergeGate", "MergeTable", "PairCounts",
    "SemanticBPEConfig", "base_vocab_size", "bpe_loss", "build_merge_table", "check_item_weights", "count_pairs",
    "item_space_embeddings",
    "relaxed_gate", "select_candidates", "to_codes", "to_global",
]
