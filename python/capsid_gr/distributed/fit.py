"""`python -m capsid_gr.distributed.run fit` (also `capsid distributed fit`), under torchrun:

    torchrun --standalone --nproc_per_node 2 -m capsid_gr.distributed.run fit --device cpu

The encoder-decoder generator's fit (capsid_gr.stage2.fit.fit_sequential) on a synthetic
catalogue, trained under DistributedDataParallel with exact global-batch semantics, validated
in shards, then evaluated in shards on the test users (capsid_gr.eval.sharded). Rank 0 fits the
RQ-KMeans SIDs and sends them to the other ranks (so every rank holds the same tokenization),
checkpoints into --out (a rerun there resumes) and appends one JSON line to --out/fit.jsonl.
Verified on CPU with gloo only (issue 22).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..flags import OneSeed


def add_arguments(sub) -> None:
    f = sub.add_parser("fit", help="the encoder-decoder fit on a synthetic catalogue, DDP over the ranks")
    f.add_argument("--items", type=int, default=2000, help="synthetic catalogue size")
    f.add_argument("--users", type=int, default=2000, help="synthetic users (sequences)")
    f.add_argument("--epochs", type=int, default=4)
    f.add_argument("--batch-size", type=int, default=256, help="global batch (windows per step, over all ranks)")
    f.add_argument("--hidden", type=int, default=64, help="EncDecConfig.hidden")
    f.add_argument("--val-users", type=int, default=512)
    f.add_argument("--num-beams", type=int, default=20)
    f.add_argument("--eval-batch", type=int, default=64, help="queries per decoding chunk (shard alignment)")
    f.add_argument("--dropout", type=float, default=0.0,
                   help="0 keeps the run equal to one process's; other values draw per-rank masks")
    f.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    f.add_argument("--seeds", "--seed", dest="seed", action=OneSeed, default=0, metavar="SEED", help="one seed")
    f.add_argument("--out", default="runs/dist_fit", help="checkpoint folder (rank 0 writes; a rerun resumes)")
    f.add_argument("--no-resume", action="store_true", help="start afresh even if --out holds a checkpoint")
    f.set_defaults(dist_func=fit)


def _items_on_every_rank(data, seed: int, dist):
    """Rank 0's RQ-KMeans tokenization on every rank (one fit, no per-rank clustering to agree on)."""
    import torch.distributed as tdist

    from ..pipeline import fit_baseline

    box = [None]
    if dist.is_writer:
        box[0], _ = fit_baseline("rqkmeans", data.item_vectors, {"rqkmeans": {"levels": 3, "codes": 16}}, seed)
    if dist.active:
        tdist.broadcast_object_list(box, src=0)
    return box[0]


def fit(args: argparse.Namespace, dist) -> dict:
    from ..data import SyntheticConfig, make_synthetic
    from ..eval import build_item_trie
    from ..eval.sharded import evaluate_sharded
    from ..generator.seq import EncDecConfig, EncDecGenerator, EncDecRecommender
    from ..stage2.fit import FitConfig, fit_sequential
    from ..stage2.train import items_fingerprint

    data = make_synthetic(SyntheticConfig(n_items=args.items, n_users=args.users, seed=args.seed))
    items = _items_on_every_rank(data, args.seed, dist)
    cfg = FitConfig(epochs=args.epochs, batch_size=args.batch_size, val_users=args.val_users,
                    num_beams=args.num_beams, eval_batch_size=args.eval_batch, warmup_steps=20, seed=args.seed)
    gcfg = EncDecConfig(hidden=args.hidden, heads=4, ffn=4 * args.hidden, dropout=args.dropout,
                        max_len=cfg.max_history)
    split = data.split(max_history=cfg.max_history)
    model = EncDecGenerator(items, gcfg, seed=args.seed)
    rec = EncDecRecommender(model, build_item_trie(items, data.popularity(), dist.device), cfg.max_history)
    t0 = time.perf_counter()
    res = fit_sequential(model, rec, split, cfg, device=dist.device, out_dir=Path(args.out), resume=not args.no_resume,
                         identity={"generator": gcfg.identity(), "items": items_fingerprint(items)},
                         show_progress=dist.is_writer, dist=dist)
    seconds = time.perf_counter() - t0
    test = evaluate_sharded(rec, split.test.histories(), split.test.target, dist, ks=(10,),
                            num_beams=args.num_beams, batch_size=args.eval_batch)
    row = {"world": dist.world, "device": str(dist.device), "items": args.items, "users": args.users,
           "epochs_run": len(res.history), "fit_seconds": seconds, "best_epoch": res.best_epoch,
           "train_loss": res.history[-1]["train_loss"] if res.history else None,
           **{f"val_{k}": v for k, v in res.best_val.items()},
           "test_recall@10": test["recall@10"], "test_ndcg@10": test["ndcg@10"]}
    if dist.is_writer:
        with open(Path(args.out) / "fit.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return row
