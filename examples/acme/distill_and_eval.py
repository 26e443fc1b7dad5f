"""Distil the acme-tuned model into a smaller one: teacher vs KD student vs the same student trained with plain SFT.

    python examples/acme/finetune_and_eval.py --out runs/acme                 # the teacher's LoRA run, first
    python examples/acme/distill_and_eval.py --teacher-run runs/acme --out runs/acme-distill
    python examples/acme/distill_and_eval.py --quick --teacher-run runs/acme-quick --out runs/acme-distill-quick

`--quick` (make demo): the 12-fact subset and the KD student alone (no SFT baseline).

The teacher is the default model with the acme adapter merged in (written to `<out>/teacher`, an HF folder). The
student is the teacher pruned to `--layers` decoder layers and `--mlp` MLP channels per layer (`corral distill`'s
depth and width pruning, ranked on the training data; default 18 layers x 1088 channels, 58% of the parameters),
then trained on the acme training conversations twice from the same initial weights: with
knowledge distillation against the teacher's cached top-k (`<out>/kd`) and with cross-entropy alone (`<out>/sft`,
`kd_alpha 0`). All three answer the held-out questions (the same scorer as finetune_and_eval.py); the report
(`<out>/report.json`, `<out>/report.png`) has parameters, size on disk, decode tokens/s (one stream, fp32, 2
threads, greedy, 128 tokens, best of 3), held-out accuracy and top-1 agreement with the teacher on the held-out
questions (next-token argmax, over the teacher's own greedy answers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from finetune_and_eval import SYSTEM, accuracy, quick_subset  # noqa: E402

from corral.distill.config import DistillConfig  # noqa: E402
from corral.distill.run import STUDENT_INIT, compare, distill  # noqa: E402
from corral.formats.hf import save_hf_folder  # noqa: E402
from corral.model.loader import load_model  # noqa: E402
from corral.tokenizer import load_tokenizer  # noqa: E402
from corral.train.data import encode_chat_example  # noqa: E402


def make_teacher(run: Path, out: Path) -> Path:
    if (out / "config.json").is_file():
        return out
    lm = load_model("default", device="cpu", dtype="float32", adapter=run / "adapter")
    return save_hf_folder(lm.model, lm.config, load_tokenizer(lm.path), lm.path, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-run", required=True, help="a finetune_and_eval.py run folder (holds adapter/)")
    ap.add_argument("--out", default="runs/acme-distill")
    ap.add_argument("--quick", action="store_true", help="the 12-fact subset and the KD student alone (make demo)")
    ap.add_argument("--layers", type=int, default=18, help="decoder layers the student keeps (teacher: 30)")
    ap.add_argument("--mlp", type=int, default=1088,
                    help="MLP channels the student keeps per layer (width pruning; teacher: 1536; 0: keep all)")
    ap.add_argument("--epochs", type=float, default=6.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--alpha", type=float, default=0.9, help="KD weight of the KD student")
    ap.add_argument("--kd-loss", default="fkl")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--calib-examples", type=int, help="examples that rank the layers (default 32, 8 with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = [json.loads(x) for x in (HERE / "eval.jsonl").read_text().splitlines() if x.strip()]
    data = HERE / "train.jsonl"
    if args.quick:
        data, items = quick_subset(items, out)
    teacher_dir = make_teacher(Path(args.teacher_run), out / "teacher")
    calib = args.calib_examples or (8 if args.quick else 32)
    common = dict(data=str(data), student_layers=args.layers, student_mlp=args.mlp or None, calib_examples=calib,
                  epochs=args.epochs, lr=args.lr,
                  batch_size=4, max_seq_len=256, warmup_steps=10, save_every=1000, eval_every=1000, seed=args.seed)
    seconds = {}
    # --quick (make demo) trains the KD student alone; the full run adds the SFT baseline from the same weights
    runs = (("kd", args.alpha),) if args.quick else (("kd", args.alpha), ("sft", 0.0))
    for name, alpha in runs:
        run = out / name
        if (run / "model" / "config.json").is_file():
            continue
        # the same initial student for both: the SFT run starts from the KD run's pruned weights
        student = None if name == "kd" else str(out / "kd" / STUDENT_INIT)
        kw = {**common, "student_layers": None, "student_mlp": None} if student else common
        t0 = time.perf_counter()
        distill(DistillConfig(model=str(teacher_dir), out=str(run), student=student, kd_alpha=alpha,
                              kd_loss=args.kd_loss, teacher_topk=args.topk if alpha > 0 else 0,
                              resume=run.exists(), report=False, **kw))  # the comparison below is the report
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: trained in {seconds[name]:.0f} s", flush=True)

    tok = load_tokenizer(teacher_dir)
    models = {"teacher": teacher_dir, **{f"{name} student": out / name / "model" for name, _ in runs}}
    loaded = {k: load_model(str(v), device="cpu", dtype="float32").model for k, v in models.items()}
    scored = {"teacher": accuracy(loaded["teacher"], tok, items)}  # (accuracy, replies)
    teacher_answers = scored["teacher"][1]
    held = [encode_chat_example([{"role": "system", "content": SYSTEM}, {"role": "user", "content": it["question"]},
                                 {"role": "assistant", "content": a.strip() or "-"}], tok)
            for it, a in zip(items, teacher_answers, strict=True)]
    report = {"teacher_run": args.teacher_run, "data": str(data), "eval_questions": len(items), **vars(args),
              "train_seconds": seconds}
    # parameters, size, decode speed, agreement: what `corral distill` reports, over the held-out questions
    report.update(compare(loaded, models, held, tok, torch.device("cpu"), decode_tokens=128,
                          prompt="Tell me about the history of lighthouses."))
    t = report["models"]["teacher"]
    for name, model in loaded.items():
        acc, got = scored[name] if name in scored else accuracy(model, tok, items)
        m = report["models"][name]
        m["accuracy"] = acc
        m["misses"] = [{"q": it["question"], "got": g.strip()[:100], "want": it["answer"]}
                       for it, g in zip(items, got, strict=True) if it["answer"].lower() not in g.lower()]
    for name, m in report["models"].items():
        m["accuracy_kept"] = m["accuracy"] / t["accuracy"] if t["accuracy"] else None
        print(f"{name:12s} {m['layers']:2d} layers {m['parameters'] / 1e6:6.1f} M params "
              f"({m['parameters_vs_teacher']:.0%}) {m['size_mb']:6.1f} MB  decode {m['decode_tok_s']:6.1f} tok/s "
              f"({m['speedup']:.2f}x)  held-out {m['accuracy']:.1%} (kept {m['accuracy_kept'] or 0:.0%})  "
              f"top-1 agreement {m['agreement']:.1%}")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "report.png")
    print(f"wrote {out / 'report.json'} and {out / 'report.png'}")
    return 0


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    metrics = [("accuracy", "held-out accuracy"), ("agreement", "top-1 agreement with teacher"),
               ("parameters_vs_teacher", "parameters / teacher"), ("speedup", "decode speed / teacher")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(14, 3.4))
    colors = ["#555555", "#2b7bba", "#e08a2c"]
    for ax, (key, title) in zip(axes, metrics, strict=True):
        vals = [report["models"][n][key] for n in names]
        ax.bar(names, vals, color=colors[: len(names)])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("acme: teacher vs distilled (KD) vs SFT student")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
