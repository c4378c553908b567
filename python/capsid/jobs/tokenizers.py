"""The tokenizers the pipeline can train, by name: CAPSID, its SPEC §9 ablations, RQ-KMeans.

A CAPSID variant is (tokenizer config overrides, Stage-1 overrides, SemanticBPE overrides);
the variants are data, not code paths.
"""

from __future__ import annotations

NO_EARLY_STOP = {"tau": 2.0, "eps": -1.0}
"""q < 1 always and ||r|| >= 0: every item runs to L_max, the fixed-length ablation."""

CAPSID_VARIANTS: dict[str, tuple[dict, dict, dict]] = {
    "capsid": ({}, {}, {}),
    "capsid-hard": ({"mode": "hard"}, {}, {}),
    "capsid-t1": ({"rounds": 1}, {}, {}),
    "capsid-len2": ({"max_length": 2, **NO_EARLY_STOP}, {}, {}),
    "capsid-len4": ({"max_length": 4, **NO_EARLY_STOP}, {}, {}),
    "capsid-nospread": ({}, {"lambda_spread": 0.0}, {}),
    "capsid-freqbpe": ({}, {}, {"alpha": 1.0}),
}
BASELINES = ("rqkmeans",)
TOKENIZERS = tuple(CAPSID_VARIANTS) + BASELINES


def parse_tokenizers(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TOKENIZERS]
    if bad or not names:
        raise ValueError(f"--tokenizer: unknown {bad or text!r}; choose from {', '.join(TOKENIZERS)} "
                         "(comma-separated for several)")
    return names
