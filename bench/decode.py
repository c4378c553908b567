"""Trie-constrained decoding bench: the fused CUDA step, the torch CSR step (eager and
torch.compile), and a Python dict-trie mask builder, on synthetic SIDs.

Catalogues of 10k / 1M / 35M items with clustered SIDs of 2-6 tokens plus EOS (some first
pairs replaced by merged tokens when V has room), generated on the GPU; batch x beam in
{1x50, 64x50, 256x50}; V in {1024, 2563}. Rows: per-step µs of a whole search (max_len + 1
steps on fresh random logits, so early steps with few live beams count too) and of one
steady-state step (depth 2, every beam live), index MiB and bytes per item, build seconds,
and the floor (reading the logits once at the measured copy bandwidth).

    python bench/decode.py --out bench/results            # all sizes (GPU)
    python bench/decode.py --quick --out /tmp/x           # 10k only, for a smoke test
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from harness import bench, env_info, make_row, plot_rows, print_table, write_rows  # noqa: E402

from capsid_kernels import _ext  # noqa: E402
from capsid_kernels.decode.beam_step_torch import beam_step_torch  # noqa: E402
from capsid_kernels.decode.search import initial_beams  # noqa: E402
from capsid_kernels.decode.trie import EOS, PAD, build_trie  # noqa: E402

MAX_LEN = 6


def synthetic_sids(n: int, vocab: int, *, fixed_len: int = 0, seed: int = 0, device="cuda") -> torch.Tensor:
    """[n, MAX_LEN + 1] paths: per-depth codes drawn Zipf-like around the parent's cluster."""
    g = torch.Generator(device=device).manual_seed(seed)
    merges = 1024 if vocab >= 3 + 6 * 256 + 1024 else 0
    k = min(256, (vocab - 3 - merges) // MAX_LEN)
    zipf_w = 1.0 / torch.arange(1, k + 1, device=device, dtype=torch.float64) ** 1.1
    zipf_cdf = torch.cumsum(zipf_w, 0) / zipf_w.sum()

    def draw_codes(m):  # inverse-CDF sampling (multinomial caps the sample count)
        u = torch.rand(m, generator=g, device=device, dtype=torch.float64)
        return torch.searchsorted(zipf_cdf, u).clamp(max=k - 1)
    codes = torch.empty(n, MAX_LEN, dtype=torch.int64, device=device)
    prev = torch.zeros(n, dtype=torch.int64, device=device)
    for d in range(MAX_LEN):
        draw = draw_codes(n)
        c = (prev * 2654435761 + draw) % k          # clustered: popular codes depend on the parent
        codes[:, d] = 3 + d * k + c
        prev = prev * k + c
    if fixed_len:
        lengths = torch.full((n,), fixed_len, device=device)
    else:
        probs = torch.tensor([0.15, 0.3, 0.3, 0.15, 0.1], device=device)
        cdf = torch.cumsum(probs, 0)
        lengths = 2 + torch.searchsorted(cdf, torch.rand(n, generator=g, device=device) * cdf[-1]).clamp(max=4)
    if merges:
        merged = torch.rand(n, generator=g, device=device) < 0.3
        pair = 3 + MAX_LEN * k + (codes[:, 0] * 7919 + codes[:, 1]) % merges
        shifted = torch.cat([pair[:, None], codes[:, 2:], torch.zeros_like(codes[:, :1])], dim=1)
        codes = torch.where(merged[:, None], shifted, codes)
        lengths = torch.where(merged, lengths - 1, lengths)
    col = torch.arange(MAX_LEN + 1, device=device)
    paths = torch.where(col[None, :] < lengths[:, None], torch.cat([codes, codes[:, :1]], 1), 0)
    paths[torch.arange(n, device=device), lengths] = EOS
    return paths


def copy_bandwidth() -> float:
    """Device copy bandwidth (bytes read + written per second) on a 1 GiB buffer."""
    x = torch.empty(2**28, device="cuda").uniform_()
    y = torch.empty_like(x)
    t = bench(lambda a: y.copy_(a), [x], warmup=3, repeats=20, measure_memory=False)
    return 2 * x.numel() * 4 / (t.median_ms * 1e-3)


_COMPILED = {}


def make_steppers(trie, b, compiled):
    args = (trie.child_start, trie.token, trie.end_bits)
    out = {"cuda": lambda lg, n, s, f: torch.ops.capsid_C.beam_step(lg, n, s, f, *args, b, PAD, EOS),
           "torch_csr": lambda lg, n, s, f: beam_step_torch(lg, n, s, f, *args, b, trie.max_fanout, PAD, EOS)}
    if compiled:
        fn = _COMPILED.setdefault("fn", torch.compile(beam_step_torch))
        out["torch_csr_compiled"] = lambda lg, n, s, f: fn(lg, n, s, f, *args, b, trie.max_fanout, PAD, EOS)
    return out


def run_search(step, logits_steps, q, b):
    beams = initial_beams(q, b, "cuda")
    node, score, fin = beams.node, beams.score, beams.finished
    for lg in logits_steps:
        _, _, node, score, fin = step(lg, node, score, fin)
    return score


def states_at_depth(trie, q, b, vocab, depth, dtype):
    beams = initial_beams(q, b, "cuda")
    node, score, fin, hist = beams.node, beams.score, beams.finished, torch.ones(q * b, 1, dtype=torch.long,
                                                                                 device="cuda")
    for _ in range(depth):
        lg = torch.randn(q * b, vocab, device="cuda", dtype=dtype)
        tok, par, node, score, fin = torch.ops.capsid_C.beam_step(lg, node, score, fin, trie.child_start,
                                                                  trie.token, trie.end_bits, b, PAD, EOS)
        hist = torch.cat([hist[par], tok[:, None]], 1)
    return node, score, fin, hist


def dict_trie(paths_cpu):
    """The common GR-codebase structure: prefix tuple -> allowed next tokens."""
    table: dict = {}
    for row in paths_cpu.tolist():
        prefix = ()
        for tok in row:
            table.setdefault(prefix, set()).add(tok)
            if tok == EOS:
                break
            prefix = prefix + (tok,)
    return {k: sorted(v) for k, v in table.items()}


def dict_mask_step(table, hist_rows, logits, b):
    """Host mask from the dict trie, then log-softmax + mask + top-B per query on the GPU."""
    rows, vocab = logits.shape
    mask = torch.full((rows, vocab), float("-inf"))
    for r, h in enumerate(hist_rows):
        allowed = table.get(tuple(h))
        if allowed:
            mask[r, allowed] = 0.0
    lp = torch.log_softmax(logits.float(), -1) + mask.to(logits.device, non_blocking=True)
    return lp.view(rows // b, b * vocab).topk(b, dim=1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="10000,1000000,35000000")
    ap.add_argument("--vocabs", default="1024,2563")
    args = ap.parse_args()
    if not torch.cuda.is_available() or _ext.load() is None:
        print(f"decode bench needs a GPU and the extension ({_ext.error()})")
        return 1
    out_dir = pathlib.Path(args.out)
    env = env_info()
    sizes = [10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    vocabs = [int(v) for v in args.vocabs.split(",")]
    shapes_qb = [(1, 50), (64, 50), (256, 50)]
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s", flush=True)
    rows = []
    for n in sizes:
        # The memory target is stated for 4-token SIDs: measure that index too.
        p4 = synthetic_sids(n, 1024, fixed_len=4, seed=1)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        t4 = build_trie(p4, 1024)
        torch.cuda.synchronize()
        rows.append(make_row(op="trie_build", backend="torch_gpu", dtype="-", shapes={"items": n, "sid": "4 tokens"},
                             timing=None, build_s=round(time.perf_counter() - t0, 3),
                             index_mib=round(t4.nbytes() / 2**20, 2), bytes_per_item=round(t4.nbytes() / n, 3),
                             nodes=t4.num_nodes, leaves=t4.num_leaves, env=env))
        del p4, t4
        for vocab in vocabs:
            paths = synthetic_sids(n, vocab, seed=2)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            trie = build_trie(paths, vocab)
            torch.cuda.synchronize()
            build_s = time.perf_counter() - t0
            rows.append(make_row(op="trie_build", backend="torch_gpu", dtype="-",
                                 shapes={"items": n, "V": vocab, "sid": "2-6 tokens + EOS"}, timing=None,
                                 build_s=round(build_s, 3), index_mib=round(trie.nbytes() / 2**20, 2),
                                 bytes_per_item=round(trie.nbytes() / n, 3), nodes=trie.num_nodes,
                                 max_fanout=trie.max_fanout, max_len=trie.max_len, env=env))
            print(rows[-1]["shapes"], "build", rows[-1]["build_s"], "s", rows[-1]["index_mib"], "MiB", flush=True)
            table = dict_trie(paths.cpu()) if n <= 1_000_000 else None
            steps = trie.max_len + 1
            for q, b in shapes_qb:
                r = q * b
                big = q == 256
                steppers = make_steppers(trie, b, compiled=big)
                sets = 2 if r * vocab * 4 * steps > 2**28 else 4
                inputs = [[torch.randn(r, vocab, device="cuda") * 2 for _ in range(steps)] for _ in range(sets)]
                floor_us = r * vocab * 4 / bw * 1e6
                shp = {"items": n, "V": vocab, "Q": q, "B": b}
                for name, step in steppers.items():
                    try:
                        t = bench(lambda lgs: run_search(step, lgs, q, b), inputs, warmup=2, repeats=10,
                                  max_time_ms=1500, measure_memory=False)
                    except Exception as exc:  # noqa: BLE001 - record why a baseline could not run
                        rows.append(make_row(op="beam_search", backend=name, dtype="fp32", shapes=shp, timing=None,
                                             error=f"{type(exc).__name__}: {exc}"[:300], env=env))
                        continue
                    rows.append(make_row(op="beam_search", backend=name, dtype="fp32", shapes=shp, timing=t,
                                         steps=steps, floor_us=round(floor_us, 2), env=env))
                # CUDA graph of the whole search (no Python or launch gaps between steps).
                try:
                    static = inputs[0]
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
                        run_search(steppers["cuda"], static, q, b)
                    torch.cuda.current_stream().wait_stream(s)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        run_search(steppers["cuda"], static, q, b)
                    t = bench(lambda _: graph.replay(), [0], warmup=3, repeats=30, measure_memory=False)
                    rows.append(make_row(op="beam_search", backend="cuda_graph", dtype="fp32", shapes=shp, timing=t,
                                         steps=steps, floor_us=round(floor_us, 2), env=env))
                except Exception as exc:  # noqa: BLE001
                    rows.append(make_row(op="beam_search", backend="cuda_graph", dtype="fp32", shapes=shp,
                                         timing=None, error=f"{type(exc).__name__}: {exc}"[:300], env=env))
                # One steady-state step: depth 2, every beam live, fresh logits per call.
                node, score, fin, hist = states_at_depth(trie, q, b, vocab, 2, torch.float32)
                one = [torch.randn(r, vocab, device="cuda") * 2 for _ in range(sets * 2)]
                for name, step in steppers.items():
                    try:
                        t = bench(lambda lg: step(lg, node, score, fin), one, warmup=3, repeats=20,
                                  max_time_ms=1000, measure_memory=False)
                        rows.append(make_row(op="beam_step_depth2", backend=name, dtype="fp32", shapes=shp,
                                             timing=t, steps=1, floor_us=round(floor_us, 2), env=env))
                    except Exception as exc:  # noqa: BLE001
                        rows.append(make_row(op="beam_step_depth2", backend=name, dtype="fp32", shapes=shp,
                                             timing=None, error=f"{type(exc).__name__}: {exc}"[:300], env=env))
                if big:
                    one16 = [x.bfloat16() for x in one]
                    t = bench(lambda lg: steppers["cuda"](lg, node, score, fin), one16, warmup=3, repeats=20,
                              measure_memory=False)
                    rows.append(make_row(op="beam_step_depth2", backend="cuda", dtype="bf16", shapes=shp, timing=t,
                                         steps=1, floor_us=round(floor_us / 2, 2), env=env))
                if table is not None and q >= 64:
                    hist_rows = [h[1:] for h in hist.tolist()]
                    t = bench(lambda lg: dict_mask_step(table, hist_rows, lg, b), one[:2], warmup=1, repeats=3,
                              max_time_ms=1000, measure_memory=False)
                    rows.append(make_row(op="beam_step_depth2", backend="python_dict_mask", dtype="fp32", shapes=shp,
                                         timing=t, steps=1, floor_us=round(floor_us, 2), env=env))
                del inputs, one
                done = [x for x in rows if x.get("shapes") == shp and "us_per_step" in x]
                print_table(done, ["op", "backend", "dtype", "us_per_step", "floor_us"])
                write_rows(rows, out_dir / "decode.json")  # partial results survive a time limit
            del trie, paths, table
            torch.cuda.empty_cache()
    write_rows(rows, out_dir / "decode.json")
    plot_rows([x for x in rows if x["op"] == "beam_step_depth2" and x.get("shapes", {}).get("Q") == 256],
              out_dir / "decode.png", x="shapes.items", y="us_per_step",
              series=lambda x: f"{x['backend']} {x['dtype']}", panel=lambda x: f"V={x['shapes']['V']}, 256x50, depth 2",
              title=f"trie beam step, {env.get('gpu')}")
    summary = [x for x in rows if x["op"] != "trie_build" and x.get("shapes", {}).get("Q") == 256]
    print_table([x for x in rows if x["op"] == "trie_build"],
                ["shapes", "build_s", "index_mib", "bytes_per_item", "nodes"])
    for x in summary:
        x["_case"] = f"{x['shapes']['items']}/V{x['shapes']['V']}"
        x["_x_floor"] = round(x["us_per_step"] / x["floor_us"], 2) if x.get("us_per_step") and x.get("floor_us") else None
    print_table(summary, ["op", "_case", "backend", "dtype", "us_per_step", "floor_us", "_x_floor"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
