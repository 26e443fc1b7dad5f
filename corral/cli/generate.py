"""`corral generate`, `corral chat`, `corral tokenize`, `corral models`: one stream of text from a model
(`corral.text.Session`), and what a model's tokenizer and the registry hold."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from corral.cli.common import load, load_draft, template, tokenizer_for
from corral.options import ChatFlag, ModelOptions, ModelPath, SamplingOptions, SpeedOptions, opt


@dataclass
class ChatConfig(SamplingOptions, SpeedOptions, ModelOptions):
    temperature: float = 0.7


@dataclass
class GenerateConfig(ChatFlag, SamplingOptions, SpeedOptions, ModelOptions):
    prompt: str | None = opt(None, "the prompt text ('-' reads stdin)", positional=True)
    no_stream: bool = opt(False, "print the answer at the end instead of streaming")
    stats: bool = opt(False, "print token counts and speeds to stderr")


@dataclass
class TokenizeConfig(ChatFlag, ModelPath):
    string: str = opt("", "the text to tokenize", positional=True, metavar="TEXT")
    special: bool = opt(False, "parse special-token strings such as <|im_start|>")


def session(cfg: ModelOptions) -> tuple[Any, Any, Any]:
    """(loaded model, tokenizer, `Session`) for a one-stream verb."""
    from corral.text import Session

    lm = load(cfg)
    tok = tokenizer_for(lm)
    return lm, tok, Session(lm.model, tok, max_seq_len=cfg.max_seq_len, compile=cfg.compile,
                            draft=load_draft(cfg, lm, tok), draft_tokens=cfg.draft_tokens)


def _draft_stats(r: Any) -> str:
    if not r.draft_proposed:
        return ""
    return f", draft acceptance {r.acceptance_rate:.0%} ({r.draft_accepted}/{r.draft_proposed})"


def generate(cfg: GenerateConfig) -> int:
    """Complete one prompt, streaming the text to stdout."""
    from corral.chat import encode_chat
    from corral.text import Generation

    params, chat_template = cfg.sampling(), template(cfg)
    prompt = sys.stdin.read() if cfg.prompt == "-" else cfg.prompt
    lm, tok, gen = session(cfg)
    if cfg.chat:
        msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
            {"role": "user", "content": prompt}]
        ids = encode_chat(tok, msgs, template=chat_template)
    else:
        ids = tok.encode(prompt, add_bos=tok.add_bos)
    r = None
    for ev in gen.stream(ids, params):
        if isinstance(ev, Generation):
            r = ev
        elif not cfg.no_stream:
            sys.stdout.write(ev)
            sys.stdout.flush()
    sys.stdout.write(r.text + "\n" if cfg.no_stream else "\n")
    if cfg.stats:
        print(f"[{r.prompt_tokens} prompt tokens ({r.cached_tokens} cached) at {r.prefill_tps:.0f} tok/s, "
              f"{r.completion_tokens} generated at {r.decode_tps:.1f} tok/s{_draft_stats(r)}, "
              f"finish: {r.finish_reason}]", file=sys.stderr)
    return 0


def chat(cfg: ChatConfig) -> int:
    """An interactive chat on stdin/stdout; the KV cache keeps the history between turns."""
    from corral.chat import encode_chat
    from corral.text import Generation

    params, chat_template = cfg.sampling(), template(cfg)
    lm, tok, gen = session(cfg)
    system = cfg.system
    history: list[dict[str, str]] = []
    tty = sys.stdin.isatty()
    print(f"corral chat — {lm.path.name} on {lm.model.device} ({lm.config.torch_dtype}"
          f"{', 4-bit weights' if lm.quantized else ''}). /system TEXT, /reset, /exit", file=sys.stderr)
    while True:
        try:
            line = input("you> " if tty else "").strip()
        except EOFError:
            break
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history.clear()
            print("[history cleared]", file=sys.stderr)
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history.clear()
            print(f"[system prompt {'set' if system else 'cleared'}; history cleared]", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"[unknown command {line.split()[0]}; use /system TEXT, /reset or /exit]", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        ids = encode_chat(tok, ([{"role": "system", "content": system}] if system else []) + history,
                          template=chat_template)
        if len(ids) >= gen.max_seq_len - 1:
            history.pop()
            print(f"[the conversation is {len(ids)} tokens, over --max-seq-len {gen.max_seq_len}; /reset]",
                  file=sys.stderr)
            continue
        if tty:
            sys.stdout.write("bot> ")
        r = None
        for ev in gen.stream(ids, params):
            if isinstance(ev, Generation):
                r = ev
            else:
                sys.stdout.write(ev)
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": r.text})
        print(f"[{r.completion_tokens} tokens, {r.decode_tps:.1f} tok/s{_draft_stats(r)}]", file=sys.stderr)
    return 0


def tokenize(cfg: TokenizeConfig) -> int:
    """Print the token ids and pieces of a text."""
    from corral.chat import encode_chat
    from corral.registry import resolve_model_path
    from corral.tokenizer import load_tokenizer

    tok = load_tokenizer(resolve_model_path(cfg.model))
    if cfg.chat:
        ids = encode_chat(tok, [{"role": "user", "content": cfg.string}])
    else:
        ids = tok.encode(cfg.string, special=cfg.special)
    print(f"{len(ids)} tokens")
    for i in ids:
        mark = " (special)" if i in tok.special_ids else ""
        print(f"{i:>8}  {tok.piece(i)!r}  {tok.decode([i], skip_special=False)!r}{mark}")
    return 0


def models(cfg: Any = None) -> int:
    """List the models corral can load by name."""
    from rich.console import Console
    from rich.table import Table

    from corral.registry import list_models, models_dir

    table = Table(title=f"models (default first; add yours to {models_dir()})")
    for col in ("name", "format", "arch", "params", "quant", "context", "size", "path"):
        table.add_column(col)
    for m in list_models():
        table.add_row(m.name, m.format, m.architecture, f"{m.parameters / 1e6:.0f}M", m.quantization,
                      str(m.context_length), f"{m.size_bytes / 2**20:.0f} MiB", str(m.path))
    Console(width=200).print(table)
    return 0


VERBS = {
    "generate": (GenerateConfig, generate, "complete a prompt (raw, or as a chat turn with --chat)",
                 ("model", "prompt")),
    "chat": (ChatConfig, chat, "interactive chat (/system TEXT, /reset, /exit)", ()),
    "tokenize": (TokenizeConfig, tokenize, "print the token ids and pieces of a text", ("model", "string")),
    "models": (None, models, "list the models corral can load by name", ()),
}
