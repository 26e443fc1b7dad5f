"""Train the bundled guard: the default model before, a LoRA fine-tune on guard_train.jsonl, and after, measured on
guard_heldout.jsonl in score and generate modes.

    python examples/guard/train_guard.py [--out runs/guard] [--epochs 2] [--lr 1e-3] [--lora-r 16]
                                         [--repeat-unsafe 3] [--threads 2] [--no-compile]

The same as, step by step:

    corral finetune default --task guard --data train --out runs/guard --epochs 2 --lr 1e-3 --batch-size 8 \
        --lora-r 16 --lora-alpha 32 --warmup-steps 10 --guard-repeat-unsafe 3 --compile
    corral guard default --dtype float32 --eval heldout --mode score --report runs/guard/eval/before-score
    corral guard default --dtype float32 --eval heldout --mode generate --report runs/guard/eval/before-generate
    corral guard default --adapter runs/guard/adapter --eval heldout --mode score --report runs/guard/eval/after-score
    corral guard default --adapter runs/guard/adapter --eval heldout --mode generate \
        --report runs/guard/eval/after-generate

(the base model in fp32 both times: the adapter is merged into fp32 weights, so the only difference is the
training). Each evaluation's report folder is reused when it exists, and an existing run folder is resumed, so an
interrupted run continues; use a new --out for a new measurement. At the end the script prints the before/after
table and the per-category F1, and writes `<out>/guard_eval.json` and `<out>/guard_eval.png`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from corral.guard import Guard
from corral.guard.dataset import BUNDLED, read_labelled, saved_policy
from corral.guard.evaluate import evaluate_guard, plot_reports, write_report
from corral.guard.train import GuardTask
from corral.model.loader import load_model
from corral.model.lora import load_adapter, merge_lora
from corral.tokenizer import load_tokenizer
from corral.train.config import FinetuneConfig
from corral.train.loop import finetune

MODES = ("score", "generate")


def measure(model, tok, taxonomy, rows, folder: Path, mode: str) -> dict:
    """The held-out report of one model in one mode; read back when `folder` already holds it."""
    if (folder / "report.json").is_file():
        print(f"  {folder.name}: reused {folder / 'report.json'}", flush=True)
        return json.loads((folder / "report.json").read_text())
    guard = Guard(model, tok, taxonomy, mode=mode)
    report, preds = evaluate_guard(guard, rows, str(BUNDLED["heldout"]))
    write_report(report, preds, folder)
    m = report["metrics"]
    print(f"  {folder.name}: F1 {m['unsafe']['f1']:.3f}, {m['parse_errors']} parse errors, "
          f"{report['seconds']:.0f} s", flush=True)
    return report


def training_speed(run: Path) -> dict:
    """Tokens/s of the loop's steps from metrics.jsonl: the median and the 90th percentile over steps (on a shared
    machine the fastest steps are those that had the cores to themselves), the first and last loss."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    speeds = sorted(r["tokens_per_s"] for r in recs)
    return {"steps": len(recs), "median_tokens_per_s": statistics.median(speeds),
            "p90_tokens_per_s": speeds[int(0.9 * (len(speeds) - 1))], "final_loss": recs[-1]["loss"],
            "first_loss": recs[0]["loss"]}


def table(reports: dict[str, dict]) -> str:
    head = (f"{'model':<8} {'mode':<9} {'F1':>6} {'prec':>6} {'recall':>6} {'acc':>6} {'FPR safe':>9} "
            f"{'FPR risky':>9} {'parse err':>9} {'cat F1':>7} {'AUROC':>6} {'rows/s':>7}")
    lines = [head, "-" * len(head)]
    for name, r in reports.items():
        m, u = r["metrics"], r["metrics"]["unsafe"]
        fpr = m["false_positive_rate"]
        auc = f"{m['auroc']:.3f}" if m.get("auroc") is not None else "-"
        stage, mode = name.split("-")
        lines.append(f"{stage:<8} {mode:<9} {u['f1']:>6.3f} {u['precision']:>6.3f} {u['recall']:>6.3f} "
                     f"{m['accuracy']:>6.3f} {fpr['safe']['rate']:>9.1%} {fpr['benign_risky']['rate']:>9.1%} "
                     f"{m['parse_errors']:>9} {m['category_macro_f1']:>7.3f} {auc:>6} {r['rows_per_s']:>7.1f}")
    return "\n".join(lines)


def category_table(reports: dict[str, dict]) -> str:
    first = next(iter(reports.values()))["metrics"]["categories"]
    lines = [f"{'category':<28} {'rows':>4} " + " ".join(f"{n:>16}" for n in reports)]
    for code, c in first.items():
        f1s = " ".join(f"{r['metrics']['categories'][code]['f1']:>16.3f}" for r in reports.values())
        lines.append(f"{(code + ' ' + c.get('name', ''))[:28]:<28} {c['support']:>4} {f1s}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="runs/guard")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--repeat-unsafe", type=int, default=3,
                    help="each unsafe row this many times per epoch (corral finetune --guard-repeat-unsafe; 1: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="train without torch.compile of the decoder layers (corral finetune --compile)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    evals = out / "eval"
    rows, _ = read_labelled(BUNDLED["heldout"])
    reports: dict[str, dict] = {}

    print(f"training: LoRA r {args.lora_r} on {BUNDLED['train'].name}, {args.epochs:g} epochs, unsafe rows x"
          f"{args.repeat_unsafe}", flush=True)
    cfg = FinetuneConfig(model=args.model, data=str(BUNDLED["train"]), out=str(out), task="guard",
                         epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, warmup_steps=args.warmup_steps,
                         lora_r=args.lora_r, lora_alpha=2.0 * args.lora_r, seed=args.seed, max_seq_len=512,
                         save_every=50, eval_every=1000, compile=args.compile,
                         guard_repeat_unsafe=args.repeat_unsafe,
                         resume=(out / "checkpoint").is_dir())
    timing = out / "train_time.json"
    if not (out / "adapter" / "adapter_model.safetensors").is_file():
        t0, cpu0 = time.perf_counter(), time.process_time()
        finetune(cfg, task=GuardTask(cfg))
        timing.write_text(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
                                      "resumed": cfg.resume}) + "\n")
    train = {**json.loads(timing.read_text()), **training_speed(out)} if timing.is_file() else training_speed(out)

    print("before: the base model", flush=True)
    lm = load_model(args.model, dtype="float32")
    tok = load_tokenizer(lm.path)
    for mode in MODES:
        reports[f"before-{mode}"] = measure(lm.model, tok, None, rows, evals / f"before-{mode}", mode)

    print("after: the base model with the adapter merged", flush=True)
    load_adapter(lm.model, out / "adapter")
    merge_lora(lm.model)
    taxonomy = saved_policy(out / "adapter")[0]
    for mode in MODES:
        reports[f"after-{mode}"] = measure(lm.model, tok, taxonomy, rows, evals / f"after-{mode}", mode)

    print()
    print(table(reports))
    print()
    print("F1 per category (a category counts when a verdict decided unsafe lists it)")
    print(category_table(reports))
    took = ""
    if "seconds" in train:
        cpu = f", {train['cpu_seconds']:.0f} CPU-seconds" if "cpu_seconds" in train else ""
        took = f"{train['seconds']:.0f} s wall{cpu}{' (resumed)' if train.get('resumed') else ''}, "
    print(f"\ntraining: {train['steps']} steps, {took}{train['median_tokens_per_s']:.0f} tokens/s (median step; "
          f"90th percentile {train['p90_tokens_per_s']:.0f}), loss {train['first_loss']:.3f} -> "
          f"{train['final_loss']:.3f}")
    (out / "guard_eval.json").write_text(json.dumps({"settings": vars(args), "training": train, "reports": reports},
                                                    indent=2) + "\n")
    plot_reports(reports, out / "guard_eval.png", "guard_heldout.jsonl: F1 of unsafe and per category")
    print(f"wrote {out / 'guard_eval.json'}, {out / 'guard_eval.png'}; the adapter: {out / 'adapter'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
