"""Plain-text rendering of tokenizer diagnostics for the terminal."""

from __future__ import annotations


def format_diagnostics(diag: dict, title: str = "SID diagnostics") -> str:
    lines = [f"== {title}: {diag['items']} items =="]
    lines.append(f"mean SID length      {diag['mean_length']:.3f}")
    hist = diag["length_histogram"]
    total = max(1, diag["items"])
    lines.append("length histogram")
    for length, count in hist.items():
        bar = "#" * round(40 * count / total)
        lines.append(f"  L={length}  {count:8d}  {100 * count / total:6.2f}%  {bar}")
    stops = ", ".join(f"{name} {100 * frac:.2f}%" for name, frac in diag["stop_fractions"].items())
    lines.append(f"stop reasons         {stops}")
    lines.append(f"collision rate       {100 * diag['collision_rate']:.3f}%")
    lines.append(f"code utilisation     {100 * diag['code_utilisation']:.2f}% of codes used at the depths reached")
    lines.append("per depth:  active   conf  resid    cap  mean c*_s  mean q  |r| grew  codes used")
    for d in diag["depths"]:
        s = d["stops"]
        lines.append(
            f"  depth {d['depth']}  {d['active']:7d} {s['conf']:6d} {s['resid']:6d} {s['cap']:6d}"
            f"  {d['mean_winner_weight']:9.4f}  {d['mean_confidence']:6.4f}  {100 * d['residual_grew']:7.2f}%"
            f"  {d['codes_used']:5d}/{len(d['code_usage'])}"
        )
    return "\n".join(lines)


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}%"


def _num(v, fmt=".3f") -> str:
    return "-" if v is None or v != v else format(v, fmt)


COMPARISON_ROWS = (
    ("collision rate", lambda d: _pct(d["collision_rate"])),
    ("collision after disambiguation", lambda d: _pct(d.get("collision_rate_after_disambiguation"))),
    ("code utilisation (all positions)", lambda d: _pct(d["code_utilisation"])),
    ("code utilisation (positions reached)", lambda d: _pct(d["code_utilisation_reached"])),
    ("Gini of code usage", lambda d: _num(d["gini"])),
    ("Gini (positions reached)", lambda d: _num(d["gini_reached"])),
    ("intra-code similarity", lambda d: _num(d["intra_code_similarity"])),
    ("random-pair similarity", lambda d: _num(d["random_pair_similarity"])),
    ("mean SID length", lambda d: _num(d["mean_length"], ".2f")),
    ("mean length after SemanticBPE", lambda d: _num(d.get("mean_merged_length"), ".2f")),
    ("SemanticBPE merges", lambda d: str(d["bpe"]["merges"]) if "bpe" in d else "-"),
    ("stop: confidence", lambda d: _pct(d.get("stop_fractions", {}).get("conf"))),
    ("stop: residual", lambda d: _pct(d.get("stop_fractions", {}).get("resid"))),
    ("stop: cap", lambda d: _pct(d.get("stop_fractions", {}).get("cap"))),
    ("reconstruction error (val)", lambda d: _num(d.get("val_route"), ".4f")),
    ("seconds", lambda d: _num(d.get("seconds"), ".1f")),
)


def format_comparison(summary: dict, markdown: bool = False) -> str:
    """Every tokenizer of a tokenize run side by side, plus CAPSID's per-depth records."""
    results = summary["tokenizers"]
    names = list(results)
    head = (f"{summary['dataset']}: {summary['items']} items, {summary['users']} users, seed {summary['seed']}, "
            f"device {summary['device']}")
    lines = []
    if markdown:
        lines += [f"**{head}**", "", f"command: `{summary.get('command')}`", ""]
        lines.append("| metric | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for label, fn in COMPARISON_ROWS:
            lines.append(f"| {label} | " + " | ".join(fn(results[n]) for n in names) + " |")
    else:
        lines.append(f"== {head} ==")
        width = max(len(r[0]) for r in COMPARISON_ROWS) + 2
        lines.append(" " * width + "".join(f"{n:>18s}" for n in names))
        for label, fn in COMPARISON_ROWS:
            lines.append(f"{label:<{width}s}" + "".join(f"{fn(results[n]):>18s}" for n in names))
    for name in names:
        d = results[name]
        lines.append("")
        lines.append(f"{name}: length histogram " + ", ".join(f"L={k}: {v}" for k, v in d["length_histogram"].items()))
        if "depths" in d:
            if markdown:
                lines += ["", "| depth | active | conf | resid | cap | mean c*_s | mean q | residual grew | codes used |",
                          "|---|---|---|---|---|---|---|---|---|"]
            for r in d["depths"]:
                s = r["stops"]
                cells = (r["depth"], r["active"], s["conf"], s["resid"], s["cap"], f"{r['mean_winner_weight']:.4f}",
                         f"{r['mean_confidence']:.4f}", _pct(r["residual_grew"]), r["codes_used"])
                lines.append(("| " + " | ".join(map(str, cells)) + " |") if markdown else
                             "  depth {} active {} stops conf/resid/cap {}/{}/{}  c*_s {}  q {}  |r| grew {}  codes {}"
                             .format(*cells))
        if "bpe" in d:
            b = d["bpe"]
            lines.append(("" if not markdown else "\n") + f"{name}: SemanticBPE {b['merges']} merges from {b['candidates']} "
                         f"candidates; corpus pairs {b.get('pairs', 0)}, item-space pair cosine median/p99/max "
                         f"{_num(b.get('pair_cos_median'))}/{_num(b.get('pair_cos_p99'))}/{_num(b.get('pair_cos_max'))}")
    return "\n".join(lines)
