"""capsid-kernels: fused CAPSID capsule routing and trie-constrained decoding for PyTorch.

Importing this package touches no GPU and compiles nothing; kernels load on first use.
"""

from .registry import BackendFallbackWarning, BackendUnavailable
from .config import PRESETS, CapsIDConfig, ExecutionOptions, RoutingParams
from .modules import CapsIDTokenizer, CapsuleLayer
from .ops import route, squash, tokenize
from .decode import SearchResult, TokenLayout, Trie, TrieError, beam_search, beam_step, build_trie
from .reference import (
    PAD_TOKEN,
    STOP_CAP,
    STOP_CONF,
    STOP_RESID,
    CONTINUE,
    RouteOutput,
    StackOutput,
    codebook_centres,
)

__version__ = "0.1.0"

__all__ = [
    "BackendFallbackWarning", "BackendUnavailable", "CapsIDConfig", "CapsIDTokenizer", "CapsuleLayer", "PRESETS",
    "ExecutionOptions", "RoutingParams",
    "RouteOutput", "StackOutput", "CONTINUE", "STOP_CONF", "STOP_RESID", "STOP_CAP", "PAD_TOKEN",
    "codebook_centres", "route", "squash", "tokenize", "__version__",
    "SearchResult", "TokenLayout", "Trie", "TrieError", "beam_search", "beam_step", "build_trie",
]
