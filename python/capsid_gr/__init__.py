"""capsid_gr: the reference generative-recommendation system on the capsid_kernels package.

CAPSID soft-routed variable-length semantic IDs, the baselines, SemanticBPE, the generators, training,
trie-constrained retrieval and the `capsid` command. Its dependencies beyond torch and numpy are the
`gr` extra (``pip install "capsid-kernels[gr]"``); the kernel package needs none of them.
"""

from importlib.util import find_spec as _find_spec

# import name -> distribution name (what pip installs)
_MISSING = [dist for m, dist in (("tqdm", "tqdm"), ("safetensors", "safetensors"), ("sklearn", "scikit-learn"),
                                 ("scipy", "scipy")) if _find_spec(m) is None]
if _MISSING:
    raise ImportError(f"capsid_gr needs the 'gr' extra, missing: {', '.join(_MISSING)}; "
                      "install it with: pip install \"capsid-kernels[gr]\"")
