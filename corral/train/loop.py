"""The one fine-tuning loop: full, LoRA or QLoRA, AdamW with warmup + cosine, gradient accumulation and clipping,
seeded, validation loss, `metrics.jsonl` + a loss-curve PNG, atomic checkpoints and exact resume; optional
sequence packing, activation checkpointing and bf16 autocast; data-parallel with FSDP2 under torchrun.

One signature serves the CLI, a YAML file and Python: `finetune(FinetuneConfig(...))`.

Determinism: the data order of each epoch comes from `seed + epoch`; dropout draws from torch's RNG, saved in
every checkpoint; the learning rate is a pure function of the step. A run resumed from a checkpoint therefore
repeats the straight run's losses exactly (same machine, same threads; tested).

Checkpoints hold no pickles: tensors (trainable weights, AdamW moments, RNG state) go to safetensors, the rest
(step, epoch, position, config) to JSON; a checkpoint is written to a temporary folder and renamed into place.

The loss is summed over the assistant tokens of all micro-batches of a step (on all processes) and divided by their
count, so gradient accumulation and data parallelism give the same update as one big batch.

Distributed: under `torchrun --nproc_per_node N -m corral finetune ...` (WORLD_SIZE > 1) the same loop shards each
decoder layer and the root with FSDP2 (`fully_shard`: parameters, gradients and AdamW state split across
processes; NCCL on CUDA, gloo on CPU). `batch_size` is per process: one step sees batch_size x grad_accum x N
examples, the slice of each process cut from the same global draw, so N processes follow the one-process run of
the same global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from corral import jsonl
from corral.errors import InvalidArgumentError
from corral.train.config import FinetuneConfig
from corral.train.data import IGNORE, Example, Packed, collate, load_jsonl, loss_targets, pack, split_val

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"


def lr_at(step: int, cfg: FinetuneConfig, total: int) -> float:
    """Linear warmup to `lr`, then cosine to 10% of it at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Dist:
    """Rank, world size and device of this process; world 1 without torchrun."""

    def __init__(self, device: str):
        from corral.model.loader import resolve_device

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = resolve_device(device)
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Objective:
    """What a training step minimises. This one: cross-entropy on the labelled tokens. Distillation
    (`corral.distill`) brings its own (a teacher beside the student) and runs this same loop."""

    def setup(self, rows: list, dist: Dist, autocast: Any, model: torch.nn.Module | None = None) -> None:
        """Called once, before the first step and before a checkpoint is restored, with the training rows (after
        packing) and the model as loaded (LoRA, if any, still adds nothing)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Summed (not averaged) over the batch's loss positions."""
        return _loss(model, batch, "sum")


ANCHOR_FILE = "anchor_topk"
ANCHOR_TOPK = 64


class AnchoredObjective(Objective):
    """Cross-entropy on the ordinary rows; on anchor rows (`Example.anchor`: the recipe's replay of the base model's
    own text), the forward KL from the base model's next-token distribution to the model's, over the base's top-64
    tokens and "the rest" (`corral.distill.losses.kd_loss`). The base's top-64 are computed once, before the first
    step, when the model is still the base (LoRA's B starts at zero), and written to the run folder, so a resumed
    run reads them back. A KL term holds the whole distribution where cross-entropy on the base's greedy text would
    only push its top token up: the fine-tune keeps the base's perplexity on text it was not trained on."""

    def __init__(self, run: Path):
        self.run = run
        self.cache: Any = None

    def setup(self, rows: list, dist: Dist, autocast: Any, model: torch.nn.Module | None = None) -> None:
        from corral.distill.teacher import CachedTeacher, write_cache

        anchors = [r for r in rows if r.anchor]
        if not anchors:
            return
        # Under FSDP every process takes part in the sharded forward passes, so each writes its own copy.
        path = self.run / (f"{ANCHOR_FILE}.safetensors" if dist.world == 1 else f"{ANCHOR_FILE}.{dist.rank}"
                                                                                 ".safetensors")
        if not path.is_file():
            from tqdm import tqdm

            with tqdm(total=len(anchors), desc="base model top-64 on the replay rows", unit="row", leave=False,
                      disable=not dist.main) as bar:
                write_cache(model, anchors, path, ANCHOR_TOPK, dist.device, 1, autocast, bar.update)
        self.cache = CachedTeacher(path, dist.device)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        from corral.distill.losses import kd_loss

        rows = batch["rows"]
        if self.cache is None or not any(r.anchor for r in rows):
            return _loss(model, batch, "sum")
        target, keep = loss_targets(batch)
        logits = model(batch["ids"], positions=batch["positions"], doc_ids=batch["doc_ids"], keep=keep)  # (N, V)
        is_anchor = torch.tensor([r.anchor for r in rows], device=keep.device)
        at = (keep & is_anchor[:, None])[keep]  # (N,): which loss positions belong to anchor rows
        loss = F.cross_entropy(logits[~at].float(), target[keep][~at], reduction="sum")
        base = self.cache.targets({"rows": [r for r in rows if r.anchor]}, keep[is_anchor])
        return loss + kd_loss(logits[at], base, "fkl")


class Task:
    """What a run learns from, beside its loss (`Objective`): how its data files become examples, what is done to
    the training split, and what is written beside the trained weights. This one: chat or prompt/completion lines
    (`load_jsonl`). Guard training brings its own (`corral.guard.train.GuardTask`) and runs this same loop."""

    def load(self, cfg: FinetuneConfig, path: str | Path, tok: Any, template: str | None
             ) -> tuple[list[Example], list[str]]:
        return load_jsonl(path, tok, cfg.max_seq_len, template, cfg.skip_bad_lines)

    def training_split(self, cfg: FinetuneConfig, train: list[Example]) -> list[Example]:
        """The training examples after the validation split, before packing."""
        return train

    def save(self, cfg: FinetuneConfig, folder: Path) -> None:
        """Called on the main process after the weights are written to `folder` (adapter/ or model/)."""


def check_task(cfg: FinetuneConfig, task: Task | None) -> Task:
    """`task`, or the default one for `cfg.task` sft; another `cfg.task` must come with its own."""
    if task is None and cfg.task != "sft":
        raise InvalidArgumentError(f"task {cfg.task!r} trains through its own Task: pass task=..., for guard "
                                   "corral.guard.train.GuardTask(cfg)")
    return task or Task()


def finetune(cfg: FinetuneConfig, stop_after: int | None = None, progress: bool = True, task: Task | None = None
             ) -> Path:
    """Train; returns the run folder. `stop_after` (tests) ends the run after that many steps, as a crash would.

    With task sft, the recipe around the loop (`corral.train.recipe`) runs as the config asks: augmentation by a
    teacher, documents as data, replay of the base model's answers, the held-out augmented questions scored during
    training (the best checkpoint kept), and `eval_tasks` before and after, in `out/report`. Another `cfg.task`
    needs its `task` (guard: `corral.guard.train.GuardTask(cfg)`)."""
    cfg.check()
    task = check_task(cfg, task)
    dist = Dist(cfg.device)
    try:
        if cfg.task != "sft":
            return run_loop(cfg, dist, stop_after, progress, task=task)
        from corral.train.recipe import prepare, report

        prep = prepare(cfg, dist, progress)
        run = run_loop(prep.cfg, dist, stop_after, progress, prepared=True, select=prep.select, anchor=prep.anchor,
                       task=task)
        if dist.main and ((run / "adapter").exists() or (run / "model").exists()):  # not after a stop half-way
            report(cfg, prep, run, progress)
        return run
    finally:
        dist.close()


def run_loop(cfg: FinetuneConfig, dist: Dist, stop_after: int | None, progress: bool,
              objective: Objective | None = None, prepared: bool = False,
              select: list[dict[str, Any]] | None = None, anchor: str | None = None, task: Task | None = None
              ) -> Path:
    """The loop. `objective`: the loss (default: cross-entropy). `prepared`: the caller has already made the run
    folder and put its own files there (distillation: the student's initial weights), so it may be non-empty.
    `select`: chat prompts with the key strings of their answer (`{"messages", "answer"}`), answered greedily every
    `select_every` steps; the trainable weights of the best score are kept (`best/`) and are the ones saved.
    `anchor`: a JSONL file of rows trained towards the base model's distributions (`AnchoredObjective`). `task`:
    the data side (default: chat or prompt/completion lines)."""
    from corral.model.loader import load_model
    from corral.model.lora import apply_lora
    from corral.model.quant import quantize_for_training, tensor_bytes
    from corral.tokenizer import load_tokenizer

    run = Path(cfg.out)
    objective = objective or (AnchoredObjective(run) if anchor else Objective())
    task = task or Task()
    if run.exists() and not cfg.resume and not prepared and any(run.iterdir()):
        raise InvalidArgumentError(f"{run} exists and is not empty; pass --resume to continue it or choose --out")
    dist.barrier()  # every process has checked before rank 0 writes
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    lm = load_model(cfg.model, device=str(dist.device), dtype="float32")  # unfused fp32 layers: trainable
    tok = load_tokenizer(lm.path)
    model = lm.model
    template = Path(cfg.chat_template).read_text() if cfg.chat_template else None
    examples, _ = task.load(cfg, cfg.data, tok, template)
    if cfg.val_file:
        val, _ = task.load(cfg, cfg.val_file, tok, template)
        train = examples
    elif cfg.val_split > 0:
        train, val = split_val(examples, cfg.val_split, cfg.seed)
    else:
        train, val = examples, []
    train = task.training_split(cfg, train)
    anchors = Task().load(cfg, anchor, tok, template)[0] if anchor else []
    for e in anchors:
        e.anchor = True
    rows: list[Example] | list[Packed] = train + anchors
    if cfg.packing:  # packed once, in a seeded order; the epochs then shuffle whole rows
        rng = random.Random(cfg.seed)
        order = list(range(len(train)))
        rng.shuffle(order)
        train = [train[i] for i in order]
        rng.shuffle(anchors)
        # padding: doc -1, no loss. Anchor rows apart: each packed row is wholly one or the other.
        rows = pack(train, cfg.max_seq_len) + pack(anchors, cfg.max_seq_len, anchor=True)
    base_fp32 = tensor_bytes(model)
    if cfg.method == "qlora":
        quantize_for_training(model, cfg.lora_targets)
    if cfg.method in ("lora", "qlora"):
        apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    model.grad_checkpointing = cfg.grad_checkpointing
    memory = {"model_mb": tensor_bytes(model) / 2**20, "fp32_model_mb": base_fp32 / 2**20,
              "trainable_mb": tensor_bytes(model, trainable=True) / 2**20}
    if cfg.dp and dist.world > 1:
        raise InvalidArgumentError("--dp runs in one process: per-row clipping across FSDP shards is not built; "
                                   "run it without torchrun")
    if dist.world > 1:
        import warnings

        from torch.distributed.fsdp import fully_shard

        # The logits are a view of the head's 2-D output; nothing writes into them in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    if cfg.compile:
        compile_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    # One fused kernel over all parameters instead of PyTorch's per-tensor default: a 78M-parameter full fine-tune
    # step (the acme distillation student, bf16 autocast) on this project's 2-core CPU went 0.53 -> 0.41 s.
    # Sharded (DTensor) parameters take the multi-tensor path.
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            **({"fused": True} if dist.world == 1 else {"foreach": True}))
    per_step = cfg.batch_size * cfg.grad_accum * dist.world
    steps_per_epoch = max(1, len(rows) // per_step)
    total = cfg.max_steps or max(1, int(steps_per_epoch * cfg.epochs))
    amp = cfg.precision == "bf16" or (cfg.precision == "auto" and (dist.device.type == "cuda" or _native_bf16_cpu()))
    autocast = (lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16)) if amp else nullcontext
    objective.setup(rows, dist, autocast, model)
    ema = MovingAverage(params, cfg.ema, total) if cfg.ema > 0 else None
    dp = None
    if cfg.dp:
        from corral.train.dp import DPSGD

        dp = DPSGD(params, len(rows), cfg.batch_size, total, cfg.epsilon, cfg.delta, cfg.max_grad_norm, cfg.seed)
    state = {"step": 0, "epoch": 0, "cursor": 0}
    if cfg.resume and (run / CHECKPOINT).is_dir():
        state = _load_checkpoint(run / CHECKPOINT, model, names, opt, dist, ema)
        if dp:
            dp.resume(state["step"])
    selector = Selector(run, select, tok, template, total, cfg.select_every, dist.world) if select else None
    metrics = None
    if dist.main:
        (run / "config.json").write_text(json.dumps({**asdict(cfg), "world_size": dist.world, **memory},
                                                    indent=2) + "\n")
        _keep_metrics_until(run / "metrics.jsonl", state["step"])  # a crash may have logged steps past the checkpoint
        metrics = (run / "metrics.jsonl").open("a")
    bar = _progress(progress and dist.main, total, state["step"])
    model.train()
    t_last, tokens_since = time.perf_counter(), 0
    try:
        while state["step"] < total:
            if dp:
                rec = _dp_step(dp, model, opt, rows, state, objective, autocast, dist.device,
                               lr_at(state["step"], cfg, total))
                if dist.main:  # the guarantee so far, every step: a run stopped half-way still says what it spent
                    (run / "dp.json").write_text(json.dumps(dp.summary(), indent=2) + "\n")
            else:
                rec = _step(model, opt, params, rows, state, cfg, dist, objective, autocast, total)
            tokens = rec.pop("tokens")
            tokens_since += tokens
            step_s = time.perf_counter() - t_last
            rec["tokens_per_s"] = dist.sum(tokens_since) / max(step_s, 1e-9)
            # the run's own timing (corral cost): training time, evaluation and checkpoints left out
            state["train_ms"] = state.get("train_ms", 0) + round(1000 * step_s)
            state["trained_tokens"] = state.get("trained_tokens", 0) + int(dist.sum(tokens))
            rec.update(train_s=state["train_ms"] / 1000, trained_tokens=state["trained_tokens"])
            if ema:
                ema.update(params, state["step"])
            if val and (state["step"] % cfg.eval_every == 0 or state["step"] == total):
                with autocast():
                    rec["val_loss"] = evaluate(model, val, cfg, dist.device)
            if selector and selector.due(state["step"]):
                with ema.swapped(params) if ema else nullcontext():
                    rec["select_acc"] = selector.score(model, names, state["step"])
            if metrics:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
            bar(rec)
            if state["step"] % cfg.save_every == 0 or state["step"] == total:
                _save_checkpoint(run / CHECKPOINT, model, names, opt, state, cfg, dist, ema)
            t_last, tokens_since = time.perf_counter(), 0  # evaluation and checkpoints do not count as training
            if stop_after is not None and state["step"] >= stop_after:
                return run
    finally:
        if metrics:
            metrics.close()
        bar(None)
    if ema:
        ema.copy_to(params)
    if selector:
        selector.restore_best(model, names)
    _finish(run, model, lm, tok, cfg, dist, task)
    return run


def _step(model, opt, params, rows, state, cfg, dist, objective, autocast, total) -> dict[str, Any]:
    """One optimizer step over the next grad_accum micro-batches: its metrics record (and "tokens")."""
    batches = []
    for _ in range(cfg.grad_accum):
        picked, state["epoch"], state["cursor"] = _next_rows(rows, cfg, dist.world, state["epoch"], state["cursor"])
        n_tok = sum(sum(t != IGNORE for t in r.labels[1:]) for r in picked)
        batches.append((collate(picked[dist.rank * cfg.batch_size: (dist.rank + 1) * cfg.batch_size],
                                 dist.device), n_tok))
    n_tok = max(1, sum(n for _, n in batches))  # over all processes: each sees the global draw
    lr = lr_at(state["step"], cfg, total)
    for g in opt.param_groups:
        g["lr"] = lr
    loss_sum, grad_norm = train_step(model, opt, params, [b for b, _ in batches], n_tok, cfg.clip,
                                     autocast, dist.world, objective.loss)
    state["step"] += 1
    return {"step": state["step"], "loss": dist.sum(loss_sum), "lr": lr, "grad_norm": grad_norm,
            "epoch": state["epoch"], "tokens": sum(b["tokens"] for b, _ in batches)}


def _dp_step(dp, model, opt, rows, state, objective, autocast, device, lr) -> dict[str, Any]:
    """One DP-SGD step (corral.train.dp) on a Poisson sample of the rows: its metrics record (and "tokens")."""
    for g in opt.param_groups:
        g["lr"] = lr
    picked = [rows[i] for i in dp.draw()]

    def row_loss(row):  # the row's mean loss per trained token: each row weighs the same
        batch = collate([row], device)
        with autocast():
            return objective.loss(model, batch) / max(1, sum(t != IGNORE for t in row.labels[1:]))

    loss, clipped = dp.step(row_loss, picked, opt)
    state["step"] += 1
    state["epoch"] = int(state["step"] * dp.q)  # expected passes over the data
    return {"step": state["step"], "loss": loss, "lr": lr, "rows": len(picked), "clipped": clipped,
            "epsilon": dp.spent(), "epoch": state["epoch"], "tokens": sum(len(r.input_ids) for r in picked)}


class MovingAverage:
    """An exponential moving average of the trainable weights, over about `share` of the run's `total` steps (a
    time constant of share x total steps, shorter while the run is young). With a small data set each step pulls
    the model towards the few facts of its batch: two checkpoints four steps apart answered 28 and 24 of the same
    45 held-out questions. The average is what selection scores and what the run keeps. On the device of the
    weights, updated in place: no host sync."""

    def __init__(self, params: list[torch.Tensor], share: float, total: int):
        self.decay = 1.0 - 1.0 / max(1.0, share * total)
        self.avg = [p.detach().clone() for p in params]

    def update(self, params: list[torch.Tensor], step: int) -> None:
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for a, p in zip(self.avg, params, strict=True):
                a.lerp_(p.detach(), weight)

    @contextmanager
    def swapped(self, params: list[torch.Tensor]):
        """The average in the model's weights for the block, the trained weights back after it."""
        live = [p.detach().clone() for p in params]
        self.copy_to(params)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(params, live, strict=True):
                    p.copy_(w)

    def copy_to(self, params: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, a in zip(params, self.avg, strict=True):
                p.copy_(a)


class Selector:
    """Best-checkpoint selection: greedy answers to held-out questions, scored by whether they carry the answer's
    key strings; the trainable weights of the best score so far are written to `run/best/` (with `best.json`), so a
    resumed run still knows them. Ties go to the later step: as accurate, and trained longer on the facts. One
    process only: under torchrun the sharded model cannot answer alone, so every step's weights are kept as now."""

    def __init__(self, run: Path, rows: list[dict[str, Any]], tok: Any, template: str | None, total: int,
                 every: int | None, world: int):
        from corral.chat import encode_chat

        self.folder = run / "best"
        self.every = 0 if world > 1 else (every if every is not None else max(1, total // 8))
        self.total = total
        self.tok = tok
        self.prompts = [encode_chat(tok, r["messages"], template=template) for r in rows]
        self.keys = [r["answer"] if isinstance(r["answer"], list) else [r["answer"]] for r in rows]
        meta = self.folder / "best.json"
        self.best = json.loads(meta.read_text()) if meta.exists() else {"step": 0, "acc": -1.0}

    def due(self, step: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == self.total)

    def score(self, model: torch.nn.Module, names: list[str], step: int) -> float:
        from safetensors.torch import save_file

        from corral.distill.keys import carries
        from corral.engine.sampling import SamplingParams
        from corral.text import generate_many as generate

        was = model.training
        model.eval()
        # Answered eager: the compiled layers serve the training step's shapes; a KV-cached decode through them
        # would compile a graph per new shape
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            gens = generate(model, self.tok, self.prompts, SamplingParams(max_tokens=48), max_seq_len=1024)
        model.train(was)
        acc = sum(carries(g.text, k) for g, k in zip(gens, self.keys, strict=True)) / len(self.prompts)
        if acc >= self.best["acc"]:
            self.best = {"step": step, "acc": acc}
            params = dict(model.named_parameters())
            tmp = self.folder.with_name("best.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file({n: params[n].detach().cpu().contiguous() for n in names}, str(tmp / "weights.safetensors"))
            (tmp / "best.json").write_text(json.dumps(self.best) + "\n")
            shutil.rmtree(self.folder, ignore_errors=True)
            os.replace(tmp, self.folder)
        return acc

    def restore_best(self, model: torch.nn.Module, names: list[str]) -> None:
        """Puts the best step's trainable weights back into `model` (the run's artifact is then that step's)."""
        from safetensors.torch import load_file

        if not (self.folder / "weights.safetensors").exists():
            return
        saved = load_file(str(self.folder / "weights.safetensors"))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])


def compile_layers(model: torch.nn.Module) -> None:
    """torch.compile each decoder layer in place (parameter names unchanged); where torch.compile cannot build
    kernels on the model's device (no C++ compiler for inductor on CPU, no Triton on CUDA), one warning, and the
    run stays eager. Per layer, after FSDP2 sharding (its recipe): one graph serves every layer, and
    the norms, rotary, SiLU, residual and LoRA adds fuse into a few loops around the matmuls. A LoRA r32 step of
    the default model, batch 1 x 512 tokens under bf16 autocast on this project's 2-core CPU: 396 -> 520 tokens/s
    (1.31x; 3.4 -> 3.0 s in fp32 at batch 4 x 256; bench/train_cpu.py, BENCHMARKS.md)."""
    device = next(model.parameters()).device
    try:  # a probe of a few seconds (cached per machine): a missing toolchain shows here, not mid-step
        torch.compile(lambda x: torch.nn.functional.silu(x) * 2.0 + 1.0)(torch.ones(8, device=device))
    except Exception as e:  # any failure to build (InvalidCxxCompiler, BackendCompilerFailed, ...): run eager
        log.warning("torch.compile cannot build here (%s): training eager, about 1.3x slower "
                    "(install a C++ compiler, e.g. g++, or pass --no-compile to silence this)",
                    (str(e).strip().splitlines() or [type(e).__name__])[0][:160])
        return
    for layer in model.model.layers:
        layer.compile()


def _native_bf16_cpu() -> bool:
    """A CPU with bf16 dot-product instructions (AVX512-BF16, AMX): there a bf16 matmul of a training step's
    size ran 3.8x faster than fp32 (1024x576 @ 576x1536: 2.3 vs 8.6 ms on this project's 2-core EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, params: list[torch.Tensor],
               batches: list[dict[str, Any]], n_tok: int, clip: float, autocast: Any = nullcontext,
               world: int = 1, loss_fn: Any = None) -> tuple[float, float]:
    """One optimizer step over the micro-batches of this process: (its share of the loss, gradient norm).
    `n_tok` counts the loss tokens of the whole step on all processes, so the shares add up to the mean.
    `loss_fn(model, batch)`: the batch's summed loss (default: cross-entropy, `Objective.loss`)."""
    loss_fn = loss_fn or Objective().loss
    loss_sum = 0.0
    for i, batch in enumerate(batches):
        if world > 1:  # gradients are reduced once, after the last micro-batch
            model.set_requires_gradient_sync(i == len(batches) - 1)
        with autocast():
            loss = loss_fn(model, batch) / n_tok
        # FSDP averages gradients over processes; the loss is already a share of the global sum
        (loss * world).backward()
        loss_sum += float(loss.detach())
    grad_norm = _full(torch.nn.utils.clip_grad_norm_(params, clip))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum, float(grad_norm)


def _loss(model: torch.nn.Module, batch: dict[str, Any], reduction: str) -> torch.Tensor:
    """Cross-entropy of the next token where a label applies; the head runs at those positions only."""
    target, keep = loss_targets(batch)
    logits = model(batch["ids"], positions=batch["positions"], doc_ids=batch["doc_ids"], keep=keep)  # (N, V)
    return F.cross_entropy(logits.float(), target[keep], reduction=reduction)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2) as its whole value; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _keep_metrics_until(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
    path.write_text("".join(x + "\n" for x in keep))


def evaluate(model: torch.nn.Module, val: list[Example], cfg: FinetuneConfig,
             device: torch.device | str = "cpu") -> float:
    """Mean loss per assistant token over the held-out examples (no dropout, no grad)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val), cfg.batch_size):
            batch = collate(val[i: i + cfg.batch_size], torch.device(device))
            total += float(_loss(model, batch, "sum"))
            count += int((batch["labels"][:, 1:] != IGNORE).sum())
    model.train(was)
    return total / max(1, count)


def _next_rows(rows: list, cfg: FinetuneConfig, world: int, epoch: int, cursor: int):
    """The next micro-batch of all processes (batch_size x world rows) in this epoch's seeded order."""
    n = cfg.batch_size * world
    if n > len(rows):
        raise InvalidArgumentError(f"{len(rows)} training rows cannot fill a batch of {n}; lower --batch-size")
    if cursor + n > len(rows):
        epoch, cursor = epoch + 1, 0
    order = _epoch_order(len(rows), cfg.seed, epoch)
    return [rows[i] for i in order[cursor: cursor + n]], epoch, cursor + n


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The seeded order of epoch `epoch`, shuffled once per epoch rather than once per micro-batch."""
    order = list(range(n))
    random.Random(seed * 1000003 + epoch).shuffle(order)
    return tuple(order)


def _rng_states(dist: Any) -> dict[str, torch.Tensor]:
    """Every process's torch RNG (CPU, and CUDA when used): dropout masks draw from them."""
    mine = {"torch": torch.get_rng_state()}
    if dist.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(dist.device)
    if dist.world == 1:
        return {f"rng/{k}/0": v for k, v in mine.items()}
    out = {}
    for k, v in mine.items():
        parts = [torch.empty_like(v, device=dist.device) for _ in range(dist.world)]
        torch.distributed.all_gather(parts, v.to(dist.device))
        out.update({f"rng/{k}/{r}": p.cpu() for r, p in enumerate(parts)})
    return out


def _save_checkpoint(folder: Path, model: torch.nn.Module, names: list[str], opt: torch.optim.Optimizer,
                     state: dict[str, int], cfg: FinetuneConfig, dist: Any, ema: MovingAverage | None = None
                     ) -> None:
    from safetensors.torch import save_file

    # Every process takes part in gathering sharded tensors; rank 0 writes.
    params = dict(model.named_parameters())
    tensors = {f"param/{n}": _full(params[n].detach()).cpu().contiguous() for n in names}
    if ema:
        tensors.update({f"ema/{n}": _full(a).cpu().contiguous() for n, a in zip(names, ema.avg, strict=True)})
    for i, n in enumerate(names):
        st = opt.state.get(opt.param_groups[0]["params"][i], {})
        for k in ("exp_avg", "exp_avg_sq"):
            if k in st:
                tensors[f"adam/{n}/{k}"] = _full(st[k]).cpu().contiguous()
        if "step" in st:
            tensors[f"adam/{n}/step"] = torch.as_tensor(_full(st["step"]), dtype=torch.float32).cpu().reshape(1)
    tensors.update(_rng_states(dist))
    if dist.main:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "world_size": dist.world, "config": asdict(cfg)},
                                                   indent=2) + "\n")
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _load_checkpoint(folder: Path, model: torch.nn.Module, names: list[str], opt: torch.optim.Optimizer,
                     dist: Any, ema: MovingAverage | None = None) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    if int(meta.get("world_size", 1)) != dist.world:
        raise InvalidArgumentError(f"{folder} was written by {meta.get('world_size', 1)} process(es); resume it "
                                   f"with as many (this run has {dist.world})")
    params = dict(model.named_parameters())

    def like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The saved whole tensor placed as `ref` is: this process's shard under FSDP2."""
        t = t.to(ref.device if not hasattr(ref, "device_mesh") else dist.device, ref.dtype)
        if hasattr(ref, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(t, ref.device_mesh, ref.placements)
        return t

    with torch.no_grad():
        for n in names:
            params[n].copy_(like(tensors[f"param/{n}"], params[n]))
        for n, a in zip(names, ema.avg, strict=True) if ema else ():
            if f"ema/{n}" in tensors:
                a.copy_(like(tensors[f"ema/{n}"], params[n]))
    for i, n in enumerate(names):
        p = opt.param_groups[0]["params"][i]
        if f"adam/{n}/exp_avg" in tensors:
            opt.state[p] = {"step": tensors[f"adam/{n}/step"].reshape(()),
                            "exp_avg": like(tensors[f"adam/{n}/exp_avg"], p),
                            "exp_avg_sq": like(tensors[f"adam/{n}/exp_avg_sq"], p)}
    torch.set_rng_state(tensors[f"rng/torch/{dist.rank}"])
    if dist.device.type == "cuda" and f"rng/cuda/{dist.rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng/cuda/{dist.rank}"], dist.device)
    return {k: int(meta.get(k, 0)) for k in ("step", "epoch", "cursor", "train_ms", "trained_tokens")}


def _finish(run: Path, model: torch.nn.Module, lm: Any, tok: Any, cfg: FinetuneConfig, dist: Any, task: Task
            ) -> None:
    """The open artifact (a PEFT adapter or full safetensors weights) and the loss curve."""
    from safetensors.torch import save_file

    from corral.formats.hf import write_tokenizer_files

    model.eval()
    if cfg.method in ("lora", "qlora"):
        from corral.model.lora import lora_state_dict, save_adapter

        sd = {k: _full(v).cpu() for k, v in lora_state_dict(model).items()}
        if dist.main:
            save_adapter(model, run / "adapter", base_model=str(lm.path), tensors=sd)
    else:
        sd = {k: _full(v.detach()).cpu().contiguous() for k, v in model.state_dict().items()}
        if lm.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        if dist.main:
            out = run / "model"
            out.mkdir(exist_ok=True)
            save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
            (out / "config.json").write_text(json.dumps(lm.config.to_hf_dict(), indent=2) + "\n")
            write_tokenizer_files(tok, lm.path, out)  # a complete HF folder: transformers and corral load it alone
    if dist.main:
        task.save(cfg, run / ("model" if cfg.method == "full" else "adapter"))
        plot_metrics(run / "metrics.jsonl", run / "loss.png")
    dist.barrier()


def plot_metrics(metrics: Path, png: Path) -> None:
    """Training (and validation) loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = jsonl.records(metrics)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], label="train loss")
    val = [r for r in recs if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    sel = [r for r in recs if "select_acc" in r]
    if sel:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in sel], [100 * r["select_acc"] for r in sel], "s--", color="tab:green",
                 label="held-out questions answered (%)")
        ax2.set_ylabel("held-out questions answered (%)")
        ax2.set_ylim(0, 100)
        ax2.legend(loc="upper right")
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
        if "select_acc" in rec:
            update.select = f" held-out {rec['select_acc']:.0%}"
        info += update.select
        prog.update(task, completed=rec["step"], info=info)

    update.select = ""  # the last selection score, shown until the next
    return update
