"""`corral synth`: a teacher model answers a prompt file through the batched engine, as training-ready chat JSONL.

Prompt lines (JSONL): `{"messages": [...]}` ending with a user turn, or `{"prompt": "..."}` (one user turn, after
`--system` if given); optional `answer` (a string or a list: what answer filters compare with) and `id`.

Output lines: `{"messages": [...the prompt's turns..., {"role": "assistant", "content": reply}], "synth": {"id",
"sample", "seed", "finish_reason"}}`, which `corral finetune --data` takes as it is (it reads `messages` only).
Samples that are not kept go to `OUT.rejected.jsonl` with `"rejected": [reasons]`: a filter that failed (the eval
scorers, `corral.eval.scoring`), an empty reply, or a reply cut at --max-tokens (unless `keep_truncated`).

Sample j of a prompt is drawn with its own seed, derived from (--seed, the prompt's id, j), so the output does not
depend on batching, on the order samples finish in, or on how often the run was interrupted. A prompt's id is its
`id`, or else a hash of its messages (the k-th repeat of the same prompt gets `#k`), so editing or reordering the
prompt file does not mix up which prompts are done.

Resumable: each sample is appended (one `os.write`) to OUT or to the rejected file the moment it finishes. A rerun
with the same OUT cuts off a partial last line, reads the (id, sample) pairs both files hold and runs only the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral import jsonl
from corral.engine.sampling import SamplingParams
from corral.errors import CorralError, InvalidArgumentError
from corral.eval.scoring import Scorer, ScorerSpecError, make_scorer


class PromptFileError(CorralError):
    """Bad lines in a prompt file; the message lists each by number."""


@dataclass
class Prompt:
    key: str
    messages: list[dict[str, str]]
    fields: dict[str, Any]
    line: int
    text: str | None = None  # a raw completion prompt (no chat template), e.g. a few-shot pattern; `messages` is
    #                          then what the output line records as the question
    n: int | None = None  # this prompt's own number of samples (None: synth's `n`)


@dataclass
class SynthSummary:
    prompts: int
    samples: int  # prompts x n (each prompt's own n where it has one)
    resumed: int  # samples found done in OUT and the rejected file
    kept: int  # written to OUT by this run
    rejected: int
    reasons: dict[str, int]
    seconds: float
    out: Path

    def __str__(self) -> str:
        if self.resumed == self.samples:
            return f"synth: all {self.samples} samples were already done ({self.out}); nothing to run"
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        resumed = f"; {self.resumed} were done before" if self.resumed else ""
        rej = f"; {self.rejected} rejected ({why}) -> {rejected_path(self.out)}" if self.rejected else ""
        return (f"synth: {self.kept} of {self.samples - self.resumed} new samples kept -> {self.out} "
                f"({self.prompts} prompts x {self.samples // max(1, self.prompts)}{resumed}{rej}; "
                f"{self.seconds:.0f} s)")


def rejected_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".rejected.jsonl")


def make_filters(specs: list[str | dict[str, Any]]) -> list[Scorer]:
    """Scorers from specs such as `contains`, `regex:^\\d+$`, `json`, `max_words:80` (see corral.eval.scoring)."""
    try:
        return [make_scorer(s) for s in specs]
    except ScorerSpecError as e:
        raise InvalidArgumentError(f"--filter: {e}") from None


def read_prompts(path: str | Path, system: str | None = None, need_answer: bool = False) -> list[Prompt]:
    """Every line of the prompt file, checked; raises `PromptFileError` listing the bad ones."""
    from corral.chat import validate_messages

    seen: Counter[str] = Counter()
    ids: set[str] = set()

    def parse(obj: Any, n: int) -> Prompt:
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object with 'messages' or 'prompt'")
        if "messages" in obj:
            msgs = validate_messages(obj["messages"])
            if msgs[-1]["role"] not in ("user", "tool"):
                raise ValueError("the last message must be the user's: the teacher answers it")
        elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": obj["prompt"]}]
        else:
            raise ValueError("expected a 'messages' list or a non-empty 'prompt' string")
        if need_answer and not _has_answer(obj):
            raise ValueError("a --filter compares with the expected answer, and this line has no 'answer'")
        if "id" in obj:
            if not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
                raise ValueError("'id' must be a string or an integer")
            key = f"id:{obj['id']}"
            if key in ids:
                raise ValueError(f"id {obj['id']!r} is used twice")
            ids.add(key)
        else:
            h = hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).hexdigest()[:16]
            key = h if not seen[h] else f"{h}#{seen[h]}"
            seen[h] += 1
        return Prompt(key, msgs, obj, n)

    return jsonl.read(path, parse, what="--prompts: a JSONL file of {\"messages\"} or {\"prompt\"} lines",
                      error=PromptFileError)[0]


def _has_answer(obj: dict[str, Any]) -> bool:
    a = obj.get("answer")
    items = a if isinstance(a, list) else [a]
    return a is not None and bool(items) and all(isinstance(x, str | int | float) and str(x) for x in items)


def check_n(n: int, params: SamplingParams) -> None:
    """`n` samples per prompt need n >= 1, and a temperature above 0 when n > 1 (greedy answers are all the same)."""
    if n < 1:
        raise InvalidArgumentError("--n must be >= 1")
    if n > 1 and params.temperature == 0:
        raise InvalidArgumentError(f"--n {n} with --temperature 0 gives {n} identical answers; sample with a "
                                   "temperature above 0, or use --n 1")


def sample_seed(seed: int, key: str, j: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}:{j}".encode()).digest()[:8], "little") >> 1


def _done(path: Path) -> set[tuple[str, int]]:
    """(id, sample) pairs already in a synth output file; a partial last line (a killed run) is cut off."""
    recs = jsonl.resume(path, lambda r: isinstance(r, dict) and isinstance(r.get("synth"), dict)
                        and "id" in r["synth"] and isinstance(r["synth"].get("sample"), int),
                        "corral synth", "pass another --out", InvalidArgumentError)
    return {(str(r["synth"]["id"]), r["synth"]["sample"]) for r in recs}


def synth(model: Any, tok: Any, prompts: list[Prompt] | str | Path, out: str | Path, *, n: int = 4,
          params: SamplingParams | None = None, filters: list[Scorer] | None = None, system: str | None = None,
          template: str | None = None, keep_truncated: bool = False, max_batch: int = 16, max_seq_len: int = 2048,
          compile: bool = False, progress: bool = True, console: Any = None) -> SynthSummary:
    """Answer every prompt `n` times with the teacher (`model`, `tok`), appending chat JSONL to `out` (see the module
    docstring). `params` are the sampling options (default temperature 0.8, 256 tokens); its seed (default 0) is the
    base of every sample's own seed. Resumes an existing `out`."""
    from corral.chat import encode_chat
    from corral.text import generate_many as generate

    params = params or SamplingParams(temperature=0.8, max_tokens=256)
    check_n(n, params)
    filters = filters or []
    if not isinstance(prompts, list):
        prompts = read_prompts(prompts, system, need_answer=any(f.needs_answer for f in filters))
    out = Path(out)
    rej = rejected_path(out)
    done = _done(out) | _done(rej)
    base_seed = params.seed if params.seed is not None else 0
    counts = [n if p.n is None else p.n for p in prompts]
    total = sum(counts)
    jobs = [(p, j) for p, c in zip(prompts, counts, strict=True) for j in range(c) if (p.key, j) not in done]
    resumed = total - len(jobs)
    ids_of = {}
    prompt_ids = []
    for p, _j in jobs:
        if p.key not in ids_of:
            ids_of[p.key] = (tok.encode(p.text, add_bos=tok.add_bos) if p.text is not None
                             else encode_chat(tok, p.messages, template=template))
        prompt_ids.append(ids_of[p.key])
    job_params = [dataclasses.replace(params, seed=sample_seed(base_seed, p.key, j)) for p, j in jobs]
    kept, reasons = 0, Counter()
    writer, rejects = jsonl.Appender(out), jsonl.Appender(rej)
    prog = _progress(progress, console, total, resumed)
    t0 = time.perf_counter()

    def on_finish(i: int, g: Any) -> None:
        nonlocal kept
        p, j = jobs[i]
        reply = g.text.strip()
        why = []
        if g.finish_reason == "error":
            why.append(f"error: {g.error}")
        elif not reply:
            why.append("empty")
        elif g.finish_reason == "length" and not keep_truncated:
            why.append("truncated")
        else:
            why += [f.name for f in filters if not f(reply, p.fields)]
        rec = {"messages": [*p.messages, {"role": "assistant", "content": reply}],
               "synth": {"id": p.key, "sample": j, "seed": job_params[i].seed, "finish_reason": g.finish_reason}}
        if why:
            reasons.update(w.split(":")[0] if w.startswith("error") else w for w in why)
            rejects.write({**rec, "rejected": why})
        else:
            kept += 1
            writer.write(rec)
        if prog is not None:
            prog.advance(prog.task_ids[0])

    try:
        if jobs:
            generate(model, tok, prompt_ids, job_params, max_batch=max_batch, max_seq_len=max_seq_len,
                     on_finish=on_finish, compile=compile)
    finally:
        writer.close()
        rejects.close()
        if prog is not None:
            prog.stop()
    rejected = len(jobs) - kept
    return SynthSummary(len(prompts), total, resumed, kept, rejected, dict(reasons),
                        time.perf_counter() - t0, out)


def _progress(show: bool, console: Any, total: int, done: int) -> Any:
    if not show:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    TextColumn("elapsed"), TimeElapsedColumn(), console=console or Console(stderr=True))
    prog.add_task("synth", total=total, completed=done)
    prog.start()
    return prog
