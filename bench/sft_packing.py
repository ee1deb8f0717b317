"""SFT batching: packed rows (doc_ids, explicit block mask) vs one conversation per row, padded.

    .venv/bin/python bench/sft_packing.py [--model FOLDER] [--steps 20] [--batch 32] [--seq-len 256]

Counts forward+backward throughput on the built-in task conversations: trained (assistant)
tokens per second, which is what SFT progress is made of, and row tokens per second.
Without --model, a ~1M-parameter Llama-style model and a 2k BPE trained on the plays.
"""

from __future__ import annotations

import argparse
import time

import torch

from engine.training.data.conversations import Conversation, collate, fit_all, pack, pad_rows
from engine.training.data.tasks import training_conversations


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        from engine.training.loader import load

        loaded = load(args.model)
        model, tok = loaded.model, loaded.tokenizer
    else:
        from engine.training.data.corpus import shakespeare_documents
        from engine.training.model import GPT, ModelConfig
        from engine.training.tokenizer import Tokenizer

        tok = Tokenizer.train((d.text for d in shakespeare_documents()), vocab_size=2048)
        model = GPT(ModelConfig(vocab_size=tok.vocab_size, d_model=128, n_layer=4, n_head=4, max_seq_len=args.seq_len))
    convs = [Conversation(c["messages"]) for c in training_conversations(scale=0.3)]
    examples, _ = fit_all(convs, tok, args.seq_len + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for name, rows, use_doc in (
        ("packed", pack(examples, args.seq_len, tok.pad_id), True),
        ("padded", pad_rows(examples, args.seq_len, tok.pad_id), False),
    ):
        batches = [collate(rows[i : i + args.batch], tok.pad_id, doc_ids=use_doc) for i in range(0, len(rows), args.batch)]
        batches = (batches * (args.steps // max(len(batches), 1) + 2))[: args.steps + 2]
        trained = positions = 0
        for i, b in enumerate(batches):
            if i == 2:  # two warm-up steps
                t0 = time.perf_counter()
            kwargs = {"doc_ids": b["doc_ids"]} if use_doc else {}
            loss = model(b["input_ids"], b["targets"], **kwargs)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                trained += int((b["targets"] != -100).sum())
                positions += b["input_ids"].numel()
        dt = time.perf_counter() - t0
        fill = sum(len(e) for e in examples) / sum(len(r.ids) for r in rows)
        print(
            f"{name}: {len(rows)} rows (fill {fill:.0%}), {args.steps} steps in {dt:.1f}s: "
            f"{trained / dt:,.0f} trained tok/s, {positions / dt:,.0f} row tok/s, "
            f"{trained / len(batches[2:]):,.0f} trained tok/step; epoch = {len(rows) / args.batch:.0f} steps"
        )


if __name__ == "__main__":
    main()
