"""What Stage 2 validates with (SPEC §6, §8): trie-constrained beam search Recall@10 on the
validation users, decided once per `eval_every` epochs.

Training sits below retrieval, so `train_stage2` never imports this package; its callers
(the pipeline, the distributed launcher, tests) hand it a `BeamValidation`, which builds the
`Recommender` over the generator being trained and scores a validation round, one process or
sharded over a `DistContext`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..generator import Generator, ItemInputs, ItemTokenization
from ..ranking import ranking_metrics
from .decode import Recommender, build_item_trie
from .sharded import evaluate_sharded


class BeamValidation:
    """The `validation` argument of `capsid_gr.stage2.train_stage2` (stateless)."""

    def recommender(self, model: Generator, inputs: ItemInputs, items: ItemTokenization,
                    popularity: Optional[np.ndarray], max_history: int, device) -> Recommender:
        """The Recommender Stage 2 validates with and returns (trie tie-breaks by `popularity`)."""
        return Recommender(model, inputs, items, build_item_trie(items, popularity, device), max_history)

    def recall_at_10(self, rec: Recommender, histories: Sequence[np.ndarray], targets: np.ndarray, *,
                     num_beams: int, batch_size: int, dist=None) -> float:
        """Recall@10 of the beam's top 10; `dist`: shard the users, the metric equals one process's."""
        if dist is not None:
            return evaluate_sharded(rec, histories, targets, dist, ks=(10,), num_beams=num_beams,
                                    batch_size=batch_size)["recall@10"]
        ranked, _ = rec.recommend(histories, num_beams=num_beams, top_k=10, batch_size=batch_size)
        return ranking_metrics(ranked, targets, ks=(10,))["recall@10"]
