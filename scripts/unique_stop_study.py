"""The plain and the uniqueness-aware stop (SPEC §3) on the same trained CAPSID tokenizer: collisions,
lengths, items held per depth, and the share of test targets that are not first in their trie leaf
(the generator cannot rank those first), with and without the disambiguation token.

    python scripts/unique_stop_study.py --data .data/amazon-beauty --vectors .data/beauty_vectors_c075.npy \
        --preset gpu --seed 0 --stage1-epochs 2 --out docs/results/unique_stop_beauty

Stage 1 runs once (the preset's settings with --set overrides, on --device); both rules then read
the same layers. SemanticBPE merges are invertible, so they change no collision: the SIDs are compared
before merging. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from capsid_gr import pipeline  # noqa: E402
from capsid_gr.atomic import write_text_atomic  # noqa: E402
from capsid_gr.generator import from_capsid  # noqa: E402
from capsid_gr.jobs.fit_tokenizer import fit_tokenizer  # noqa: E402
from capsid_gr.tokenizer.inference import tokenize_items, unique_stop_tokenize  # noqa: E402
from capsid_gr.vectors import load_vector_file  # noqa: E402


def row(name: str, tokenizer, xt, sids, pop, targets, disambiguate: bool, held=None, merges=None) -> dict:
    items = from_capsid(tokenizer, xt, sids, soft_inputs=False, disambiguate=disambiguate, popularity=pop)
    merged = from_capsid(tokenizer, xt, sids, merges, soft_inputs=False, disambiguate=disambiguate, popularity=pop)
    lengths = (sids >= 0).sum(1).cpu().numpy()
    pm = items.path_matrix()
    return {"rule": name, "collision_rate": 1.0 - np.unique(sids.cpu().numpy(), axis=0).shape[0] / len(lengths),
            "leaves_shared_after_paths": 1.0 - np.unique(pm, axis=0).shape[0] / pm.shape[0],
            "mean_sid_length": float(lengths.mean()), "disambiguation_tokens": int(items.n_dedup),
            "mean_path_length": float(np.mean([len(p) - 1 for p in items.paths])),
            "mean_path_length_merged": float(np.mean([len(p) - 1 for p in merged.paths])),
            "test_targets_not_first_in_leaf": pipeline.not_first_in_leaf(items, pop, targets),
            "length_histogram": {int(k): int(v) for k, v in zip(*np.unique(lengths, return_counts=True))},
            **({"held_per_depth": held} if held is not None else {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", default="Beauty")
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--preset", default="gpu", choices=sorted(pipeline.PRESETS))
    ap.add_argument("--stage1-epochs", type=int, default=None, help="default: the preset's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = pipeline.load_data(argparse.Namespace(data=args.data, name=args.name))
    split = data.split()
    pop = data.popularity()
    x = load_vector_file(args.vectors, rows=data.n_items)
    sets = [] if args.stage1_epochs is None else [("stage1", "epochs", args.stage1_epochs)]
    preset = pipeline.preset_settings(argparse.Namespace(preset=args.preset, set=sets))
    start = time.perf_counter()
    fit = fit_tokenizer("capsid", x, pipeline.fit_settings(preset, show_progress=False), args.seed, weights=pop,
                        device=args.device, out_dir=Path(args.out + "_stage1"))
    fit_s = time.perf_counter() - start
    tok = fit.tokenizer
    xt = torch.as_tensor(fit.x, dtype=torch.float32, device=args.device)
    plain = tokenize_items(tok, xt).sids
    unique, held = unique_stop_tokenize(tok, xt)
    targets = split.test.target
    m = fit.merges
    rows = [row("plain", tok, xt, plain, pop, targets, False, merges=m),
            row("plain + disambiguation token (capsid-dedup)", tok, xt, plain, pop, targets, True, merges=m),
            row("uniqueness-aware (capsid-unique, before its L_max token)", tok, xt, unique.sids, pop, targets, False,
                held, merges=m),
            row("uniqueness-aware + disambiguation at L_max (capsid-unique)", tok, xt, unique.sids, pop, targets, True,
                held, merges=m)]
    meta = {"data": args.data, "vectors": args.vectors, "preset": args.preset, "stage1_epochs": preset["stage1"].get("epochs"),
            "seed": args.seed, "device": args.device, "stage1_seconds": fit_s,
            "stage1_best_epoch": fit.stage1.best_epoch, "stage1_epochs_run": len(fit.stage1.history),
            "bpe_candidates": int(len(fit.stage1.candidates.pairs)), "merges": len(fit.merges),
            "tokenizer": fit.config.to_dict(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    write_text_atomic(Path(args.out + ".json"), json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = ("collision_rate", "mean_sid_length", "disambiguation_tokens", "mean_path_length",
            "mean_path_length_merged", "test_targets_not_first_in_leaf")
    lines = ["| rule | " + " | ".join(cols) + " | lengths | held per depth |", "|---" * (len(cols) + 3) + "|"]
    for r in rows:
        vals = [f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append(f"| {r['rule']} | " + " | ".join(vals) + f" | {r['length_histogram']} | {r.get('held_per_depth', '')} |")
    table = "\n".join(lines)
    write_text_atomic(Path(args.out + ".md"), f"# Plain vs uniqueness-aware stop\n\n```\n{json.dumps(meta, indent=1)}\n```\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
