"""Where PAD, BOS, EOS and the SID code tokens sit in a caller's vocabulary.

The trie and the beam step number tokens one way: PAD 0, BOS 1, EOS 2, code tokens from 3
(``FIRST_CODE``). Most generative-recommendation vocabularies do not: a T5 has PAD 0 (also its
decoder start) and EOS 1, and SID codes are a block of added tokens after the text vocabulary.
A :class:`TokenLayout` says where those tokens are; the decoding entry points
(``beam_search(..., layout=)``, ``TrieLogitsProcessor(..., layout=)``) translate at their
boundary, so the caller's model, logits and generated ids stay in its own numbering:

    layout = TokenLayout(pad=0, bos=0, eos=1, first_code=32100, num_codes=1024)
    trie = build_trie(layout.trie_paths(sid_token_rows), vocab_size=layout.trie_vocab_size)

Code tokens are one contiguous block ``first_code .. first_code + num_codes - 1`` of the
caller's ids; the caller's code ``first_code + c`` is the trie's ``FIRST_CODE + c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .trie import BOS, EOS, FIRST_CODE, PAD
from .._validate import short


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class TokenLayout:
    """The caller's ids of PAD, BOS (the decoder start token), EOS and the first SID code, and
    how many code tokens there are (``None``: as many as the trie has). ``pad`` may equal
    ``bos`` (T5); neither may equal ``eos`` or fall inside the code block."""

    pad: int = PAD
    bos: int = BOS
    eos: int = EOS
    first_code: int = FIRST_CODE
    num_codes: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("pad", "bos", "eos", "first_code"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise ValueError(f"TokenLayout.{name}: expected an integer >= 0, got {short(v)}")
        if self.num_codes is not None and (not _is_int(self.num_codes) or self.num_codes < 1):
            raise ValueError(f"TokenLayout.num_codes: expected None or an integer >= 1, got {short(self.num_codes)}")
        if self.eos in (self.pad, self.bos):
            raise ValueError(f"TokenLayout.eos: expected an id other than pad ({self.pad}) and bos ({self.bos}), "
                             f"got {self.eos}")
        if self.num_codes is not None:
            end = self.first_code + self.num_codes
            for name in ("pad", "bos", "eos"):
                v = getattr(self, name)
                if self.first_code <= v < end:
                    raise ValueError(f"TokenLayout.{name}: {v} lies inside the code block "
                                     f"[{self.first_code}, {end}); special tokens must be outside it")

    @property
    def is_native(self) -> bool:
        """The trie's own numbering: nothing to translate."""
        return (self.pad, self.bos, self.eos, self.first_code) == (PAD, BOS, EOS, FIRST_CODE)

    @property
    def trie_vocab_size(self) -> int:
        """The ``vocab_size`` to build the trie with (needs ``num_codes``)."""
        if self.num_codes is None:
            raise ValueError("TokenLayout.num_codes: needed for trie_vocab_size; give the number of SID code tokens")
        return FIRST_CODE + self.num_codes

    def min_vocab(self, trie_vocab_size: int) -> int:
        """Fewest logit columns a caller's model must have for a trie of ``trie_vocab_size``."""
        return max(self.pad, self.bos, self.eos, self.first_code + trie_vocab_size - FIRST_CODE - 1) + 1

    def check_trie(self, trie_vocab_size: int) -> None:
        if self.num_codes is not None and FIRST_CODE + self.num_codes != trie_vocab_size:
            raise ValueError(f"layout: num_codes={self.num_codes} gives a trie vocabulary of "
                             f"{FIRST_CODE + self.num_codes}, but the trie has vocab_size={trie_vocab_size}")
        n = trie_vocab_size - FIRST_CODE
        for name in ("pad", "bos", "eos"):
            v = getattr(self, name)
            if self.first_code <= v < self.first_code + n:
                raise ValueError(f"TokenLayout.{name}: {v} lies inside the code block "
                                 f"[{self.first_code}, {self.first_code + n}) of this trie")

    def to_caller(self, trie_vocab_size: int, device=None) -> Tensor:
        """int64 [trie_vocab_size]: the caller's id of each trie token."""
        self.check_trie(trie_vocab_size)
        ids = torch.arange(trie_vocab_size, dtype=torch.int64, device=device) - FIRST_CODE + self.first_code
        ids[PAD], ids[BOS], ids[EOS] = self.pad, self.bos, self.eos
        return ids

    def to_trie(self, trie_vocab_size: int, caller_vocab: int, device=None) -> Tensor:
        """int64 [caller_vocab]: the trie token of each caller id, -1 for ids the trie has no
        token for (text tokens). The caller's PAD maps to PAD even where it is also BOS."""
        self.check_trie(trie_vocab_size)
        need = self.min_vocab(trie_vocab_size)
        if caller_vocab < need:
            raise ValueError(f"scores: expected at least {need} columns for this layout and trie, got {caller_vocab}")
        out = torch.full((caller_vocab,), -1, dtype=torch.int64, device=device)
        n = trie_vocab_size - FIRST_CODE
        out[self.first_code: self.first_code + n] = torch.arange(FIRST_CODE, trie_vocab_size, device=device)
        out[self.bos], out[self.eos], out[self.pad] = BOS, EOS, PAD
        return out

    def trie_logits(self, logits: Tensor, to_caller: Tensor, rest: Tensor) -> Tensor:
        """Caller logits [R, V] -> the trie's [R, trie_vocab_size] with the same softmax: each trie
        token takes its caller column, and the BOS column (never a candidate) takes the
        log-sum-exp of every caller column no trie token reads (text tokens, a separate BOS), so
        every caller token counts once in the normaliser. ``to_caller`` from :meth:`to_caller`,
        ``rest`` from :meth:`rest_columns`."""
        out = logits.index_select(1, to_caller)
        if rest.numel():
            out[:, BOS] = torch.logsumexp(logits.index_select(1, rest).float(), dim=1).to(out.dtype)
        else:
            out[:, BOS] = float("-inf")
        return out

    def rest_columns(self, to_caller: Tensor, caller_vocab: int) -> Tensor:
        """int64: the caller ids that no trie token other than BOS maps to."""
        used = torch.zeros(caller_vocab, dtype=torch.bool, device=to_caller.device)
        used[to_caller[torch.arange(to_caller.numel(), device=to_caller.device) != BOS]] = True
        return (~used).nonzero().squeeze(1)

    def trie_paths(self, paths: Tensor) -> Tensor:
        """Item rows in the caller's ids (codes, then EOS, then PAD) -> the trie's numbering.
        A token that is neither a code of this layout nor PAD/EOS raises, naming the row."""
        if not isinstance(paths, Tensor):
            paths = torch.as_tensor(paths)
        if paths.dim() != 2 or paths.dtype.is_floating_point or paths.dtype == torch.bool:
            raise ValueError(f"paths: expected an integer matrix [N, L], got {paths.dtype} {tuple(paths.shape)}")
        p = paths.long()
        is_code = p >= self.first_code
        if self.num_codes is not None:
            is_code &= p < self.first_code + self.num_codes
        out = torch.where(is_code, p - self.first_code + FIRST_CODE, torch.full_like(p, -1))
        out = torch.where(p == self.eos, EOS, torch.where(p == self.pad, PAD, out))
        bad = out < 0
        if bool(bad.any()):
            i, j = (int(x) for x in bad.nonzero()[0])
            raise ValueError(f"paths: row {i} has token {int(p[i, j])} at position {j}, which is not a code "
                             f"(from {self.first_code}), EOS ({self.eos}) or PAD ({self.pad}) of the layout")
        return out


NATIVE = TokenLayout()
"""The trie's own numbering (no translation)."""
