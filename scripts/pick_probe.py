"""Pick the best seed-0 probe of scripts/beauty_final.sh P by validation NDCG@10 (never test).

    python scripts/pick_probe.py DIR PREFIX   # DIR: an extracted beauty_job.tgz; PREFIX: rqkmeans or @sasrec

Prints the winning job's extra flags (empty for the preset itself) on stdout, and every
candidate's validation numbers on stderr. Ties keep the preset (the earlier job).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def candidates(d: Path, prefix: str) -> list[tuple[float, str, str]]:
    jobs = dict(line.split("\t", 1) for line in (d / "jobs.tsv").read_text().splitlines() if line.strip())
    variant = prefix.lstrip("@")
    out = []
    for n, job in sorted(jobs.items(), key=lambda kv: int(kv[0])):
        parts = job.split()
        if parts[0] != prefix or parts[1] != "0":
            continue
        flags = " ".join(parts[2:])
        tag = f"{variant}-{n}" if flags else variant
        f = d / f"{tag}-seed0.results.json"
        if not f.is_file():
            print(f"  {tag}: no results ({flags or 'preset'})", file=sys.stderr)
            continue
        r = json.loads(f.read_text())
        out.append((float(r.get("val_ndcg@10") or -1), tag, flags))
        print(f"  {tag}: val NDCG@10 {out[-1][0]:.4f} Recall@10 {r.get('val_recall@10')} ({flags or 'preset'})",
              file=sys.stderr)
    return out


def main(argv=None) -> None:
    d, prefix = Path(sys.argv[1] if argv is None else argv[0]), (sys.argv[2] if argv is None else argv[1])
    c = candidates(d, prefix) if (d / "jobs.tsv").is_file() else []
    if not c:
        print("")
        return
    best = max(c, key=lambda t: t[0])  # max keeps the first of equal values: the preset comes first
    print(f"{prefix}: picked {best[1]} ({best[2] or 'preset'})", file=sys.stderr)
    print(best[2])


if __name__ == "__main__":
    main()
