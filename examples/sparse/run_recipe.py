"""The default `corral finetune` recipe on sparse fact sets and on a handbook: held-out accuracy before and after,
general-task changes, and time.

    python examples/sparse/run_recipe.py --out runs/sparse                       # clinic, freight, clinic handbook
    python examples/sparse/run_recipe.py --sets water --handbooks water --out runs/sparse-dev   # the tuning set

Each run is `corral finetune MODEL --data SET/train.jsonl --out RUN` (or `--docs SET/handbook.md`) with no other
option, as a user would type it. Held-out accuracy: the fine-tuned model answers each question of SET/heldout.jsonl
greedily (the set's system prompt for a conversation run; none for a handbook run: its user has no system prompt);
an answer counts when it contains the expected string or one of its `accept` strings (case-insensitive). The time
is the whole `corral finetune` run: augmentation, replay, training and the before/after general tasks.

The sets were written by a helper that never saw the recipe's settings (examples/sparse/README.md); the recipe was
tuned on `water` only, so clinic and freight (and the clinic handbook) measure it on data it was not shaped on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def accuracy(model_dir: Path, items: list[dict], system: str | None, threads: int) -> tuple[float, list[dict]]:
    import torch

    from corral.chat import encode_chat
    from corral.engine.sampling import SamplingParams
    from corral.eval.harness import load_eval_model
    from corral.text import generate_many as generate

    torch.set_num_threads(threads)
    em = load_eval_model(str(model_dir) if model_dir else "default", dtype="float32")
    sys_msg = [{"role": "system", "content": system}] if system else []
    prompts = [encode_chat(em.tok, [*sys_msg, {"role": "user", "content": it["question"]}]) for it in items]
    gens = generate(em.model, em.tok, prompts, SamplingParams(max_tokens=64))
    out = []
    for it, g in zip(items, gens, strict=True):
        ok = any(a.lower() in g.text.lower() for a in [it["answer"], *it.get("accept", [])])
        out.append({**it, "reply": g.text.strip(), "ok": ok})
    return sum(r["ok"] for r in out) / len(out), out


def deltas(run: Path) -> dict[str, str]:
    rep = json.loads((run / "report" / "report.json").read_text())
    from corral.train.recipe import headline

    shown = {}
    for t, meta in rep["tasks"].items():
        b, a = headline(rep["before"][t], meta["kind"]), headline(rep["after"][t], meta["kind"])
        if b and a:
            shown[t] = f"{b[1]:.3g} -> {a[1]:.3g}" if meta["kind"] == "perplexity" else \
                f"{100 * b[1]:.1f} -> {100 * a[1]:.1f}"
    return shown


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="clinic,freight", help="comma-separated fact sets (folders here)")
    ap.add_argument("--handbooks", default="clinic", help="sets whose handbook.md is trained on alone")
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="runs/sparse")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", default="", help="extra corral finetune options (for experiments, not the recipe)")
    args = ap.parse_args()
    out = Path(args.out)
    runs = [(s, "data") for s in args.sets.split(",") if s] + [(s, "docs") for s in args.handbooks.split(",") if s]
    results = []
    for name, kind in runs:
        folder = HERE / name
        meta = json.loads((folder / "meta.json").read_text())
        items = [json.loads(x) for x in (folder / "heldout.jsonl").read_text().splitlines() if x.strip()]
        system = meta.get("system") if kind == "data" else None
        run = out / f"{name}-{'chat' if kind == 'data' else 'handbook'}"
        src = ["--data", str(folder / "train.jsonl")] if kind == "data" else ["--docs", str(folder / "handbook.md")]
        cmd = [sys.executable, "-m", "corral", "finetune", args.model, *src, "--out", str(run),
               *(["--resume"] if run.exists() else []), *args.extra.split()]
        print("$", " ".join(cmd[2:]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
        before, _ = accuracy(None, items, system, args.threads)
        tuned = run / "adapter" if (run / "adapter").exists() else run / "model"
        after, rows = accuracy(tuned, items, system, args.threads)
        res = {"set": name, "from": "conversations" if kind == "data" else "handbook", "before": before,
               "after": after, "seconds": seconds, "general": deltas(run)}
        results.append(res)
        (run / "heldout_eval.json").write_text(json.dumps({**res, "results": rows}, indent=2) + "\n")
        print(f"{name} ({res['from']}): held-out {before:.1%} -> {after:.1%}; {seconds / 60:.1f} min; "
              f"general {res['general']}", flush=True)
        for r in rows:
            if not r["ok"]:
                print(f"  miss [{r['fact']}] {r['question']}\n    -> {r['reply'][:110]}  (expected {r['answer']})")
    print("\n| set | data | held-out before | after | time | general tasks (base -> fine-tuned) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        g = "; ".join(f"{k} {v}" for k, v in r["general"].items())
        print(f"| {r['set']} | {r['from']} | {r['before']:.1%} | **{r['after']:.1%}** | {r['seconds'] / 60:.1f} min "
              f"| {g} |")
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
