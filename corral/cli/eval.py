"""`corral eval`: score models on tasks (bundled, or your own YAML/JSONL) and compare them in one report."""

from __future__ import annotations

from dataclasses import dataclass

from corral.cli.common import template
from corral.errors import InvalidArgumentError
from corral.options import BatchOptions, LimitOptions, OutOptions, RunOptions, at_least, opt


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

@dataclass
class AuditConfig(OutOptions, RunOptions):
    model: str = opt("", "the fine-tuned model: an adapter folder (RUN/adapter), HF folder or GGUF", positional=True)
    data: str = opt("", "the training JSONL it was fine-tuned on (chat or prompt/completion lines)")
    heldout: str | None = opt(None, "rows of the same kind it was not trained on: membership inference needs them")
    reference: str | None = opt(None, "the reference model for membership scores (default: the adapter's base; "
                                      "none for a model that is not an adapter)")
    canaries: str | None = opt(None, "the canaries.json of a `corral finetune --canaries N` run (default: the "
                                     "adapter's run folder's)")
    candidates: int = opt(999, "random secrets each canary is ranked against")
    extract_rows: int = opt(64, "training rows tried for verbatim extraction")
    batch_tokens: int = opt(2048, "padded tokens per log-likelihood batch")
    out: str = "runs/audit"


def run_audit(cfg: AuditConfig) -> int:
    """Membership inference, verbatim extraction and canary exposure; a summary, and the report in `out`."""
    import json
    from pathlib import Path

    import torch

    from corral.audit import audit, find_canaries, print_summary, write_report
    from corral.eval.harness import load_eval_model
    from corral.model.loader import _is_adapter, adapter_base

    if not cfg.model or not cfg.data:
        raise InvalidArgumentError("corral audit MODEL --data TRAIN.jsonl [--heldout FILE]: name the model and "
                                   "the data it was trained on")
    at_least(("--candidates", cfg.candidates, 1), ("--extract-rows", cfg.extract_rows, 0))
    for flag, path in (("--data", cfg.data), ("--heldout", cfg.heldout)):
        if path and not Path(path).is_file():
            raise InvalidArgumentError(f"{flag} {path}: no such file; pass a JSONL file of chat or "
                                       "prompt/completion lines")
    canaries_path = find_canaries(cfg.model, cfg.canaries)
    canaries = json.loads(canaries_path.read_text())["canaries"] if canaries_path else []
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # fp32 for both: an adapter merges into fp32, and a reference in another precision would add its own loss gap
    dtype = "float32" if cfg.dtype == "auto" else cfg.dtype
    em = load_eval_model(cfg.model, cfg.device, dtype)
    ref_name = cfg.reference or (adapter_base(cfg.model) if _is_adapter(Path(cfg.model)) else None)
    ref = load_eval_model(ref_name, cfg.device, dtype) if ref_name else None
    if ref is not None and ref.tok.vocab_size != em.tok.vocab_size:
        raise InvalidArgumentError(f"--reference {ref_name}: its tokenizer is not the model's")
    report, samples = audit(em.model, em.tok, cfg.data, cfg.heldout, ref.model if ref else None, canaries,
                            template=template(cfg), extract_rows=cfg.extract_rows, candidates=cfg.candidates,
                            batch_tokens=cfg.batch_tokens, progress=lambda msg: print(f"audit: {msg}", flush=True))
    report.update(model=cfg.model, reference=ref_name, canaries_file=str(canaries_path) if canaries_path else None)
    print_summary(report)
    write_report(report, samples, cfg.out)
    print(f"wrote {cfg.out}/report.json, samples.jsonl, report.png, report.html")
    return 0


AUDIT_DESCRIPTION = """\
What a fine-tuned model memorised of its training data: membership inference (loss- and reference-based scores,
AUC and TPR at 1% FPR, training rows vs --heldout rows), verbatim extraction (greedy decoding from each row's first
half) and canary exposure (`corral finetune --canaries N`; Carlini et al., "The Secret Sharer"). Writes
report.json, samples.jsonl, report.png and report.html into --out."""

VERBS = {"eval": (EvalConfig, evaluate, "score models on tasks (bundled, or your own YAML/JSONL) and compare them", (),
                  DESCRIPTION),
         "audit": (AuditConfig, run_audit, "what a fine-tune memorised: membership inference, extraction, canaries",
                   (), AUDIT_DESCRIPTION)}
