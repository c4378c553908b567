"""RQ-VAE (TIGER, Rajput et al. 2023): an MLP autoencoder with residual vector quantisation.

    z = enc(x);  r_1 = z;  for l = 1..L: k_l = argmin_k ||r_l - C_lk||^2,  r_{l+1} = r_l - C_lk_l
    z_q = sum_l C_lk_l,  passed to the decoder with the straight-through estimator
          z + sg(z_q - z), so the reconstruction gradient reaches the encoder unchanged;
    loss = ||x - dec(z_q)||^2 + sum_l ( ||sg(r_l) - C_lk_l||^2 + beta ||r_l - sg(C_lk_l)||^2 )

Codebooks are initialised by k-means on the residuals of the first training batch, level by
level (TIGER's remedy for codebook collapse). Colliding items get TIGER's extra
disambiguation position, exactly as in the RQ-KMeans baseline. Optionally the HaMR
repulsion (capsid_gr.tokenizer.hamr) is added on the encoder output z with the batch's codes.

CPU-trainable on small catalogues; everything random is drawn from generators seeded by
`seed` (model init, k-means seeding, batch order), never from global state.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..tokenizer.hamr import HaMRConfig, hamr_from_config
from .rqkmeans import disambiguation_column
from ..checks import check_config


@dataclass(frozen=True)
class RQVAEConfig:
    """RQ-VAE settings; TIGER's published values unless noted.

    hidden (512, 256, 128), latent 32, levels 3 x codes 256, beta 0.25, ReLU MLPs, batch
    1024, k-means initialisation: TIGER (Rajput et al. 2023, §4.1).
    optimizer, lr: AdamW 1e-3 (ours, Stage 1's optimiser). TIGER's Adagrad with lr 0.4 is
        available ("adagrad", lr=0.4) but diverged on our unit-norm vectors (losses ~1e9
        within 10 epochs on the synthetic catalogue).
    epochs: TIGER trains 20k epochs on GPU; 300 is ours, a CPU budget (~2.5 min for 4k
        items on one thread); reconstruction is still falling slowly there (docs/tokenizers.md).
    kmeans_iter: Lloyd iterations of the first-batch initialisation (ours).
    disambiguate: append the disambiguation position for colliding items (TIGER).
    hamr: None, or the HaMR repulsion's settings (`--hamr`), applied to z.
    eval_batch_size: items per batch when encoding the catalogue at the end.
    """

    hidden: tuple[int, ...] = (512, 256, 128)
    latent: int = 32
    levels: int = 3
    codes: int = 256
    beta: float = 0.25
    epochs: int = 300
    batch_size: int = 1024
    optimizer: str = "adamw"
    lr: float = 1e-3
    kmeans_iter: int = 20
    disambiguate: bool = True
    hamr: Optional[HaMRConfig] = None
    eval_batch_size: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)
        if self.levels < 1 or self.codes < 1 or self.latent < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"levels, codes, latent, epochs, batch_size must be >= 1; got {self}")
        if self.optimizer not in ("adagrad", "adamw"):
            raise ValueError(f"optimizer: expected 'adagrad' or 'adamw', got {self.optimizer!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class RQVAEOutput(NamedTuple):
    codes: np.ndarray  # [N, levels] hard codes before disambiguation
    sids: np.ndarray  # [N, levels (+1)] with the disambiguation column when enabled
    centres: list  # per level [codes, latent] codebooks (latent space)
    recon: np.ndarray  # [N, d] decoder output for the quantised latent
    capsules: tuple  # codes per position, the disambiguation position last
    latent: np.ndarray  # [N, latent] encoder output z
    history: list  # per epoch: recon, vq, hamr, total (training means), utilisation
    model: "RQVAE"
    seconds: float


def _mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder MLP -> residual quantiser (levels x codes x latent) -> decoder MLP."""

    def __init__(self, d: int, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = _mlp((d, *cfg.hidden, cfg.latent))
        self.decoder = _mlp((cfg.latent, *reversed(cfg.hidden), d))
        self.codebooks = nn.Parameter(torch.zeros(cfg.levels, cfg.codes, cfg.latent))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_codebooks(self, z: Tensor, generator: torch.Generator) -> None:
        """k-means on the residuals of z [B, latent], level by level."""
        r = z.detach()
        for level in range(self.cfg.levels):
            centres = kmeans(r, self.cfg.codes, self.cfg.kmeans_iter, generator)
            self.codebooks[level].copy_(centres)
            r = r - centres[nearest(r, centres)]
        self.initialised.fill_(True)

    def quantise(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """codes [B, levels], straight-through z_q [B, latent], codebook + commitment loss."""
        r = z
        total = torch.zeros_like(z)
        codes, vq = [], z.new_zeros(())
        for level in range(self.cfg.levels):
            book = self.codebooks[level]
            k = nearest(r.detach(), book.detach())
            e = book[k]
            vq = vq + ((r.detach() - e) ** 2).sum(-1).mean() + self.cfg.beta * ((r - e.detach()) ** 2).sum(-1).mean()
            total = total + e
            r = r - e.detach()
            codes.append(k)
        z_q = z + (total - z).detach()
        return torch.stack(codes, dim=1), z_q, vq

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_hat, z, codes, vq loss) for unit-norm item vectors x [B, d]."""
        z = self.encoder(x)
        codes, z_q, vq = self.quantise(z)
        return self.decoder(z_q), z, codes, vq


def nearest(r: Tensor, centres: Tensor) -> Tensor:
    """Index of the nearest centre (squared Euclidean; ties: lowest index)."""
    d2 = (r * r).sum(-1, keepdim=True) - 2.0 * r @ centres.T + (centres * centres).sum(-1)[None, :]
    return torch.argmin(d2, dim=1)


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding then Lloyd iterations on x [n, D]; k > n repeats points with jitter.

    An emptied cluster keeps its previous centre (it stays available to later batches)."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("kmeans: no points to initialise the codebooks from")
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(-1)
    for _ in range(1, k):
        if float(d2.sum()) > 0:
            i = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        else:  # fewer distinct points than codes: duplicate with a little noise
            i = int(torch.randint(n, (1,), generator=generator))
        c = x[i] + (1e-3 * x.std() * torch.randn(x.shape[1], generator=generator) if float(d2[i]) == 0 else 0.0)
        centres.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(-1))
    c = torch.stack(centres)
    for _ in range(iters):
        lab = nearest(x, c)
        counts = torch.bincount(lab, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, lab, x)
        keep = counts > 0
        c[keep] = sums[keep] / counts[keep, None]
    return c


def fit_rqvae(x: np.ndarray, cfg: RQVAEConfig = RQVAEConfig(), *, log_every: int = 1) -> RQVAEOutput:
    """Train an RQ-VAE on item vectors x [N, d] (ell2-normalised here) and return SIDs."""
    start = time.perf_counter()
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    xt = xt / torch.linalg.vector_norm(xt, dim=1, keepdim=True)
    n, d = xt.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = RQVAE(d, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.optimizer == "adagrad":
        opt = torch.optim.Adagrad(model.parameters(), lr=cfg.lr)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    steps = max(1, math.ceil(n / cfg.batch_size))
    history = []
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        sums = {"recon": 0.0, "vq": 0.0, "hamr": 0.0, "total": 0.0}
        model.train()
        for step in range(steps):
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            batch = xt[idx]
            if not bool(model.initialised):
                model.init_codebooks(model.encoder(batch), gen)
            x_hat, z, codes, vq = model(batch)
            recon = ((batch - x_hat) ** 2).sum(-1).mean()
            total = recon + vq
            hamr = recon.new_zeros(())
            if cfg.hamr is not None and cfg.hamr.weight > 0:
                hamr = hamr_from_config(z, codes, cfg.hamr, item_ids=idx).loss
                total = total + cfg.hamr.weight * hamr
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            for key, v in (("recon", recon), ("vq", vq), ("hamr", hamr), ("total", total)):
                sums[key] += float(v.detach())
        if (epoch + 1) % log_every == 0 or epoch == cfg.epochs - 1:
            history.append({"epoch": epoch, **{k: v / steps for k, v in sums.items()}})
    model.eval()
    codes, recon, latent = encode(model, xt, cfg.eval_batch_size)
    used = [len(np.unique(codes[:, level])) / cfg.codes for level in range(cfg.levels)]
    history[-1]["utilisation"] = used
    centres = [c.detach().numpy().copy() for c in model.codebooks]
    capsules = (cfg.codes,) * cfg.levels
    sids = codes.copy()
    if cfg.disambiguate:
        extra = disambiguation_column(codes)
        sids = np.concatenate([codes, extra[:, None]], axis=1)
        capsules = capsules + (max(cfg.codes, int(extra.max()) + 1),)
    return RQVAEOutput(codes, sids, centres, recon, capsules, latent, history, model,
                       time.perf_counter() - start)


@torch.no_grad()
def encode(model: RQVAE, x: Tensor, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [N, levels], reconstruction [N, d], latent z [N, latent]) of unit-norm x."""
    codes, recon, latent = [], [], []
    for i in range(0, x.shape[0], batch_size):
        x_hat, z, c, _ = model(x[i:i + batch_size])
        codes.append(c)
        recon.append(x_hat)
        latent.append(z)
    return (torch.cat(codes).numpy().astype(np.int64), torch.cat(recon).numpy(), torch.cat(latent).numpy())
