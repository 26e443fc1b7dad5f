"""`distill(DistillConfig)`: prune the teacher into a student (or take a given one), then train the student on the
user's data with (1 - alpha) CE + alpha KD against the teacher, in the fine-tuning loop (checkpoints, exact resume,
torchrun FSDP2, LoRA students included), and report how the student compares.

The run folder holds, beside the loop's files (metrics.jsonl, loss.png, checkpoint/, model/ or adapter/):
- `student_init/`: the pruned student before training, an HF folder (the loop loads it like any model);
- `prune.json`: the scores that chose the layers / channels / heads;
- `teacher_topk.safetensors` with `teacher_topk > 0`: the teacher's cached top-k (see `teacher.py`);
- `report.json`: parameters, size on disk, decode tokens/s and top-1 agreement with the teacher (see `compare`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from corral.distill.config import DistillConfig
from corral.distill.losses import distill_loss
from corral.distill.teacher import CACHE_FILE, CachedTeacher, OnlineTeacher, write_cache
from corral.errors import InvalidArgumentError
from corral.train.data import collate, loss_targets
from corral.train.loop import Dist, Objective, Task, check_task, run_loop

STUDENT_INIT = "student_init"
SPEED_PROMPT = "Describe a quiet morning in a fishing village."


class KDObjective(Objective):
    """(1 - alpha) CE + alpha KD, the teacher online or from its cached top-k."""

    def __init__(self, cfg: DistillConfig, teacher: torch.nn.Module, run: Path):
        self.cfg, self.teacher_model, self.run = cfg, teacher, run
        self.teacher: OnlineTeacher | CachedTeacher | None = None

    def setup(self, rows: list, dist: Dist, autocast: Any, model: torch.nn.Module | None = None) -> None:
        cfg = self.cfg
        if cfg.kd_alpha == 0.0:  # plain SFT of the student: no teacher at all
            self.teacher_model = None
            return
        if cfg.teacher_topk == 0:
            self.teacher = OnlineTeacher(self.teacher_model)
            return
        path = self.run / CACHE_FILE
        if dist.main and not path.is_file():
            from tqdm import tqdm

            with tqdm(total=len(rows), desc=f"teacher top-{cfg.teacher_topk}", unit="row", leave=False) as bar:
                write_cache(self.teacher_model, rows, path, cfg.teacher_topk, dist.device,
                            cfg.batch_size, autocast, bar.update)
        dist.barrier()
        self.teacher = CachedTeacher(path, dist.device)
        self.teacher_model = None  # the teacher is not needed again: free its memory

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        target, keep = loss_targets(batch)
        logits = model(batch["ids"], positions=batch["positions"], doc_ids=batch["doc_ids"], keep=keep)
        t = self.teacher.targets(batch, keep) if self.teacher is not None else None
        c = self.cfg
        return distill_loss(logits, target[keep], t, c.kd_alpha, c.kd_loss, c.kd_temperature, c.jsd_beta)


def distill(cfg: DistillConfig, stop_after: int | None = None, progress: bool = True, task: Task | None = None
            ) -> Path:
    """Make (or take) the student, train it against the teacher; returns the run folder. `task`: the data side,
    as `corral.train.loop.finetune` takes it (needed for `cfg.task` guard: `corral.guard.train.GuardTask(cfg)`)."""
    cfg.check()
    task = check_task(cfg, task)
    dist = Dist(cfg.device)
    try:
        return _distill(cfg, dist, stop_after, progress, task)
    finally:
        dist.close()


def _distill(cfg: DistillConfig, dist: Dist, stop_after: int | None, progress: bool, task: Task) -> Path:
    from corral.formats.hf import save_hf_folder
    from corral.tokenizer import load_tokenizer

    run = Path(cfg.out)
    if run.exists() and not cfg.resume and any(run.iterdir()):
        raise InvalidArgumentError(f"{run} exists and is not empty; pass --resume to continue it or choose --out")
    dist.barrier()
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(cfg.model, cfg.teacher_adapter, str(dist.device))
    tok = load_tokenizer(teacher.path)
    init = run / STUDENT_INIT
    if cfg.student is not None:
        student_path = cfg.student
        check_same_tokenizer(tok, student_path)
    else:
        student_path = str(init)
        if dist.main and not (init / "config.json").is_file():
            run.mkdir(parents=True, exist_ok=True)
            template = Path(cfg.chat_template).read_text() if cfg.chat_template else None
            examples, _ = task.load(cfg, cfg.data, tok, template)
            batches = calibration_batches([e.input_ids for e in examples[: cfg.calib_examples]],
                                          min(cfg.max_seq_len, 256), dist.device)
            student, info = prune(teacher.model, batches, cfg.student_layers, cfg.student_mlp, cfg.student_heads,
                                  cfg.prune_score)
            save_hf_folder(student, student.config, tok, teacher.path, init)
            (run / "prune.json").write_text(json.dumps(info, indent=2) + "\n")
            del student
        dist.barrier()
    objective = KDObjective(cfg, teacher.model, run)
    teacher_path = teacher.path
    del teacher  # the objective holds the model while it needs it (an online teacher, or until its cache is written)
    loop_cfg = dataclasses.replace(cfg, model=student_path)
    out = run_loop(loop_cfg, dist, stop_after, progress, objective, prepared=True, task=task)
    if stop_after is not None:
        return out
    students = {"student": out}
    if cfg.sft_baseline:  # the same initial student, cross-entropy only
        sft_cfg = dataclasses.replace(loop_cfg, out=str(run / "sft"), kd_alpha=0.0,
                                      resume=cfg.resume and (run / "sft").exists())
        students["sft student"] = run_loop(sft_cfg, dist, None, progress, KDObjective(sft_cfg, None, run),
                                           task=task)
    if dist.main and cfg.report:
        rows = _report_rows(cfg, tok, task)
        # an online teacher is still in memory; a cached one was freed before training and is loaded again
        online = objective.teacher.model if isinstance(objective.teacher, OnlineTeacher) else None
        teacher_model = online or load_teacher(str(teacher_path), cfg.teacher_adapter, str(dist.device)).model
        models = {"teacher": teacher_model, **{k: _trained(v, cfg, student_path) for k, v in students.items()}}
        paths = {"teacher": teacher_path, **{k: v / ("model" if cfg.method == "full" else "adapter")
                                             for k, v in students.items()}}
        report = compare(models, paths, rows, tok, dist.device)
        if cfg.eval_tasks:
            from corral.eval.harness import EvalModel, evaluate

            scores = evaluate([EvalModel(k, m, tok, str(paths[k])) for k, m in models.items()], cfg.eval_tasks,
                              out=run / "eval", progress=progress)
            for k, m in report["models"].items():
                m["eval"] = scores["results"][k]
        report["config"] = dataclasses.asdict(cfg)
        (run / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        _print_report(report)
    dist.barrier()
    return out


def _trained(run: Path, cfg: DistillConfig, init: str) -> torch.nn.Module:
    from corral.model.loader import load_model

    if cfg.method == "full":
        return load_model(str(run / "model"), device=cfg.device, dtype="float32").model
    return load_model(init, device=cfg.device, dtype="float32", adapter=run / "adapter").model


def _report_rows(cfg: DistillConfig, tok: Any, task: Task) -> list[Any]:
    """Held-out rows for agreement: the validation file or split (as the loop made it), else training rows."""
    from corral.train.data import split_val

    template = Path(cfg.chat_template).read_text() if cfg.chat_template else None
    if cfg.val_file:
        rows, _ = task.load(cfg, cfg.val_file, tok, template)
    else:
        rows, _ = task.load(cfg, cfg.data, tok, template)
        if cfg.val_split > 0:
            rows = split_val(rows, cfg.val_split, cfg.seed)[1]
    return rows[: cfg.report_rows]


def compare(models: dict[str, torch.nn.Module], paths: dict[str, Path], rows: list[Any], tok: Any,
            device: torch.device, decode_tokens: int = 64, prompt: str = SPEED_PROMPT) -> dict[str, Any]:
    """Teacher vs students: parameters, size on disk, one-stream decode tokens/s (`decode_tokens` greedy tokens
    after `prompt`), top-1 agreement with the teacher on `rows`. The first model is the teacher."""
    names = list(models)
    teacher = models[names[0]]
    out: dict[str, Any] = {"models": {}, "agreement_rows": len(rows)}
    for name in names:
        m = models[name]
        out["models"][name] = {
            "path": str(paths[name]), "layers": m.config.num_hidden_layers, "parameters": m.config.num_parameters,
            "size_mb": size_mb(paths[name]), "decode_tok_s": decode_speed(m, tok, decode_tokens, prompt=prompt),
            "agreement": 1.0 if m is teacher else agreement(teacher, m, rows, device)}
    t = out["models"][names[0]]
    for m in out["models"].values():
        m["parameters_vs_teacher"] = m["parameters"] / t["parameters"]
        m["speedup"] = m["decode_tok_s"] / t["decode_tok_s"]
    return out


def size_mb(path: Path) -> float:
    """A model's weight files on disk (a GGUF file, or a folder's safetensors / GGUF files), in MiB."""
    files = [path] if path.is_file() else [*path.glob("*.safetensors"), *path.glob("*.gguf")]
    return sum(f.stat().st_size for f in files) / 2**20


def decode_speed(model: torch.nn.Module, tok: Any, tokens: int = 64, repeats: int = 3,
                 prompt: str = SPEED_PROMPT) -> float:
    """One stream's greedy decode tokens/s (best of `repeats`, each prefilling `prompt` again), on the model's
    device and dtype."""
    from corral.chat import encode_chat
    from corral.engine.sampling import SamplingParams
    from corral.text import Session

    was = model.training
    model.eval()
    ids = encode_chat(tok, [{"role": "user", "content": prompt}])
    gen = Session(model, tok, max_seq_len=max(256, len(ids) + tokens))
    best = 0.0
    for _ in range(repeats):
        gen.reset()
        best = max(best, gen.generate(ids, SamplingParams(max_tokens=tokens, ignore_eos=True)).decode_tps)
    model.train(was)
    return best


def _print_report(report: dict[str, Any]) -> None:
    for name, m in report["models"].items():
        scores = "".join(f"  {task} {metric} {v:.3g}" for task, r in m.get("eval", {}).items()
                         for metric, v in r.items() if metric not in ("n", "seconds") and isinstance(v, float))
        print(f"{name:12s} {m['layers']:3d} layers {m['parameters'] / 1e6:8.1f} M params "
              f"({m['parameters_vs_teacher']:.0%}) {m['size_mb']:8.1f} MB  decode {m['decode_tok_s']:7.1f} tok/s "
              f"({m['speedup']:.2f}x)  top-1 agreement {m['agreement']:.1%}{scores}")


def load_teacher(model: str, adapter: str | None, device: str) -> Any:
    """The teacher in fp32 plain layers (the loop's own loading), with a LoRA adapter merged if given."""
    from corral.model.loader import load_model

    lm = load_model(model, device=device, dtype="float32", adapter=adapter)
    lm.model.eval().requires_grad_(False)
    return lm


def check_same_tokenizer(tok: Any, student: str) -> None:
    """A student must share the teacher's vocabulary: KD compares distributions token id by token id."""
    from corral.registry import resolve_model_path
    from corral.tokenizer import load_tokenizer

    other = load_tokenizer(resolve_model_path(student))
    probe = "The quick brown fox jumps over 13 lazy dogs. ¿Qué tal? 你好 <|im_start|>"
    if other.vocab_size != tok.vocab_size or other.encode(probe) != tok.encode(probe):
        raise InvalidArgumentError(f"--student {student}: its tokenizer differs from the teacher's (vocab "
                                   f"{other.vocab_size} vs {tok.vocab_size}); distillation needs the same one")


def calibration_batches(docs: list[list[int]], seq: int, device: torch.device, rows: int = 4) -> list[torch.Tensor]:
    """The documents end to end, cut into full rows of `seq` tokens (no padding to skew the scores)."""
    flat = [t for d in docs for t in d]
    if len(flat) < seq:
        seq = len(flat)
    n = len(flat) // seq
    ids = torch.tensor(flat[: n * seq], device=device).view(n, seq)
    return list(ids.split(rows))


def prune(teacher: torch.nn.Module, batches: list[torch.Tensor], layers: int | None, mlp: int | None,
          heads: int | None, score: str = "kl") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student: the teacher with its least important heads, MLP channels and layers removed."""
    from corral.distill import prune as P

    cfg = teacher.config
    info: dict[str, Any] = {"teacher": {"layers": cfg.num_hidden_layers, "mlp": cfg.intermediate_size,
                                        "heads": cfg.num_attention_heads, "parameters": cfg.num_parameters}}
    student = teacher
    t0 = time.perf_counter()
    if layers is not None:
        if not 1 <= layers <= cfg.num_hidden_layers:
            raise InvalidArgumentError(f"--student-layers {layers}: between 1 and the teacher's "
                                       f"{cfg.num_hidden_layers}")
        scores = P.layer_scores(teacher, batches, score)
        order = sorted(range(len(scores)), key=lambda i: scores[i])
        drop = sorted(order[: cfg.num_hidden_layers - layers])
        info["layer_scores"], info["dropped_layers"] = scores, drop
    if heads is not None and heads != cfg.num_attention_heads:
        student = P.prune_heads(student, P.head_scores(teacher, batches), heads)
    if mlp is not None and mlp != cfg.intermediate_size:
        student = P.prune_mlp(student, P.mlp_channel_scores(teacher, batches), mlp)
    if layers is not None and layers != cfg.num_hidden_layers:
        student = P.prune_layers(student, info["dropped_layers"])
    info["student"] = {"layers": student.config.num_hidden_layers, "mlp": student.config.intermediate_size,
                       "heads": student.config.num_attention_heads, "parameters": student.config.num_parameters}
    info["score"], info["seconds"] = score, time.perf_counter() - t0
    return student, info


@torch.no_grad()
def agreement(teacher: torch.nn.Module, student: torch.nn.Module, rows: list[Any], device: torch.device,
              batch_size: int = 4) -> float:
    """Top-1 agreement: the share of loss positions where the student's most likely next token is the teacher's."""
    same = total = 0
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i: i + batch_size], device)
        _, keep = loss_targets(batch)
        if not keep.any():
            continue
        kw = {"positions": batch["positions"], "doc_ids": batch["doc_ids"], "keep": keep}
        t = teacher(batch["ids"], **kw).argmax(-1)
        s = student(batch["ids"], **kw).argmax(-1)
        same += int((t == s).sum())
        total += int(keep.sum())
    return same / max(1, total)


