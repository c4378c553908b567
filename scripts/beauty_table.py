"""Collect Beauty pipeline runs (the `*.results.json` files that scripts/beauty_job.sh archives)
into one results table, mean ± std over seeds, and one tokenizer-diagnostics table.

    python scripts/beauty_table.py RUN_DIR [RUN_DIR ...] --out docs/results/beauty_gpu_3seeds

writes OUT.json (every run's headline numbers) and OUT.md (both tables), and prints the tables.
A run filed as `<variant>-<n>` (beauty_job.sh's name for a run with extra flags) keeps that tag.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from capsid_gr.atomic import write_text_atomic  # noqa: E402
from capsid_gr.pipeline import results_table  # noqa: E402

ORDER = ("markov1", "markov", "knn", "sasrec", "rqkmeans", "gaoq", "rqvae", "rqvae-hamr", "capsid", "capsid-dedup", "capsid-nobpe", "capsid-hard",
         "capsid-t1", "capsid-len2", "capsid-len4", "capsid-nospread", "capsid-freqbpe", "capsid-hamr")
KEEP = ("variant", "seed", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "recall@10_unseen", "ndcg@10_unseen",
        "history_share@10", "code_recall@50", "head_recall@10",
        "torso_recall@10", "tail_recall@10", "cold_recall@10", "mean_length", "latency_ms_per_query",
        "val_recall@10", "stage2_best_epoch", "stage2_epochs_run", "stage2_stopped_by", "merges",
        "collision_rate", "stop_fractions", "stage1_seconds", "fit_seconds", "tokenizer_metrics", "seconds",
        "token_top1", "device_name")


def load_runs(dirs: list[Path]) -> list[dict]:
    rows = []
    for d in dirs:
        for f in sorted(Path(d).glob("*.results.json")):
            r = json.loads(f.read_text())
            tag = f.name.split("-seed")[0]
            r["variant"] = tag  # keeps beauty_job.sh's -<n> suffix of runs with extra flags
            rows.append({k: r[k] for k in KEEP if k in r})
    rank = {v: i for i, v in enumerate(ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["variant"], len(ORDER)), r["variant"], r["seed"]))


def _ms(vals) -> str:
    vals = np.array([v for v in vals if v is not None], dtype=float)
    if not len(vals):
        return "–"
    return f"{vals[0]:.3f}" if len(vals) == 1 else f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}"


def diagnostics_table(rows: list[dict]) -> str:
    lines = ["| tokenizer | seeds | collision | utilisation | Gini | intra-code cos | mean length | "
             "tokenizer fit (s) | Stage-2 epochs (best) | stopped by | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]
        tm = [r.get("tokenizer_metrics") or {} for r in rs]
        fit = [r.get("stage1_seconds", r.get("fit_seconds")) for r in rs]
        stops = sorted({str(r.get("stage2_stopped_by")) for r in rs})
        epochs = ", ".join(f"{r.get('stage2_epochs_run')} ({r.get('stage2_best_epoch')})" for r in rs)
        lines.append(
            f"| {v} | {','.join(str(r['seed']) for r in rs)} | {_ms([t.get('collision_rate') for t in tm])} | "
            f"{_ms([t.get('code_utilisation') for t in tm])} | {_ms([t.get('gini') for t in tm])} | "
            f"{_ms([t.get('intra_code_similarity') for t in tm])} | {_ms([r.get('mean_length') for r in rs])} | "
            f"{_ms(fit)} | {epochs} | {', '.join(stops)} | {_ms([r['seconds']['total'] for r in rs])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="path prefix of OUT.json and OUT.md")
    a = p.parse_args(argv)
    rows = load_runs(a.dirs)
    if not rows:
        raise SystemExit(f"no *.results.json under {', '.join(map(str, a.dirs))}")
    text = results_table(rows) + "\n\n" + diagnostics_table(rows) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out.with_suffix(".json"), json.dumps(rows, indent=1))
    write_text_atomic(a.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
