"""Beyond one GPU (issue 9): torch.distributed process groups for Stage 1, Stage 2, catalogue
tokenization and evaluation, launched by torchrun.

    context   rank/world from torchrun's environment, sharding, the collectives the stages use
    gather    a per-rank forward pass gathered into the global batch, differentiably (Stage 1)
    tokenize  sharded catalogue tokenization, bit-identical to one process
    evaluate  sharded beam evaluation, metrics equal to one process
    run       `python -m capsid_gr.distributed.run` (and `capsid distributed`): the launcher

Importing this package touches no GPU and joins no process group.
"""

from .context import DistContext, distributed, shard_bounds

__all__ = ["DistContext", "distributed", "shard_bounds"]
