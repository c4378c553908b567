"""The ``capsid`` command.

``capsid run`` is the main job: on the built-in synthetic catalogue (or item vectors from a
file) it tokenizes every item with a CAPSID tokenizer and prints the SID diagnostics.
Later stages (training, SemanticBPE, the generator, evaluation) grow from here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    import capsid_kernels as ck

    from .data.synthetic import SyntheticConfig, make_synthetic
    from .report import format_diagnostics

    device = _device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}[args.dtype]
    if args.vectors:
        vectors = np.load(args.vectors)
        source = args.vectors
    else:
        data = make_synthetic(SyntheticConfig(n_items=args.items, seed=args.seed))
        vectors = data.item_vectors
        source = f"synthetic catalogue ({args.items} items, seed {args.seed})"
    x = torch.as_tensor(vectors, dtype=torch.float32)
    config = ck.CapsIDConfig.preset(args.preset, d=x.shape[1], mode=args.mode, backend=args.backend)
    tokenizer = ck.CapsIDTokenizer(config, seed=args.seed).to(device=device, dtype=dtype)
    print(f"tokenizing {x.shape[0]} items of dimension {x.shape[1]} from {source}")
    print(f"tokenizer: preset {args.preset}, K={config.capsules}, d_c={config.capsule_dim}, T={config.rounds}, "
          f"L_max={config.max_length}, mode {config.mode}, {dtype} on {device} (freshly initialised, seed {args.seed})")
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=x.shape[0], unit="item", desc="tokenize", disable=args.quiet) as bar:
        out = ck.tokenize(
            x.to(device=device, dtype=dtype), [(m.W, m.b, m.D) for m in tokenizer.layers],
            rounds=config.rounds, mode=config.mode, eta=config.eta, tau=config.tau, eps=config.eps,
            precision=config.precision, backend=config.backend, batch_size=args.batch_size, progress=bar.update,
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    diag = tokenizer.diagnostics(out)
    print(format_diagnostics(diag))
    print(f"tokenized in {elapsed:.2f} s ({1e6 * elapsed / max(1, x.shape[0]):.1f} us per item)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "config": config.to_dict(), "seconds": elapsed, "diagnostics": diag}, f)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from capsid_kernels.info import main as info_main

    return info_main([])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capsid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="tokenize a catalogue and print SID diagnostics (the main job)")
    run.add_argument("--items", type=int, default=4000, help="synthetic catalogue size (default 4000)")
    run.add_argument("--vectors", help="a .npy file of item vectors [N, d] instead of the synthetic catalogue")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--preset", default="default", help="tokenizer preset: default or industrial")
    run.add_argument("--mode", default="soft", choices=("soft", "hard"))
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    run.add_argument("--backend", default="auto", help="auto, eager, triton or cuda")
    run.add_argument("--batch-size", type=int, default=4096, help="items per chunk (bounds memory)")
    run.add_argument("--json", help="also write the diagnostics to this JSON file")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)
    info = sub.add_parser("info", help="versions, GPU, and which backend serves which op")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"capsid: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
