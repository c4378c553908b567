"""The routing flags every command that builds a CAPSID tokenizer takes (`capsid tokenize`, `capsid encode`).

Each flag defaults to None, meaning the value of `capsid_kernels.CapsIDConfig` (the one home of the
defaults); `routing_overrides` returns only the flags that were given, for `CapsIDConfig(**...)`.
"""

from __future__ import annotations

import argparse

FLAGS = (("rounds", int, "T, the agreement rounds per depth"),
         ("tau", float, "stop when the winner's routing weight reaches tau"),
         ("eps", float, "stop when the residual norm falls below eps"),
         ("eta", float, "residual step r' = r - eta z"))


def add_routing_arguments(p: argparse.ArgumentParser) -> None:
    import capsid_kernels as ck

    default = ck.CapsIDConfig()
    for name, kind, what in FLAGS:
        p.add_argument(f"--{name}", type=kind, default=None,
                       help=f"{what} (default {getattr(default, name)}, from capsid_kernels.CapsIDConfig)")


def routing_overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name, _, _ in FLAGS if getattr(args, name, None) is not None}
