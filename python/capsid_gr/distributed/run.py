"""`python -m capsid_gr.distributed.run bench|fit` (also `capsid distributed ...`), under torchrun:

    torchrun --standalone --nproc_per_node 2 -m capsid_gr.distributed.run bench --items 2000000
    torchrun --standalone --nproc_per_node 2 -m capsid_gr.distributed.run fit --device cpu

`fit` (capsid_gr.distributed.fit): the encoder-decoder generator's fit under DDP on a synthetic
catalogue (issue 22). `bench`, below:

The scale study of issue 9 on a synthetic catalogue: sharded tokenization of --items random
item vectors, one Stage-2 epoch on --users random sequences, sharded evaluation on the test
queries. Rank 0 appends one JSON line per run to --out (world size, device, seconds and
throughput of each phase), which scripts/multi_gpu_check.sh turns into scaling efficiency.
The same three calls (tokenize_sharded, train_stage2(dist=...), evaluate_sharded) are what a
real job uses; only the data here is synthetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..flags import OneSeed
from . import fit as _fit
from ..routing_flags import add_routing_arguments, routing_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="dist_command", required=True)
    b = sub.add_parser("bench", help="time sharded tokenization, one Stage-2 epoch and sharded evaluation")
    b.add_argument("--items", type=int, default=200_000, help="synthetic catalogue size")
    b.add_argument("--dim", type=int, default=256, help="item vector width d")
    b.add_argument("--capsules", type=int, default=256, help="capsules per depth K")
    b.add_argument("--depth", type=int, default=4, help="L_max")
    b.add_argument("--users", type=int, default=20_000, help="synthetic users (sequences)")
    b.add_argument("--length", type=int, default=20, help="interactions per user")
    b.add_argument("--eval-users", type=int, default=4096, help="test queries evaluated")
    b.add_argument("--batch-size", type=int, default=256, help="Stage-2 global batch")
    b.add_argument("--tokenize-batch", type=int, default=65_536, help="tokenization chunk (shard alignment)")
    b.add_argument("--num-beams", type=int, default=50)
    b.add_argument("--eval-batch", type=int, default=64)
    b.add_argument("--seeds", "--seed", dest="seed", action=OneSeed, default=0, metavar="SEED", help="one seed")
    b.add_argument("--out", default="distributed_bench.jsonl", help="rank 0 appends a JSON line here")
    add_routing_arguments(b)
    b.set_defaults(dist_func=bench)
    _fit.add_arguments(sub)


def _sync(dist) -> None:
    import torch

    if dist.device.type == "cuda":
        torch.cuda.synchronize(dist.device)
    dist.barrier()


def bench(args: argparse.Namespace, dist) -> dict:
    import numpy as np
    import torch

    import capsid_kernels as ck

    from ..data import SequenceDataset
    from ..generator import Generator, GeneratorConfig, from_capsid
    from ..stage2 import Stage2Config, train_stage2
    from ..eval import BeamValidation
    from ..eval.sharded import evaluate_sharded
    from .tokenize import tokenize_sharded

    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.items, args.dim, generator=g)
    tok = ck.CapsIDTokenizer(ck.CapsIDConfig(d=args.dim, capsules=args.capsules, capsule_dim=32,
                                             max_length=args.depth, **routing_overrides(args)),
                             seed=args.seed).to(dist.device)
    _sync(dist)
    t0 = time.perf_counter()
    out = tokenize_sharded(tok, x, dist, batch_size=args.tokenize_batch)
    _sync(dist)
    t_tok = time.perf_counter() - t0

    items = from_capsid(tok.cpu(), x, out["sids"].cpu(), soft_inputs=False, name="bench")
    rng = np.random.default_rng(args.seed)
    seqs = [rng.integers(0, args.items, args.length) for _ in range(args.users)]
    data = SequenceDataset(n_items=args.items, sequences=seqs, name="bench")
    split = data.split(max_history=50)
    cfg = Stage2Config(epochs=1, batch_size=args.batch_size, val_users=min(256, args.users), num_beams=args.num_beams,
                       eval_batch_size=args.eval_batch, soft_inputs=False, seed=args.seed)
    model = Generator(items.vocab_size, GeneratorConfig(), token_init=items.token_init, has_init=items.has_init,
                      seed=args.seed)
    _sync(dist)
    t0 = time.perf_counter()
    res = train_stage2(model, items, split, data.popularity(), cfg, device=dist.device, show_progress=False, dist=dist,
                       validation=BeamValidation())
    _sync(dist)
    t_s2 = time.perf_counter() - t0
    samples = args.users * (args.length - 3)  # each user's training part minus its first item

    q = min(args.eval_users, args.users)
    hist = split.test.histories()[:q]
    metrics = evaluate_sharded(res.recommender, hist, split.test.target[:q], dist, num_beams=args.num_beams,
                               batch_size=args.eval_batch)
    device = torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu"
    row = {"world": dist.world, "device": device, "items": args.items, "dim": args.dim, "users": args.users,
           "tokenize_seconds": t_tok, "tokenize_items_per_s": args.items / t_tok,
           "stage2_epoch_seconds": t_s2, "stage2_samples_per_s": samples / t_s2,
           "train_loss": res.history[-1]["train_loss"],
           "eval_seconds": metrics["decode_seconds"], "eval_queries_per_s": metrics["queries_per_second"],
           "recall@10": metrics["recall@10"],
           "peak_memory_gib": (torch.cuda.max_memory_allocated(dist.device) / 2**30
                               if dist.device.type == "cuda" else None)}
    if dist.is_writer:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    return row


def run(args: argparse.Namespace) -> int:
    from ..collective import distributed

    with distributed(device=getattr(args, "device", None)) as dist:  # `fit --device`; bench: the default
        args.dist_func(args, dist)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m capsid_gr.distributed.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
