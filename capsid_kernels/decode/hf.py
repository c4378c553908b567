"""Trie constraint for Hugging Face ``generate`` (optional dependency, imported lazily).

    from capsid_kernels.decode.hf import TrieLogitsProcessor
    trie = capsid_kernels.build_trie(sid_paths, vocab_size=model.config.vocab_size).to("cuda")
    out = model.generate(input_ids, num_beams=50, num_return_sequences=50, max_new_tokens=trie.max_len + 1,
                         logits_processor=[TrieLogitsProcessor(trie)], length_penalty=0.0,
                         eos_token_id=2, pad_token_id=0, decoder_start_token_id=1)

Each call walks every row's generated tokens down the trie at once (a vectorised binary
search per position over the sorted child tokens) and keeps only the children's scores:
no per-beam Python loop and no host synchronisation.

A model whose vocabulary does not put PAD/BOS/EOS at 0/1/2 and the codes from 3 passes its
layout; ``input_ids`` and ``scores`` stay in the model's ids (a T5 with SID tokens added
after its 32,100 text tokens):

    layout = TokenLayout(pad=0, bos=0, eos=1, first_code=32100, num_codes=1024)
    trie = capsid_kernels.build_trie(layout.trie_paths(rows), vocab_size=layout.trie_vocab_size)
    model.generate(..., logits_processor=[TrieLogitsProcessor(trie, layout=layout)])
"""

from __future__ import annotations

import torch
from torch import Tensor

from typing import Optional

from .layout import TokenLayout
from .trie import BOS, EOS, PAD, Trie
from .._validate import short


def trie_nodes(trie: Trie, generated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Walk rows of generated tokens [R, t] from the root: (node int64, finished, valid)."""
    rows, steps = generated.shape
    dev = generated.device
    node = torch.zeros(rows, dtype=torch.int64, device=dev)
    finished = torch.zeros(rows, dtype=torch.bool, device=dev)
    valid = torch.ones(rows, dtype=torch.bool, device=dev)
    cs = trie.child_start.long()
    toks = trie.token.long()
    inner_max = max(trie.num_inner - 1, 0)
    iters = max(int(trie.max_fanout), 1).bit_length()
    for col in range(steps):
        tok = generated[:, col].long()
        live = valid & ~finished
        took_eos = live & (tok == EOS) & trie.is_end(node)
        inner = node < trie.num_inner
        lo = torch.where(inner, cs[node.clamp(max=inner_max)], 0)
        hi = torch.where(inner, cs[node.clamp(max=inner_max) + 1], 0)
        a, b = lo.clone(), hi.clone()
        for _ in range(iters):  # first child with token >= tok
            active = a < b
            mid = (a + b) // 2
            less = active & (toks[mid.clamp(max=toks.numel() - 1)] < tok)
            a = torch.where(less, mid + 1, a)
            b = torch.where(active & ~less, mid, b)
        found = (a < hi) & (toks[a.clamp(max=toks.numel() - 1)] == tok)
        step_ok = took_eos | found | (finished & (tok == PAD))
        valid = valid & (step_ok | finished)
        node = torch.where(live & found & ~took_eos, a, node)
        finished = finished | took_eos
    return node, finished, valid


def allowed_scores(trie: Trie, node: Tensor, finished: Tensor, valid: Tensor, scores: Tensor) -> Tensor:
    """``scores`` kept on each row's allowed tokens (children, EOS at ends, PAD once finished), -inf elsewhere."""
    f = max(int(trie.max_fanout), 1)
    live = valid & ~finished
    inner = node < trie.num_inner
    inner_max = max(trie.num_inner - 1, 0)
    cs = trie.child_start.long()
    lo = torch.where(inner & live, cs[node.clamp(max=inner_max)], 0)
    hi = torch.where(inner & live, cs[node.clamp(max=inner_max) + 1], 0)
    is_end = trie.is_end(node) & live
    rank = torch.arange(f, device=scores.device)
    count = is_end.long() + hi - lo
    child = (lo - is_end.long())[:, None] + rank[None, :]
    tok = torch.where(is_end[:, None] & (rank[None, :] == 0), EOS,
                      trie.token.long()[child.clamp(0, trie.num_nodes - 1)])
    ok = rank[None, :] < count[:, None]
    tok = torch.where(ok, tok, tok[:, :1])  # padding slots repeat the first allowed token
    tok = torch.where((valid & finished)[:, None], PAD, tok)
    keep = (live & (count > 0)) | (valid & finished)
    out = torch.full_like(scores, float("-inf"))
    out.scatter_(1, tok, scores.gather(1, tok))
    return torch.where(keep[:, None], out, float("-inf"))


class TrieLogitsProcessor:
    """``LogitsProcessor``-style callable: ``(input_ids [R, t], scores [R, V]) -> scores``.

    ``prefix_len`` tokens at the start of each row (the decoder start token) are skipped.
    ``scores`` may have more columns than the trie's tokens need (models pad their vocabulary,
    or hold text tokens); the extra tokens are never allowed. ``layout`` (default: the trie's
    own numbering) says where the model keeps PAD, EOS and the code tokens. Fewer columns, a
    prefix longer than the rows, or ``input_ids`` and ``scores`` with different row counts
    raise naming the argument.
    """

    def __init__(self, trie: Trie, prefix_len: int = 1, layout: Optional[TokenLayout] = None):
        if not isinstance(trie, Trie):
            raise TypeError(f"trie: expected a capsid_kernels Trie, got {type(trie).__name__}")
        if not isinstance(prefix_len, int) or isinstance(prefix_len, bool) or prefix_len < 0:
            raise ValueError(f"prefix_len: expected an integer >= 0, got {short(prefix_len)}")
        if layout is not None and not isinstance(layout, TokenLayout):
            raise TypeError(f"layout: expected None or a TokenLayout, got {type(layout).__name__}")
        layout = layout or TokenLayout()
        layout.check_trie(trie.vocab_size)
        self.trie = trie
        self.prefix_len = prefix_len
        self.layout = layout
        self._maps: dict = {}

    def check_args(self, input_ids: Tensor, scores: Tensor) -> None:
        """Shapes and dtypes only (no synchronisation)."""
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids: expected an integer tensor [R, t], got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")
        if scores.dim() != 2 or not scores.dtype.is_floating_point:
            raise ValueError(f"scores: expected a float tensor [R, V], got {scores.dtype} {tuple(scores.shape)}")
        if scores.shape[0] != input_ids.shape[0]:
            raise ValueError(f"scores: expected {input_ids.shape[0]} rows (one per row of input_ids), "
                             f"got {scores.shape[0]}")
        need = self.layout.min_vocab(self.trie.vocab_size)
        if scores.shape[1] < need:
            raise ValueError(f"scores: expected V >= {need} columns (the trie's {self.trie.vocab_size} tokens in "
                             f"this layout), got {scores.shape[1]}; build the trie with the model's code count")
        if input_ids.shape[1] < self.prefix_len:
            raise ValueError(f"prefix_len: expected at most the {input_ids.shape[1]} tokens of input_ids, got "
                             f"{self.prefix_len}")

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self.check_args(input_ids, scores)
        trie = self.trie if self.trie.device == scores.device else self.trie.to(scores.device)
        self.trie = trie
        generated = input_ids[:, self.prefix_len:]
        if self.layout.is_native:
            node, finished, valid = trie_nodes(trie, generated)
            return allowed_scores(trie, node, finished, valid, scores)
        key = (scores.device, scores.shape[1])
        if key not in self._maps:
            to_caller = self.layout.to_caller(trie.vocab_size, scores.device)
            keep = torch.arange(trie.vocab_size, device=scores.device) != BOS  # BOS is never allowed
            self._maps[key] = (self.layout.to_trie(trie.vocab_size, scores.shape[1], scores.device), to_caller,
                               keep.nonzero().squeeze(1))
        to_trie, to_caller, cols = self._maps[key]
        g = generated.long()
        inside = (g >= 0) & (g < to_trie.numel())  # an id outside the model's vocabulary is no trie token
        mapped = torch.where(inside, to_trie[g.clamp(0, to_trie.numel() - 1)], torch.full_like(g, -1))
        node, finished, valid = trie_nodes(trie, mapped)  # text tokens (-1) end the row
        inner = allowed_scores(trie, node, finished, valid, scores.index_select(1, to_caller))
        out = torch.full_like(scores, float("-inf"))
        out[:, to_caller[cols]] = inner[:, cols]
        return out


def as_logits_processor_list(trie: Trie, prefix_len: int = 1, layout: Optional[TokenLayout] = None):
    """A ``transformers.LogitsProcessorList`` holding the trie constraint (needs transformers)."""
    from transformers import LogitsProcessorList  # noqa: PLC0415 (optional dependency)

    return LogitsProcessorList([TrieLogitsProcessor(trie, prefix_len, layout)])
