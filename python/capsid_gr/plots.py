"""The diagnostics figure: SID length histogram and stop-reason breakdown per tokenizer.

Needs matplotlib (the `bench` extra); callers treat ImportError as "no figure".
"""

from __future__ import annotations

import io
from pathlib import Path

from .atomic import write_atomic


def plot_diagnostics(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax_len, ax_stop) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        hist = results[name]["length_histogram"]
        total = max(1, sum(hist.values()))
        xs = [int(k) + (i - (len(names) - 1) / 2) * width for k in hist]
        ax_len.bar(xs, [v / total for v in hist.values()], width=width, label=name)
    ax_len.set_xlabel("SID length")
    ax_len.set_ylabel("fraction of items")
    ax_len.set_title("length histogram")
    ax_len.legend()
    bottoms = [0.0] * len(names)
    for reason in ("conf", "resid", "cap"):
        vals = [results[n].get("stop_fractions", {}).get(reason, 0.0) for n in names]
        ax_stop.bar(names, vals, bottom=bottoms, label=reason)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    ax_stop.set_ylabel("fraction of items")
    ax_stop.set_title("stop reasons (fixed-length tokenizers have none)")
    ax_stop.legend()
    fig.tight_layout()
    buf = io.BytesIO()  # written whole or not at all
    fig.savefig(buf, dpi=110, format="png")
    write_atomic(Path(path), buf.getvalue())
    plt.close(fig)
