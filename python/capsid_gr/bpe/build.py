"""From a trained gate to the merge vocabulary: merge iff pi_1 > pi_0 (SPEC §5 step 5)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .gate import MergeGate
from .merges import MergeTable
from .pairs import Candidates


def build_merge_table(cands: Candidates, gate: MergeGate, emb: Tensor, base_vocab: int,
                      max_merges: int) -> MergeTable:
    """Candidates the gate merges, most confident first, at most `max_merges`.

    Ids are assigned in order of (pi_1 desc, score desc, pair asc), so the table is a
    deterministic function of the candidates and the gate.
    """
    if len(cands.pairs) == 0:
        return MergeTable(base_vocab, [])
    pi1 = gate.merge_probability(gate.features(emb, cands.pairs, cands.freq_hat)).double().cpu().numpy()
    chosen = np.flatnonzero(pi1 > 0.5)
    order = np.lexsort((cands.pairs[chosen, 1], cands.pairs[chosen, 0], -cands.score[chosen], -pi1[chosen]))
    chosen = chosen[order][:max_merges]
    return MergeTable(base_vocab, [tuple(map(int, cands.pairs[i])) for i in chosen])
