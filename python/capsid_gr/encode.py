"""``capsid encode``: tokenize a whole catalogue of item vectors in bounded memory.

Reads vectors from a .npy file (or draws N synthetic ones, up to the 35.8M of the paper's
industrial catalogue), runs the CAPSID stack through ``CapsIDTokenizer.tokenize`` (the op
``capsid_kernels.tokenize`` with the config's routing and execution options) in chunks
with a progress bar, and prints the SID diagnostics. The tokenizer is freshly initialised
from its seed: this command measures the kernels at catalogue scale, it does not train.
"""

from __future__ import annotations

import argparse
import json
import time

from .flags import OneSeed
from .routing_flags import add_routing_arguments, routing_overrides


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text[:40]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vectors", help="item vectors .npy [N, d]; default: synthetic vectors")
    p.add_argument("--items", type=_at_least_one, default=100_000, help="number of synthetic vectors (default 100000)")
    p.add_argument("--seeds", "--seed", dest="seed", action=OneSeed, default=0, metavar="SEED",
                   help="the seed of the synthetic vectors and of the tokenizer's initialisation; one")
    p.add_argument("--preset", default="default", help="tokenizer preset: default or industrial")
    add_routing_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    p.add_argument("--backend", default="auto", help="auto, eager, triton or cuda")
    p.add_argument("--batch-size", type=_at_least_one, default=1 << 18, help="items per chunk (bounds memory)")
    p.add_argument("--keep-recon", action="store_true",
                   help="also keep the reconstruction and final residual of every item on the device (2 x N x d "
                        "floats, unused by the diagnostics; by default they are never allocated)")
    p.add_argument("--json", help="also write the diagnostics to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    import capsid_kernels as ck

    from .data.synthetic import synthetic_item_vectors
    from .report import format_diagnostics
    from .vectors import load_vector_file

    routing = routing_overrides(args)
    ck.CapsIDConfig.preset(args.preset, d=1, backend=args.backend, **routing)  # checked before any work
    if args.json:
        from pathlib import Path

        from .atomic import writable_folder
        writable_folder(Path(args.json).parent, "--json")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}[args.dtype]
    if args.vectors:
        x = torch.from_numpy(load_vector_file(args.vectors))
        source = args.vectors
    else:
        x = synthetic_item_vectors(args.items, seed=args.seed, device=device)
        source = f"{args.items} synthetic vectors (seed {args.seed})"
    config = ck.CapsIDConfig.preset(args.preset, d=x.shape[1], backend=args.backend, **routing)
    tokenizer = ck.CapsIDTokenizer(config, seed=args.seed).to(device=device, dtype=dtype)
    print(f"encoding {x.shape[0]} items of dimension {x.shape[1]} from {source}; preset {args.preset}, "
          f"{dtype} on {device}, tokenizer freshly initialised (seed {args.seed})")
    x = x.to(device=device, dtype=dtype)
    start = time.perf_counter()
    # The diagnostics read SIDs, lengths, stop reasons and the per-depth records only.
    keep = None if args.keep_recon else ("sids", "lengths", "stop_reason", "depths")
    with torch.no_grad(), tqdm(total=x.shape[0], unit="item", desc="encode", disable=args.quiet) as bar:
        out = tokenizer.tokenize(x, batch_size=args.batch_size, progress=bar.update, outputs=keep)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    diag = tokenizer.diagnostics(out)
    print(format_diagnostics(diag))
    print(f"encoded in {seconds:.2f} s ({1e9 * seconds / max(1, x.shape[0]):.0f} ns per item)")
    if args.json:
        from .atomic import write_text_atomic
        write_text_atomic(args.json, json.dumps({"source": source, "config": config.to_dict(), "seconds": seconds,
                                                 "diagnostics": diag}))
    return 0
