"""The tokenizers the CLI and the pipeline can train, by name: the one registry of names.

CAPSID, its SPEC §9 ablations (each changes one thing from CAPSID + SemanticBPE), CAPSID
without SemanticBPE, CAPSID with the HaMR repulsion in Stage 1, and the baselines
(RQ-KMeans, GAOQ, RQ-VAE, RQ-VAE + HaMR). A CAPSID variant is (tokenizer config overrides,
Stage-1 overrides, SemanticBPE overrides); the variants are data, not code paths. A variant
whose Stage-1 lambda_bpe is 0 trains no merge gate and uses no merges.

`capsid tokenize --tokenizer` and `capsid pipeline --tokenizer` both take these names;
ALIASES keeps the pipeline's former short names (capsid+bpe, hard, t1, ...) working, mapped
here and nowhere else.
"""

from __future__ import annotations

NO_EARLY_STOP = {"tau": 2.0, "eps": -1.0}
"""q < 1 always and ||r|| >= 0: every item runs to L_max, the fixed-length ablation."""


CAPSID_VARIANTS: dict[str, tuple[dict, dict, dict]] = {
    "capsid": ({}, {}, {}),
    "capsid-nobpe": ({}, {"lambda_bpe": 0.0}, {}),
    "capsid-hard": ({"mode": "hard"}, {}, {}),
    "capsid-t1": ({"rounds": 1}, {}, {}),
    "capsid-len2": ({"max_length": 2, **NO_EARLY_STOP}, {}, {}),
    "capsid-len4": ({"max_length": 4, **NO_EARLY_STOP}, {}, {}),
    "capsid-nospread": ({}, {"lambda_spread": 0.0}, {}),
    "capsid-freqbpe": ({}, {}, {"alpha": 1.0}),
    "capsid-hamr": ({}, {"hamr": True}, {}),  # True: HaMRConfig()'s defaults (see capsid_variant)
    "capsid-dedup": ({}, {}, {}),  # Stage 1 as capsid; the generator's paths get DISAMBIGUATED
    "capsid-unique": ({}, {"stop_rule": "unique"}, {}),  # the uniqueness-aware stop, in Stage 1 too
}
DISAMBIGUATED = frozenset({"capsid-dedup", "capsid-unique"})
"""CAPSID variants whose colliding items get a TIGER-style disambiguation token in the
generator's paths (`from_capsid(disambiguate=True)`). capsid-dedup's SIDs and diagnostics are
capsid's. `capsid-unique` ends every Stage-1 epoch and the fit with the uniqueness-aware stop (SPEC §3,
`tokenizer.inference.unique_stop_tokenize`; Stage1Config.stop_rule): an item sharing its SID so far
routes on, so epoch selection and the SemanticBPE pair counts see those SIDs; only the items still
colliding at L_max get the disambiguation token."""
BASELINES = ("rqkmeans", "gaoq", "rqvae", "rqvae-hamr")
TOKENIZERS = tuple(CAPSID_VARIANTS) + BASELINES

ALIASES: dict[str, str] = {
    "capsid+bpe": "capsid",
    "hard": "capsid-hard",
    "t1": "capsid-t1",
    "len2": "capsid-len2",
    "len4": "capsid-len4",
    "nospread": "capsid-nospread",
    "freqbpe": "capsid-freqbpe",
    "nobpe": "capsid-nobpe",
    "hamr": "capsid-hamr",
}
"""Short names -> registry names (the pipeline's former VARIANTS). The pipeline's old
`capsid` (no SemanticBPE) is `capsid-nobpe` now: `capsid` means CAPSID + SemanticBPE
everywhere."""


def capsid_variant(name: str) -> tuple[dict, dict, dict]:
    """A CAPSID variant's (tokenizer, Stage-1, SemanticBPE) overrides, ready for the configs:
    `"hamr": True` becomes HaMRConfig() here, so importing the registry stays cheap (no torch)."""
    tok, st1, bpe = CAPSID_VARIANTS[canonical(name)]
    st1 = dict(st1)
    if st1.get("hamr") is True:
        from ..tokenizer.hamr import HaMRConfig

        st1["hamr"] = HaMRConfig()
    return dict(tok), st1, dict(bpe)


def canonical(name: str) -> str:
    """A registry name for `name` (itself or its alias); ValueError for an unknown name."""
    name = name.strip()
    name = ALIASES.get(name, name)
    if name not in TOKENIZERS:
        raise ValueError(f"--tokenizer: unknown {name!r}; choose from {', '.join(TOKENIZERS)} "
                         f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return name


def parse_tokenizers(text: str) -> list[str]:
    """Comma-separated names (or aliases) -> registry names, in order, without repeats."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--tokenizer: unknown {text!r}; choose from {', '.join(TOKENIZERS)} "
                         "(comma-separated for several)")
    bad = [t for t in names if ALIASES.get(t, t) not in TOKENIZERS]
    if bad:
        raise ValueError(f"--tokenizer: unknown {bad}; choose from {', '.join(TOKENIZERS)} "
                         "(comma-separated for several)")
    return list(dict.fromkeys(canonical(t) for t in names))

