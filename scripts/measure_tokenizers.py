"""Fit time and SPEC §8 diagnostics of GAOQ, RQ-KMeans, RQ-VAE, RQ-VAE+HaMR.

usage: scripts/measure_tokenizers.py SEED [VECTORS.npy NAME]
Without a vectors file: the synthetic catalogue SyntheticConfig(). Writes
docs/data/tokenizers_<name>_seed<SEED>.json.
"""
import json, os, sys, time, platform, numpy as np, torch
torch.set_num_threads(1)
from capsid_gr.data import SyntheticConfig, make_synthetic
from capsid_gr.baselines.gaoq import GAOQConfig, fit_gaoq
from capsid_gr.baselines.rqkmeans import RQKMeansConfig, fit_rqkmeans
from capsid_gr.baselines.rqvae import RQVAEConfig, fit_rqvae
from capsid_gr.tokenizer.hamr import HaMRConfig
from capsid_gr.metrics import tokenizer_metrics
if len(sys.argv) > 3:
    x, dataset = np.load(sys.argv[2]).astype(np.float32), sys.argv[3]
else:
    x, dataset = make_synthetic(SyntheticConfig()).item_vectors, "synthetic"
xn = x / np.linalg.norm(x, axis=1, keepdims=True)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
rows = {}
def row(name, codes, caps, sids, scaps, recon, secs, cfg):
    m = tokenizer_metrics(codes, caps, x, seed=seed)
    after = tokenizer_metrics(sids, scaps, x, seed=seed)
    keep = ["collision_rate", "code_utilisation", "gini", "intra_code_similarity", "random_pair_similarity", "mean_length", "codes_used_per_position"]
    r = {k: m[k] for k in keep}
    r.update(collision_after_disambiguation=after["collision_rate"], sid_length=after["mean_length"],
             recon=float(((xn - recon) ** 2).sum(1).mean()), fit_seconds=secs, config=cfg.to_dict())
    rows[name] = r; print(name, json.dumps({k: v for k, v in r.items() if k != "config"}), flush=True)
cfg = GAOQConfig(seed=seed); t = time.perf_counter(); g = fit_gaoq(x, cfg); s = time.perf_counter() - t
row("gaoq", g.codes, cfg.anchors_per_level, g.sids, g.capsules, g.recon, s, cfg)
cfg = GAOQConfig(branching=(16, 16, 16), seed=seed); t = time.perf_counter(); g = fit_gaoq(x, cfg); s = time.perf_counter() - t
row("gaoq-16", g.codes, cfg.anchors_per_level, g.sids, g.capsules, g.recon, s, cfg)
cfg = RQKMeansConfig(seed=seed); t = time.perf_counter(); r = fit_rqkmeans(x, cfg); s = time.perf_counter() - t
row("rqkmeans", r.codes, (cfg.codes,) * cfg.levels, r.sids, r.capsules, r.recon, s, cfg)
for name, h in (("rqvae", None), ("rqvae+hamr", HaMRConfig())):
    cfg = RQVAEConfig(seed=seed, hamr=h); v = fit_rqvae(x, cfg, log_every=50)
    row(name, v.codes, (cfg.codes,) * cfg.levels, v.sids, v.capsules, v.recon, v.seconds, cfg)
    rows[name]["history"] = v.history
out = {"dataset": dataset, "items": int(x.shape[0]), "seed": seed, "device": f"cpu ({platform.machine()}, {os.cpu_count()} cores, torch threads 1)",
       "load_average_at_end": os.getloadavg(),
       "command": "PYTHONPATH=python .venv/bin/python " + " ".join(sys.argv), "torch": torch.__version__, "rows": rows}
json.dump(out, open(f"docs/data/tokenizers_{dataset}_seed{seed}.json", "w"), indent=1, default=float)
