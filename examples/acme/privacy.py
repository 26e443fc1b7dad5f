"""What the acme fine-tune memorises, with and without differential privacy (issue 18's trade-off table).

    python examples/acme/privacy.py --out runs/privacy [--canaries 10] [--epsilons 8,1]

The acme conversations are split once (seeded) into members (80%, trained on) and non-members (20%, never
trained on); 10 canaries are planted in the members (`corral finetune --canaries`). Then, on the same members:
- no DP: the acme fine-tune as examples/acme/finetune_and_eval.py runs it (LoRA r 32, batch 4, 2 epochs);
- --dp --epsilon E for each E: `corral finetune --dp`'s own defaults (LoRA r 8, batch 32, 3 epochs), nothing tuned.
Each model is audited (`corral audit`: membership AUC and TPR at 1% FPR, members vs non-members, the base model as
reference; canary exposure among 999 candidates; verbatim extraction) and scored on the 64 held-out acme questions
(eval.jsonl, as finetune_and_eval.py does). Writes OUT/privacy.json, OUT/privacy.md (the table) and
OUT/privacy.png.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def corral(*args: str) -> None:
    print("$ corral " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "corral", *args], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/privacy")
    ap.add_argument("--canaries", type=int, default=10)
    ap.add_argument("--epsilons", default="8,1")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [x for x in (HERE / "train.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    random.Random(args.seed).shuffle(rows)
    cut = len(rows) * 4 // 5
    members, nonmembers = out / "members.jsonl", out / "nonmembers.jsonl"
    members.write_text("".join(x + "\n" for x in rows[:cut]), encoding="utf-8")
    nonmembers.write_text("".join(x + "\n" for x in rows[cut:]), encoding="utf-8")
    common = ["default", "--data", str(members), "--canaries", str(args.canaries), "--max-seq-len", "256",
              "--eval-tasks", "", "--seed", str(args.seed), "--warmup-steps", "10", "--save-every", "1000",
              "--eval-every", "1000", "--no-compile"]
    runs = {"no DP": ["--augment", "0", "--replay", "0", "--no-packing", "--ema", "0", "--epochs", "2",
                      "--batch-size", "4", "--lora-r", "32", "--lora-alpha", "64", "--lora-dropout", "0.05"]}
    for e in args.epsilons.split(","):
        runs[f"DP, epsilon {e}"] = ["--dp", "--epsilon", e]
    results = {}
    for name, extra in runs.items():
        run = out / name.replace(", ", "-").replace(" ", "-").lower()
        t0 = time.perf_counter()
        if not (run / "adapter").exists():
            corral("finetune", *common, "--out", str(run), *extra)
        train_s = time.perf_counter() - t0
        if not (run / "audit" / "report.json").exists():
            corral("audit", str(run / "adapter"), "--data", str(members), "--heldout", str(nonmembers),
                   "--out", str(run / "audit"))
        if not (run / "acme_eval.json").exists():
            held_out_accuracy(run)
        audit = json.loads((run / "audit" / "report.json").read_text())
        dp = json.loads((run / "dp.json").read_text()) if (run / "dp.json").exists() else None
        m, c = audit["membership"], audit["canaries"]
        results[name] = {"epsilon_spent": dp["epsilon_spent"] if dp else None, "delta": dp["delta"] if dp else None,
                         "auc_loss": m["loss"]["auc"], "auc_reference": m["reference"]["auc"],
                         "tpr_at_1pct_fpr": m["reference"]["tpr_at_1pct_fpr"],
                         "canary_exposure_mean": c["mean_exposure"], "canary_exposure_max": c["max_exposure"],
                         "chance_bits": c["chance_bits"], "extraction_rate": audit["extraction"]["rate"],
                         "heldout_accuracy": json.loads((run / "acme_eval.json").read_text())["accuracy"],
                         "train_seconds": round(train_s)}
    (out / "privacy.json").write_text(json.dumps(results, indent=2) + "\n")
    table = ["| run | ε spent (δ) | membership AUC (loss / reference) | TPR at 1% FPR | canary exposure, bits "
             "(mean / max; chance 1.44) | verbatim extraction | held-out acme accuracy |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        eps = f"{r['epsilon_spent']:.2f} ({r['delta']:.1e})" if r["epsilon_spent"] is not None else "∞"
        table.append(f"| {name} | {eps} | {r['auc_loss']:.3f} / {r['auc_reference']:.3f} | "
                     f"{100 * r['tpr_at_1pct_fpr']:.1f}% | {r['canary_exposure_mean']:.2f} / "
                     f"{r['canary_exposure_max']:.2f} | {100 * r['extraction_rate']:.1f}% | "
                     f"{100 * r['heldout_accuracy']:.1f}% |")
    (out / "privacy.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    plot(results, out / "privacy.png")
    return 0


def held_out_accuracy(run: Path) -> None:
    """The 64 held-out acme questions, answered greedily by the base model with the run's adapter merged."""
    sys.path.insert(0, str(HERE))
    from finetune_and_eval import accuracy

    from corral.model.loader import load_model
    from corral.tokenizer import load_tokenizer

    items = [json.loads(x) for x in (HERE / "eval.jsonl").read_text().splitlines() if x.strip()]
    lm = load_model(str(run / "adapter"))
    acc, got = accuracy(lm.model, load_tokenizer(lm.path), items)
    (run / "acme_eval.json").write_text(json.dumps({"accuracy": acc, "replies": got}, indent=2) + "\n")


def plot(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    panels = [("auc_reference", "membership AUC (reference)", 0.5), ("canary_exposure_mean", "canary exposure (bits)",
                                                                      results[names[0]]["chance_bits"]),
              ("heldout_accuracy", "held-out acme accuracy", None)]
    for ax, (key, title, chance) in zip(axes, panels, strict=True):
        ax.bar(range(len(names)), [results[n][key] for n in names])
        if chance is not None:
            ax.axhline(chance, color="k", ls=":", label="chance")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
