"""The one fine-tuning loop: full or LoRA, AdamW with warmup + cosine, gradient accumulation and clipping, seeded,
validation loss, `metrics.jsonl` + a loss-curve PNG, atomic checkpoints and exact resume.

One signature serves the CLI, a YAML file and Python: `finetune(FinetuneConfig(...))`.

Determinism: the data order of each epoch comes from `seed + epoch`; dropout draws from torch's RNG, saved in
every checkpoint; the learning rate is a pure function of the step. A run resumed from a checkpoint therefore
repeats the straight run's losses exactly (same machine, same threads; tested).

Checkpoints hold no pickles: tensors (trainable weights, AdamW moments, RNG state) go to safetensors, the rest
(step, epoch, position, config) to JSON; a checkpoint is written to a temporary folder and renamed into place.

The loss is summed over the assistant tokens of all micro-batches of a step and divided by their count, so
gradient accumulation gives the same update as one big batch.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from corral.errors import InvalidArgumentError
from corral.train.config import FinetuneConfig
from corral.train.data import IGNORE, Example, load_jsonl, split_val

CHECKPOINT = "checkpoint"


def lr_at(step: int, cfg: FinetuneConfig, total: int) -> float:
    """Linear warmup to `lr`, then cosine to 10% of it at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def finetune(cfg: FinetuneConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train; returns the run folder. `stop_after` (tests) ends the run after that many steps, as a crash would."""
    from corral.model.loader import load_model
    from corral.model.lora import apply_lora
    from corral.tokenizer import load_tokenizer

    cfg.check()
    run = Path(cfg.out)
    if run.exists() and not cfg.resume and any(run.iterdir()):
        raise InvalidArgumentError(f"{run} exists and is not empty; pass --resume to continue it or choose --out")
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    lm = load_model(cfg.model, device=cfg.device, dtype="float32")  # unfused fp32 layers: trainable
    tok = load_tokenizer(lm.path)
    model = lm.model
    template = Path(cfg.chat_template).read_text() if cfg.chat_template else None
    examples, _ = load_jsonl(cfg.data, tok, cfg.max_seq_len, template, cfg.skip_bad_lines)
    if cfg.val_file:
        val, _ = load_jsonl(cfg.val_file, tok, cfg.max_seq_len, template, cfg.skip_bad_lines)
        train = examples
    elif cfg.val_split > 0:
        train, val = split_val(examples, cfg.val_split, cfg.seed)
    else:
        train, val = examples, []
    if cfg.method == "lora":
        apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = max(1, len(train) // per_step)
    total = cfg.max_steps or max(1, int(steps_per_epoch * cfg.epochs))
    state = {"step": 0, "epoch": 0, "cursor": 0}
    if cfg.resume and (run / CHECKPOINT).is_dir():
        state = _load_checkpoint(run / CHECKPOINT, model, names, opt)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    _keep_metrics_until(run / "metrics.jsonl", state["step"])  # a crash may have logged steps past the checkpoint
    metrics = (run / "metrics.jsonl").open("a")
    bar = _progress(progress, total, state["step"])
    model.train()
    t_last, tokens_since = time.perf_counter(), 0
    try:
        while state["step"] < total:
            batches = []
            for _ in range(cfg.grad_accum):
                batch, state["epoch"], state["cursor"] = _next_batch(train, cfg, state["epoch"], state["cursor"])
                batches.append(batch)
            n_tok = sum(int((b[1][:, 1:] != IGNORE).sum()) for b in batches)
            lr = lr_at(state["step"], cfg, total)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for ids, labels in batches:
                logits = model(ids)
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=IGNORE, reduction="sum") / max(1, n_tok)
                loss.backward()
                loss_sum += float(loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip))
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
            tokens_since += sum(b[0].numel() for b in batches)
            now = time.perf_counter()
            rec: dict[str, Any] = {"step": state["step"], "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                                   "tokens_per_s": tokens_since / max(now - t_last, 1e-9), "epoch": state["epoch"]}
            if val and (state["step"] % cfg.eval_every == 0 or state["step"] == total):
                rec["val_loss"] = evaluate(model, val, cfg)
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            bar(rec)
            if state["step"] % cfg.save_every == 0 or state["step"] == total:
                _save_checkpoint(run / CHECKPOINT, model, names, opt, state, cfg)
            t_last, tokens_since = time.perf_counter(), 0  # evaluation and checkpoints do not count as training
            if stop_after is not None and state["step"] >= stop_after:
                return run
    finally:
        metrics.close()
        bar(None)
    _finish(run, model, lm, tok, cfg)
    return run


def _keep_metrics_until(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
    path.write_text("".join(x + "\n" for x in keep))


def evaluate(model: torch.nn.Module, val: list[Example], cfg: FinetuneConfig) -> float:
    """Mean loss per assistant token over the held-out examples (no dropout, no grad)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val), cfg.batch_size):
            ids, labels = _collate(val[i: i + cfg.batch_size])
            logits = model(ids)
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=IGNORE, reduction="sum"))
            count += int((labels[:, 1:] != IGNORE).sum())
    model.train(was)
    return total / max(1, count)


def _next_batch(train: list[Example], cfg: FinetuneConfig, epoch: int, cursor: int):
    order = list(range(len(train)))
    random.Random(cfg.seed * 1000003 + epoch).shuffle(order)
    if cursor + cfg.batch_size > len(order):
        epoch, cursor = epoch + 1, 0
        order = list(range(len(train)))
        random.Random(cfg.seed * 1000003 + epoch).shuffle(order)
    picked = [train[i] for i in order[cursor: cursor + cfg.batch_size]]
    return _collate(picked), epoch, cursor + cfg.batch_size


def _collate(examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and labels; padding is masked out of the loss (the causal mask keeps it out of the
    real tokens' attention)."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.zeros(len(examples), T, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return ids, labels


def _save_checkpoint(folder: Path, model: torch.nn.Module, names: list[str], opt: torch.optim.Optimizer,
                     state: dict[str, int], cfg: FinetuneConfig) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    params = dict(model.named_parameters())
    tensors = {f"param/{n}": params[n].detach().contiguous() for n in names}
    for i, n in enumerate(names):
        st = opt.state.get(opt.param_groups[0]["params"][i], {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                tensors[f"adam/{n}/{k}"] = st[k].contiguous()
        if "step" in st:
            tensors[f"adam/{n}/step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    tensors["rng/torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**state, "config": asdict(cfg)}, indent=2) + "\n")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, model: torch.nn.Module, names: list[str], opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].copy_(tensors[f"param/{n}"])
    for i, n in enumerate(names):
        p = opt.param_groups[0]["params"][i]
        if f"adam/{n}/exp_avg" in tensors:
            opt.state[p] = {"step": tensors[f"adam/{n}/step"].reshape(()),
                            "exp_avg": tensors[f"adam/{n}/exp_avg"], "exp_avg_sq": tensors[f"adam/{n}/exp_avg_sq"]}
    torch.set_rng_state(tensors["rng/torch"])
    return {k: int(meta[k]) for k in ("step", "epoch", "cursor")}


def _finish(run: Path, model: torch.nn.Module, lm: Any, tok: Any, cfg: FinetuneConfig) -> None:
    """The open artifact (a PEFT adapter or full safetensors weights) and the loss curve."""
    from safetensors.torch import save_file

    model.eval()
    if cfg.method == "lora":
        from corral.model.lora import save_adapter

        save_adapter(model, run / "adapter", base_model=str(lm.path))
    else:
        out = run / "model"
        out.mkdir(exist_ok=True)
        sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if lm.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(lm.config.to_hf_dict(), indent=2) + "\n")
    plot_metrics(run / "metrics.jsonl", run / "loss.png")


def plot_metrics(metrics: Path, png: Path) -> None:
    """Training (and validation) loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], label="train loss")
    val = [r for r in recs if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _progress(show: bool, total: int, start: int):
    if not show:
        return lambda rec: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("finetune"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn())
    task = prog.add_task("train", total=total, completed=start, info="")
    prog.start()

    def update(rec: dict | None) -> None:
        if rec is None:
            prog.stop()
            return
        info = f"loss {rec['loss']:.3f} lr {rec['lr']:.2e} {rec['tokens_per_s']:.0f} tok/s"
        if "val_loss" in rec:
            info += f" val {rec['val_loss']:.3f}"
        prog.update(task, completed=rec["step"], info=info)

    return update
