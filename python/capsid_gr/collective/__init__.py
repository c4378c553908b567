"""Process-group plumbing every stage may use (foundation; imports nothing of capsid_gr above
`atomic`): rank/world from torchrun's environment, sharding, the collectives Stage 1 and
Stage 2 call on the `DistContext` they are handed, and the differentiable gather of a per-rank
forward pass (Stage 1).

    context   DistContext, distributed(), shard_bounds
    gather    gather_forward: a per-rank forward pass gathered into the global batch, differentiably

The launcher and the sharded jobs that use it live above the stages, in capsid_gr.distributed.
Importing this package touches no GPU and joins no process group.
"""

from .context import DistContext, distributed, shard_bounds
from .gather import gather_forward

__all__ = ["DistContext", "distributed", "gather_forward", "shard_bounds"]
