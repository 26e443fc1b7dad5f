"""Run tasks on models: log-likelihood scoring in padded batches, generation through the batched engine.

- Log-likelihoods (multiple choice, perplexity): each request is context + continuation ids; the sequences are sorted
  longest first and cut into batches of at most `batch_tokens` padded tokens, run through the model's plain causal
  forward (right padding cannot reach earlier positions), with the LM head computed only where a continuation token
  is predicted (`keep`). Raw text is split as lm-evaluation-harness splits it: the continuation's ids are those the
  whole string has past the context's ids, and trailing spaces of the context move to the continuation.
- Perplexity: every text gets a prefix token (BOS for models that want one, else EOS, as lm-evaluation-harness uses
  EOT) and is scored in disjoint windows of `max_len` tokens; each token is predicted exactly once.
- Generation: greedy, every prompt submitted at once to an `Engine` stepped on this thread (`run_until_idle`); the
  engine is batch invariant, so a reply does not depend on what else is in the batch.

The whole run is deterministic: the same model and task give the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corral.engine.sampling import SamplingParams
from corral.errors import CorralError, InvalidArgumentError, ModelFormatError
from corral.eval.scoring import calls_match, extract, mc_predictions, perplexity_metrics
from corral.eval.task import Example, Task, gold_index, load_task
from corral.model.llama import LlamaForCausalLM
from corral.text import generate_many
from corral.tokenizer import Tokenizer


@dataclass
class EvalModel:
    """A model to evaluate: its name in the report, the model and its tokenizer."""

    name: str
    model: LlamaForCausalLM
    tok: Tokenizer
    source: str = ""


ModelSpec = str | Path | EvalModel | tuple[LlamaForCausalLM, Tokenizer]


def load_eval_model(spec: str | Path | None, device: str = "auto", dtype: str = "auto",
                    name: str | None = None) -> EvalModel:
    """Load a model by path or registry name; a PEFT adapter folder (`corral finetune`'s run/adapter) loads the base
    model its adapter_config.json names, with the adapter merged into fp32 weights."""
    from corral.model.loader import load_model
    from corral.tokenizer import load_tokenizer

    shown = name or str(spec or "default")
    lm = load_model(spec, device=device, dtype=dtype)
    tok = load_tokenizer(lm.path)
    if tok.vocab_size > lm.config.vocab_size:
        raise ModelFormatError(f"{lm.path}: the tokenizer has {tok.vocab_size} tokens but the model only "
                               f"{lm.config.vocab_size}; the tokenizer files belong to another model")
    return EvalModel(shown, lm.model, tok, str(lm.path))


# --- log-likelihoods ----------------------------------------------------------------------------------------------


@torch.inference_mode()
def loglikelihoods(model: LlamaForCausalLM, requests: Sequence[tuple[list[int], list[int]]], max_len: int = 2048,
                   batch_tokens: int = 2048, advance: Callable[[int], None] | None = None,
                   ) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): the summed log-probability of the continuation given the context
    (natural log), and whether greedy decoding would have produced it. A pair longer than `max_len` + 1 tokens loses
    its oldest context tokens. Batches hold at most `batch_tokens` padded tokens (at least one sequence)."""
    seqs = []
    for ctx, cont in requests:
        full = (list(ctx) + list(cont))[-(max_len + 1):]
        seqs.append((full, min(len(cont), len(full) - 1)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))  # stable: ties keep request order
    out: list[tuple[float, bool]] = [(0.0, True)] * len(seqs)
    dev = model.device
    i = 0
    while i < len(order):
        T = max(1, len(seqs[order[i]][0]) - 1)
        idx = order[i: i + max(1, batch_tokens // T)]
        i += len(idx)
        ids = torch.zeros(len(idx), T, dtype=torch.long)
        keep = torch.zeros(len(idx), T, dtype=torch.bool)
        targets: list[int] = []
        for r, j in enumerate(idx):
            full, n = seqs[j]
            L = len(full) - 1
            ids[r, :L] = torch.tensor(full[:-1])
            keep[r, L - n: L] = True
            targets += full[len(full) - n:]
        if not targets:
            continue
        logits = model(ids.to(dev), keep=keep.to(dev)).float()  # (N, V): kept positions, row by row
        tgt = torch.tensor(targets, device=dev)
        tok_lp = logits.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)  # (N,)
        greedy = logits.argmax(-1) == tgt
        lps, gs = tok_lp.double().tolist(), greedy.tolist()
        pos = 0
        for j in idx:
            n = seqs[j][1]
            out[j] = (math.fsum(lps[pos: pos + n]), all(gs[pos: pos + n]))
            pos += n
        if advance:
            advance(len(idx))
    return out


def prefix_id(tok: Tokenizer) -> int:
    """The token a text with no context is scored after: BOS where the model wants one, else EOS (as
    lm-evaluation-harness uses EOT)."""
    for tid in ((tok.bos_id, tok.eos_id) if tok.add_bos else (tok.eos_id, tok.bos_id)):
        if tid is not None:
            return tid
    raise ModelFormatError("the tokenizer has neither a BOS nor an EOS token to start a scored text with")


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Raw text → (context ids, continuation ids), split as lm-evaluation-harness splits them."""
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    prefix = [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []
    if not context:
        return [prefix_id(tok)], tok.encode(continuation)
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    cont = whole[len(ctx):]
    if not cont:  # the continuation merged into the context's last token
        cont = tok.encode(continuation)
    return prefix + ctx, cont


def _chat_ids(tok: Tokenizer, messages: list[dict[str, str]], template: str | None) -> list[int]:
    from corral.chat import encode_chat

    return encode_chat(tok, messages, template=template)


# --- tasks --------------------------------------------------------------------------------------------------------


class _Bar:
    """Progress of one model x task: `total(n)` once the work is known, then `advance(k)`."""

    def __init__(self, progress: Any = None, description: str = ""):
        self.progress, self.id = progress, (progress.add_task(description, total=None) if progress else None)

    def total(self, n: int) -> None:
        if self.progress:
            self.progress.update(self.id, total=n)

    def advance(self, k: int = 1) -> None:
        if self.progress:
            self.progress.advance(self.id, k)


def run_task(em: EvalModel, task: Task, limit: int | None = None, batch_tokens: int = 2048, max_batch: int = 16,
             template: str | None = None, bar: _Bar | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score one model on one task (its first `limit` examples): (metrics, one record per example)."""
    bar = bar or _Bar()
    examples = task.examples[:limit] if limit else task.examples
    run = {"perplexity": _perplexity, "multiple_choice": _multiple_choice, "generate": _generate,
           "tool_calls": _tool_calls}[task.kind]
    return run(em, task, examples, batch_tokens=batch_tokens, max_batch=max_batch, template=template, bar=bar)


def _perplexity(em, task, examples, *, batch_tokens, bar, **_):
    tok, ctx = em.tok, em.model.config.max_position_embeddings
    L = min(task.max_len, ctx)
    prefix = prefix_id(tok)
    reqs, owner, counts = [], [], []
    for k, ex in enumerate(examples):
        ids = [prefix] + tok.encode(ex.text)
        counts.append(len(ids) - 1)
        start = 0
        while start < len(ids) - 1:
            w = ids[start: start + L + 1]
            reqs.append((w[:1], w[1:]))
            owner.append(k)
            start += L
    bar.total(len(reqs))
    lls = loglikelihoods(em.model, reqs, max_len=L, batch_tokens=max(batch_tokens, L), advance=bar.advance)
    nll = [0.0] * len(examples)
    for k, (ll, _g) in zip(owner, lls, strict=True):
        nll[k] -= ll
    n_bytes = [len(ex.text.encode("utf-8")) for ex in examples]
    records = [{"example": ex.where, "tokens": c, "bytes": b, "nll": v,
                **perplexity_metrics(v, c, b)} for ex, c, b, v in zip(examples, counts, n_bytes, nll, strict=True)]
    return perplexity_metrics(math.fsum(nll), sum(counts), sum(n_bytes)), records


def _multiple_choice(em, task, examples, *, batch_tokens, template, bar, **_):
    tok = em.tok
    reqs, spans = [], []
    for ex in examples:
        choices = ex.fields["choices"]
        start = len(reqs)
        if ex.messages is not None:
            ctx = _chat_ids(tok, ex.messages, template)
            reqs += [(ctx, tok.encode(task.target_delimiter + c)) for c in choices]
        else:
            reqs += [encode_pair(tok, ex.text, task.target_delimiter + c) for c in choices]
        spans.append((start, len(reqs)))
    bar.total(len(reqs))
    ctx_len = em.model.config.max_position_embeddings
    lls = loglikelihoods(em.model, reqs, max_len=min(ctx_len, 4096) - 1, batch_tokens=batch_tokens,
                         advance=bar.advance)
    records, acc, acc_norm = [], 0, 0
    for ex, (a, b) in zip(examples, spans, strict=True):
        scores = [ll for ll, _ in lls[a:b]]
        gold = gold_index(ex)
        pred, pred_norm = mc_predictions(scores, ex.fields["choices"])
        acc += pred == gold
        acc_norm += pred_norm == gold
        records.append({"example": ex.where, "prompt": ex.text, "choices": ex.fields["choices"], "gold": gold,
                        "loglikelihoods": scores, "pred": pred, "pred_norm": pred_norm, "acc": pred == gold,
                        "acc_norm": pred_norm == gold})
    n = len(examples)
    return {"acc": acc / n, "acc_norm": acc_norm / n}, records


def _generate(em, task, examples, *, max_batch, template, bar, **_):
    tok = em.tok
    prompts = [_chat_ids(tok, ex.messages, template) if ex.messages is not None
               else tok.encode(ex.text, add_bos=tok.add_bos) for ex in examples]
    params = SamplingParams(temperature=0.0, max_tokens=task.max_tokens, stop=list(task.stop))
    bar.total(len(prompts))
    gens = generate_many(em.model, tok, prompts, params, max_batch=max_batch, on_finish=lambda i, g: bar.advance(1))
    records, passed, checks_total, checks_passed = [], 0, 0, 0
    for ex, g in zip(examples, gens, strict=True):
        if g.finish_reason == "error":
            raise CorralError(f"{ex.where}: generation failed: {g.error}")
        ok, verdicts = score_reply(task, ex, g.text)
        passed += ok
        checks_total += len(verdicts)
        checks_passed += sum(verdicts.values())
        records.append({"example": ex.where, "prompt": ex.messages if ex.messages is not None else ex.text,
                        "reply": g.text, "answer": ex.fields.get("answer"),
                        "finish_reason": g.finish_reason, "checks": verdicts, "ok": ok})
    metrics = {"acc": passed / len(examples)}
    if "checks_acc" in task.metrics:
        metrics["checks_acc"] = checks_passed / max(1, checks_total)
    return metrics, records


def _tool_calls(em, task, examples, *, max_batch, template, bar, **_):
    """Greedy answers with the tools in the prompt as the server puts them and tool_choice auto (the lazy grammar:
    a call the model starts always parses), scored by AST match (`calls_match`)."""
    import json

    from corral.chat import encode_chat, template_source
    from corral.grammar import GrammarCompiler
    from corral.tools import ToolChoice, check_tools, dialect_for, tool_conversation

    tok = em.tok
    src = template_source(tok, template)
    dialect, _ = dialect_for(src)
    compiler = GrammarCompiler(tok)
    prompts, constraints = [], []
    for ex in examples:
        msgs, kwargs = tool_conversation(ex.messages, ex.fields["tools"], src)
        prompts.append(encode_chat(tok, msgs, template=template, **kwargs))
        tools = check_tools(ex.fields["tools"])
        grammar = dialect.grammar(tools, ToolChoice("auto"), True)
        constraints.append(compiler.tool_calls(tools, grammar, dialect.trigger, dialect.anywhere)())
    params = SamplingParams(temperature=0.0, max_tokens=task.max_tokens, stop=list(task.stop))
    bar.total(len(prompts))
    gens = generate_many(em.model, tok, prompts, params, max_batch=max_batch, constraints=constraints,
                         max_seq_len=max(len(p) for p in prompts) + task.max_tokens + 1,
                         on_finish=lambda i, g: bar.advance(1))
    records, groups = [], {"call_acc": [], "no_call_acc": []}
    for ex, g in zip(examples, gens, strict=True):
        if g.finish_reason == "error":
            raise CorralError(f"{ex.where}: generation failed: {g.error}")
        content, calls = dialect.parse(g.text)
        made = [(c.name, json.loads(c.arguments)) for c in calls]
        ok = calls_match(made, ex.fields["expected"])
        groups["call_acc" if ex.fields["expected"] else "no_call_acc"].append(ok)
        if ex.fields.get("category"):
            groups.setdefault(f"{ex.fields['category']}_acc", []).append(ok)
        records.append({"example": ex.where, "category": ex.fields.get("category"), "reply": g.text,
                        "calls": [{"name": n, "arguments": a} for n, a in made], "content": content,
                        "expected": ex.fields["expected"], "finish_reason": g.finish_reason, "ok": ok})
    metrics = {"acc": sum(r["ok"] for r in records) / len(records)}
    metrics.update({k: sum(v) / len(v) for k, v in groups.items() if v})
    return metrics, records


def score_reply(task: Task, ex: Example, reply: str) -> tuple[bool, dict[str, bool]]:
    """Every scorer of the task and the example on one reply: (all passed, {scorer name: passed}). Answer scorers
    see the part `extract` picks; checks see the whole reply."""
    part = extract(reply, task.extract, task.extract_take)
    verdicts: dict[str, bool] = {}
    for s in task.scorers + ex.checks:
        name = s.name if s.name not in verdicts else f"{s.name}#{len(verdicts)}"
        verdicts[name] = s(part if s.needs_answer else reply, ex.fields)
    return all(verdicts.values()), verdicts


# --- the whole run ------------------------------------------------------------------------------------------------


def evaluate(models: Sequence[ModelSpec], tasks: Sequence[str | Path | Task], *, limit: int | None = None,
             out: str | Path | None = None, device: str = "auto", dtype: str = "auto", batch_tokens: int = 2048,
             max_batch: int = 16, template: str | None = None, progress: bool = True,
             console: Any = None) -> dict[str, Any]:
    """Score each model on each task; returns the report (see `corral.eval.report`) and, with `out`, writes
    report.json, samples.jsonl, report.png and report.html there.

    A model is a path or registry name (loaded in turn, one at a time, with `device` and `dtype`; a LoRA adapter
    folder loads its base with the adapter merged), an `EvalModel`, or a `(LlamaForCausalLM, Tokenizer)` pair
    already in memory. A task is a bundled name, a task file (YAML/JSONL/text) or a loaded `Task`. `limit` keeps
    each task's first N examples. Task files are all checked before any model loads.
    """
    from corral import __version__
    from corral.eval.report import write_report

    for name, v, lo in (("--limit", 1 if limit is None else limit, 1), ("--batch-tokens", batch_tokens, 16),
                        ("--max-batch", max_batch, 1)):
        if v < lo:
            raise InvalidArgumentError(f"{name} must be >= {lo}")
    if not models:
        raise InvalidArgumentError("no model to evaluate")
    if not tasks:
        raise InvalidArgumentError("no task to run")
    task_objs = [t if isinstance(t, Task) else load_task(t) for t in tasks]
    names = [t.name for t in task_objs]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"two tasks share a name: {names}; rename one (`name:` in its YAML)")
    report: dict[str, Any] = {
        "corral_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "limit": limit,
        "tasks": {t.name: {"kind": t.kind, "source": t.source, "description": t.description,
                           "examples": len(t.examples[:limit] if limit else t.examples), "metrics": t.metrics,
                           "lower_is_better": t.lower_is_better, "chat": t.chat} for t in task_objs},
        "models": {}, "results": {}}
    samples: list[dict[str, Any]] = []
    prog = _progress(progress, console)
    try:
        for i, spec in enumerate(models):
            em = _resolve(spec, i, device, dtype)
            name, k = em.name, 2
            while name in report["models"]:  # the same model twice (say, two adapters of one base)
                name, k = f"{em.name}#{k}", k + 1
            report["models"][name] = {"source": em.source}
            report["results"][name] = {}
            for task in task_objs:
                t0 = time.perf_counter()
                metrics, records = run_task(em, task, limit, batch_tokens, max_batch, template,
                                            _Bar(prog, f"{name} · {task.name}"))
                metrics = {**metrics, "n": len(records), "seconds": round(time.perf_counter() - t0, 2)}
                report["results"][name][task.name] = metrics
                samples += [{"model": name, "task": task.name, **r} for r in records]
            del em
    finally:
        if prog is not None:
            prog.stop()
    if out is not None:
        write_report(report, samples, out)
    return report


def _resolve(spec: ModelSpec, i: int, device: str, dtype: str) -> EvalModel:
    if isinstance(spec, EvalModel):
        return spec
    if isinstance(spec, tuple):
        model, tok = spec
        return EvalModel(f"model{i + 1}", model, tok, "in memory")
    return load_eval_model(spec, device, dtype)


def _progress(show: bool, console: Any) -> Any:
    if not show:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console or Console(stderr=True))
    prog.start()
    return prog
