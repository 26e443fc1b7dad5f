"""Before/after on the acme example: held-out accuracy of the default model, a LoRA fine-tune, accuracy again.

    python examples/acme/finetune_and_eval.py [--epochs 3] [--out runs/acme]

Accuracy: the model answers each held-out paraphrased question greedily (chat template, the training system
prompt); an answer counts when it contains the expected string (case-insensitive). Generation goes through the
batched engine; the fine-tuned model is the base with the adapter merged into its fp32 weights.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch

from corral.chat import encode_chat
from corral.engine.engine import Delta, Engine, Finished, Request
from corral.engine.sampling import SamplingParams
from corral.model.loader import load_model
from corral.model.lora import load_adapter, merge_lora
from corral.tokenizer import load_tokenizer
from corral.train.config import FinetuneConfig
from corral.train.loop import finetune

HERE = Path(__file__).resolve().parent
SYSTEM = "You are the Acme Lanternworks internal assistant."


def answers(model, tok, questions: list[str], max_tokens: int = 48) -> list[str]:
    eng = Engine(model, tok, max_batch=16, max_seq_len=512)
    texts, left = [""] * len(questions), threading.Semaphore(0)

    def emit(i):
        def f(ev):
            if isinstance(ev, Delta):
                texts[i] += ev.text
            elif isinstance(ev, Finished):
                left.release()
        return f

    for i, q in enumerate(questions):
        ids = encode_chat(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
        eng.submit(Request(ids, SamplingParams(max_tokens=max_tokens), emit(i)))
    done = 0
    while done < len(questions):  # stepped here: the engine owns this (main) thread
        eng.step()
        while left.acquire(blocking=False):
            done += 1
    return texts


def accuracy(model, tok, items: list[dict]) -> tuple[float, list[str]]:
    got = answers(model, tok, [it["question"] for it in items])
    hits = [it["answer"].lower() in g.lower() for it, g in zip(items, got, strict=True)]
    return sum(hits) / len(items), got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-r", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--out", default="runs/acme")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = [json.loads(x) for x in (HERE / "eval.jsonl").read_text().splitlines() if x.strip()]
    lm = load_model(args.model, dtype="float32")
    tok = load_tokenizer(lm.path)
    t0 = time.perf_counter()
    before, _ = accuracy(lm.model, tok, items)
    print(f"before: {before:.1%} of {len(items)} held-out questions ({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    run = finetune(FinetuneConfig(model=args.model, data=str(HERE / "train.jsonl"), out=args.out, epochs=args.epochs,
                                  lr=args.lr, batch_size=4, max_seq_len=256, warmup_steps=10, save_every=1000,
                                  lora_r=args.lora_r, lora_alpha=2.0 * args.lora_r, lora_dropout=args.lora_dropout,
                                  eval_every=1000, resume=Path(args.out).exists()))
    train_s = time.perf_counter() - t0
    tuned = load_model(args.model, dtype="float32").model
    load_adapter(tuned, run / "adapter")
    merge_lora(tuned)
    after, got = accuracy(tuned, tok, items)
    print(f"after:  {after:.1%} (LoRA, {args.epochs:g} epochs, {train_s:.0f} s of training)")
    for it, g in list(zip(items, got, strict=True))[:5]:
        print(f"  Q: {it['question']}\n  A: {g.strip()[:100]}  [expected {it['answer']}]")
    (Path(args.out) / "acme_eval.json").write_text(json.dumps(
        {"before": before, "after": after, "train_seconds": train_s, **vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
