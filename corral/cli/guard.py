"""`corral guard`: a Llama Guard style model judges a message, a file of conversations, or a labelled set."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from corral.cli.common import load, template, tokenizer_for
from corral.errors import InvalidArgumentError
from corral.options import BatchOptions, LengthOptions, ModelOptions, OutOptions, opt, probability


@dataclass
class GuardConfig(OutOptions, LengthOptions, BatchOptions, ModelOptions):
    max_tokens: int = 32
    text: str | None = opt(None, "one user message to check ('-' reads stdin)")
    conversation: str | None = opt(None, "a conversation to check", metavar="FILE.json")
    file: str | None = opt(None, "conversations to check, one per line (results to --out OUT.jsonl)",
                           metavar="IN.jsonl")
    eval: str | None = opt(None, "labelled rows {conversation, label, categories, assess} to measure the guard on, "
                                 "or a bundled set: heldout, train", metavar="DATA.jsonl")
    report: str | None = opt(None, "--eval: write report.json, predictions.jsonl and report.png here", metavar="DIR")
    policy: str | None = opt(None, "your categories (default: the adapter's guard_policy.yaml if any, else Llama "
                                   "Guard 3)", metavar="POLICY.yaml")
    mode: str = opt("generate", "generate: the model writes its verdict; score: P(unsafe) from the first token's "
                                "logits, one forward pass", choices=["generate", "score"])
    threshold: float = opt(0.5, "score mode: unsafe when P(unsafe) >= this")
    categories: bool = opt(False, "score mode: also read the categories of unsafe verdicts (a short generation)")
    on_parse_error: str = opt("fail_closed", "an output that is not a verdict counts as unsafe (fail_closed) or safe",
                              choices=["fail_closed", "fail_open"])
    assess: str = opt("auto", "which message to judge: the last one (auto), the last user message, or the last "
                              "assistant reply (for --file, a line's own 'assess' wins)",
                      choices=["auto", "user", "agent"])
    print_prompt: bool = opt(False, "print the prompt the model would read (chat template included) and exit; "
                                    "loads only the tokenizer")


def guard(cfg: GuardConfig) -> int:
    """Judge one conversation (exit 0 safe, 1 unsafe), a file of them, or a labelled set (--eval)."""
    import json
    from pathlib import Path

    from corral.guard import Guard
    from corral.guard.guard import read_conversation, read_rows
    from corral.guard.llama_guard import normalize_conversation

    # Everything is checked before the model loads.
    given = [f"--{n}" for n in ("text", "conversation", "file", "eval") if getattr(cfg, n) is not None]
    if len(given) != 1:
        raise InvalidArgumentError(f"give one of --text \"...\", --conversation FILE.json, --file IN.jsonl or --eval "
                                   f"DATA.jsonl to check ({', '.join(given) if given else 'none'} given)")
    if cfg.report and not cfg.eval:
        raise InvalidArgumentError("--report goes with --eval")
    if cfg.file and not cfg.out and not cfg.print_prompt:
        raise InvalidArgumentError("--file needs --out OUT.jsonl for the results")
    if cfg.out and not cfg.file:
        raise InvalidArgumentError("--out goes with --file")
    if cfg.print_prompt and (cfg.file or cfg.eval):
        raise InvalidArgumentError("--print-prompt shows one prompt: use it with --text or --conversation")
    probability("--threshold", cfg.threshold)
    cfg.check()
    if cfg.out and Path(cfg.out).resolve() == Path(cfg.file).resolve():
        raise InvalidArgumentError("--out must not be the --file it reads")
    taxonomy = _guard_policy(cfg)
    chat_template = template(cfg)
    rows = read_rows(cfg.file, cfg.assess) if cfg.file else None
    if cfg.eval:
        from corral.guard.dataset import data_path, read_labelled

        labelled, _ = read_labelled(cfg.eval, taxonomy)
    elif cfg.file is None:
        if cfg.conversation:
            conv = read_conversation(cfg.conversation)
        else:
            text = sys.stdin.read() if cfg.text == "-" else cfg.text
            conv = [{"role": "user", "content": text}]
        normalize_conversation(conv, cfg.assess)
    if cfg.print_prompt:
        from corral.guard.llama_guard import render_prompt, wrap_text
        from corral.registry import resolve_model_path
        from corral.tokenizer import load_tokenizer

        tok = load_tokenizer(resolve_model_path(cfg.model))
        text = wrap_text(tok, render_prompt(conv, taxonomy, cfg.assess), chat_template)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0

    lm = load(cfg)
    judge = Guard(lm.model, tokenizer_for(lm), taxonomy, mode=cfg.mode, threshold=cfg.threshold,
                  on_parse_error=cfg.on_parse_error, max_tokens=cfg.max_tokens, template=chat_template,
                  max_batch=cfg.max_batch, max_seq_len=cfg.max_seq_len)
    if cfg.eval:
        from corral.guard.evaluate import evaluate_guard, format_report, write_report

        report, predictions = evaluate_guard(judge, labelled, str(data_path(cfg.eval)))
        report.update(model=str(lm.path), adapter=cfg.adapter)
        print(format_report(report))
        if cfg.report:
            paths = write_report(report, predictions, cfg.report)
            print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
        return 0
    if rows is None:
        r = judge.check(conv, cfg.assess, categories=cfg.categories)
        line = "unsafe" if r.unsafe else "safe"
        if r.unsafe and r.categories:
            line += " " + ",".join(r.categories)
        if r.score is not None:
            line += f" score={r.score:.4f}"
        print(line)
        if not r.verdict.parsed:
            print(f"corral guard: the model's output is not a verdict ({r.verdict.raw[:80]!r}); counted "
                  f"{'unsafe' if r.unsafe else 'safe'} by --on-parse-error {cfg.on_parse_error}", file=sys.stderr)
        if r.verdict.unknown_codes:
            print(f"corral guard: unknown category code(s) {', '.join(r.verdict.unknown_codes)} (not in "
                  f"{taxonomy.source})", file=sys.stderr)
        return 1 if r.unsafe else 0

    results = judge.check_many([row.conversation for row in rows], [row.assess for row in rows],
                               categories=cfg.categories)
    agree = labelled = 0
    with open(cfg.out, "w", encoding="utf-8") as f:
        for row, r in zip(rows, results, strict=True):
            out = {"id": row.id, **r.to_dict()}
            if "label" in row.fields:
                out["label"] = row.fields["label"]
                labelled += 1
                agree += out["label"] == out["verdict"]
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    n_unsafe = sum(r.unsafe for r in results)
    summary = (f"checked {len(results)} conversations: {n_unsafe} unsafe, {len(results) - n_unsafe} safe; "
               f"{judge.parse_errors} output(s) not a verdict ({cfg.on_parse_error})")
    if labelled:
        summary += f"; agrees with the labels on {agree}/{labelled} ({agree / labelled:.1%})"
    print(f"{summary}; wrote {cfg.out}", file=sys.stderr)
    return 0


def _guard_policy(cfg: GuardConfig) -> Any:
    """--policy; else the policy saved with the trained guard (`--adapter`, or MODEL's folder); else Llama Guard 3.
    A --policy that differs from the saved one is used, with a note."""
    from pathlib import Path

    from corral.guard.dataset import same_categories, saved_policy
    from corral.guard.taxonomy import default_taxonomy, load_taxonomy

    model_dir = cfg.model if cfg.model and Path(cfg.model).is_dir() else None
    saved = saved_policy(cfg.adapter, model_dir)
    if cfg.policy is None:
        return saved[0] if saved else default_taxonomy()
    taxonomy = load_taxonomy(cfg.policy)
    if saved and not same_categories(taxonomy, saved[0]):
        print(f"corral guard: note: the guard was trained on the policy in {saved[1]}; --policy {cfg.policy} "
              "lists other categories", file=sys.stderr)
    return taxonomy


DESCRIPTION = """\
Render the Llama Guard 3 prompt for a conversation, let MODEL (a guard model) judge it and print
the verdict: 'safe', or 'unsafe' and the violated category codes.

Input: --text (one user message), --conversation (a JSON list of {role, content}; the last
message is assessed: 'user' or 'assistant'; system messages are dropped), or --file with
--out (JSONL lines {"id"?, "conversation": [...], "assess"?}; one result line each).
--eval (labelled rows, e.g. the bundled 'heldout') measures the guard: precision, recall and F1
of 'unsafe' and per category, false-positive rates, parse errors (--report DIR writes
report.json, predictions.jsonl and report.png).
--policy: a YAML file of your own categories (categories: [{code?, name, description?}]);
default: the guard_policy.yaml saved with --adapter (or in MODEL's folder) by corral finetune
--task guard, else Llama Guard 3's S1-S14.

Exit code for --text / --conversation: 0 safe, 1 unsafe (as grep: usable in `if`); 2 on errors."""

VERBS = {"guard": (GuardConfig, guard, "check a message or conversations with a Llama Guard style model (safe / "
                   "unsafe + categories)", (), DESCRIPTION)}
