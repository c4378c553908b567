"""Collaborative vectors: the item-embedding table of a small SASRec (SPEC §10).

Trained on the leave-one-out training prefixes only (validation and test targets never
enter), next-item prediction with one sampled negative per position (binary cross entropy,
as in the SASRec paper). A small model on purpose: its only product is the embedding table.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SASRec(nn.Module):
    """Causal Transformer over item ids; id 0 is padding, item i is row i + 1."""

    def __init__(self, n_items: int, dim: int, layers: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.item.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n, t = ids.shape
        h = self.item(ids) * math.sqrt(self.item.embedding_dim) + self.pos(torch.arange(t, device=ids.device))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=ids.device), 1)
        h = self.encoder(h, mask=causal, src_key_padding_mask=ids == 0)
        return self.norm(h)


def collaborative_vectors(train: list[np.ndarray], n_items: int, *, dim: int = 64, layers: int = 2,
                          heads: int = 2, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
                          max_len: int = 50, seed: int = 0, device: str = "cpu",
                          show_progress: bool = False) -> np.ndarray:
    """[n_items, dim] float32 item embeddings learned from the training prefixes `train`."""
    from tqdm import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout inside nn.TransformerEncoderLayer draws from the global RNG
    model = SASRec(n_items, dim, layers, heads, max_len).to(device)
    seqs = [np.asarray(s[-(max_len + 1):], dtype=np.int64) + 1 for s in train if len(s) >= 2]
    if not seqs or epochs == 0:
        return model.item.weight[1:].detach().cpu().numpy().astype(np.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order = np.argsort([len(s) for s in seqs], kind="stable")  # batches of similar length pad little
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for _ in tqdm(range(epochs), desc="SASRec", unit="epoch", disable=not show_progress):
        model.train()
        for bi in torch.randperm(len(batches), generator=g).tolist():
            rows = [seqs[i] for i in batches[bi]]
            t = max(len(r) for r in rows) - 1
            inp = torch.zeros(len(rows), t, dtype=torch.int64)
            pos = torch.zeros(len(rows), t, dtype=torch.int64)
            for j, r in enumerate(rows):  # left-pad: the latest item sits at the last position
                inp[j, t - len(r) + 1:] = torch.as_tensor(r[:-1])
                pos[j, t - len(r) + 1:] = torch.as_tensor(r[1:])
            neg = torch.randint(1, n_items + 1, pos.shape, generator=g)
            inp, pos, neg = inp.to(device), pos.to(device), neg.to(device)
            h = model(inp)
            mask = pos > 0
            lp = (h * model.item(pos)).sum(-1)[mask]
            ln = (h * model.item(neg)).sum(-1)[mask]
            loss = F.softplus(-lp).mean() + F.softplus(ln).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.item.weight[1:].detach().cpu().numpy().astype(np.float32)


def cooccurrence_vectors(train: list[np.ndarray], n_items: int, dim: int = 64, window: int = 3,
                         seed: int = 0) -> np.ndarray:
    """Item vectors [n_items, dim] from the training split's co-occurrence: pairs of items at most
    `window` steps apart in a user's training sequence (weight 1 / distance, both directions),
    positive pointwise mutual information, truncated SVD (U * sqrt(S)). Deterministic and
    seconds on a CPU; items without any co-occurrence get a zero row (the other blocks cover them)."""
    from scipy import sparse
    from scipy.sparse.linalg import svds

    rows, cols, vals = [], [], []
    for s in train:
        s = np.asarray(s, np.int64)
        for dist in range(1, window + 1):
            if len(s) > dist:
                rows += [s[:-dist], s[dist:]]
                cols += [s[dist:], s[:-dist]]
                vals += [np.full(len(s) - dist, 1.0 / dist)] * 2
    if not rows:
        return np.zeros((n_items, dim), np.float32)
    c = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n_items, n_items))
    c.sum_duplicates()
    total = c.sum()
    marg = np.asarray(c.sum(1)).ravel()
    coo = c.tocoo()
    pmi = np.log(coo.data * total / (marg[coo.row] * marg[coo.col]))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n_items, n_items))
    k = max(1, min(dim, n_items - 2))
    v0 = np.random.default_rng(seed).standard_normal(n_items)
    u, s_, _ = svds(ppmi, k=k, v0=v0)
    out = np.zeros((n_items, dim), np.float32)
    out[:, :k] = (u * np.sqrt(s_))[:, ::-1]
    return out
