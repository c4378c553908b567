"""The generator: causal Transformer over token embeddings, tied output, KV-cached decoding.

Inputs are embeddings, not ids, because history items may enter as soft embeddings (SPEC §6);
`embed(tokens)` gives the hard ones. Sequences are left-padded so that every row's prefix ends
at the same column; `key_valid` marks real tokens, positions count from each row's first real
token. Decoding keeps the prefix cache once per query and a small per-beam cache for the
decoded tokens, so a beam reorder copies only the decoded part.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GeneratorConfig


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (SPEC: mixed precision on GPU), for training and decoding alike; a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Block(nn.Module):
    def __init__(self, c: GeneratorConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.ln1 = nn.LayerNorm(c.hidden)
        self.qkv = nn.Linear(c.hidden, 3 * c.hidden)
        self.proj = nn.Linear(c.hidden, c.hidden)
        self.ln2 = nn.LayerNorm(c.hidden)
        self.ff1 = nn.Linear(c.hidden, c.ffn)
        self.ff2 = nn.Linear(c.ffn, c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.p = c.dropout

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = x.shape[-1]
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        shape = (*x.shape[:-1], self.heads, h // self.heads)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def finish(self, x: Tensor, att: Tensor) -> Tensor:
        x = x + self.drop(self.proj(att))
        return x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, h], mask [B, 1, T, T] (True = attend). Returns x and this layer's K, V."""
        b, t, h = x.shape
        q, k, v = (z.transpose(1, 2) for z in self.split(x))  # [B, H, T, dh]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        return self.finish(x, att.transpose(1, 2).reshape(b, t, h)), k, v


@dataclass
class PrefixCache:
    """Per query: keys/values of the prefix per layer [Q, H, Tp, dh], key_valid [Q, Tp], the
    position of the next token [Q]."""

    k: list[Tensor]
    v: list[Tensor]
    key_valid: Tensor
    next_position: Tensor


@dataclass
class BeamCache:
    """Per beam row (r = q * B + b): keys/values of the decoded tokens [R, H, t, dh] per layer."""

    k: list[Tensor]
    v: list[Tensor]

    def reorder(self, parent: Tensor) -> None:
        self.k = [t.index_select(0, parent) for t in self.k]
        self.v = [t.index_select(0, parent) for t in self.v]


class Generator(nn.Module):
    def __init__(self, vocab_size: int, config: GeneratorConfig = GeneratorConfig(), *,
                 token_init: Optional[Tensor] = None, has_init: Optional[Tensor] = None, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        self.vocab_size = vocab_size
        self.tok = nn.Embedding(vocab_size, c.hidden)
        self.pos = nn.Embedding(c.max_positions, c.hidden)
        self.sid = nn.Embedding(c.max_item_tokens + 1, c.hidden)  # 0 = BOS/PAD, j + 1 = j-th token of an item
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.reset_parameters(seed, token_init, has_init)

    @torch.no_grad()
    def reset_parameters(self, seed: int, token_init: Optional[Tensor], has_init: Optional[Tensor]) -> None:
        """Seeded init, independent of the global RNG; token rows warm-started from `token_init`
        [V, d] (projected to `hidden` by a fixed random orthonormal map when d != hidden)."""
        g = torch.Generator().manual_seed(seed)
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith(".bias") or ".ln" in name or name.startswith("ln_f"):
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
        for blk in self.blocks:  # GPT-2: residual projections scaled by depth
            for lin in (blk.proj, blk.ff2):
                lin.weight.mul_(1.0 / math.sqrt(2 * self.config.layers))
        if token_init is not None:
            warm_start_tokens(self.tok.weight, token_init, has_init, self.config.init_norm, std, seed, g)

    # ------------------------------------------------------------------ full forward

    def embed(self, tokens: Tensor) -> Tensor:
        return self.tok(tokens)

    def inputs(self, emb: Tensor, positions: Tensor, sid_pos: Tensor) -> Tensor:
        return self.drop(emb + self.pos(positions) + self.sid(sid_pos.clamp(max=self.config.max_item_tokens)))

    def hidden_states(self, emb: Tensor, positions: Tensor, sid_pos: Tensor, key_valid: Tensor,
                      keep_cache: bool = False):
        """emb [B, T, h] -> final hidden states [B, T, h] (before ln_f); with keep_cache also the
        per-layer K, V."""
        b, t, _ = emb.shape
        if t > self.config.max_positions:  # positions count real tokens, so t bounds them
            raise ValueError(f"sequences of {t} tokens exceed max_positions={self.config.max_positions}; "
                             "raise GeneratorConfig.max_positions or shorten the history")
        causal = torch.ones(t, t, dtype=torch.bool, device=emb.device).tril()
        mask = causal[None] & key_valid[:, None, :]
        mask = mask | torch.eye(t, dtype=torch.bool, device=emb.device)[None]  # padded rows see themselves
        x = self.inputs(emb, positions, sid_pos)
        ks, vs = [], []
        for blk in self.blocks:
            x, k, v = blk(x, mask[:, None])
            if keep_cache:
                ks.append(k)
                vs.append(v)
        return (x, ks, vs) if keep_cache else x

    def logits(self, x: Tensor) -> Tensor:
        """Tied output layer over the full vocabulary."""
        return self.ln_f(x) @ self.tok.weight.t()

    def forward(self, emb, positions, sid_pos, key_valid) -> Tensor:
        return self.logits(self.hidden_states(emb, positions, sid_pos, key_valid))

    # ------------------------------------------------------------------ cached decoding

    def prefill(self, emb: Tensor, positions: Tensor, sid_pos: Tensor, key_valid: Tensor) -> tuple[Tensor, PrefixCache]:
        """Run the (left-padded) prefixes once; returns the last column's logits [Q, V]."""
        x, ks, vs = self.hidden_states(emb, positions, sid_pos, key_valid, keep_cache=True)
        nxt = positions[:, -1] + 1
        return self.logits(x[:, -1]), PrefixCache(ks, vs, key_valid, nxt)

    def decode_step(self, tokens: Tensor, sid_pos: Tensor, step: int, prefix: PrefixCache,
                    beams: BeamCache, num_beams: int) -> Tensor:
        """One new token per beam row (rows r = q * B + b): append to `beams`, return logits [R, V].

        `step` counts decoded tokens already in `beams` (0 for the first token after BOS).
        """
        r = tokens.shape[0]
        q = r // num_beams
        pos = prefix.next_position.repeat_interleave(num_beams) + step
        x = self.inputs(self.embed(tokens), pos, sid_pos)  # [R, h]
        pmask = prefix.key_valid[:, None, None, :]  # [Q, 1, 1, Tp]
        for i, blk in enumerate(self.blocks):
            qh, kh, vh = blk.split(x)  # [R, H, dh]
            beams.k[i] = torch.cat([beams.k[i], kh[:, :, None]], dim=2)  # [R, H, t+1, dh]
            beams.v[i] = torch.cat([beams.v[i], vh[:, :, None]], dim=2)
            hq, dh = qh.shape[1], qh.shape[2]
            qq = qh.view(q, num_beams, hq, dh)
            scale = dh ** -0.5
            s_pre = torch.einsum("qbhd,qhtd->qbht", qq, prefix.k[i]) * scale
            s_pre = s_pre.masked_fill(~pmask, float("-inf"))
            kb = beams.k[i].view(q, num_beams, hq, -1, dh)
            s_own = torch.einsum("qbhd,qbhtd->qbht", qq, kb) * scale
            scores = torch.cat([s_pre, s_own], dim=-1)
            w = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(qq.dtype)
            tp = s_pre.shape[-1]
            att = torch.einsum("qbht,qhtd->qbhd", w[..., :tp], prefix.v[i]) + torch.einsum(
                "qbht,qbhtd->qbhd", w[..., tp:], beams.v[i].view(q, num_beams, hq, -1, dh))
            x = blk.finish(x, att.reshape(r, hq * dh))
        return self.logits(x)

    def empty_beam_cache(self, rows: int, device, dtype) -> BeamCache:
        c = self.config
        z = torch.zeros(rows, c.heads, 0, c.hidden // c.heads, device=device, dtype=dtype)
        return BeamCache([z] * c.layers, [z] * c.layers)


@torch.no_grad()
def warm_start_tokens(weight: Tensor, token_init: Tensor, has_init: Optional[Tensor], init_norm: float, std: float,
                      seed: int, g: Optional[torch.Generator] = None) -> None:
    """Overwrite the rows of a token table [V, h] that have a warm start (`has_init`) with
    `token_init` [V, d] (codebook centres), projected to h by a fixed random orthonormal map when
    d != h and rescaled to a mean row norm of init_norm * std * sqrt(h)."""
    g = g if g is not None else torch.Generator().manual_seed(seed)
    init = token_init.detach().float().cpu()
    if init.shape[0] != weight.shape[0]:
        raise ValueError(f"token_init: {init.shape[0]} rows for vocab_size {weight.shape[0]}")
    h = weight.shape[1]
    if init.shape[1] != h:
        q, _ = torch.linalg.qr(torch.randn(max(init.shape[1], h), min(init.shape[1], h), generator=g,
                                           dtype=torch.float64))
        proj = (q if init.shape[1] >= h else q.T).float()
        init = init @ proj  # rows are rescaled below, so only directions matter
    has = torch.ones(init.shape[0], dtype=torch.bool) if has_init is None else has_init.cpu().bool()
    norms = init[has].norm(dim=1)
    if has.any() and float(norms.mean()) > 0:
        init = init * (init_norm * std * math.sqrt(h) / float(norms.mean()))
        weight[has] = init[has].to(device=weight.device, dtype=weight.dtype)
