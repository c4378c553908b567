"""A TIGER-style Hugging Face T5 recommender switched to CAPSID semantic IDs.

The loop is the one most generative-recommendation code already has: each item is a short
sequence of SID tokens added after the text vocabulary, the encoder reads the history's tokens,
T5 learns the next item's tokens with `labels=`, and `generate` decodes them under a prefix
constraint. The lines marked `# CAPSID` are what changes:

1. the SIDs come from the fused capsule-routing stack (`CapsIDTokenizer.tokenize`), variable
   length, instead of a residual quantiser;
2. the vocabulary stays the model's own (PAD = decoder start = 0, EOS = 1, codes after the text
   ids): a `TokenLayout` says so, and the trie is built from the same token rows;
3. `generate` takes `TrieLogitsProcessor(trie, layout=)` in place of a Python prefix tree, or
   `capsid_kernels.beam_search` runs the fused beam step on the model's logits directly.

On a real catalogue, fit the tokenizer first (`capsid tokenize ...`) and load it; here the stack
only gets its k-means data initialisation, so the example runs on a CPU in about 20 seconds:

    python examples/hf_t5_tiger.py
"""

from __future__ import annotations

import argparse

import torch
import transformers

import capsid_kernels as ck
from capsid_gr.stage1.init import data_init
from capsid_kernels.decode.hf import TrieLogitsProcessor

TEXT_VOCAB = 100            # stands in for the model's text tokens (ids 2 .. 99 here)
PAD, EOS = 0, 1             # T5's: PAD is also the decoder start token


def synthetic_catalogue(n_items: int, n_users: int, clusters: int, length: int, g: torch.Generator):
    """Item vectors in `clusters` groups, and user sequences that mostly step to the next group."""
    centre = torch.randn(clusters, 32, generator=g)
    group = torch.arange(n_items) % clusters
    vectors = centre[group] + 0.35 * torch.randn(n_items, 32, generator=g)
    members = [torch.nonzero(group == c).squeeze(1) for c in range(clusters)]
    seqs = torch.empty(n_users, length, dtype=torch.int64)
    seqs[:, 0] = torch.randint(0, n_items, (n_users,), generator=g)
    for t in range(1, length):
        nxt = (group[seqs[:, t - 1]] + 1) % clusters
        jump = torch.rand(n_users, generator=g) < 0.2
        nxt = torch.where(jump, torch.randint(0, clusters, (n_users,), generator=g), nxt)
        pick = torch.randint(0, n_items // clusters, (n_users,), generator=g)
        seqs[:, t] = torch.stack([members[int(c)][int(p) % len(members[int(c)])] for c, p in zip(nxt, pick)])
    return vectors, seqs


def main(n_items: int = 240, n_users: int = 600, steps: int = 300, num_beams: int = 10, seed: int = 0,
         verbose: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vectors, seqs = synthetic_catalogue(n_items, n_users, clusters=8, length=6, g=g)

    # CAPSID: variable-length SIDs from the fused routing stack (codes -1 past each item's length);
    # a k-means data initialisation stands in for Stage 1 training (`capsid tokenize`)
    cfg = ck.CapsIDConfig(d=32, capsules=32, capsule_dim=16, max_length=4)
    tokenizer = ck.CapsIDTokenizer(cfg, seed=seed)
    data_init(tokenizer, vectors, seed=seed)
    out = tokenizer.tokenize(vectors)
    depth = torch.arange(cfg.max_length)[None, :]
    tokens = torch.where(out.sids >= 0, TEXT_VOCAB + depth * cfg.capsules + out.sids, PAD)  # TIGER's per-depth ids
    rows = torch.cat([tokens, torch.full((n_items, 1), PAD)], 1)
    rows[torch.arange(n_items), out.lengths.long()] = EOS                                     # codes..., EOS, PAD...
    # CAPSID: the model's own numbering, and the trie of valid items built from the same rows
    layout = ck.TokenLayout(pad=PAD, bos=PAD, eos=EOS, first_code=TEXT_VOCAB, num_codes=cfg.max_length * cfg.capsules)
    popularity = torch.bincount(seqs[:, :-1].flatten(), minlength=n_items).float()
    trie = ck.build_trie(layout.trie_paths(rows), layout.trie_vocab_size, popularity=popularity)

    def encode(hist) -> torch.Tensor:
        """History item lists -> encoder ids: their SID tokens, then EOS (right-padded)."""
        enc = [torch.cat([tokens[i, : out.lengths[i]] for i in h] + [torch.tensor([EOS])]) for h in hist]
        return torch.nn.utils.rnn.pad_sequence(enc, batch_first=True, padding_value=PAD)

    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=layout.min_vocab(trie.vocab_size), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        dropout_rate=0.1, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS))
    # every prefix of the training part (the last item is held out for test) -> its next item
    train_hist = [u[:t] for u in seqs[:, :-1] for t in range(1, seqs.shape[1] - 1)]
    train_tgt = torch.stack([u[t] for u in seqs[:, :-1] for t in range(1, seqs.shape[1] - 1)])
    test_hist, test_tgt = seqs[:, :-1], seqs[:, -1]
    labels = rows[train_tgt].masked_fill(rows[train_tgt] == PAD, -100)
    enc_train = encode(train_hist)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for step in range(steps):
        pick = torch.randint(0, len(train_tgt), (64,), generator=g)
        ids = enc_train[pick]
        loss = model(input_ids=ids, attention_mask=ids != PAD, labels=labels[pick]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()

    enc_test = encode(test_hist)
    mask = enc_test != PAD
    with torch.no_grad():
        # the Hugging Face loop, constrained by the trie                              # CAPSID: the processor
        hf = model.generate(enc_test, attention_mask=mask, num_beams=num_beams, num_return_sequences=num_beams,
                            max_new_tokens=trie.max_len + 1, length_penalty=0.0, early_stopping=True,
                            do_sample=False, return_dict_in_generate=True, output_scores=True,
                            logits_processor=transformers.LogitsProcessorList([TrieLogitsProcessor(trie, layout=layout)]))

        # or the project's beam search over the same model (fused step on a GPU)        # CAPSID: the search
        q = enc_test.shape[0]
        memory = model.get_encoder()(input_ids=enc_test, attention_mask=mask).last_hidden_state
        memory, amask = memory.repeat_interleave(num_beams, 0), mask.repeat_interleave(num_beams, 0)
        state = {"ids": torch.full((q * num_beams, 1), PAD)}

        def step_fn(beams):
            if beams.step > 0:
                state["ids"] = torch.cat([state["ids"][beams.parent], beams.tokens[:, None]], 1)
            return model(encoder_outputs=(memory,), attention_mask=amask,
                         decoder_input_ids=state["ids"]).logits[:, -1].float()

        res = ck.beam_search(step_fn, trie, num_beams, q, top_k=10, layout=layout)

    top = torch.argsort(-popularity, stable=True)[:10]
    result = {
        "first_loss": sum(losses[:10]) / 10, "last_loss": sum(losses[-10:]) / 10,
        "recall@10": float((res.items == test_tgt[:, None]).any(1).float().mean()),
        "popularity_recall@10": float(torch.isin(test_tgt, top).float().mean()),
        "mean_sid_length": float(out.lengths.float().mean()),
        "collision_rate": tokenizer.diagnostics(out)["collision_rate"],
        "hf_sequences": hf.sequences.view(q, num_beams, -1), "hf_scores": hf.sequences_scores.view(q, num_beams),
        "search": res, "rows": rows, "trie": trie,
    }
    if verbose:
        print(f"SIDs: mean length {result['mean_sid_length']:.2f} tokens, {result['collision_rate']:.0%} shared; T5 loss {result['first_loss']:.3f} -> "
              f"{result['last_loss']:.3f}; Recall@10 {result['recall@10']:.3f} "
              f"(popularity {result['popularity_recall@10']:.3f})")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    main(steps=a.steps, seed=a.seed)
