"""Data-dependent initialisation of the capsule stack ("capsule warm-up", Stage 1).

Why: the agreement logits a_k = sum_t u_k . o_t are the routing's inverse temperature, and
with random W, b the mean vote of K random capsules is short, so ||o|| ~ 0.02 and every
routing weight stays at ~1/K. Training from there never leaves the uniform regime: the
confidence q = c*_s ||o|| sits near 1e-3, the soft length surrogate has no gradient, the
argmax token is noise and the stack behaves as a linear autoencoder (measured on Beauty,
docs/results/tokenizer_beauty.md, run 1). Proposition 1 of the paper assumes the opposite
regime: a winner mass around 0.86 and per-capsule outputs near fixed centres.

What, per depth l on the residuals R_l of a sample of items (depth by depth, so each depth
sees the residuals the previous, already initialised depths leave):
- P_l [d_c, d]: the top d_c right singular vectors of R_l (uncentred), the subspace that
  holds most residual energy.
- k-means centres mu_lk of R_l (scikit-learn's KMeans, seeded); the capsule bias points at
  the projected centre with a fixed norm: b_lk = beta_l P_l mu_lk / ||P_l mu_lk||. beta_l is
  the sharpness: it scales the logit gap between the winning centre and the others.
- W_lk = gamma_l P_l for every k, gamma_l = gain / rms ||P_l r||: the residual's part of
  every vote is the same, so capsules differ only through their centres and the routing
  starts as a soft nearest-centre assignment (softmax over b_k . o).
- D_l: the least-squares decoder of R_l from the routed outputs sum_k c*_k o_k at this
  initialisation (ridge 1e-4), so z starts as the best linear read-out of the routing.
Everything after this is ordinary Stage-1 training of the same parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

import capsid_kernels as ck
from ..checks import check_config


@dataclass(frozen=True)
class InitConfig:
    """sharpness: beta per depth (the last value repeats for deeper depths); gain: the norm
    of the residual's part of each vote; sample: items used (a seeded subset when larger);
    kmeans_iter: Lloyd iterations."""

    sharpness: Sequence[float] = (6.0, 4.0, 5.0, 7.0, 9.0, 12.0)
    gain: float = 3.0
    sample: int = 20_000
    kmeans_iter: int = 25

    def __post_init__(self) -> None:
        check_config(self)
        if not self.sharpness or any(not (math.isfinite(b) and b > 0) for b in self.sharpness):
            raise ValueError(f"sharpness: expected one or more finite values > 0, got {self.sharpness}")
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"gain: expected a finite value > 0, got {self.gain}")
        if self.sample < 1 or self.kmeans_iter < 1:
            raise ValueError(f"sample and kmeans_iter must be >= 1, got {self.sample}, {self.kmeans_iter}")

    def beta(self, depth: int) -> float:
        return float(self.sharpness[min(depth, len(self.sharpness) - 1)])


def _kmeans(r: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    if r.shape[0] < k:  # too few residuals for k clusters: jittered copies of the rows
        rng = np.random.default_rng(seed)
        rows = r[rng.integers(0, r.shape[0], size=k)]
        return rows + 1e-3 * rng.standard_normal(rows.shape)
    return KMeans(k, n_init=1, max_iter=iters, random_state=seed).fit(r).cluster_centers_


@torch.no_grad()
def data_init(tokenizer: ck.CapsIDTokenizer, x: Tensor, cfg: InitConfig = InitConfig(), *, seed: int = 0) -> dict:
    """Initialise every depth of `tokenizer` in place from item vectors x [N, d]; returns a
    per-depth summary (items used, mean winner weight, confidence-stop share at init)."""
    c = tokenizer.config
    dev = tokenizer.layers[0].W.device
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(x.shape[0], generator=gen)[: cfg.sample].sort().values
    r = x[pick.to(x.device)].to(device=dev, dtype=torch.float64)
    r = r / torch.linalg.vector_norm(r, dim=1, keepdim=True)
    summary = []
    for depth, layer in enumerate(tokenizer.layers):
        if r.shape[0] == 0:
            break
        k, dc, d = layer.W.shape
        _, _, vh = torch.linalg.svd(r, full_matrices=False)
        p = torch.zeros(dc, d, dtype=torch.float64, device=dev)
        m = min(dc, vh.shape[0])
        p[:m] = vh[:m]
        mu = torch.as_tensor(_kmeans(r.cpu().numpy(), k, cfg.kmeans_iter, seed + depth), device=dev)
        pm = mu @ p.T
        norm = torch.linalg.vector_norm(pm, dim=1, keepdim=True)
        fallback = torch.randn(pm.shape, generator=gen, dtype=torch.float64).to(dev)
        pm = torch.where(norm > 1e-8, pm, fallback)
        b = cfg.beta(depth) * pm / torch.linalg.vector_norm(pm, dim=1, keepdim=True)
        rms = torch.sqrt(((r @ p.T) ** 2).sum(1).mean()).clamp(min=1e-6)
        w = (cfg.gain / rms) * p.expand(k, dc, d)
        eye = torch.eye(dc, dtype=torch.float64, device=dev)
        o = ck.route(r, w.contiguous(), b, p.T.contiguous(), c.routing, need_weights=True, backend="eager")
        votes = (r @ w[0].T)[:, None, :] + b  # [n, K, dc]: every capsule shares W at init
        if c.mode == "soft":
            y = torch.einsum("nk,nkc->nc", o.weights, ck.squash(votes))
        else:
            y = ck.squash(votes[torch.arange(r.shape[0], device=dev), o.token])
        del votes
        dec = torch.linalg.solve(y.T @ y + 1e-4 * eye, y.T @ r).T  # [d, dc]
        layer.W.copy_(w.to(layer.W.dtype))
        layer.b.copy_(b.to(layer.b.dtype))
        layer.D.copy_(dec.to(layer.D.dtype))
        out = ck.route(r, w.contiguous(), b, dec.contiguous(), c.routing, last=depth == len(tokenizer.layers) - 1,
                       need_weights=True, backend="eager")
        summary.append({"depth": depth + 1, "items": int(r.shape[0]), "beta": cfg.beta(depth),
                        "mean_winner_weight": float(out.weights.max(1).values.mean()),
                        "confidence_stop": float((out.stop_reason == ck.STOP_CONF).double().mean()),
                        "residual_norm": float(torch.linalg.vector_norm(out.residual, dim=1).mean())})
        r = out.residual[out.stop_reason == ck.CONTINUE]
    return {"depths": summary, "config": {"sharpness": list(cfg.sharpness), "gain": cfg.gain,
                                          "sample": cfg.sample, "kmeans_iter": cfg.kmeans_iter}}
