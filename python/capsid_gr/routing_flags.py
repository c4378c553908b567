"""The routing flags every command that builds a CAPSID tokenizer takes (`capsid tokenize`, `capsid run`,
`capsid encode`, `capsid pipeline`, `capsid distributed bench`): --rounds, --mode, --tau, --eps, --eta.

Each flag defaults to None, meaning the value of `capsid_kernels.RoutingParams` (the one home of the
defaults); `routing_overrides` returns only the flags that were given, for `CapsIDConfig(**...)`.
"""

from __future__ import annotations

import argparse

FLAGS = (("rounds", int, "T, the agreement rounds per depth", None),
         ("mode", str, "soft (routed reconstruction) or hard (winner only)", ("soft", "hard")),
         ("tau", float, "stop when the winner's routing weight reaches tau", None),
         ("eps", float, "stop when the residual norm falls below eps", None),
         ("eta", float, "residual step r' = r - eta z", None))


def add_routing_arguments(p: argparse.ArgumentParser) -> None:
    import capsid_kernels as ck

    default = ck.RoutingParams()
    for name, kind, what, choices in FLAGS:
        p.add_argument(f"--{name}", type=kind, default=None, choices=choices,
                       help=f"{what} (default {getattr(default, name)}, from capsid_kernels.RoutingParams)")


def routing_overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name, *_ in FLAGS if getattr(args, name, None) is not None}
