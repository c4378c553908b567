"""Generator shape (SPEC §1): a SASRec-style causal Transformer, one dataclass of defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ..checks import check_config


@dataclass(frozen=True)
class GeneratorConfig:
    """layers, heads, hidden, ffn, dropout: the Transformer (SPEC §1: 4, 4, 128, 512, 0.1;
    pre-LN, GELU). max_positions: learned absolute positions (BOS, then history <= 50 items of at most
    L_max merged tokens + EOS, then the target; whole-sequence training rows hold up to 51
    items). max_item_tokens: SID-position
    embeddings (position of a token inside its item, EOS included). init_std: random init of
    weights and of embedding rows without a warm start; init_norm: mean row norm the
    warm-started token embeddings are scaled to (codebook centres have norm < 1 and would
    otherwise dominate or vanish next to the position embeddings)."""

    layers: int = 4
    heads: int = 4
    hidden: int = 128
    ffn: int = 512
    dropout: float = 0.1
    max_positions: int = 512
    max_item_tokens: int = 8
    init_std: float = 0.02
    init_norm: float = 1.0

    def __post_init__(self) -> None:
        check_config(self)
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")
        if min(self.layers, self.heads, self.hidden, self.ffn, self.max_positions, self.max_item_tokens) < 1:
            raise ValueError(f"GeneratorConfig: every size must be >= 1, got {self}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
