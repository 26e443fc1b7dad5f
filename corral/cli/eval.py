"""`corral eval`: score models on tasks (bundled, or your own YAML/JSONL) and compare them in one report."""

from __future__ import annotations

from dataclasses import dataclass

from corral.cli.common import template
from corral.errors import InvalidArgumentError
from corral.options import BatchOptions, LimitOptions, OutOptions, RunOptions, opt


@dataclass
class EvalConfig(LimitOptions, OutOptions, BatchOptions, RunOptions):
    models: list[str] = opt([], "GGUF file, HF folder, registry name or adapter folder", positional=True,
                            metavar="MODEL")
    out: str = "runs/eval"
    tasks: list[str] | None = opt(None, "comma-separated task names or files (default: every bundled task)", comma=True)
    list_tasks: bool = opt(False, "list the bundled tasks and exit")
    batch_tokens: int = opt(2048, "padded tokens per log-likelihood batch")


def evaluate(cfg: EvalConfig) -> int:
    """Score each model on each task; print a table and write the report into `out`."""
    import torch
    from rich.console import Console

    from corral.eval import bundled_tasks, load_task
    from corral.eval import evaluate as run
    from corral.eval.report import print_table

    if cfg.list_tasks:
        for name in bundled_tasks():
            t = load_task(name)
            print(f"{name:<12} {t.kind:<16} {len(t.examples):>4} examples  {t.description}")
        return 0
    if not cfg.models:
        raise InvalidArgumentError("name at least one MODEL to evaluate (or pass --list-tasks)")
    cfg.check()
    if cfg.tasks is not None and not cfg.tasks:
        raise InvalidArgumentError("--tasks names no task")
    tasks = cfg.tasks if cfg.tasks is not None else bundled_tasks()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    report = run(cfg.models, tasks, limit=cfg.limit, out=cfg.out, device=cfg.device, dtype=cfg.dtype,
                 batch_tokens=cfg.batch_tokens, max_batch=cfg.max_batch, template=template(cfg))
    print_table(report, Console(width=max(100, Console().width)))
    print(f"wrote {cfg.out}/report.json, samples.jsonl, report.png, report.html")
    return 0


DESCRIPTION = """\
Score each MODEL on each task; print a table, write report.json, samples.jsonl, report.png and report.html into --out.

A task is a bundled name (corral eval --list-tasks) or a task file: a YAML (kind, data, prompt,
score; see corral/eval/task.py) or a bare JSONL. A MODEL may be a LoRA adapter folder (corral
finetune's RUN/adapter): its base model is loaded with the adapter merged in."""

VERBS = {"eval": (EvalConfig, evaluate, "score models on tasks (bundled, or your own YAML/JSONL) and compare them", (),
                  DESCRIPTION)}
