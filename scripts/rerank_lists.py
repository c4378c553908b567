"""Re-rank the beams saved by `capsid pipeline --save-lists` offline: each choice made on the validation
users' beams by validation Recall@10, the test beams read once at it (capsid_gr.eval.rerank).

    python scripts/rerank_lists.py RUN_DIR [RUN_DIR ...] --data .data/amazon-beauty \
        --vectors .data/beauty_vectors_c075.npy --out docs/results/beauty_rerank

RUN_DIR holds `<tag>-seed<N>.beam_lists.npz` beside `<tag>-seed<N>.results.json` (scripts/beauty_job.sh's
layout). Rows per run, all from the same beams:

- `beam`: the plain beam (must equal the run's own test Recall@10: checked);
- `beam, history removed`: the query's history items leave the list (the `*_unseen` protocol);
- `+ similarity`: beta * cos(item, last history item) on the item vectors, beta and the history removal
  chosen on validation;
- `+ Markov (hybrid)`: also gamma * log P_markov(item | history), the Markov anchor's own counts and
  back-off: a hybrid of the generator with the anchor, not the generator alone.

Writes OUT.json and OUT.md, prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from capsid_gr.anchors import fit_markov  # noqa: E402
from capsid_gr.atomic import write_text_atomic  # noqa: E402
from capsid_gr.data import load_amazon  # noqa: E402
from capsid_gr.eval.rerank import (BeamLists, choose_rerank, grid, history_mask, last_item_cosine,  # noqa: E402
                                   markov_log_prob, rerank, score_lists)
from capsid_gr.vectors import load_vector_file  # noqa: E402

BETAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
GAMMAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
SHOW = ("recall@5", "recall@10", "ndcg@10", "head_recall@10", "torso_recall@10", "tail_recall@10")


def load_lists(npz: Path, split) -> tuple[BeamLists, BeamLists]:
    z = np.load(npz)
    users = z["val_users"]
    val_h = [split.valid.history[u, : split.valid.length[u]] for u in users]
    test_h = split.test.histories()
    for name, hist, target in (("val", val_h, split.valid.target[users]), ("test", test_h, split.test.target)):
        if not np.array_equal(z[f"{name}_target"], target):
            raise ValueError(f"{npz}: its {name} targets are not this split's (other data or history length?)")
        last = np.array([h[-1] if len(h) else -1 for h in hist])
        if not np.array_equal(z[f"{name}_last"], last):
            raise ValueError(f"{npz}: its {name} last history items are not this split's")
    mk = lambda p, h: BeamLists(z[f"{p}_items"].astype(np.int64), z[f"{p}_scores"].astype(np.float32),  # noqa: E731
                                z[f"{p}_target"].astype(np.int64), h)
    return mk("val", val_h), mk("test", test_h)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()

    data = load_amazon(args.data, name=args.name)
    x = load_vector_file(args.vectors, rows=data.n_items)
    tiers = data.tiers()
    masks = {"head": tiers.head, "torso": tiers.torso, "tail": tiers.tail}
    splits, markovs, rows = {}, {}, []
    for f in sorted(p for d in args.dirs for p in d.glob("*.beam_lists.npz")):
        tag = f.name[: -len(".beam_lists.npz")]
        res = json.loads(f.with_name(f"{tag}.results.json").read_text())
        mh = int(res["fit"]["max_history"])
        if mh not in splits:
            splits[mh] = split = data.split(max_history=mh)
            markovs[mh], _ = fit_markov(data.n_items, split.train, data.popularity(), split.valid.histories(),
                                        split.valid.target, order=3)
        split, markov = splits[mh], markovs[mh]
        val, test = load_lists(f, split)

        def terms(bl: BeamLists) -> dict:
            return {"seen": history_mask(bl.items, bl.histories), "cos": last_item_cosine(bl.items, bl.histories, x),
                    "markov_lp": markov_log_prob(bl.items, bl.histories, markov)}

        test_terms = terms(test)
        plain = score_lists(rerank(test), test.target, masks=masks)
        if abs(plain["recall@10"] - res["recall@10"]) > 1e-9:
            raise ValueError(f"{f}: the saved beam's test Recall@10 {plain['recall@10']:.6f} is not the run's "
                             f"{res['recall@10']:.6f}")
        out = {"tag": tag, "seed": res["seed"], "val_recall@10(run)": res.get("val_recall@10"), "rows": {}}
        out["rows"]["beam"] = {"point": {}, "test": plain}
        p = {"exclude_history": True, "beta": 0.0, "gamma": 0.0}
        out["rows"]["beam, history removed"] = {"point": p, "test": score_lists(rerank(test, **p, **test_terms),
                                                                                 test.target, masks=masks)}
        for row, g in (("+ similarity", grid(betas=BETAS)), ("+ similarity + Markov (hybrid)", grid(betas=BETAS, gammas=GAMMAS))):
            point, tried = choose_rerank(val, terms, g)
            out["rows"][row] = {"point": point, "val": tried[repr(point)],
                                "test": score_lists(rerank(test, **point, **test_terms), test.target, masks=masks)}
        rows.append(out)
        print(f"{tag}: " + "; ".join(f"{k} {v['test']['recall@10']:.4f} at {v['point']}" for k, v in out["rows"].items()),
              flush=True)

    lines = ["| run | row | chosen on validation | val Recall@10 | " + " | ".join(SHOW) + " |",
             "|---|---|---|---|" + "---|" * len(SHOW)]
    for r in rows:
        for name, v in r["rows"].items():
            pt = ", ".join(f"{k}={w}" for k, w in v["point"].items()) or "–"
            val = f"{v['val']['recall@10']:.4f}" if "val" in v else "–"
            lines.append(f"| {r['tag']} | {name} | {pt} | {val} | " + " | ".join(f"{v['test'][k]:.4f}" for k in SHOW) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(rows, indent=1))
    write_text_atomic(args.out.with_suffix(".md"), table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
