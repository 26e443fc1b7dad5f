"""Before/after on the acme example: held-out accuracy of the default model, a LoRA fine-tune, accuracy again.

    python examples/acme/finetune_and_eval.py [--epochs 2] [--seed 0] [--out runs/acme]
    python examples/acme/finetune_and_eval.py --quick --out runs/acme-quick   # the `make demo` version

Accuracy: the model answers each held-out paraphrased question greedily (chat template, the training system
prompt); an answer counts when it contains the expected string (case-insensitive). Generation goes through the
batched engine; the fine-tuned model is the base with the adapter merged into its fp32 weights.

`--quick` trains and evaluates on two sections of facts.md only (expense codes and pay, time off and on-call: 12 of
the 44 facts), so the whole before/after takes a few minutes. Each run writes `acme_eval.json` (every question with
the reply and whether it counts) into its folder and prints the misses.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from corral.chat import encode_chat
from corral.engine.sampling import SamplingParams
from corral.model.loader import load_model
from corral.text import generate_many
from corral.tokenizer import load_tokenizer
from corral.train.config import FinetuneConfig
from corral.train.loop import finetune

HERE = Path(__file__).resolve().parent
SYSTEM = "You are the Acme Lanternworks internal assistant."
QUICK_SECTIONS = ("Expenses and pay", "Time off and on-call")


def answers(model, tok, questions: list[str], max_tokens: int = 48) -> list[str]:
    prompts = [encode_chat(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
               for q in questions]
    return [g.text for g in generate_many(model, tok, prompts, SamplingParams(max_tokens=max_tokens), max_seq_len=512)]


def accuracy(model, tok, items: list[dict]) -> tuple[float, list[str]]:
    got = answers(model, tok, [it["question"] for it in items])
    hits = [it["answer"].lower() in g.lower() for it, g in zip(items, got, strict=True)]
    return sum(hits) / len(items), got


def section_answers(sections: tuple[str, ...]) -> dict[str, str]:
    """{fact id: answer} for the facts under these `## ` headings of facts.md."""
    facts, section = {}, None
    for line in (HERE / "facts.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif section in sections and (m := re.fullmatch(r"\| `([^`]+)` \| .+ \| `([^`]+)` \|", line)):
            facts[m[1]] = m[2]
    return facts


def quick_subset(items: list[dict], out: Path) -> tuple[Path, list[dict]]:
    """Writes `<out>-train.jsonl`: the training conversations whose every reply states one of QUICK_SECTIONS'
    facts; returns it with the eval questions about those facts."""
    facts = section_answers(QUICK_SECTIONS)
    lines = [x for x in (HERE / "train.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    keep = [x for x in lines if all(any(a in m["content"] for a in facts.values())
                                    for m in json.loads(x)["messages"] if m["role"] == "assistant")]
    data = out.parent / f"{out.name}-train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    return data, [it for it in items if it["fact"] in facts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--quick", action="store_true", help="12 of the 44 facts: a few minutes in all (make demo)")
    ap.add_argument("--epochs", type=float, help="default 2, or 3 with --quick")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-r", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/acme")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder layers (corral finetune "
                    "--compile): the first steps compile, the rest run faster")
    args = ap.parse_args()
    args.epochs = args.epochs or (3.0 if args.quick else 2.0)  # a third epoch over all 44 facts overfits
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    items = [json.loads(x) for x in (HERE / "eval.jsonl").read_text().splitlines() if x.strip()]
    data = HERE / "train.jsonl"
    if args.quick:
        data, items = quick_subset(items, out)
    lm = load_model(args.model, dtype="float32")
    tok = load_tokenizer(lm.path)
    t0 = time.perf_counter()
    before, _ = accuracy(lm.model, tok, items)
    print(f"before: {before:.1%} of {len(items)} held-out questions ({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    run = finetune(FinetuneConfig(model=args.model, data=str(data), out=str(out), epochs=args.epochs, lr=args.lr,
                                  batch_size=args.batch_size, max_seq_len=256, warmup_steps=args.warmup_steps,
                                  lora_r=args.lora_r, lora_alpha=2.0 * args.lora_r, lora_dropout=args.lora_dropout,
                                  seed=args.seed, save_every=1000, eval_every=1000, resume=out.exists(),
                                  compile=args.compile,
                                  # acme's own hand-written paraphrases, trained as they are (the loop alone)
                                  augment=0, replay=0.0, eval_tasks=[], packing=False, ema=0.0))
    train_s = time.perf_counter() - t0
    tuned = load_model(args.model, adapter=run / "adapter").model
    after, got = accuracy(tuned, tok, items)
    print(f"after:  {after:.1%} (LoRA, {args.epochs:g} epochs, {train_s:.0f} s of training)")
    results = [{**it, "reply": g.strip(), "ok": it["answer"].lower() in g.lower()}
               for it, g in zip(items, got, strict=True)]
    for r in results:
        if not r["ok"]:
            print(f"  miss [{r['fact']}] {r['question']}\n    -> {r['reply'][:100]}  (expected {r['answer']})")
    (run / "acme_eval.json").write_text(json.dumps(
        {"before": before, "after": after, "train_seconds": train_s, "train_data": str(data), **vars(args),
         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
