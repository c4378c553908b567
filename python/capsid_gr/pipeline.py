"""`capsid pipeline`: data -> item vectors -> tokenizer (Stage 1) -> Stage 2 -> test evaluation.

One run per (tokenizer variant, seed), every artefact under `--out/<dataset>/<variant>/seed<k>/`
(Stage-1 and Stage-2 checkpoints and logs, item paths, results.json), and a results table of
mean ± std over the seeds (results.md, results.json beside it). Seeds change the tokenizer's
and the generator's initialisation and the training order; the data and item vectors are the
same for every seed and variant (SPEC §9: same vectors, generator, beam and metrics).

Presets are data: `cpu` (the default on the synthetic catalogue; a 2-core CPU finishes it in
minutes) and `paper` (SPEC §1's tokenizer, generator and Stage-2 settings, for a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import writable_folder, write_atomic, write_text_atomic
from .checks import short
from .jobs.tokenizers import ALIASES, BASELINES, DISAMBIGUATED, TOKENIZERS, canonical, capsid_variant
from .flags import NameList, NumberList
from .routing_flags import add_routing_arguments, routing_overrides

VARIANTS = TOKENIZERS
"""The tokenizer names: capsid_gr.jobs.tokenizers' registry, the same as `capsid tokenize`'s
(`capsid` = CAPSID + SemanticBPE, `capsid-nobpe` without it, the capsid-* ablations, the
baselines); the former short names (capsid+bpe, hard, t1, len2, len4, nospread, freqbpe) are
accepted through its ALIASES. Results are filed under the registry name."""

PRESETS = {
    "cpu": {
        # torch intra-op threads (--threads overrides): the cpu preset's ops are tiny, and on a
        # 2-core box two threads made Stage 1 ~5x and Stage 2 ~4x slower than one
        "threads": 1,
        "synthetic": {"n_items": 1000, "n_users": 1200},
        "tokenizer": {"capsules": 48, "capsule_dim": 32, "max_length": 4},
        "stage1": {"epochs": 15, "patience": 5},
        "bpe": {"max_merges": 128},
        "generator": {"layers": 2, "heads": 2, "hidden": 64, "ffn": 256, "max_positions": 320},
        # CPU budget: the last 2 training targets per user and 20-item histories (SPEC: all, 50)
        "stage2": {"epochs": 12, "lr": 3e-3, "eval_every": 4, "patience": 2, "val_users": 300,
                   "targets_per_user": 2, "max_history": 20},
        "rqkmeans": {"levels": 3, "codes": 48, "n_init": 1},
        "gaoq": {},  # b = 32 x 3 (GAOQConfig): 32^3 leaves >> 1000 items, no dedup token
        "rqvae": {"levels": 3, "codes": 48, "epochs": 100},
        "generator_kind": "encdec",
        "encdec": {"hidden": 64, "heads": 2, "ffn": 256},
        "sasrec": {},
        "fit": {"epochs": 40, "batch_size": 64, "eval_every": 4, "patience": 12, "val_users": 300,
                "max_history": 20, "warmup_steps": 100, "num_beams": 20, "eval_batch_size": 128},
        "sasrec_fit": {},
        "markov": {},
    },
    # One GPU, one seed of Beauty in under 10 minutes, several runs side by side: SPEC's model
    # settings with a shorter training budget, and history items entering as hard token
    # embeddings (soft inputs route every history item through the adapted stack at every
    # step: ~55 s per Beauty epoch on an H100 against ~12 s at batch 256; --set
    # stage2.soft_inputs=true --set stage2.sequence_batches=false). Stage 2 trains on whole sequences (every item a target, the
    # same targets and logits as prefix rows, ~5x fewer tokens on Beauty), 256 sequences
    # (~1.5k target items) per step at lr 1e-3: at SPEC's 3e-4 and 256 prefix rows the loss
    # was still falling after 16 epochs (best epoch 11-15), and a step of this small
    # generator costs about the same at either size (kernel launches dominate).
    "gpu": {
        "synthetic": {},
        "tokenizer": {},
        "stage1": {"epochs": 8, "patience": 2},
        "bpe": {},
        "generator": {},
        "stage2": {"epochs": 40, "eval_every": 4, "patience": 2, "soft_inputs": False, "sequence_batches": True,
                   "batch_size": 256, "lr": 1e-3, "routing_precision": "tf32"},
        "rqkmeans": {"levels": 3, "codes": 256},
        "gaoq": {},
        "rqvae": {"levels": 3, "codes": 256},
        "generator_kind": "encdec",
        # 4 + 4 layers, FFN 1024, and each history item's frozen vector as an extra input (Beauty, H100,
        # 2026-12-07, 6 runs sharing the GPU, 3 seeds each, RQ-KMeans Recall@10): 2 + 2 / FFN 512 0.0587 ± 0.0011
        # (H200) -> 4 + 4 / FFN 1024 0.0606 ± 0.0023 -> + item features 0.0614 ± 0.0011 (validation Recall@10
        # higher on every seed: 0.0895/0.0845/0.0929 vs 0.0865/0.0815/0.0881); docs/results/beauty_gpu.md
        "encdec": {"enc_layers": 4, "dec_layers": 4, "ffn": 1024, "item_features": True},
        "sasrec": {"dropout": 0.5},
        # the encoder-decoder: 512 windows a step at lr 2e-3 (Beauty, H200, 2026-12-07, 9 runs sharing the GPU:
        # Recall@10 0.0595 vs 0.0576 at 256 / 1e-3, seed 0; 60 epochs in 300 s against 47 in 348 s)
        "fit": {"epochs": 60, "eval_every": 3, "patience": 15, "batch_size": 512, "lr": 2e-3},
        # SASRec on top of `fit`: the preset's 256 / 1e-3 for 200 epochs (0.0763 at 60 epochs -> 0.0822, 3 seeds)
        "sasrec_fit": {"epochs": 200, "patience": 40, "batch_size": 256, "lr": 1e-3},
        "markov": {},
    },
    "paper": {
        "synthetic": {},
        "tokenizer": {},
        "stage1": {},
        "bpe": {},
        "generator": {},
        "stage2": {"eval_every": 2},
        "rqkmeans": {"levels": 3, "codes": 256},
        "gaoq": {},
        "rqvae": {"levels": 3, "codes": 256},
        "generator_kind": "decoder",
        "encdec": {},
        "sasrec": {},
        "fit": {},
        "sasrec_fit": {},
        "markov": {},
    },
}
"""Each preset's `generator_kind` picks the generator (`--generator` overrides): "encdec" (the
item-level encoder-decoder, `capsid_gr.generator.seq`, trained by `capsid_gr.stage2.fit` with the
`fit` section) or "decoder" (the token-level causal Transformer of `generator`/`stage2`, the
only one with CAPSID's soft inputs). The `sasrec` and `fit` sections (with `sasrec_fit` on top) also drive the SASRec
anchor, `markov` the Markov anchor (`--anchors`)."""


def parse_override(text: str) -> tuple[str, str, object]:
    """'stage2.epochs=5' -> ('stage2', 'epochs', 5); values are JSON (true, 1e-3, "x") or a bare string."""
    key, sep, value = text.partition("=")
    section, dot, field = key.partition(".")
    sections = [k for k, v in PRESETS["cpu"].items() if isinstance(v, dict)]
    if not sep or not dot or section not in sections or not field:
        raise argparse.ArgumentTypeError(
            f"--set {short(text)}: expected SECTION.FIELD=VALUE with SECTION one of {', '.join(sections)}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return section, field, parsed


def preset_settings(args) -> dict:
    """The preset's settings with every --set override applied (unknown fields fail in the
    config class that receives them, naming the field)."""
    preset = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[args.preset].items()}
    for section, field, value in getattr(args, "set", None) or ():
        known = {f.name for f in dataclasses.fields(_section_class(section))}
        if field not in known:
            raise ValueError(f"--set {section}.{field if len(field) <= 40 else short(field)}: unknown field; {section} has {', '.join(sorted(known))}")
        preset[section][field] = value
    routing = routing_overrides(args)  # --rounds/--mode/--tau/--eps/--eta, as in `capsid tokenize`
    if routing:
        import capsid_kernels as ck

        ck.RoutingParams(**routing)  # a bad flag fails here, named, before any work
        preset["tokenizer"].update(routing)
    for section in dict.fromkeys(sec for sec, _, _ in getattr(args, "set", None) or ()):
        try:  # every overridden section is checked whole now, before any data is read or model trained
            _section_class(section)(**preset[section])
        except (TypeError, ValueError) as e:
            raise ValueError(f"--set {section}.*: {e}") from None
    return preset


def _section_class(section: str):
    import capsid_kernels as ck

    from .baselines import GAOQConfig, RQKMeansConfig, RQVAEConfig
    from .bpe import SemanticBPEConfig
    from .data import SyntheticConfig
    from .generator import GeneratorConfig
    from .stage1 import Stage1Config
    from .anchors import MarkovConfig, SASRecConfig
    from .generator.seq import EncDecConfig
    from .stage2 import Stage2Config
    from .stage2.fit import FitConfig

    return {"encdec": EncDecConfig, "sasrec": SASRecConfig, "fit": FitConfig, "sasrec_fit": FitConfig,
            "markov": MarkovConfig,
            "synthetic": SyntheticConfig, "tokenizer": ck.CapsIDConfig, "stage1": Stage1Config,
            "bpe": SemanticBPEConfig, "generator": GeneratorConfig, "stage2": Stage2Config,
            "rqkmeans": RQKMeansConfig, "gaoq": GAOQConfig, "rqvae": RQVAEConfig}[section]


def _device(name: str):
    import torch

    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        ("cpu" if name == "auto" else name))


def load_data(args):
    from .data import SyntheticConfig, load_amazon, make_synthetic

    if args.data == "synthetic":
        return make_synthetic(SyntheticConfig(seed=args.data_seed, **preset_settings(args)["synthetic"]))
    return load_amazon(args.data, name=args.name)


def vector_record(x: np.ndarray, info: dict) -> dict:
    """What every results.json says about the item vectors its row read: where they came from (a
    file, the synthetic data, or built: sources, block weights and the automatic choice), their
    shape and a digest of their values (`features_digest`), so two rows on other vectors show."""
    cfg = info.get("config") or {}
    rec = {"source": info.get("source", "built"), "shape": list(np.shape(x)), "digest": features_digest(x)}
    for key, value in (("sources", cfg.get("sources")), ("weights", cfg.get("weights")),
                       ("weights_chosen", info.get("weights_chosen")), ("cache_key", info.get("key"))):
        if value is not None:
            rec[key] = list(value) if isinstance(value, tuple) else value
    return rec


def item_vectors(data, args, device) -> tuple[np.ndarray, dict]:
    if args.vectors:
        from .vectors import load_vector_file

        return load_vector_file(args.vectors, rows=data.n_items), {"source": args.vectors}
    if data.item_vectors is not None and args.data == "synthetic":
        return data.item_vectors, {"source": "synthetic (given)"}
    from .vectors import VectorConfig, build_item_vectors

    weights = getattr(args, "block_weights", None)
    cfg = VectorConfig(sources=tuple(args.vector_sources), weights=weights if weights in (None, "auto") else tuple(weights))
    return build_item_vectors(data, cfg, device=str(device), show_progress=not args.quiet)


def variant_settings(variant: str, preset: dict) -> tuple[dict, dict, dict, bool]:
    """(tokenizer overrides, Stage-1 overrides, BPE overrides, use merges) of a CAPSID variant:
    the preset's settings with the registry's overrides (CAPSID_VARIANTS) on top. A variant
    uses merges unless its Stage-1 lambda_bpe is 0."""
    from .stage1 import Stage1Config

    tok_o, st1_o, bpe_o = capsid_variant(variant)
    tok = {**preset["tokenizer"], **tok_o}
    st1 = {**preset["stage1"], **st1_o}
    bpe = {**preset["bpe"], **bpe_o}
    merges = float(st1.get("lambda_bpe", Stage1Config.lambda_bpe)) > 0
    return tok, st1, bpe, merges


def _paths_tokenization(name: str, sids: np.ndarray, capsules, centres: list, x: np.ndarray):
    """A baseline's SID table -> hard-input ItemTokenization (from_paths).

    Token ids: 3 + offset of the position + code, offsets from `capsules` (codes per position,
    the disambiguation position last, which may hold more than the levels' codes); -1 (a SID
    that ended early, GAOQ) is skipped; every path ends with EOS. Token rows are warm-started
    from `centres` (one [K_l, D] array per level, any common width D); positions without
    centres (the disambiguation position) start random."""
    import torch

    from .generator import from_paths
    from .generator.items import EOS, FIRST_CODE

    offsets = FIRST_CODE + np.concatenate([[0], np.cumsum(capsules)[:-1]]).astype(np.int64)
    vocab = FIRST_CODE + int(sum(capsules))
    paths = [[int(offsets[j] + c) for j, c in enumerate(row) if c >= 0] + [EOS] for row in sids]
    width = np.asarray(centres[0]).shape[1] if centres else x.shape[1]
    init = torch.zeros(vocab, width)
    has = torch.zeros(vocab, dtype=torch.bool)
    for j, c in enumerate(centres):
        c = torch.as_tensor(np.asarray(c), dtype=torch.float32)[: capsules[j]]
        init[offsets[j]: offsets[j] + c.shape[0]] = c
        has[offsets[j]: offsets[j] + c.shape[0]] = True
    return from_paths(paths, vocab, init, has, name=name)


def _diagnostics(codes: np.ndarray, capsules, x: np.ndarray, seed: int) -> dict:
    """SPEC §8's tokenizer diagnostics on the codes (before any disambiguation position), the
    same function for every tokenizer so their rows compare."""
    from .metrics import tokenizer_metrics

    m = tokenizer_metrics(np.asarray(codes), [int(c) for c in capsules], np.asarray(x, np.float64), seed=seed)
    return {k: m[k] for k in ("collision_rate", "code_utilisation", "gini", "intra_code_similarity",
                              "random_pair_similarity", "mean_length")}


def fit_settings(preset: dict, show_progress: bool = True):
    """The shared fit's settings (capsid_gr.jobs.fit_tokenizer.FitSettings) from a preset's
    tokenizer, stage1, bpe, rqkmeans, gaoq and rqvae sections."""
    from .baselines import GAOQConfig, RQKMeansConfig, RQVAEConfig
    from .bpe import SemanticBPEConfig
    from .jobs.fit_tokenizer import FitSettings
    from .stage1 import Stage1Config

    return FitSettings(tokenizer=dict(preset.get("tokenizer", {})),
                       stage1=Stage1Config(bpe=SemanticBPEConfig(**preset.get("bpe", {})), **preset.get("stage1", {})),
                       rqkmeans=RQKMeansConfig(**preset.get("rqkmeans", {})), gaoq=GAOQConfig(**preset.get("gaoq", {})),
                       rqvae=RQVAEConfig(**preset.get("rqvae", {})), show_progress=show_progress)


def fit_baseline(variant: str, x: np.ndarray, preset: dict, seed: int):
    """Fit a baseline (RQ-KMeans, GAOQ, RQ-VAE, RQ-VAE + HaMR) with the preset's settings ->
    (ItemTokenization, info)."""
    from .jobs.fit_tokenizer import fit_tokenizer

    if variant not in BASELINES:
        raise ValueError(f"not a baseline: {short(variant)} (baselines: {', '.join(BASELINES)})")
    fit = fit_tokenizer(variant, x, fit_settings(preset), seed)
    info = {"collision_rate_before_disambiguation": 1 - len(np.unique(fit.codes, axis=0)) / len(fit.x),
            "fit_seconds": fit.seconds,
            "mean_length": float((fit.sids >= 0).sum(1).mean()),
            "tokenizer_metrics": _diagnostics(fit.codes, fit.code_capsules, fit.x, seed)}
    return _paths_tokenization(variant, fit.sids, fit.capsules, fit.centres, fit.x), info


def tokenize_catalogue(variant: str, x: np.ndarray, data, args, seed: int, device, run_dir: Path):
    """Stage 1 (or a baseline) -> ItemTokenization."""
    import torch

    from .generator import from_capsid, merge_gate_logits

    preset = preset_settings(args)
    info: dict = {}
    if variant in BASELINES:
        return fit_baseline(variant, x, preset, seed)

    from .jobs.fit_tokenizer import fit_tokenizer

    fit = fit_tokenizer(variant, x, fit_settings(preset, show_progress=not args.quiet), seed,
                        weights=data.popularity(), device=device, out_dir=run_dir)
    tokenizer, res, cfg, s1 = fit.tokenizer, fit.stage1, fit.config, fit.stage1_config
    xt = torch.as_tensor(fit.x, dtype=torch.float32, device=device)
    merges, logit = None, None
    if fit.uses_merges:
        from .bpe.gate import MergeGate

        merges = fit.merges
        gate = MergeGate(cfg.d, s1.bpe.gate_hidden, seed=seed).to(device)
        from .checkpoint import load_checkpoint

        tensors, _ = load_checkpoint(run_dir / "stage1.safetensors")
        gate.load_state_dict({k[len("best.gate."):]: v.to(device) for k, v in tensors.items()
                              if k.startswith("best.gate.")})
        logit = merge_gate_logits(gate, res.token_emb.to(device), res.candidates, merges)
    items = from_capsid(tokenizer, xt, fit.final.sids, merges, logit, name=variant,
                        disambiguate=variant in DISAMBIGUATED or fit.stage1_config.stop_rule == "unique",
                        popularity=data.popularity())
    diag = tokenizer.diagnostics(fit.final)
    info.update(stage1_best_epoch=res.best_epoch, stage1_val_route=res.best_val_route, merges=len(items.merges),
                mean_length=diag["mean_length"], collision_rate=diag["collision_rate"],
                stop_fractions=diag["stop_fractions"], code_utilisation=diag["code_utilisation"],
                disambiguation_tokens=items.n_dedup, stage1_seconds=res.seconds, stage1_init=res.init,
                tokenizer_metrics=_diagnostics(fit.sids, fit.capsules, fit.x, seed),
                stage1_log=[{k: h[k] for k in ("epoch", "val_route", "mean_length", "collision_rate", "stop_fractions")}
                            for h in res.history])
    return items, info


def run_one(variant: str, seed: int, data, x: np.ndarray, args, device) -> dict:
    import torch

    from .eval import BeamValidation, evaluate
    from .generator import Generator, GeneratorConfig
    from .stage2 import Stage2Config, train_stage2

    preset = preset_settings(args)
    run_dir = Path(args.out) / data.name / variant / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    items, info = tokenize_catalogue(variant, x, data, args, seed, device, run_dir)
    write_text_atomic(run_dir / "item_paths.json", json.dumps({"vocab_size": items.vocab_size, "paths": items.paths,
                                                         "merges": items.merges}))
    t1 = time.perf_counter()
    kind = generator_kind(args)
    pop = data.popularity()
    if kind == "encdec":
        from .eval import build_item_trie
        from .generator.seq import EncDecConfig, EncDecGenerator, EncDecRecommender
        from .stage2.fit import FitConfig, choose_prior_alpha, fit_sequential
        from .stage2.train import items_fingerprint

        fcfg = FitConfig(seed=seed, **_fit_overrides(preset, args))
        gcfg = EncDecConfig(**{"max_len": fcfg.max_history, **preset["encdec"]})
        split = data.split(max_history=fcfg.max_history)
        model = EncDecGenerator(items, gcfg, seed=seed, features=x if gcfg.item_features else None)
        rec = EncDecRecommender(model, build_item_trie(items, pop, device), fcfg.max_history, popularity=pop,
                                similarity=x)
        res = fit_sequential(model, rec, split, fcfg, device=device, out_dir=run_dir, show_progress=not args.quiet,
                             identity={"generator": gcfg.identity(), "items": items_fingerprint(items),
                                       **({"features": features_digest(x)} if gcfg.item_features else {})})
        alpha, alpha_val = choose_prior_alpha(rec, split, fcfg)
        beta, beta_val = choose_sim_beta(rec, split, fcfg, getattr(args, "sim_betas", [0.0]))
        t2 = time.perf_counter()
        if getattr(args, "save_lists", False):
            save_beam_lists(rec, split, fcfg, args.beams, run_dir / "beam_lists.npz")
        metrics = evaluate(rec, split.test.histories(), split.test.target, tiers=data.tiers(), ks=tuple(args.ks),
                           num_beams=args.beams, batch_size=fcfg.eval_batch_size, token_metrics=False)
        train_info = {"stage2_best_epoch": res.best_epoch, "stage2_epochs_run": len(res.history),
                      "stage2_stopped_by": res.stopped_by, "val_recall@10": res.best_val.get("recall@10"),
                      "val_ndcg@10": res.best_val.get("ndcg@10"), "generator_kind": kind,
                      "generator": gcfg.to_dict(), "fit": fcfg.to_dict(), "prior_alpha": alpha, "sim_beta": beta}
        if alpha_val or beta_val:
            # the same model's test rows without the re-ranking, so its effect is read in one run
            rec.prior_alpha = rec.sim_beta = 0.0
            plain = evaluate(rec, split.test.histories(), split.test.target, tiers=data.tiers(), ks=tuple(args.ks),
                             num_beams=args.beams, batch_size=fcfg.eval_batch_size, token_metrics=False)
            rec.prior_alpha, rec.sim_beta = alpha, beta
            train_info.update(prior_alpha_val=alpha_val, sim_beta_val=beta_val,
                              plain_beam={k: v for k, v in plain.items() if "recall" in k or "ndcg" in k})
    else:
        g_over = dict(preset["generator"])
        g_over["max_item_tokens"] = max(g_over.get("max_item_tokens", 8), items.max_path)
        gcfg = GeneratorConfig(**g_over)
        s2_over = dict(preset["stage2"])
        if args.stage2_epochs is not None:
            s2_over["epochs"] = args.stage2_epochs
        s2 = Stage2Config(seed=seed, **s2_over)
        model = Generator(items.vocab_size, gcfg, token_init=items.token_init, has_init=items.has_init, seed=seed)
        split = data.split(max_history=s2.max_history)
        res = train_stage2(model, items, split, pop, s2, device=device, out_dir=run_dir, show_progress=not args.quiet,
                           validation=BeamValidation())
        t2 = time.perf_counter()
        metrics = evaluate(res.recommender, split.test.histories(), split.test.target, tiers=data.tiers(),
                           ks=tuple(args.ks), num_beams=args.beams, batch_size=s2.eval_batch_size)
        train_info = {"stage2_best_epoch": res.best_epoch, "stage2_epochs_run": len(res.history),
                      "stage2_stopped_by": (res.history[-1].get("stopped_by") if res.history else None)
                      or ("patience" if res.stopped_early else "epochs"),
                      "val_recall@10": res.best_val_recall10, "generator_kind": kind,
                      "generator": gcfg.to_dict(), "stage2": s2.to_dict()}
    t3 = time.perf_counter()
    metrics["not_first_in_leaf"] = not_first_in_leaf(items, pop, split.test.target)
    out = {"dataset": data.name, "variant": variant, "seed": seed, "vectors": getattr(args, "vector_record", None),
           "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "preset": args.preset, **info, **train_info, **metrics,
           "seconds": {"tokenizer": t1 - t0, "stage2": t2 - t1, "eval": t3 - t2, "total": t3 - t0}}
    write_text_atomic(run_dir / "results.json", json.dumps(out, indent=1))
    return out


def save_beam_lists(rec, split, fcfg, num_beams: int, path: Path) -> None:
    """The finished beams of the early-stopping validation users and of every test user (items
    int32, log-probabilities float16, targets, each query's last history item), so that a re-ranking
    can be chosen on validation and read once on test offline (`--save-lists`)."""
    import io

    from .stage2.fit import validation_users

    users = validation_users(split, fcfg)
    parts = {}
    for name, hist, target in (
            ("val", [split.valid.history[u, : split.valid.length[u]] for u in users], split.valid.target[users]),
            ("test", split.test.histories(), split.test.target)):
        items, scores = rec.beam_lists(hist, num_beams=num_beams, batch_size=fcfg.eval_batch_size)
        parts.update({f"{name}_items": items.astype(np.int32), f"{name}_scores": scores.astype(np.float16),
                      f"{name}_target": np.asarray(target, np.int32),
                      f"{name}_last": np.array([h[-1] if len(h) else -1 for h in hist], np.int32)})
    buf = io.BytesIO()
    np.savez_compressed(buf, val_users=np.asarray(users, np.int32), **parts)
    write_atomic(path, buf.getvalue())


def features_digest(x: np.ndarray) -> str:
    """The item vectors an item_features generator reads, as they enter it (float32): part of its
    resume identity, so a checkpoint resumes only on the vectors it was trained on."""
    import torch

    from .checkpoint import tensor_digest

    return tensor_digest({"features": torch.as_tensor(np.asarray(x, np.float32))})


def generator_kind(args) -> str:
    kind = getattr(args, "generator", None) or PRESETS[args.preset].get("generator_kind", "decoder")
    if kind not in ("encdec", "decoder"):
        raise ValueError(f"--generator: expected 'encdec' or 'decoder', got {short(kind)}")
    return kind


def choose_sim_beta(rec, split, fcfg, betas) -> tuple[float, dict]:
    """The similarity weight `sim_beta` of `rec` among `betas`, picked like the popularity
    correction (`stage2.fit.choose_decode_weight`), with its other settings as they stand."""
    from .stage2.fit import choose_decode_weight

    return choose_decode_weight(rec, split, fcfg, "sim_beta", betas)


def _fit_overrides(preset: dict, args, sasrec: bool = False) -> dict:
    """The `fit` section, with `sasrec_fit` on top for the SASRec anchor, and --stage2-epochs last."""
    over = {**preset["fit"], **(preset.get("sasrec_fit", {}) if sasrec else {})}
    if getattr(args, "stage2_epochs", None) is not None:
        over["epochs"] = args.stage2_epochs
    return over


def not_first_in_leaf(items, popularity: np.ndarray, targets: np.ndarray) -> float:
    """Share of test targets that share their whole path with a more popular item (or an equally
    popular one of lower id): the trie ranks that item first in the leaf (SPEC §7)."""
    pm = items.path_matrix()
    _, group = np.unique(pm, axis=0, return_inverse=True)
    group = group.reshape(-1)
    pop = np.asarray(popularity, np.float64)
    order = np.lexsort((np.arange(len(pop)), -pop))
    first = {}
    for i in order:
        first.setdefault(int(group[i]), int(i))
    t = np.asarray(targets)
    return float(np.mean([first[int(group[x])] != int(x) for x in t])) if len(t) else float("nan")


def run_anchor(name: str, seed: int, data, args, device, x: np.ndarray | None = None) -> dict:
    """One anchor row (SPEC §8) on the same split, metrics and tiers as the generative rows;
    `knn` ranks by the item vectors `x`."""
    import torch

    from .anchors import ItemKNNRecommender, MarkovConfig, SASRec, SASRecConfig, SASRecRecommender, fit_markov
    from .eval.evaluate import evaluate
    from .stage2.fit import FitConfig, fit_sequential

    preset = preset_settings(args)
    run_dir = Path(args.out) / data.name / name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fcfg = FitConfig(seed=seed, **_fit_overrides(preset, args, sasrec=name == "sasrec"))
    split = data.split(max_history=fcfg.max_history)
    pop = data.popularity()
    info: dict = {}
    if name in ("markov", "markov1"):
        mcfg = MarkovConfig(**{**preset["markov"], **({"order": 1} if name == "markov1" else {})})
        rec, info = fit_markov(data.n_items, split.train, pop, split.valid.histories(), split.valid.target, mcfg.order)
        info["markov"] = dataclasses.asdict(mcfg)
    elif name == "knn":
        if x is None:
            raise ValueError("run_anchor('knn'): needs the item vectors x [n_items, d], got None")
        rec = ItemKNNRecommender(x, pop, device)
    elif name == "sasrec":
        torch.manual_seed(seed)
        scfg = SASRecConfig(**{"max_len": fcfg.max_history, **preset["sasrec"]})
        model = SASRec(data.n_items, scfg, seed=seed)
        rec = SASRecRecommender(model, fcfg.max_history)
        res = fit_sequential(model, rec, split, fcfg, device=device, out_dir=run_dir, show_progress=not args.quiet,
                             identity={"sasrec": scfg.to_dict(), "data": data.fingerprint()})
        info = {"stage2_best_epoch": res.best_epoch, "stage2_epochs_run": len(res.history),
                "stage2_stopped_by": res.stopped_by, "val_recall@10": res.best_val.get("recall@10"),
                "val_ndcg@10": res.best_val.get("ndcg@10"), "sasrec": scfg.to_dict(), "fit": fcfg.to_dict()}
    else:
        raise ValueError(f"--anchors: unknown {short(name)}; choose from markov, markov1, sasrec, knn")
    t1 = time.perf_counter()
    metrics = evaluate(rec, split.test.histories(), split.test.target, tiers=data.tiers(), ks=tuple(args.ks),
                       num_beams=args.beams, batch_size=fcfg.eval_batch_size, token_metrics=False)
    out = {"dataset": data.name, "variant": name, "seed": seed, "vectors": getattr(args, "vector_record", None),
           "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "preset": args.preset, **info, **metrics,
           "seconds": {"train": t1 - t0, "eval": time.perf_counter() - t1, "total": time.perf_counter() - t0}}
    write_text_atomic(run_dir / "results.json", json.dumps(out, indent=1))
    return out


TABLE_COLUMNS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "recall@10_unseen", "ndcg@10_unseen",
                 "history_share@10", "code_recall@50", "head_recall@10",
                 "torso_recall@10", "tail_recall@10", "cold_recall@10", "mean_length", "not_first_in_leaf", "latency_ms_per_query")


def results_table(rows: list[dict]) -> str:
    """Markdown: one line per variant, mean ± std (sample std, n-1) over seeds."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cols = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
    lines = ["| tokenizer | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        cells = []
        for c in cols:
            vals = np.array([r[c] for r in rs if c in r and r[c] is not None], dtype=float)
            vals = vals[np.isfinite(vals)]
            if not len(vals):
                cells.append("–")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.4f}")
            else:
                cells.append(f"{vals.mean():.4f} ± {vals.std(ddof=1):.4f}")
        lines.append(f"| {v} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="capsid pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synthetic", help="'synthetic' or a folder in the Amazon layout")
    p.add_argument("--name", "--data-name", dest="name", default="Beauty",
                   help="dataset name, the file stem inside --data (default Beauty)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic catalogue")
    p.add_argument("--tokenizer", nargs="*", default=["capsid"], action=NameList, convert=canonical, metavar="NAME",
                   help=f"one or more, space- or comma-separated, of: {', '.join(VARIANTS)} (aliases: "
                        f"{', '.join(f'{a}={b}' for a, b in ALIASES.items())}; default capsid)")
    p.add_argument("--anchors", nargs="*", default=[], choices=["markov", "markov1", "sasrec", "knn"],
                   help="anchor rows in the same table (SPEC §8): markov (back-off), markov1, sasrec, knn (the "
                        "last item's nearest neighbours by the item vectors)")
    p.add_argument("--generator", choices=["encdec", "decoder"], default=None,
                   help="generator (default: the preset's generator_kind)")
    p.add_argument("--seeds", "--seed", dest="seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--vectors", help="item vectors .npy [n_items, d] (else built by capsid_gr.vectors)")
    p.add_argument("--vector-sources", "--sources", dest="vector_sources", action=NameList,
                   default=["content", "cooc"],
                   help="item-vector sources when --vectors is not given, space- or comma-separated "
                        "(capsid vectors prints each one's signal)")
    p.add_argument("--block-weights", dest="block_weights", action=NumberList, keywords=("auto",), default="auto",
                   metavar="W", help="one weight per vector source, in --vector-sources order, or auto (chosen on "
                                     "validation queries, the default)")
    p.add_argument("--stage2-epochs", type=int, default=None)
    p.add_argument("--set", action="append", type=parse_override, metavar="SECTION.FIELD=VALUE",
                   help="override one preset setting, e.g. --set stage2.patience=5 --set tokenizer.capsules=128 "
                        "(repeatable)")
    add_routing_arguments(p)
    p.add_argument("--sim-betas", dest="sim_betas", action=NumberList, default=[0.0], metavar="B",
                   help="encoder-decoder only: weights of cos(item, last history item) added to the beam's item "
                        "scores; the best on the validation users is used (default 0: plain beam scores)")
    p.add_argument("--save-lists", dest="save_lists", action="store_true",
                   help="encoder-decoder runs: also write beam_lists.npz (each validation and test query's "
                        "finished beam with its log-probabilities) for offline re-ranking studies")
    p.add_argument("--beams", type=int, default=50)
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the preset's, 1 for cpu; else torch's default)")
    p.add_argument("--out", default="runs/pipeline")
    p.add_argument("--quiet", action="store_true")
    return p


def check_flags(args) -> None:
    """The numeric flags, before any work: a ValueError naming the flag, what was expected and what came."""
    def at_least(flag: str, values, lo: int) -> None:
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{flag}: expected integers >= {lo}, got {short(v)}")

    at_least("--beams", [args.beams], 1)
    at_least("--ks", args.ks, 1)
    at_least("--seeds", args.seeds, 0)
    if args.stage2_epochs is not None:
        at_least("--stage2-epochs", [args.stage2_epochs], 1)
    if args.threads is not None:
        at_least("--threads", [args.threads], 1)
    if any(b < 0 for b in args.sim_betas):
        raise ValueError(f"--sim-betas: expected numbers >= 0, got {short(args.sim_betas)}")
    if max(args.ks) > args.beams:
        raise ValueError(f"--ks: expected cut-offs <= --beams {args.beams} (the beam returns that many items), "
                         f"got {max(args.ks)}")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args) -> int:
    """`capsid pipeline`. cuDNN's fused attention failed intermittently with several runs on one GPU
    (generator.seq.attention_backends): it stays off for everything the command runs (the vectors'
    and the decoder-only generator's attention included) and is restored on return."""
    import torch

    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        return _run(args)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def _run(args) -> int:
    import torch

    threads = args.threads or PRESETS[args.preset].get("threads")
    if threads:
        torch.set_num_threads(threads)
    device = _device(args.device)
    preset_settings(args)  # unknown --set fields fail here, before any work
    check_flags(args)
    writable_folder(args.out, "--out")
    start = time.perf_counter()
    data = load_data(args)
    x, vinfo = item_vectors(data, args, device)
    args.vector_record = vector_record(x, vinfo)
    print(f"data {data.name}: {data.n_items} items, {len(data.sequences)} users; vectors {x.shape} "
          f"({vinfo.get('source', vinfo.get('key', ''))}); device {device}", flush=True)
    rows = []
    for anchor in dict.fromkeys(args.anchors):
        for seed in args.seeds:
            r = run_anchor(anchor, seed, data, args, device, x)
            rows.append(r)
            print(f"{anchor} seed {seed}: Recall@10 {r['recall@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} "
                  f"({r['seconds']['total']:.0f} s)", flush=True)
    for variant in dict.fromkeys(canonical(v) for v in args.tokenizer):
        for seed in args.seeds:
            r = run_one(variant, seed, data, x, args, device)
            rows.append(r)
            print(f"{variant} seed {seed}: Recall@10 {r['recall@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} "
                  f"({r['seconds']['total']:.0f} s)", flush=True)
    table = results_table(rows)
    out = Path(args.out) / data.name
    out.mkdir(parents=True, exist_ok=True)
    header = (f"dataset {data.name}, device {rows[0]['device_name']}, preset {args.preset}, seeds {args.seeds}, "
              f"beam {args.beams}, torch threads {torch.get_num_threads()}, wall-clock {time.perf_counter() - start:.0f} s")
    write_text_atomic(out / "results.md", header + "\n\n" + table + "\n")
    write_text_atomic(out / "results.json", json.dumps(rows, indent=1))
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
