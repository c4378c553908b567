"""Trie-constrained decoding (SPEC §7): item trie -> beam step -> beam-search driver -> adapters.

trie.py builds and stores the index; beam_step_torch.py is the plain-torch step (reference
and fallback); beam_step.py selects a backend; search.py runs the loop; hf.py adapts it to
Hugging Face ``generate`` (imports transformers lazily).
"""

from .beam_step import StepOutput, beam_step
from .layout import TokenLayout
from .search import Beams, SearchResult, beam_search
from .trie import BOS, EOS, FIRST_CODE, PAD, Trie, TrieError, build_trie

__all__ = ["BOS", "EOS", "FIRST_CODE", "PAD", "Beams", "SearchResult", "StepOutput", "TokenLayout", "Trie", "TrieError",
           "beam_search", "beam_step", "build_trie"]
