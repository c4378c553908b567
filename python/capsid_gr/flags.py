"""Flag shapes that every `capsid` subcommand shares, so the same thing is spelled the same way.

* A list of names takes spaces, commas or both: `--tokenizer capsid rqkmeans`,
  `--tokenizer capsid,rqkmeans` and `--tokenizer capsid,rqkmeans gaoq` all mean the same.
* A command that fits one seed still takes `--seeds` (and `--seed`), and refuses more than one
  by name instead of a bare "unrecognized arguments".
"""

from __future__ import annotations

import argparse
from typing import Callable, Optional


class NameList(argparse.Action):
    """Space- and/or comma-separated names -> one flat list; `convert(name)` (e.g. an alias to its
    registry name) maps each one and may raise ValueError, reported against the flag."""

    def __init__(self, option_strings, dest, nargs="+", convert: Optional[Callable[[str], str]] = None, **kw):
        super().__init__(option_strings, dest, nargs=nargs, **kw)
        self.convert = convert

    def __call__(self, parser, namespace, values, option_string=None):
        names = [p.strip() for v in (values if isinstance(values, list) else [values]) for p in str(v).split(",")]
        out = []
        for n in (n for n in names if n):
            try:
                out.append(self.convert(n) if self.convert is not None else n)
            except ValueError as exc:
                msg = str(exc)
                parser.error(msg if msg.startswith(option_string) else f"{option_string}: {msg}")
        if not out and self.nargs != "*":
            parser.error(f"{option_string}: expected at least one name, got none ({' '.join(values) or 'nothing'})")
        setattr(namespace, self.dest, out)


class OneSeed(argparse.Action):
    """`--seed S` / `--seeds S` for a command that fits one seed; several are refused by name."""

    def __init__(self, option_strings, dest, nargs="+", type=int, **kw):
        super().__init__(option_strings, dest, nargs=nargs, type=type, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) != 1:
            parser.error(f"{option_string}: this command fits one seed, got {len(values)} ({values}); "
                         "`capsid pipeline --seeds` runs several")
        setattr(namespace, self.dest, values[0])


class NumberList(argparse.Action):
    """Space- and/or comma-separated numbers -> one flat list of floats (`--block-weights 1 0.75`,
    `--block-weights 1,0.75`); a word that is not a number is refused by name, except the words
    in `keywords` (e.g. "auto"), which stand alone and are stored as given."""

    def __init__(self, option_strings, dest, nargs="+", keywords: tuple[str, ...] = (), **kw):
        super().__init__(option_strings, dest, nargs=nargs, **kw)
        self.keywords = keywords

    def __call__(self, parser, namespace, values, option_string=None):
        parts = [p.strip() for v in (values if isinstance(values, list) else [values]) for p in str(v).split(",")]
        parts = [p for p in parts if p]
        if len(parts) == 1 and parts[0] in self.keywords:
            setattr(namespace, self.dest, parts[0])
            return
        out = []
        for p in (p for p in parts if p):
            try:
                out.append(float(p))
            except ValueError:
                parser.error(f"{option_string}: expected numbers, got {p!r}")
        if not out:
            parser.error(f"{option_string}: expected at least one number, got none")
        setattr(namespace, self.dest, out)
