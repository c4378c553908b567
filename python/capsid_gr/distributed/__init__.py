"""Beyond one GPU (issue 9): the torchrun launcher and the sharded jobs of the runs stage.

    tokenize  sharded catalogue tokenization, bit-identical to one process
    run       `python -m capsid_gr.distributed.run` (and `capsid distributed`): the launcher

What the stages themselves use lives lower down: the process-group context and the
differentiable gather in capsid_gr.collective (foundation), sharded beam evaluation in
capsid_gr.eval.sharded (retrieval). `DistContext`, `distributed` and `shard_bounds` are
re-exported here from capsid_gr.collective so `from capsid_gr.distributed import DistContext`
keeps working (a shim; new code imports capsid_gr.collective).

Importing this package touches no GPU and joins no process group.
"""

from ..collective import DistContext, distributed, shard_bounds  # re-export shim, see above

__all__ = ["DistContext", "distributed", "shard_bounds"]
