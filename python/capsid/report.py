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
