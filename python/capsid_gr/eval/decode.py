"""Top-K items for user histories: the generator inside the trie-constrained beam (SPEC §7).

`Recommender` is the one place that joins the generator to `capsid_kernels.beam_search`:
prefill each query's history once, keep a per-beam cache of decoded tokens, reorder it when
the beam step reports parents. Item input rows (soft or hard) are computed once per call,
since they depend on the item, not the user.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

import capsid_kernels as ck

from ..generator import Generator, ItemInputs, ItemTokenization, autocast, make_batch


def build_item_trie(items: ItemTokenization, popularity: Optional[np.ndarray], device) -> ck.Trie:
    pop = None if popularity is None else torch.as_tensor(np.asarray(popularity, dtype=np.float64))
    return ck.build_trie(torch.as_tensor(items.path_matrix()), items.vocab_size, popularity=pop, device=device)


class Recommender:
    def __init__(self, model: Generator, inputs: ItemInputs, items: ItemTokenization, trie: ck.Trie,
                 max_history: int = 50, amp: bool = True) -> None:
        self.model, self.inputs, self.items, self.trie = model, inputs, items, trie
        self.max_history, self.amp = max_history, amp
        self.path_matrix = items.path_matrix()

    @property
    def device(self) -> torch.device:
        return self.model.tok.weight.device

    @torch.no_grad()
    def item_rows(self) -> Tensor:
        ids = torch.arange(self.items.n_items, device=self.device)
        return self.inputs.rows(self.model.tok.weight, ids)

    # Input rows of the whole catalogue are built once per `recommend` when they fit in this
    # many bytes (fast for catalogues up to a few million items); above it, each chunk builds
    # the rows of its own history items only, so memory no longer grows with the catalogue
    # (35.8M items x 7 tokens x 128 x 4 B would be 128 GB).
    rows_budget_bytes = 2 << 30

    def catalogue_rows(self) -> Optional[Tensor]:
        h = self.model.tok.weight.shape[1]
        if self.items.n_items * self.path_matrix.shape[1] * h * 4 > self.rows_budget_bytes:
            return None
        return self.item_rows()

    def _prefix(self, rows: Optional[Tensor], histories: Sequence[np.ndarray]):
        b = make_batch(self.path_matrix, histories, None, self.max_history).to(self.device)
        emb = self.model.embed(b.tokens)
        if b.unique.numel():
            own = rows[b.unique] if rows is not None else self.inputs.rows(self.model.tok.weight, b.unique)
            hist = own[b.hist_slot.clamp(min=0), b.hist_pos]
            emb = torch.where((b.hist_slot >= 0)[..., None], hist, emb)
        return emb, b

    @torch.no_grad()
    def recommend(self, histories: Sequence[np.ndarray], num_beams: int = 50, top_k: Optional[int] = None,
                  batch_size: int = 64, backend: str = "auto") -> tuple[np.ndarray, dict]:
        """Top-K item ids [Q, K] (-1 past the last item found) and timing stats."""
        self.model.eval()
        top_k = top_k or num_beams
        rows = self.catalogue_rows()
        out = np.full((len(histories), top_k), -1, np.int64)
        steps = self.trie.max_len + 1
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for lo in range(0, len(histories), batch_size):
            chunk = histories[lo: lo + batch_size]
            out[lo: lo + len(chunk)] = self.decode_chunk(rows, chunk, num_beams, top_k, backend)
        sync()
        seconds = time.perf_counter() - start
        q = max(len(histories), 1)
        return out, {"decode_seconds": seconds, "latency_ms_per_query": 1e3 * seconds / q,
                     "latency_ms_per_batch_step": 1e3 * seconds / (-(-q // batch_size) * steps),
                     "steps": steps, "num_beams": num_beams, "batch_size": batch_size}

    def decode_chunk(self, rows: Optional[Tensor], histories, num_beams: int, top_k: int, backend: str) -> np.ndarray:
        model, b = self.model, num_beams
        emb, batch = self._prefix(rows, histories)
        q = len(histories)
        state = {}

        def step_fn(beams) -> Tensor:
            with autocast(self.device, self.amp):
                if beams.step == 0:
                    logits, state["prefix"] = model.prefill(emb, batch.positions, batch.sid_pos, batch.key_valid)
                    k0 = state["prefix"].k[0]
                    state["beams"] = model.empty_beam_cache(q * b, k0.device, k0.dtype)
                    return logits.float().repeat_interleave(b, dim=0)
                sid = torch.full_like(beams.tokens, beams.step)
                logits = model.decode_step(beams.tokens, sid, beams.step - 1, state["prefix"], state["beams"], b)
                return logits.float()

        def reorder(parent: Tensor) -> None:
            if "beams" in state:
                state["beams"].reorder(parent)

        res = ck.beam_search(step_fn, self.trie, b, q, top_k=top_k, reorder_cache=reorder, backend=backend,
                             device=self.device)
        return res.items.cpu().numpy()
