"""LoRA fine-tuning speed on CPU: corral vs transformers + peft, same model, data, shapes, rank and threads.

    python bench/train_cpu.py [--steps 6] [--rounds 2] [--batch 4] [--seq 256] [--rank 16] [--threads 2]
                              [--precision fp32|bf16] [--compile]

Both train the default SmolLM2-135M (its GGUF dequantized to fp32; `--precision bf16`: both under bf16 autocast)
with LoRA on all seven projections (q, k, v, o, gate, up, down; alpha = 2 x rank, no dropout), AdamW, gradient
clipping at 1.0, on `batch` full rows of `seq` tokens of acme conversations, the loss on their assistant turns (or
on every token: `--labels all`). corral's step is its fine-tuning loop's own (`corral.train.loop.train_step`); the
peer's is the usual transformers + peft one. The two alternate in rounds in one process; the tokens/s of each is
the median over its timed steps; the ratio is the figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.model.loader import load_model  # noqa: E402
from corral.model.lora import DEFAULT_TARGETS, apply_lora  # noqa: E402
from corral.registry import default_model_path  # noqa: E402
from corral.tokenizer import load_tokenizer  # noqa: E402
from corral.train.data import IGNORE, load_jsonl  # noqa: E402
from corral.train.loop import compile_layers, train_step  # noqa: E402


def batch_of(tok, batch: int, seq: int, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` full rows of `seq` tokens: the acme conversations rendered with the chat template, end to end.
    labels "assistant": the loss on the assistant turns only (fine-tuning data as it comes); "all": every token."""
    examples, _ = load_jsonl(ROOT / "examples" / "acme" / "train.jsonl", tok, 4096)
    ids = [t for e in examples for t in e.input_ids]
    lab = [t for e in examples for t in e.labels] if labels == "assistant" else list(ids)
    need = batch * seq
    reps = need // len(ids) + 1
    return torch.tensor((ids * reps)[:need]).view(batch, seq), torch.tensor((lab * reps)[:need]).view(batch, seq)


def autocast_for(precision: str):
    return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext


def corral_trainer(path: Path, ids: torch.Tensor, labels: torch.Tensor, rank: int, precision: str, compile: bool):
    model = load_model(str(path), device="cpu", dtype="float32").model
    apply_lora(model, rank, 2.0 * rank, 0.0, DEFAULT_TARGETS)
    if compile:  # as `corral finetune --compile` does
        compile_layers(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = {"ids": ids, "labels": labels, "positions": None, "doc_ids": None, "tokens": ids.numel()}
    n_tok = int((batch["labels"][:, 1:] != IGNORE).sum())

    def step() -> float:
        return train_step(model, opt, params, [batch], n_tok, clip=1.0, autocast=autocast_for(precision))[0]
    return step


def peer_trainer(path: Path, ids: torch.Tensor, labels: torch.Tensor, rank: int, precision: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                             target_modules=list(DEFAULT_TARGETS), task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> float:
        with autocast_for(precision)():
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)
    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per program per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both programs: fp32, or bf16 autocast (fp32 weights and optimizer)")
    ap.add_argument("--compile", action="store_true",
                    help="corral's decoder layers through torch.compile (`corral finetune --compile`); the peer "
                         "stays eager, as transformers + peft run by default. The compile happens in the untimed "
                         "warm-up step")
    ap.add_argument("--labels", choices=["assistant", "all"], default="assistant",
                    help="loss on the assistant turns (default) or on every token")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = default_model_path()
    ids, labels = batch_of(load_tokenizer(path), args.batch, args.seq, args.labels)
    tokens = ids.numel()
    programs = {"corral": corral_trainer(path, ids, labels, args.rank, args.precision, args.compile),
                "transformers+peft": peer_trainer(path, ids, labels, args.rank, args.precision)}
    times: dict[str, list[float]] = {k: [] for k in programs}
    first: dict[str, float] = {}
    for name, step in programs.items():  # warm-up (first-touch allocations, thread pools); first losses
        first[name] = step()
    for r in range(args.rounds):
        for name, step in programs.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}: {name} {tokens / statistics.median(times[name]):.0f} tok/s", flush=True)
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    share = float((labels[:, 1:] != IGNORE).float().mean())
    print(f"\nLoRA r{args.rank} on all 7 projections, batch {args.batch} x {args.seq}, {args.threads} threads, "
          f"{args.precision}{', corral compiled' if args.compile else ''}, {args.rounds} x {args.steps} timed steps "
          f"each; loss on {args.labels} tokens ({share:.0%})")
    print(f"first-step loss: corral {first['corral']:.4f}, transformers+peft {first['transformers+peft']:.4f}")
    for k, v in rate.items():
        print(f"  {k:18s} {v:7.1f} tok/s")
    print(f"  ratio corral / transformers+peft: {rate['corral'] / rate['transformers+peft']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
