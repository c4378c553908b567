"""Item-level sequence models: one causal encoder over history items, two heads.

`ItemEncoder` reads a user's history with one position per item (an item enters as one
vector), causal and pre-LN, with positions that let every query find "the last item":
`relative` (a learned per-head bias on the item distance i - j, T5-style, shared by all layers)
or `absolute` (a learned embedding of the distance from the end of the window, SASRec's
layout). Every position is trained as a query, so one window of k items gives k - 1 targets.

Two models sit on it:

* `EncDecGenerator` (SPEC §6, TIGER's form): an item is the sum of its SID-token embeddings;
  a small decoder emits the next item's tokens (then EOS), cross-attending to the encoder
  states up to the query's position. Token embeddings are tied between the encoder's item
  sums, the decoder's inputs and the output projection, which runs in float32. Decoding keeps
  the cross-attention keys and values once per query and a per-beam cache of the decoded
  tokens' self-attention keys and values (`EncDecRecommender`, through
  `capsid_kernels.beam_search` and its fused beam step).
* `SASRec` (the anchor of SPEC §8): item-id embeddings, full-softmax cross entropy over the
  catalogue, full ranking (`capsid_gr.anchors`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .items import BOS, EOS, FIRST_CODE, PAD, ItemTokenization
from ..checks import check_config, short

IGNORE = -100
POSITIONS = ("relative", "absolute")


def _check_sizes(cfg, names: Sequence[str]) -> None:
    for n in names:
        v = getattr(cfg, n)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{type(cfg).__name__}.{n}: expected an integer >= 1, got {short(v)}")
    if cfg.hidden % cfg.heads:
        raise ValueError(f"{type(cfg).__name__}: hidden={cfg.hidden} must be a multiple of heads={cfg.heads}")
    if not (isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1):
        raise ValueError(f"{type(cfg).__name__}.dropout: expected a number in [0, 1), got {short(cfg.dropout)}")
    if cfg.positions not in POSITIONS:
        raise ValueError(f"{type(cfg).__name__}.positions: expected one of {POSITIONS}, got {short(cfg.positions)}")


@dataclass(frozen=True)
class EncDecConfig:
    """The encoder-decoder generator. hidden/heads/ffn/dropout: both stacks (pre-LN, GELU);
    enc_layers over history items, dec_layers over the target's tokens; positions: the
    encoder's ("relative" or "absolute", see the module doc); max_len: longest history the
    position tables cover (SPEC §8: 50); warm_start: token rows start from the codebook
    centres (SPEC §6) rather than at random; init_std: random init; item_ids: a history item
    enters as its token sum plus a learned per-item embedding (the output side stays the
    SID tokens under the trie), so the encoder can tell apart items whose SIDs share tokens;
    item_features: a history item also enters as a learned linear map of its frozen item
    vector (the tokenizer's input, passed as `features`), so items with similar vectors enter
    alike even when their SIDs part early; tied_output: the output projection is the token
    embedding (TIGER, SPEC §6) or, when False, a separate matrix started from the same rows;
    label_smoothing: of the token cross entropy in training (0 = none)."""

    hidden: int = 128
    heads: int = 4
    enc_layers: int = 2
    dec_layers: int = 2
    ffn: int = 512
    dropout: float = 0.2
    positions: str = "relative"
    max_len: int = 50
    warm_start: bool = True
    init_std: float = 0.02
    item_ids: bool = False
    item_features: bool = False
    tied_output: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_config(self)
        _check_sizes(self, ("hidden", "heads", "enc_layers", "dec_layers", "ffn", "max_len"))
        ls = self.label_smoothing
        if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0 <= ls < 1:
            raise ValueError(f"EncDecConfig.label_smoothing: expected a number in [0, 1), got {short(ls)}")
        for n in ("item_ids", "item_features", "tied_output"):
            if not isinstance(getattr(self, n), bool):
                raise ValueError(f"EncDecConfig.{n}: expected a bool, got {short(getattr(self, n))}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """What a checkpoint must match to resume: every field, except that fields added after
        checkpoints were first written (item_features, tied_output, label_smoothing) are left out at their
        defaults, so those older checkpoints still resume."""
        d = self.to_dict()
        for name in LATER_FIELDS:
            if d[name] == EncDecConfig.__dataclass_fields__[name].default:
                del d[name]
        return d


LATER_FIELDS = ("item_features", "tied_output", "label_smoothing")


@dataclass(frozen=True)
class SASRecConfig:
    """The SASRec anchor (item ids, full-softmax cross entropy)."""

    hidden: int = 64
    heads: int = 2
    layers: int = 2
    ffn: int = 256
    dropout: float = 0.3
    positions: str = "absolute"
    max_len: int = 50
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_config(self)
        _check_sizes(self, ("hidden", "heads", "layers", "ffn", "max_len"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _heads(x: Tensor, heads: int) -> Tensor:
    """[..., T, h] -> [..., H, T, dh]"""
    *lead, t, h = x.shape
    return x.reshape(*lead, t, heads, h // heads).transpose(-3, -2)


def _merge(x: Tensor) -> Tensor:
    """[..., H, T, dh] -> [..., T, h]"""
    *lead, hh, t, dh = x.shape
    return x.transpose(-3, -2).reshape(*lead, t, hh * dh)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int, p: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(hidden)
        self.ff1, self.ff2, self.drop = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden), nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln(x))))))


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, p: float) -> None:
        super().__init__()
        self.heads, self.p = heads, p
        self.ln = nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(p)
        self.ff = FeedForward(hidden, ffn, p)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = (_heads(z, self.heads) for z in self.qkv(self.ln(x)).chunk(3, dim=-1))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype) if mask.is_floating_point() else mask,
                                             dropout_p=self.p if self.training else 0.0)
        return self.ff(x + self.drop(self.proj(_merge(att))))


class ItemEncoder(nn.Module):
    """Causal Transformer over item vectors [B, T, h], left-padded (key_valid [B, T])."""

    def __init__(self, hidden: int, heads: int, layers: int, ffn: int, dropout: float, positions: str,
                 max_len: int) -> None:
        super().__init__()
        self.heads, self.positions, self.max_len = heads, positions, max_len
        if positions == "relative":
            self.rel = nn.Embedding(max_len, heads)
        else:
            self.pos = nn.Embedding(max_len, hidden)
        self.ln_in = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        b, t, _ = x.shape
        ar = torch.arange(t, device=x.device)
        dist = ar[:, None] - ar[None, :]  # query i, key j: i - j
        allowed = (dist >= 0)[None] & key_valid[:, None, :]
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=x.device)[None]  # padded rows see themselves
        x = self.ln_in(x)
        if self.positions == "relative":
            bias = self.rel(dist.clamp(0, self.max_len - 1)).permute(2, 0, 1)  # [H, T, T]
            mask = torch.where(allowed[:, None], bias[None], torch.tensor(float("-inf"), device=x.device))
        else:
            x = x + self.pos((t - 1 - ar).clamp(max=self.max_len - 1))[None]
            mask = allowed[:, None]
        x = self.drop(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.ln_out(x)


class DecoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, p: float) -> None:
        super().__init__()
        self.heads, self.p = heads, p
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.cq, self.ckv, self.cproj = nn.Linear(hidden, hidden), nn.Linear(hidden, 2 * hidden), nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(p)
        self.ff = FeedForward(hidden, ffn, p)

    def cross_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory [Q, T, h] -> K, V [Q, H, T, dh]"""
        k, v = self.ckv(memory).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x: Tensor, ck: Tensor, cv: Tensor, cmask: Tensor) -> Tensor:
        """Teacher forcing: x [R, P, h], ck/cv [R, H, T, dh], cmask [R, 1, 1, T] (True = attend)."""
        dp = self.p if self.training else 0.0
        q, k, v = (_heads(z, self.heads) for z in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        x = x + self.drop(self.proj(_merge(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dp))))
        q = _heads(self.cq(self.ln2(x)), self.heads)
        x = x + self.drop(self.cproj(_merge(F.scaled_dot_product_attention(q, ck, cv, attn_mask=cmask, dropout_p=dp))))
        return self.ff(x)

    def step(self, x: Tensor, ck: Tensor, cv: Tensor, cmask: Tensor, cache: list, i: int, beams: int) -> Tensor:
        """One new token per beam row: x [R = Q * beams, h]; ck/cv [Q, H, T, dh] shared by a
        query's beams; cache[i] = (K, V) [R, H, t, dh] of the row's earlier tokens, extended."""
        r, h = x.shape
        q, k, v = (z.reshape(r, self.heads, 1, h // self.heads) for z in self.qkv(self.ln1(x)).chunk(3, dim=-1))
        if cache[i] is not None:
            k, v = torch.cat([cache[i][0], k], dim=2), torch.cat([cache[i][1], v], dim=2)
        cache[i] = (k, v)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).reshape(r, h))
        nq = r // beams
        q = self.cq(self.ln2(x)).reshape(nq, beams, self.heads, h // self.heads).transpose(1, 2)  # [Q, H, B, dh]
        att = F.scaled_dot_product_attention(q, ck, cv, attn_mask=cmask)  # the beams are the query axis
        x = x + self.cproj(att.transpose(1, 2).reshape(r, h))
        return self.ff(x)


def _init_weights(module: nn.Module, seed: int, std: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".bias") or ".ln" in name or name.startswith("ln") or "ln_" in name:
                p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _left_pad(seqs: Sequence[np.ndarray], width: Optional[int] = None, fill: int = -1) -> np.ndarray:
    t = max(1, width if width is not None else max((len(s) for s in seqs), default=1))
    out = np.full((len(seqs), t), fill, np.int64)
    for i, s in enumerate(seqs):
        s = np.asarray(s, np.int64)[-t:]
        if len(s):
            out[i, t - len(s):] = s
    return out


def window_tensors(windows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Training windows (item lists of >= 2 items) -> left-padded inputs [B, T] and next-item
    targets [B, T] (-1 = none): inputs are window[:-1], targets window[1:]."""
    inp = _left_pad([w[:-1] for w in windows])
    tgt = _left_pad([w[1:] for w in windows], inp.shape[1])
    return inp, tgt


class EncDecGenerator(nn.Module):
    """Encoder over history items (sum of their SID-token embeddings), decoder over the target's tokens."""

    def __init__(self, items: ItemTokenization, config: EncDecConfig = EncDecConfig(), *, seed: int = 0,
                 features=None) -> None:
        super().__init__()
        self.config = c = config
        self.vocab_size = items.vocab_size
        self.register_buffer("paths", torch.as_tensor(items.path_matrix()), persistent=False)  # [N, P]
        n_items = self.paths.shape[0]
        self.tok = nn.Embedding(items.vocab_size, c.hidden)
        self.item = nn.Embedding(n_items, c.hidden) if c.item_ids else None
        if c.item_features:
            if isinstance(features, Tensor):  # any device: the buffer moves with the module
                f = features.detach().to("cpu", torch.float32)
            else:
                f = None if features is None else torch.as_tensor(np.asarray(features, np.float32))
            if f is None or f.ndim != 2 or f.shape[0] != n_items or not bool(torch.isfinite(f).all()):
                got = ("nothing" if f is None else f"shape {list(f.shape)}" if f.ndim != 2 or f.shape[0] != n_items
                       else "a non-finite value")
                raise ValueError(f"EncDecGenerator(features=...): EncDecConfig.item_features needs a finite "
                                 f"[{n_items}, d] matrix of item vectors (one row per item), got {got}")
            self.register_buffer("features", f / f.norm(dim=1, keepdim=True).clamp(min=1e-12), persistent=False)
            self.feat = nn.Linear(f.shape[1], c.hidden, bias=False)
        else:
            self.features, self.feat = None, None
        self.encoder = ItemEncoder(c.hidden, c.heads, c.enc_layers, c.ffn, c.dropout, c.positions, c.max_len)
        self.dpos = nn.Embedding(self.paths.shape[1], c.hidden)
        self.ln_dec = nn.LayerNorm(c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.decoder = nn.ModuleList(DecoderLayer(c.hidden, c.heads, c.ffn, c.dropout) for _ in range(c.dec_layers))
        self.ln_f = nn.LayerNorm(c.hidden)
        _init_weights(self, seed, c.init_std)
        if c.warm_start and items.token_init is not None:
            from .model import warm_start_tokens

            warm_start_tokens(self.tok.weight, items.token_init, items.has_init, 1.0, c.init_std, seed)
        self.out = None if c.tied_output else nn.Parameter(self.tok.weight.detach().clone())

    @property
    def device(self) -> torch.device:
        return self.tok.weight.device

    def item_vectors(self, ids: Tensor) -> Tensor:
        """[...] item ids (-1 = padding) -> [..., h]: the sum of each item's token embeddings (EOS
        excluded), plus its item embedding when `config.item_ids`; zero for padding."""
        p = self.paths[ids.clamp(min=0)]
        keep = (p >= FIRST_CODE) & (ids >= 0)[..., None]
        x = (self.tok(p) * keep[..., None].to(self.tok.weight.dtype)).sum(-2)
        if self.item is not None:
            x = x + self.item(ids.clamp(min=0)) * (ids >= 0)[..., None].to(x.dtype)
        if self.feat is not None:
            x = x + self.feat(self.features[ids.clamp(min=0)]) * (ids >= 0)[..., None].to(x.dtype)
        return x

    def encode(self, items: Tensor) -> tuple[Tensor, Tensor]:
        valid = items >= 0
        return self.encoder(self.item_vectors(items), valid), valid

    def logits(self, y: Tensor) -> Tensor:
        """Tied output projection in float32 (beam scores need better than bf16's ~0.1 logit steps)."""
        w = self.tok.weight if self.out is None else self.out
        with torch.autocast(y.device.type, enabled=False):
            return F.linear(self.ln_f(y).float(), w.float())

    def _decoder_inputs(self, tokens: Tensor, start: int = 0) -> Tensor:
        pos = torch.arange(start, start + tokens.shape[-1], device=tokens.device)
        return self.drop(self.ln_dec(self.tok(tokens) + self.dpos(pos)))

    def loss(self, items: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        """items [B, T] left-padded history windows, targets [B, T] next items (-1 = none) ->
        mean next-token cross entropy over every target's tokens and EOS, and the token count."""
        memory, valid = self.encode(items)
        b_r, t_r = (targets >= 0).nonzero(as_tuple=True)
        lab = self.paths[targets[b_r, t_r]]  # [R, P]: tokens then EOS then PAD
        dec_in = torch.cat([torch.full_like(lab[:, :1], BOS), lab[:, :-1]], dim=1)
        t = items.shape[1]
        cmask = (torch.arange(t, device=items.device)[None] <= t_r[:, None]) & valid[b_r]  # [R, T]
        cmask = cmask[:, None, None]
        x = self._decoder_inputs(dec_in)
        for layer in self.decoder:
            ck, cv = layer.cross_kv(memory)
            x = layer(x, ck[b_r], cv[b_r], cmask)
        logits = self.logits(x)
        lab = lab.masked_fill(lab == PAD, IGNORE)
        n = int((lab != IGNORE).sum())
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1), ignore_index=IGNORE,
                               label_smoothing=float(self.config.label_smoothing)), n

    # ------------------------------------------------------------------ decoding

    def start(self, items: Tensor) -> tuple[Tensor, dict]:
        """Histories [Q, T] -> first-token logits [Q, V] and the decoding state."""
        memory, valid = self.encode(items)
        cross = [layer.cross_kv(memory) for layer in self.decoder]
        cmask = valid[:, None, None]  # [Q, 1, 1, T]
        x = self._decoder_inputs(torch.full((items.shape[0], 1), BOS, device=items.device))[:, 0]
        cache: list = [None] * len(self.decoder)
        for i, layer in enumerate(self.decoder):
            x = layer.step(x, *cross[i], cmask, cache, i, 1)
        return self.logits(x), {"cross": cross, "cmask": cmask, "cache": cache}

    def expand(self, state: dict, beams: int) -> None:
        state["cache"] = [(k.repeat_interleave(beams, 0), v.repeat_interleave(beams, 0)) for k, v in state["cache"]]

    def step(self, tokens: Tensor, position: int, state: dict, beams: int) -> Tensor:
        """tokens [Q * beams] at decoder position `position` (BOS is 0) -> logits [Q * beams, V]."""
        x = self._decoder_inputs(tokens[:, None], position)[:, 0]
        for i, layer in enumerate(self.decoder):
            x = layer.step(x, *state["cross"][i], state["cmask"], state["cache"], i, beams)
        return self.logits(x)

    @staticmethod
    def reorder(state: dict, parent: Tensor) -> None:
        state["cache"] = [(k.index_select(0, parent), v.index_select(0, parent)) for k, v in state["cache"]]


class SASRec(nn.Module):
    """Causal Transformer over item ids with full-softmax cross entropy (the SPEC §8 anchor)."""

    def __init__(self, n_items: int, config: SASRecConfig = SASRecConfig(), *, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        self.n_items = n_items
        self.item = nn.Embedding(n_items, c.hidden)
        self.encoder = ItemEncoder(c.hidden, c.heads, c.layers, c.ffn, c.dropout, c.positions, c.max_len)
        _init_weights(self, seed, c.init_std)

    @property
    def device(self) -> torch.device:
        return self.item.weight.device

    def encode(self, items: Tensor) -> Tensor:
        valid = items >= 0
        x = self.item(items.clamp(min=0)) * valid[..., None].to(self.item.weight.dtype)
        return self.encoder(x, valid)

    def scores(self, h: Tensor) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):
            return F.linear(h.float(), self.item.weight.float())

    def loss(self, items: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        h = self.encode(items)
        sel = targets >= 0
        return F.cross_entropy(self.scores(h[sel]), targets[sel]), int(sel.sum())


def attention_backends():
    """Scaled dot-product attention without cuDNN's fused kernel (flash, memory-efficient, math).
    With 8 Beauty runs sharing one H100 (2026-12-07), cuDNN attention failed in 6 of them
    (`mha_graph.execute(...).is_good()`, a known intermittent cuDNN SDPA failure; disabling that
    backend is the upstream workaround); the other kernels serve these shapes."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cuda = torch.backends.cuda
    keep = [b for b, on in ((SDPBackend.FLASH_ATTENTION, cuda.flash_sdp_enabled()),
                            (SDPBackend.EFFICIENT_ATTENTION, cuda.mem_efficient_sdp_enabled()),
                            (SDPBackend.MATH, cuda.math_sdp_enabled())) if on]  # what the caller left on
    return sdpa_kernel(keep or [SDPBackend.MATH])


def _autocast(device: torch.device):
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


class _Timed:
    def run(self, histories, batch_size, fn, top_k) -> tuple[np.ndarray, dict]:
        out = np.full((len(histories), top_k), -1, np.int64)
        dev = self.model.device
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        with attention_backends():
            for lo in range(0, len(histories), batch_size):
                chunk = histories[lo: lo + batch_size]
                width = min(self.max_history, max((len(h) for h in chunk), default=1))
                out[lo: lo + len(chunk)] = fn(torch.as_tensor(_left_pad(chunk, width), device=dev))
        sync()
        s = time.perf_counter() - start
        return out, {"decode_seconds": s, "latency_ms_per_query": 1e3 * s / max(len(histories), 1),
                     "batch_size": batch_size}


class EncDecRecommender(_Timed):
    """Top-K items of the encoder-decoder generator under the trie (SPEC §7).

    Two optional re-rankings of the finished beam (the search itself is unchanged), both off by
    default: with `popularity` (training counts [n_items]) and `prior_alpha` > 0, the popularity
    correction of logit adjustment, - prior_alpha * log(1 + count); with `similarity` (item
    vectors [n_items, d]) and `sim_beta` > 0, + sim_beta * cos(item, the query's last history
    item). Each is added to log P(item | history)."""

    def __init__(self, model: EncDecGenerator, trie, max_history: int = 50, popularity=None,
                 prior_alpha: float = 0.0, similarity=None, sim_beta: float = 0.0) -> None:
        self.model, self.trie, self.max_history = model, trie, max_history
        self.log_prior = None if popularity is None else torch.log1p(torch.as_tensor(
            np.asarray(popularity), dtype=torch.float32).clamp_min(0))
        self.unit = None if similarity is None else F.normalize(torch.as_tensor(
            np.asarray(similarity, np.float32)), dim=1)
        self.prior_alpha, self.sim_beta = prior_alpha, sim_beta

    def _rerank(self, items: Tensor, scores: Tensor, top_k: int, last: Optional[Tensor] = None) -> Tensor:
        """items/scores [Q, B] (-1 / -inf past the last item), last [Q] (the last history item,
        -1 = none) -> the top_k by the corrected score, ties in beam order."""
        safe = items.clamp_min(0)
        adjusted = scores
        if self.prior_alpha > 0:
            if self.log_prior is None:
                raise ValueError("EncDecRecommender.prior_alpha: a correction needs popularity=, got None")
            adjusted = adjusted - self.prior_alpha * self.log_prior.to(items.device)[safe]
        if self.sim_beta > 0:
            if self.unit is None or last is None:
                raise ValueError("EncDecRecommender.sim_beta: a similarity term needs similarity= and the "
                                 "queries' last items, got None")
            unit = self.unit.to(items.device)
            cos = (unit[safe] * unit[last.clamp_min(0)][:, None, :]).sum(-1)
            adjusted = adjusted + self.sim_beta * torch.where(last[:, None] >= 0, cos, torch.zeros_like(cos))
        adjusted = torch.where(items >= 0, adjusted, torch.full_like(scores, -math.inf))
        order = torch.sort(adjusted, dim=1, descending=True, stable=True).indices[:, :top_k]
        return torch.gather(items, 1, order)

    def _beam(self, items: Tensor, num_beams: int, top_k: int, backend: str):
        """One batch of left-padded histories [Q, L] -> the trie-constrained beam search's result."""
        import capsid_kernels as ck

        model, dev = self.model, self.model.device
        state: dict = {}

        def step_fn(beams) -> Tensor:
            with _autocast(dev):
                if beams.step == 0:
                    logits, st = model.start(items)
                    state.update(st)
                    model.expand(state, num_beams)
                    return logits.repeat_interleave(num_beams, dim=0)
                return model.step(beams.tokens, beams.step, state, num_beams)

        return ck.beam_search(step_fn, self.trie, num_beams, items.shape[0], top_k=top_k,
                              reorder_cache=lambda parent: model.reorder(state, parent), backend=backend, device=dev)

    @torch.no_grad()
    def recommend(self, histories: Sequence[np.ndarray], num_beams: int = 50, top_k: Optional[int] = None,
                  batch_size: int = 256, backend: str = "auto") -> tuple[np.ndarray, dict]:
        self.model.eval()
        top_k = top_k or num_beams
        adjust = self.prior_alpha > 0 or self.sim_beta > 0

        def decode(items: Tensor) -> np.ndarray:
            res = self._beam(items, num_beams, num_beams if adjust else top_k, backend)
            if adjust:  # histories are left-padded: the last column is each query's last item
                return self._rerank(res.items, res.item_scores, top_k, items[:, -1]).cpu().numpy()
            return res.items.cpu().numpy()

        out, timing = self.run(histories, batch_size, decode, top_k)
        timing.update(num_beams=num_beams, steps=self.trie.max_len + 1)
        return out, timing

    @torch.no_grad()
    def beam_lists(self, histories: Sequence[np.ndarray], num_beams: int = 50, batch_size: int = 256,
                   backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """The finished beam per query before any re-ranking: items [Q, num_beams] (-1 past the
        last item) and their log P(item | history) (-inf there), float32, best first. What
        `recommend` ranks, kept whole so that re-rankings can be studied offline."""
        self.model.eval()
        scores = np.full((len(histories), num_beams), -np.inf, np.float32)
        done = [0]

        def decode(items: Tensor) -> np.ndarray:
            res = self._beam(items, num_beams, num_beams, backend)
            scores[done[0]: done[0] + items.shape[0]] = res.item_scores.float().cpu().numpy()
            done[0] += items.shape[0]
            return res.items.cpu().numpy()

        out, _ = self.run(histories, batch_size, decode, num_beams)
        return out, scores


class SASRecRecommender(_Timed):
    """Full-catalogue ranking by SASRec's last-position scores."""

    def __init__(self, model: SASRec, max_history: int = 50) -> None:
        self.model, self.max_history = model, max_history

    @torch.no_grad()
    def recommend(self, histories: Sequence[np.ndarray], num_beams: int = 50, top_k: Optional[int] = None,
                  batch_size: int = 256, backend: str = "auto") -> tuple[np.ndarray, dict]:
        self.model.eval()
        top_k = min(top_k or num_beams, self.model.n_items)

        def rank(items: Tensor) -> np.ndarray:
            with _autocast(self.model.device):
                h = self.model.encode(items)[:, -1]
            return self.model.scores(h).topk(top_k, dim=1).indices.cpu().numpy()

        return self.run(histories, batch_size, rank, top_k)
