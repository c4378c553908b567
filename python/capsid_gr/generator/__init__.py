"""The generator (SPEC §1, §6): item tokenization record -> token layout -> soft history inputs
-> causal Transformer with tied embeddings and KV-cached decoding."""

from .batch import IGNORE, Batch, embed_batch, make_batch, make_sequence_batch
from .config import GeneratorConfig
from .items import EOS, BOS, PAD, ItemTokenization, RoutingSource, from_capsid, from_paths, merge_gate_logits
from .model import BeamCache, Generator, PrefixCache, autocast
from .soft_input import ItemInputs, RoutingAdapter

__all__ = ["BOS", "Batch", "BeamCache", "EOS", "Generator", "GeneratorConfig", "IGNORE", "ItemInputs",
           "ItemTokenization", "PAD", "PrefixCache", "RoutingAdapter", "RoutingSource", "autocast", "embed_batch",
           "from_capsid", "from_paths", "make_batch", "make_sequence_batch", "merge_gate_logits"]
