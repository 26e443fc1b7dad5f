"""The recipe around the training loop (`corral finetune`, task sft): teach a model a user's own facts from a few
rows per fact or from documents, and keep what it knew.

Stages, each resumable and each writing its files under `out/`:
1. `augment/`: the user's chat rows checked (every bad line reported before any work), then a teacher (the model
   itself by default) rewords every question and answer (`corral.distill.augment`, through `corral synth`:
   `teacher.jsonl`, and `teacher.rejected.jsonl` with a reason per reject); documents (`--docs`) are chunked along
   their headings (`corral.train.docs`), each chunk becomes plain training text and each sentence that states a
   fact a question the teacher writes. `train.jsonl` is the mix the loop trains on, `select.jsonl` the held-out
   augmented questions it scores to pick its checkpoint, `summary.json` the yield.
2. replay: the base model's own greedy answers to general prompts (`corral/train/prompts/general.jsonl`, or
   `--replay-prompts`) are a `replay` share of the training rows, half as chat and half as plain text, so the
   fine-tune keeps the model's general behaviour. The answers are cached per model and prompt file
   (`~/.cache/corral/replay/`).
3. the loop (`corral.train.loop`), with best-checkpoint selection on `select.jsonl`.
4. `report/`: `eval_tasks` (default general_mc, format, prose) for the base and the fine-tuned model, both in fp32,
   the augmentation yield and a sample, the selection curve: report.json, report.png, report.html.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral import jsonl
from corral.errors import InvalidArgumentError
from corral.train.config import FinetuneConfig

PROMPTS = Path(__file__).with_name("prompts") / "general.jsonl"
TEACHER_TEMPERATURE = 0.9  # wordings must differ from the source; the filter catches what a hot sample garbles
REPLAY_MAX_TOKENS = 160


@dataclass
class Prepared:
    cfg: FinetuneConfig  # the loop's: `data` is the mixed training file
    select: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    anchor: str | None = None  # replay rows trained towards the base model's distributions (--replay-loss kl)


def prepare(cfg: FinetuneConfig, dist: Any, progress: bool = True) -> Prepared:
    """Stages 1-2: the training mix and the selection rows (see the module docstring). Rank 0 does the work; other
    processes wait and read its files."""
    run = Path(cfg.out)
    if run.exists() and not cfg.resume and any(run.iterdir()):
        raise InvalidArgumentError(f"{run} exists and is not empty; pass --resume to continue it or choose --out")
    _check_inputs(cfg)
    chunks = _chunks(cfg)  # a missing or unreadable document is an error before any model loads
    aug = run / "augment"
    done = aug / "summary.json"
    dist.barrier()
    if dist.main and not done.exists():
        make_training_data(cfg, aug, progress, chunks)
    dist.barrier()
    summary = json.loads(done.read_text())
    select = jsonl.records(aug / "select.jsonl")
    loop_cfg = dataclasses.replace(cfg, data=str(aug / "train.jsonl"), docs=[])
    anchor = aug / "replay.jsonl"
    return Prepared(loop_cfg, select if cfg.select_every != 0 else [], summary,
                    str(anchor) if anchor.is_file() and anchor.stat().st_size else None)


def _chunks(cfg: FinetuneConfig) -> list[Any]:
    from corral.train.docs import load_documents

    if not cfg.docs:
        return []
    return load_documents(cfg.docs, max_chars=cfg.chunk_chars, min_chars=min(200, cfg.chunk_chars // 4))


def _check_inputs(cfg: FinetuneConfig) -> None:
    """Everything a user names is checked before a model loads."""
    from corral.eval.task import load_task

    if cfg.data and not Path(cfg.data).is_file():
        raise InvalidArgumentError(f"--data {cfg.data}: no such file; pass a JSONL file of chat or "
                                   "prompt/completion lines")
    if cfg.replay_prompts and not Path(cfg.replay_prompts).is_file():
        raise InvalidArgumentError(f"--replay-prompts {cfg.replay_prompts}: no such file; pass a JSONL file of "
                                   "{\"prompt\": ...} lines, or leave it out for the bundled general prompts")
    for t in cfg.eval_tasks:
        load_task(t)  # an unknown name or a bad task file is one clear error


def make_training_data(cfg: FinetuneConfig, aug: Path, progress: bool = True, chunks: list[Any] | None = None
                       ) -> None:
    """Stage 1-2 into the folder `aug`: train.jsonl, select.jsonl, teacher.jsonl (+ .rejected) and summary.json
    (written last: its presence means done). `chunks`: `cfg.docs` already chunked (else they are read here)."""
    from corral.distill.augment import build_rows, collect, doc_facts, filters, group_facts, qa_pairs, teacher_prompts
    from corral.distill.synth import synth
    from corral.engine.sampling import SamplingParams
    from corral.model.loader import load_model
    from corral.registry import resolve_model_path
    from corral.tokenizer import load_tokenizer
    from corral.train.data import load_jsonl

    if chunks is None:
        chunks = _chunks(cfg)
    t0 = time.perf_counter()
    tok = load_tokenizer(resolve_model_path(cfg.model))
    template = Path(cfg.chat_template).read_text() if cfg.chat_template else None
    rows: list[dict[str, Any]] = []
    if cfg.data:  # every line checked first (bad lines are reported by number, or skipped with skip_bad_lines)
        examples, _ = load_jsonl(cfg.data, tok, cfg.max_seq_len, template, cfg.skip_bad_lines)
        good = {e.line for e in examples}
        rows = [obj for n, obj in jsonl.objects(cfg.data) if n in good]
    # Tool-use rows (OpenAI `tools`, calls, results) are trained as they are: a call is no fact to reword.
    tool_rows = [r for r in rows if "messages" in r and _uses_tools(r)]
    chat = [r for r in rows if "messages" in r and not _uses_tools(r)]
    facts = group_facts(qa_pairs(chat, cfg.data))
    dfacts = doc_facts(chunks, start=len(facts))
    aug.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"user_rows": len(rows), "facts": len(facts), "doc_chunks": len(chunks),
                               "doc_facts": len(dfacts), "augment": cfg.augment}
    teacher = None
    if cfg.augment and (facts or dfacts):
        teacher = load_model(cfg.teacher or cfg.model)
        ttok = load_tokenizer(teacher.path)
        out = aug / "teacher.jsonl"
        s = synth(teacher.model, ttok, teacher_prompts(facts + dfacts, cfg.augment), out, n=cfg.augment,
                  params=SamplingParams(temperature=TEACHER_TEMPERATURE, top_k=50, max_tokens=64, seed=cfg.seed,
                                        stop=["\n"]),
                  filters=filters(), keep_truncated=False, progress=progress)
        kept = collect(facts + dfacts, out)
        summary["teacher"] = {"model": str(teacher.path), "samples": s.samples, "kept": dict(kept),
                              "rejected": _reasons(out)}
    if cfg.augment:
        train_rows, select = build_rows(facts + dfacts, seed=cfg.seed)
        # A conversation of several turns is kept whole beside its pairs: the model also sees facts in context.
        train_rows += [r for r in chat if sum(m["role"] == "assistant" for m in r["messages"]) > 1]
    else:  # the user's rows as they are; a document's facts as their sentence's question and the sentence
        train_rows, _ = build_rows(dfacts, seed=cfg.seed, reversal=False)
        train_rows += chat
        select = []
    train_rows = [{"messages": r["messages"]} for r in train_rows]
    train_rows += [{"messages": r["messages"], **({"tools": r["tools"]} if "tools" in r else {})} for r in tool_rows]
    train_rows += [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows if "messages" not in r]
    train_rows += [{"prompt": "", "completion": (f"{c.heading}\n\n{c.text}" if c.heading else c.text)}
                   for c in chunks]
    if cfg.canaries:  # planted verbatim, once each (corral.audit)
        from corral.audit import canary_rows, make_canaries

        canaries = make_canaries(cfg.canaries, cfg.seed)
        train_rows += canary_rows(canaries)
        (aug.parent / "canaries.json").write_text(json.dumps({"canaries": canaries}, indent=2) + "\n")
        summary["canaries"] = len(canaries)
    replay = []
    if cfg.replay > 0:
        want = round(cfg.replay / (1 - cfg.replay) * len(train_rows))
        replay = replay_rows(cfg, want, teacher if cfg.teacher is None else None, progress)
    summary.update({"train_rows": len(train_rows) + len(replay), "fact_rows": len(train_rows),
                    "replay_rows": len(replay), "select_rows": len(select), "seconds": time.perf_counter() - t0,
                    "sample": _sample(facts + dfacts, cfg.seed)})
    if cfg.replay_loss == "kl":  # apart: the loop holds these to the base model (AnchoredObjective)
        _write_jsonl(aug / "train.jsonl", train_rows)
        _write_jsonl(aug / "replay.jsonl", replay)
    else:
        _write_jsonl(aug / "train.jsonl", train_rows + replay)
    _write_jsonl(aug / "select.jsonl", select)
    (aug / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def _uses_tools(row: dict[str, Any]) -> bool:
    msgs = row["messages"] if isinstance(row["messages"], list) else []
    return "tools" in row or any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool")
                                 for m in msgs)


def replay_rows(cfg: FinetuneConfig, n: int, loaded: Any = None, progress: bool = True) -> list[dict[str, Any]]:
    """`n` rows (at most one per prompt) of the base model answering general prompts greedily, from the cache or
    made now (`loaded`: the base model if already in memory): chat rows, and every other one its answer alone as
    plain text."""
    from corral.distill.synth import read_prompts, rejected_path, synth
    from corral.engine.sampling import SamplingParams
    from corral.model.loader import load_model
    from corral.tokenizer import load_tokenizer

    if n <= 0:
        return []
    src = Path(cfg.replay_prompts) if cfg.replay_prompts else PROMPTS
    ident = hashlib.sha256(f"v2:{_model_ident(cfg.model)}:{REPLAY_MAX_TOKENS}".encode()
                           + src.read_bytes()).hexdigest()[:16]
    cache = Path.home() / ".cache" / "corral" / "replay" / f"{ident}.jsonl"
    prompts = read_prompts(src)
    done = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in (cache, rejected_path(cache)) if p.exists())
    if done < len(prompts):  # synth resumes: only the prompts not yet answered run
        lm = loaded or load_model(cfg.model)
        synth(lm.model, load_tokenizer(lm.path), prompts, cache, n=1, keep_truncated=True,
              params=SamplingParams(temperature=0.0, max_tokens=REPLAY_MAX_TOKENS), progress=progress)
    rows = []
    for rec in jsonl.records(cache):
        reply = rec["messages"][-1]["content"]
        if rec["synth"]["finish_reason"] == "length":  # a long answer ends at its last full sentence, or not at all
            cut = max(reply.rfind(c) for c in ".!?\n")
            reply = reply[: cut + 1].strip() if cut >= len(reply) // 3 else ""
        if reply:
            rows.append({"messages": [*rec["messages"][:-1], {"role": "assistant", "content": reply}]})
    random.Random(cfg.seed).shuffle(rows)
    # Every other answer also comes back as plain text (no chat template): prose modelling drifts as much as chat
    # does, and only text outside the template anchors it.
    return [r if i % 2 == 0 else {"prompt": "", "completion": r["messages"][-1]["content"]}
            for i, r in enumerate(rows[:n])]


def _model_ident(model: str) -> str:
    """A model file's identity for the per-model caches: its path, size and modification time."""
    from corral.registry import resolve_model_path

    path = resolve_model_path(model)
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _reasons(out: Path) -> dict[str, int]:
    from collections import Counter

    from corral.distill.synth import rejected_path

    c: Counter[str] = Counter()
    for r in jsonl.records(rejected_path(out)):
        c.update(r["rejected"])
    return dict(c)


def _sample(facts: list[Any], seed: int, k: int = 6) -> list[dict[str, Any]]:
    picked = [f for f in facts if f.new_questions or f.new_answers]
    random.Random(seed).shuffle(picked)
    return [{"keys": f.keys, "questions": f.questions[:2], "new_questions": f.new_questions[:4],
             "answers": f.answers[:1], "new_answers": f.new_answers[:3]} for f in picked[:k]]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


# --- stage 4: the report -------------------------------------------------------------------------------------------


def report(cfg: FinetuneConfig, prep: Prepared, run: Path, progress: bool = True) -> dict[str, Any]:
    """`eval_tasks` before and after (both fp32), the augmentation yield and sample, the selection curve:
    run/report/report.json, report.png, report.html. Returns the report."""
    from corral.eval.harness import evaluate, load_eval_model

    out = run / "report"
    out.mkdir(exist_ok=True)
    rep: dict[str, Any] = {"augment": prep.summary, "tasks": {}, "before": {}, "after": {}}
    if cfg.eval_tasks:
        before_file = out / "before.json"
        if not before_file.exists():  # the base model's scores survive a resumed run, and are cached per model
            from corral import __version__
            from corral.eval.task import BUNDLED_DIR, bundled_tasks

            tasks = b"".join((BUNDLED_DIR / f"{t}.yaml" if t in bundled_tasks() else Path(t)).read_bytes()
                             for t in cfg.eval_tasks)
            ident = hashlib.sha256(f"v1:{__version__}:{_model_ident(cfg.model)}:{cfg.eval_tasks}".encode()
                                   + tasks).hexdigest()[:16]
            cache = Path.home() / ".cache" / "corral" / "eval" / f"{ident}.json"
            if not cache.is_file():
                base = load_eval_model(cfg.model, dtype="float32", name="base")
                r = evaluate([base], cfg.eval_tasks, progress=progress)
                cache.parent.mkdir(parents=True, exist_ok=True)
                _write_text(cache, json.dumps(r, indent=2) + "\n")
            before_file.write_text(cache.read_text())
        before = json.loads(before_file.read_text())
        tuned = run / ("model" if cfg.method == "full" else "adapter")
        after = evaluate([load_eval_model(str(tuned), dtype="float32", name="fine-tuned")], cfg.eval_tasks,
                         progress=progress)
        rep["tasks"] = before["tasks"]
        rep["before"] = next(iter(before["results"].values()))
        rep["after"] = next(iter(after["results"].values()))
    recs = jsonl.records(run / "metrics.jsonl")
    rep["selection"] = [{"step": r["step"], "acc": r["select_acc"]} for r in recs if "select_acc" in r]
    best = run / "best" / "best.json"
    rep["best"] = json.loads(best.read_text()) if best.exists() else None
    (out / "report.json").write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n")
    _plot(rep, out / "report.png")
    (out / "report.html").write_text(_html(rep), encoding="utf-8")
    return rep


def headline(metrics: dict[str, Any], kind: str) -> tuple[str, float] | None:
    """The metric a task is judged by: perplexity for perplexity tasks, else acc / the first score."""
    for name in (("perplexity", "word_perplexity") if kind == "perplexity" else ("acc", "accuracy", "score")):
        if isinstance(metrics.get(name), int | float):
            return name, float(metrics[name])
    nums = [(k, v) for k, v in metrics.items() if isinstance(v, int | float) and k not in ("n", "seconds")]
    return nums[0] if nums else None


def _plot(rep: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(rep["tasks"])
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(4 + 2.6 * len(tasks), 3.6), squeeze=False)
    ax = axes[0][0]
    sel = rep["selection"]
    if sel:
        ax.plot([s["step"] for s in sel], [100 * s["acc"] for s in sel], "o-")
        if rep.get("best"):
            ax.axvline(rep["best"]["step"], color="grey", ls="--", label=f"kept: step {rep['best']['step']}")
            ax.legend(fontsize=8)
    ax.set_title("held-out augmented questions", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("answers with the key (%)")
    ax.grid(alpha=0.3)
    for i, t in enumerate(tasks, 1):
        ax = axes[0][i]
        kind = rep["tasks"][t]["kind"]
        pair = [headline(rep[w].get(t, {}), kind) for w in ("before", "after")]
        vals = [p[1] for p in pair if p]
        if len(vals) == 2:
            ax.bar(["base", "fine-tuned"], vals, color=["#999999", "#1f77b4"])
            ax.set_title(f"{t}: {pair[0][0]}", fontsize=9)
            for x, v in enumerate(vals):
                ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _html(rep: dict[str, Any]) -> str:
    from html import escape

    rows = []
    for t, meta in rep["tasks"].items():
        b, a = headline(rep["before"].get(t, {}), meta["kind"]), headline(rep["after"].get(t, {}), meta["kind"])
        if b and a:
            rows.append(f"<tr><td>{escape(t)}</td><td>{escape(b[0])}</td><td>{b[1]:.4g}</td><td>{a[1]:.4g}</td>"
                        f"<td>{a[1] - b[1]:+.4g}</td></tr>")
    s = rep["augment"]
    teacher = s.get("teacher") or {}
    sample = "".join(
        f"<li><b>{escape(', '.join(x['keys']))}</b>: {escape(' / '.join(x['questions']))}<br>teacher: "
        f"{escape(' / '.join(x['new_questions']))}<br>answers: {escape(' / '.join(x['new_answers']))}</li>"
        for x in s.get("sample", []))
    return (f"<!doctype html><meta charset='utf-8'><title>corral finetune report</title>"
            f"<h1>corral finetune</h1><img src='report.png'>"
            f"<h2>General tasks, before and after</h2><table border=1 cellpadding=4><tr><th>task</th><th>metric</th>"
            f"<th>base</th><th>fine-tuned</th><th>change</th></tr>{''.join(rows)}</table>"
            f"<h2>Augmentation</h2><p>{s.get('facts', 0)} facts from {s.get('user_rows', 0)} rows, "
            f"{s.get('doc_facts', 0)} from {s.get('doc_chunks', 0)} document chunks; teacher samples "
            f"{teacher.get('samples', 0)}, kept {escape(json.dumps(teacher.get('kept', {})))}, rejected "
            f"{escape(json.dumps(teacher.get('rejected', {})))}; {s.get('train_rows', 0)} training rows "
            f"({s.get('replay_rows', 0)} replay), {s.get('select_rows', 0)} held out for selection.</p>"
            f"<ul>{sample}</ul>")
