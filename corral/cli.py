"""`corral <verb>`: the command line. Each verb imports what it needs when it runs, so `corral --help` is instant.

Errors a user can cause (`CorralError`) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from corral.errors import CorralError


def _model_args(p: argparse.ArgumentParser, optional_model: bool = False, max_seq_len: int = 4096,
                engine: bool = False, speed: bool = True) -> None:
    """The model options every verb that loads one takes; `speed=False` leaves out --draft-model and --compile."""
    if optional_model:
        p.add_argument("model", nargs="?", default=None,
                       help="GGUF file, HF folder or registry name (default model if omitted)")
    else:
        p.add_argument("model", help="GGUF file, HF folder or registry name ('default' for the built-in model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto | int4 | float32 | bfloat16 | float16 (auto: Q4 GGUFs run 4-bit packed; "
                        "otherwise bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--adapter", default=None, help="a PEFT LoRA adapter folder to merge into the model at load")
    p.add_argument("--max-seq-len", type=int, default=max_seq_len,
                   help=f"{'context of each sequence' if engine else 'KV cache length'} in tokens "
                        f"(default {max_seq_len})")
    if not speed:
        return
    p.add_argument("--draft-model", default=None, metavar="DRAFT",
                   help="speculative decoding: a smaller model with the same tokenizer (e.g. a `corral distill` "
                        "student) drafts tokens that this model verifies; greedy output is unchanged and sampling "
                        "keeps this model's distribution")
    p.add_argument("--draft-tokens", type=int, default=4, metavar="K",
                   help="tokens the draft proposes per verify round (default 4)")
    if engine:
        p.add_argument("--compile", action="store_true",
                       help="torch.compile the batched decode step (~10%% faster on CPU, after ~2-3 min of compiles)")
    else:
        p.add_argument("--compile", action="store_true",
                       help="torch.compile the decode step: ~1.3x faster decoding on CPU, after a 15-30 s compile")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default for generate: 0; chat: 0.7)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--chat-template", default=None, help="a Jinja chat template file to use instead of the model's")


def _shield_args(p: argparse.ArgumentParser) -> None:
    """The guard and shield options of `corral serve` (and of `corral redteam`'s local target)."""
    g = p.add_argument_group("shields", "a guard model in front of (input) and behind (output) the served model "
                             "(corral serve: POST /v1/moderations answers with it too)")
    g.add_argument("--guard", default=None, metavar="GUARD_MODEL",
                   help="a guard model (Llama Guard style verdicts; GGUF, HF folder or registry name)")
    g.add_argument("--guard-adapter", default=None, metavar="DIR", help="a LoRA adapter merged into the guard")
    g.add_argument("--guard-policy", default=None, metavar="POLICY.yaml",
                   help="the guard's categories (default: Llama Guard 3's S1-S14)")
    g.add_argument("--guard-mode", default="score", choices=["score", "generate"],
                   help="score: P(unsafe) from one forward pass (default); generate: the guard writes its verdict")
    g.add_argument("--guard-threshold", type=float, default=0.5, help="score mode: block when P(unsafe) >= this "
                   "(default 0.5)")
    g.add_argument("--shield", default="input,output", help="which shields the guard runs: input, output or "
                   "input,output (default)")
    g.add_argument("--shield-action", default="refuse", choices=["refuse", "error"],
                   help="a blocked request or answer gets a refusal with finish_reason content_filter (refuse, "
                        "default) or an HTTP 400 / stream error event with code content_filter (error)")
    g.add_argument("--shield-stream-tokens", type=int, default=32, metavar="N",
                   help="output shield on streams: hold text back and release it after a check every N tokens "
                        "(and at the end); 0 checks once at the end (default 32)")
    g.add_argument("--injection-shield", action="store_true",
                   help="block prompt injections and jailbreaks in user and tool messages (a small bundled "
                        "classifier; no guard model needed)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="corral", description="Own your language model: run, serve, fine-tune, "
                                 "evaluate, distill and guard Llama-family models on your own hardware.")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    g = sub.add_parser("generate", help="complete a prompt (raw, or as a chat turn with --chat)")
    _model_args(g)
    g.add_argument("prompt", help="the prompt text ('-' reads stdin)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--system", default=None, help="system message (with --chat)")
    g.add_argument("--no-stream", action="store_true", help="print the answer at the end instead of streaming")
    g.add_argument("--stats", action="store_true", help="print token counts and speeds to stderr")
    _sampling_args(g)

    c = sub.add_parser("chat", help="interactive chat (/system TEXT, /reset, /exit)")
    _model_args(c, optional_model=True)
    c.add_argument("--system", default=None, help="initial system message")
    _sampling_args(c)

    t = sub.add_parser("tokenize", help="print the token ids and pieces of a text")
    t.add_argument("model", help="GGUF file, HF folder or registry name")
    t.add_argument("text")
    t.add_argument("--special", action="store_true", help="parse special-token strings such as <|im_start|>")
    t.add_argument("--chat", action="store_true", help="render TEXT as a user message with the chat template first")

    sub.add_parser("models", help="list the models corral can load by name")

    f = sub.add_parser("finetune", help="fine-tune a model on your JSONL data (LoRA or full)",
                       description="Every option is a field of corral.train.config.FinetuneConfig; --config reads the "
                                   "same fields from a YAML file, and options given here override it.")
    f.add_argument("model", nargs="?", default=None, help="GGUF file, HF folder or registry name")
    f.add_argument("--config", default=None, help="a YAML file of FinetuneConfig fields")
    _finetune_args(f)
    d = sub.add_parser("distill", help="distill a teacher into a smaller student (prune + knowledge distillation)",
                       description="Every option is a field of corral.distill.config.DistillConfig (the fine-tuning "
                                   "fields plus the student, teacher and loss); --config reads them from YAML.")
    d.add_argument("model", nargs="?", default=None, help="the teacher: GGUF file, HF folder or registry name")
    d.add_argument("--config", default=None, help="a YAML file of DistillConfig fields")
    _finetune_args(d, distill=True)
    mg = sub.add_parser("merge", help="merge a LoRA adapter into its base and write an HF folder")
    mg.add_argument("model", help="the base: GGUF file, HF folder or registry name")
    mg.add_argument("--adapter", required=True, help="the PEFT adapter folder (corral finetune's run/adapter)")
    mg.add_argument("--out", required=True, help="the HF folder to write")
    mg.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")
    ex = sub.add_parser("export", help="write a model, its tokenizer and chat template as a GGUF for llama.cpp")
    ex.add_argument("model", help="GGUF file, HF folder (a `corral merge` output too) or registry name")
    ex.add_argument("--out", required=True, help="the .gguf file to write")
    ex.add_argument("--format", default="gguf", help="gguf (the only one so far; `corral merge` writes HF folders)")
    ex.add_argument("--quant", default="f16", help="f16 | q8_0 | q4_0 | f32 (default f16; norms stay f32, and "
                    "q4_0 keeps the output matrix q8_0)")
    ex.add_argument("--adapter", default=None, help="a PEFT LoRA adapter folder to merge in before writing")
    ex.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    s = sub.add_parser("serve", help="serve a model behind an OpenAI-compatible API and a web chat page")
    _model_args(s, optional_model=True, max_seq_len=2048, engine=True)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --api-key "
                   "or --allow-no-auth)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", action="append", default=[],
                   help="accepted API key (repeatable; also CORRAL_API_KEYS, comma-separated)")
    s.add_argument("--allow-no-auth", action="store_true", help="serve on a non-loopback address without API keys")
    s.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (KV slots; default 16)")
    s.add_argument("--kv-cache-tokens", type=int, default=None,
                   help="KV cache budget in tokens, allocated at start: slots = budget // --max-seq-len "
                        "(default --max-batch x --max-seq-len)")
    s.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503 (default 256)")
    s.add_argument("--prefill-chunk", type=int, default=128, help="prompt tokens prefilled per step (default 128)")
    s.add_argument("--served-model-name", default=None, help="the model id clients use (default: the file name)")
    s.add_argument("--max-body-bytes", type=int, default=8 << 20, help="request body limit (default 8 MiB)")
    s.add_argument("--chat-template", default=None, help="a Jinja chat template file to use instead of the model's")
    s.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    _shield_args(s)

    ev = sub.add_parser(
        "eval", help="score models on tasks (bundled, or your own YAML/JSONL) and compare them",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score each MODEL on each task; print a table, write report.json, samples.jsonl, report.png and "
                    "report.html into --out.\n\n"
                    "A task is a bundled name (corral eval --list-tasks) or a task file: a YAML (kind, data, prompt,\n"
                    "score; see corral/eval/task.py) or a bare JSONL. A MODEL may be a LoRA adapter folder (corral\n"
                    "finetune's RUN/adapter): its base model is loaded with the adapter merged in.")
    ev.add_argument("models", nargs="*", metavar="MODEL", help="GGUF file, HF folder, registry name or adapter folder")
    ev.add_argument("--tasks", default=None, help="comma-separated task names or files (default: every bundled task)")
    ev.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")
    ev.add_argument("--out", default="runs/eval", help="report folder (default runs/eval)")
    ev.add_argument("--list-tasks", action="store_true", help="list the bundled tasks and exit")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    ev.add_argument("--dtype", default="auto", help="auto | int4 | float32 | bfloat16 | float16 (as for generate)")
    ev.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    ev.add_argument("--batch-tokens", type=int, default=2048,
                    help="padded tokens per log-likelihood batch (default 2048)")
    ev.add_argument("--max-batch", type=int, default=16, help="sequences generated together (default 16)")
    ev.add_argument("--chat-template", default=None, help="a Jinja chat template file to use instead of the model's")

    sy = sub.add_parser(
        "synth", help="a teacher model answers a prompt file: training-ready chat JSONL (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The teacher answers every line of --prompts --n times through the batched engine and appends\n"
                    "{\"messages\": [...]} lines (what corral finetune --data takes) to --out; samples a --filter\n"
                    "rejects go to OUT.rejected.jsonl. Rerunning with the same --out resumes.\n\n"
                    "--prompts lines: {\"messages\": [...]} or {\"prompt\": \"...\"}, optional \"answer\" and \"id\".\n"
                    "--filter: contains | exact | regex:PATTERN | json | max_words:N | lowercase | ... (the eval\n"
                    "scorers; contains and exact compare with the line's answer).")
    _model_args(sy, max_seq_len=2048, engine=True)
    sy.add_argument("--prompts", help="prompt file (JSONL)")
    sy.add_argument("--out", required=True, help="output chat JSONL (a folder with --augment); resumed if it exists")
    sy.add_argument("--augment", type=int, default=None, metavar="N",
                    help="augmentation mode (corral finetune --augment alone): 2N new wordings of each fact's "
                         "questions and N of each answer of --data's chat rows (and of --docs' facts), filtered; "
                         "writes OUT/train.jsonl, select.jsonl (held-out questions), teacher.jsonl and "
                         "teacher.rejected.jsonl (reasons)")
    sy.add_argument("--data", default=None, help="--augment: your chat JSONL")
    sy.add_argument("--docs", nargs="+", default=None, metavar="FILE", help="--augment: documents (Markdown, text, "
                                                                           "HTML, PDF)")
    sy.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    sy.add_argument("--filter", action="append", default=[], metavar="SCORER",
                    help="keep only samples this scorer accepts (repeatable: all must pass)")
    sy.add_argument("--system", default=None, help="system message for {prompt} lines")
    sy.add_argument("--keep-truncated", action="store_true", help="keep answers cut off at --max-tokens")
    sy.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default 16)")
    _sampling_args(sy)

    b = sub.add_parser(
        "batch", help="answer an OpenAI Batch API input file (JSONL) offline; resumable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every request of INPUT through the continuous-batching engine and append the results to "
                    "OUTPUT.\n\n"
                    "INPUT lines: {\"custom_id\": \"req-1\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", "
                    "\"body\": {...}}\n"
                    "  url: /v1/chat/completions, /v1/completions or /v1/embeddings. The body's \"model\" may be\n"
                    "  left out or name anything: the loaded MODEL answers every line. \"stream\": true is refused.\n"
                    "OUTPUT lines: OpenAI's batch output format, in completion order (match them by custom_id).\n"
                    "  An existing OUTPUT is resumed: lines it already answers are skipped.\n"
                    "Exit code: 0 when every line succeeded, 1 when some failed (their errors are in OUTPUT).")
    _model_args(b, max_seq_len=2048, engine=True)
    b.set_defaults(kv_cache_tokens=None, served_model_name=None, max_queue=256)
    b.add_argument("input", metavar="INPUT", help="batch input file (JSONL)")
    b.add_argument("output", metavar="OUTPUT", help="batch output file (JSONL); resumed if it exists")
    b.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (KV slots; default 16)")
    b.add_argument("--prefill-chunk", type=int, default=128, help="prompt tokens prefilled per step (default 128)")
    b.add_argument("--chat-template", default=None, help="a Jinja chat template file to use instead of the model's")

    gd = sub.add_parser(
        "guard", help="check a message or conversations with a Llama Guard style model (safe / unsafe + categories)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render the Llama Guard 3 prompt for a conversation, let MODEL (a guard model) judge it and print\n"
                    "the verdict: 'safe', or 'unsafe' and the violated category codes.\n\n"
                    "Input: --text (one user message), --conversation (a JSON list of {role, content}; the last\n"
                    "message is assessed: 'user' or 'assistant'; system messages are dropped), or --file with\n"
                    "--out (JSONL lines {\"id\"?, \"conversation\": [...], \"assess\"?}; one result line each).\n"
                    "--eval (labelled rows, e.g. the bundled 'heldout') measures the guard: precision, recall and F1\n"
                    "of 'unsafe' and per category, false-positive rates, parse errors (--report DIR writes\n"
                    "report.json, predictions.jsonl and report.png).\n"
                    "--policy: a YAML file of your own categories (categories: [{code?, name, description?}]);\n"
                    "default: the guard_policy.yaml saved with --adapter (or in MODEL's folder) by corral finetune\n"
                    "--task guard, else Llama Guard 3's S1-S14.\n\n"
                    "Exit code for --text / --conversation: 0 safe, 1 unsafe (as grep: usable in `if`); 2 on errors.")
    _model_args(gd, optional_model=True, max_seq_len=4096, engine=True, speed=False)
    src = gd.add_mutually_exclusive_group()
    src.add_argument("--text", default=None, help="one user message to check ('-' reads stdin)")
    src.add_argument("--conversation", default=None, metavar="FILE.json", help="a conversation to check")
    src.add_argument("--file", default=None, metavar="IN.jsonl", help="conversations to check, one per line")
    src.add_argument("--eval", default=None, metavar="DATA.jsonl",
                     help="labelled rows {conversation, label, categories, assess} to measure the guard on, or a "
                          "bundled set: heldout, train")
    gd.add_argument("--out", default=None, metavar="OUT.jsonl", help="where --file's results go (overwritten)")
    gd.add_argument("--report", default=None, metavar="DIR", help="--eval: write report.json, predictions.jsonl and "
                    "report.png here")
    gd.add_argument("--policy", default=None, metavar="POLICY.yaml",
                    help="your categories (default: the adapter's guard_policy.yaml if any, else Llama Guard 3)")
    gd.add_argument("--mode", default="generate", choices=["generate", "score"],
                    help="generate: the model writes its verdict; score: P(unsafe) from the first token's logits, "
                         "one forward pass (default generate)")
    gd.add_argument("--threshold", type=float, default=0.5, help="score mode: unsafe when P(unsafe) >= this "
                    "(default 0.5)")
    gd.add_argument("--categories", action="store_true", help="score mode: also read the categories of unsafe "
                    "verdicts (a short generation)")
    gd.add_argument("--on-parse-error", default="fail_closed", choices=["fail_closed", "fail_open"],
                    help="an output that is not a verdict counts as unsafe (fail_closed, default) or safe")
    gd.add_argument("--assess", default="auto", choices=["auto", "user", "agent"],
                    help="which message to judge: the last one (auto), the last user message, or the last assistant "
                         "reply (for --file, a line's own 'assess' wins)")
    gd.add_argument("--max-tokens", type=int, default=32, help="longest verdict generated (default 32)")
    gd.add_argument("--max-batch", type=int, default=16, help="conversations checked together (default 16)")
    gd.add_argument("--chat-template", default=None, help="a Jinja chat template file to use instead of the model's")
    gd.add_argument("--print-prompt", action="store_true", help="print the prompt the model would read (chat "
                    "template included) and exit; loads only the tokenizer")
    rt = sub.add_parser(
        "redteam", help="attack a model (local or an OpenAI-compatible endpoint) with the bundled suite and report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send the red-team suite (corral/redteam/data: 360 attacks in 15 categories and 5 wrappers, 110\n"
                    "benign prompts) to MODEL, served in this process (with shields when --guard is given), or to\n"
                    "--endpoint URL. A judge (a guard model, --judge) reads every answer to an attack: the attack\n"
                    "succeeded when the answer is unsafe. A refusal (refusal phrases) or a content_filter block is a\n"
                    "failed attack; on a benign prompt it is a false refusal. Without --judge every answer to an\n"
                    "attack counts as a success (the compliance rate, an upper bound).\n\n"
                    "Writes report.json, samples.jsonl, report.png and report.html into --out. --compare\n"
                    "OLD/report.json puts an earlier run (e.g. without shields) beside this one.")
    _model_args(rt, optional_model=True, max_seq_len=2048, engine=True, speed=False)
    rt.set_defaults(kv_cache_tokens=None, served_model_name=None, max_queue=4096, prefill_chunk=128, compile=False,
                    draft_model=None, draft_tokens=4)
    rt.add_argument("--endpoint", default=None, metavar="URL", help="an OpenAI-compatible server to attack instead "
                    "of a local MODEL (e.g. http://127.0.0.1:8000)")
    rt.add_argument("--api-key", default=None, help="the endpoint's API key (default: none, or OPENAI_API_KEY)")
    rt.add_argument("--endpoint-model", default=None, metavar="NAME", help="the model to ask at --endpoint "
                    "(default: the first it lists)")
    rt.add_argument("--concurrency", type=int, default=None, help="requests in flight (default: 8 for an endpoint, "
                    "2 x --max-batch locally)")
    rt.add_argument("--attacks", action="append", default=[], metavar="FILE", help="your own attacks (JSONL, the "
                    "bundled format; repeatable)")
    rt.add_argument("--benign", action="append", default=[], metavar="FILE", help="your own benign prompts (JSONL; "
                    "repeatable)")
    rt.add_argument("--no-bundled", action="store_true", help="run only the --attacks / --benign files given")
    rt.add_argument("--limit", type=int, default=None, metavar="N", help="only N attacks and N benign prompts, "
                    "spread over the categories and wrappers")
    rt.add_argument("--judge", default=None, metavar="GUARD_MODEL", help="the guard model that judges the answers")
    rt.add_argument("--judge-adapter", default=None, metavar="DIR", help="a LoRA adapter merged into the judge")
    rt.add_argument("--judge-policy", default=None, metavar="POLICY.yaml", help="the judge's categories (default: "
                    "Llama Guard 3's)")
    rt.add_argument("--judge-mode", default="generate", choices=["generate", "score"],
                    help="generate: the judge writes its verdict (default); score: P(unsafe) >= --judge-threshold")
    rt.add_argument("--judge-threshold", type=float, default=0.5, help="score mode threshold (default 0.5)")
    rt.add_argument("--max-tokens", type=int, default=200, help="longest answer (default 200)")
    rt.add_argument("--max-batch", type=int, default=16, help="local: sequences decoded together (default 16)")
    rt.add_argument("--chat-template", default=None, help="local: a Jinja chat template file instead of the model's")
    rt.add_argument("--out", default="runs/redteam", help="report folder (default runs/redteam)")
    rt.add_argument("--label", default=None, help="this run's name in the report (default: the target and shields)")
    rt.add_argument("--compare", action="append", default=[], metavar="REPORT",
                    help="an earlier run's report.json (or folder) to show beside this one (repeatable)")
    _shield_args(rt)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        verbs = {"generate": cmd_generate, "chat": cmd_chat, "tokenize": cmd_tokenize, "models": cmd_models,
                 "finetune": cmd_finetune, "distill": cmd_distill, "merge": cmd_merge,
                 "serve": cmd_serve, "batch": cmd_batch, "export": cmd_export, "eval": cmd_eval,
                 "synth": cmd_synth, "guard": cmd_guard, "redteam": cmd_redteam}
        return verbs[args.verb](args)
    except CorralError as e:
        print(f"corral: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    import torch

    from corral.errors import InvalidArgumentError
    from corral.text import Session

    if args.threads is not None:
        if args.threads < 1:
            raise InvalidArgumentError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.max_seq_len < 16:
        raise InvalidArgumentError("--max-seq-len must be >= 16")
    lm = _load_model(args)
    tok = _tokenizer_for(lm)
    draft = _load_draft(args, lm, tok) if args.draft_model else None
    return lm, tok, Session(lm.model, tok, max_seq_len=args.max_seq_len, compile=args.compile, draft=draft,
                            draft_tokens=args.draft_tokens)


def _load_draft(args: argparse.Namespace, lm: Any, tok: Any) -> Any:
    """The `--draft-model`, on the target's device, checked to share the target's tokenizer."""
    from corral.model.loader import load_model
    from corral.text import check_draft

    # --dtype int4 names a Q4 target's packed path; a draft takes auto (which packs a Q4 draft too).
    draft = load_model(args.draft_model, device=args.device, dtype="auto" if args.dtype == "int4" else args.dtype)
    check_draft(tok, _tokenizer_for(draft), lm.path.name, args.draft_model)
    return draft.model


def _tokenizer_for(lm: Any) -> Any:
    """The model's tokenizer, checked against its embedding (a tokenizer from another model would index past it)."""
    from corral.errors import ModelFormatError
    from corral.tokenizer import load_tokenizer

    tok = load_tokenizer(lm.path)
    if tok.vocab_size > lm.config.vocab_size:
        raise ModelFormatError(f"{lm.path}: the tokenizer has {tok.vocab_size} tokens but the model only "
                               f"{lm.config.vocab_size}; the tokenizer files belong to another model")
    return tok


def _load_model(args: argparse.Namespace) -> Any:
    """`load_model`, with `--adapter` merged in (into fp32 weights unless --dtype says otherwise: LoRA needs the
    unfused layers, not the packed 4-bit ones)."""
    from corral.model.loader import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, adapter=getattr(args, "adapter", None))


def _params(args: argparse.Namespace, default_temperature: float) -> Any:
    from corral.engine.sampling import SamplingParams

    temp = default_temperature if args.temperature is None else args.temperature
    return SamplingParams(temperature=temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repetition_penalty=args.repeat_penalty, max_tokens=args.max_tokens, stop=args.stop,
                          seed=args.seed)


def _template(args: argparse.Namespace) -> str | None:
    from pathlib import Path

    from corral.errors import InvalidArgumentError

    if not args.chat_template:
        return None
    p = Path(args.chat_template)
    if not p.is_file():
        raise InvalidArgumentError(f"--chat-template {p}: no such file")
    return p.read_text()


def _print_stats(r: Any) -> None:
    print(f"[{r.prompt_tokens} prompt tokens ({r.cached_tokens} cached) at {r.prefill_tps:.0f} tok/s, "
          f"{r.completion_tokens} generated at {r.decode_tps:.1f} tok/s{_draft_stats(r)}, finish: {r.finish_reason}]",
          file=sys.stderr)


def _draft_stats(r: Any) -> str:
    if not r.draft_proposed:
        return ""
    return f", draft acceptance {r.acceptance_rate:.0%} ({r.draft_accepted}/{r.draft_proposed})"


def cmd_generate(args: argparse.Namespace) -> int:
    from corral.chat import encode_chat
    from corral.text import Generation

    params = _params(args, 0.0)
    template = _template(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    lm, tok, gen = _load(args)
    if args.chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}]
        ids = encode_chat(tok, msgs, template=template)
    else:
        ids = tok.encode(prompt, add_bos=tok.add_bos)
    result = None
    for ev in gen.stream(ids, params):
        if isinstance(ev, Generation):
            result = ev
        elif not args.no_stream:
            sys.stdout.write(ev)
            sys.stdout.flush()
    if args.no_stream:
        sys.stdout.write(result.text)
    sys.stdout.write("\n")
    if args.stats:
        _print_stats(result)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from corral.chat import encode_chat
    from corral.text import Generation

    params = _params(args, 0.7)
    template = _template(args)
    lm, tok, gen = _load(args)
    system = args.system
    history: list[dict[str, str]] = []
    tty = sys.stdin.isatty()
    print(f"corral chat — {lm.path.name} on {lm.model.device} ({lm.config.torch_dtype}"
          f"{', 4-bit weights' if lm.quantized else ''}). /system TEXT, /reset, /exit", file=sys.stderr)
    while True:
        try:
            line = input("you> " if tty else "")
        except EOFError:
            break
        line = line.strip()
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
        msgs = ([{"role": "system", "content": system}] if system else []) + history
        ids = encode_chat(tok, msgs, template=template)
        if len(ids) >= gen.max_seq_len - 1:
            history.pop()
            print(f"[the conversation is {len(ids)} tokens, over --max-seq-len {gen.max_seq_len}; /reset]",
                  file=sys.stderr)
            continue
        if tty:
            sys.stdout.write("bot> ")
        result = None
        for ev in gen.stream(ids, params):
            if isinstance(ev, Generation):
                result = ev
            else:
                sys.stdout.write(ev)
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": result.text})
        print(f"[{result.completion_tokens} tokens, {result.decode_tps:.1f} tok/s{_draft_stats(result)}]",
              file=sys.stderr)
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from corral.chat import encode_chat
    from corral.registry import resolve_model_path
    from corral.tokenizer import load_tokenizer

    tok = load_tokenizer(resolve_model_path(args.model))
    if args.chat:
        ids = encode_chat(tok, [{"role": "user", "content": args.text}])
    else:
        ids = tok.encode(args.text, special=args.special)
    print(f"{len(ids)} tokens")
    for i in ids:
        mark = " (special)" if i in tok.special_ids else ""
        print(f"{i:>8}  {tok.piece(i)!r}  {tok.decode([i], skip_special=False)!r}{mark}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
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


def cmd_serve(args: argparse.Namespace) -> int:
    import ipaddress
    import os
    import signal

    import torch
    import uvicorn

    from corral.errors import InvalidArgumentError
    from corral.serve.app import create_app
    from corral.serve.metrics import Metrics

    keys = args.api_key + [k.strip() for k in os.environ.get("CORRAL_API_KEYS", "").split(",") if k.strip()]
    if not keys and not args.allow_no_auth and not _loopback(args.host, ipaddress):
        raise InvalidArgumentError(f"--host {args.host} would expose the API without keys; pass --api-key KEY "
                                   "(or CORRAL_API_KEYS), or --allow-no-auth if the network is yours alone")
    for name, v, lo in (("--max-batch", args.max_batch, 1), ("--max-seq-len", args.max_seq_len, 16),
                        ("--max-queue", args.max_queue, 1), ("--prefill-chunk", args.prefill_chunk, 16),
                        ("--port", args.port, 1)):
        if v < lo:
            raise InvalidArgumentError(f"{name} must be >= {lo}")
    _check_shield_args(args)
    lm, engine, service = _build_service(args, hooks=Metrics)
    metrics, model_id, seq, batch = service.hooks, service.model_id, engine.max_seq_len, engine.max_batch
    app = create_app(service, metrics, keys, args.max_body_bytes)
    cfg = lm.config
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * engine.kv_tokens_total * (
        torch.finfo(lm.model.dtype).bits // 8)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown}:{args.port}"
    key_arg = '"<your key>"' if keys else '"none"'
    spec = f"; drafts by {args.draft_model} (k={args.draft_tokens})" if engine.drafter is not None else ""
    sh = service.shields
    if sh is not None:
        which = [n for n, on in (("input", sh.input), ("output", sh.output), ("injection", sh.injection)) if on]
        spec += (f"; shields: {', '.join(which)}" + (f" by {service.guard_id} ({sh.guard.mode})" if sh.guard else "")
                 + f", blocks get {'a refusal' if sh.action == 'refuse' else 'an error'}")
    print(f"corral serve — {model_id} on {lm.model.device}; {batch} slots x {seq} tokens of KV cache "
          f"({kv_bytes / 2**30:.2f} GiB){spec}{'; API keys required' if keys else ''}\n"
          f"  chat page: {url}/\n  API:       {url}/v1   (docs {url}/docs, metrics {url}/metrics)\n\n"
          f"  from openai import OpenAI\n"
          f"  client = OpenAI(base_url=\"{url}/v1\", api_key={key_arg})\n"
          f"  r = client.chat.completions.create(model=\"{model_id}\", "
          f"messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}])\n"
          f"  print(r.choices[0].message.content)\n", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=5))

    def stop() -> None:
        server.should_exit = True

    def on_term(*_: Any) -> None:  # `kill`, `docker stop`, systemd: stop as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        engine.run_beside(server.run, stop)  # the engine keeps the main thread (see Engine.run_beside)
    except KeyboardInterrupt:
        print("corral serve: stopped", file=sys.stderr)
    except SystemExit:  # uvicorn exits when it cannot bind
        pass
    if engine.drafter is not None and engine.drafter.proposed:
        sp = engine.drafter
        print(f"corral serve: draft acceptance {sp.accepted / sp.proposed:.0%} ({sp.accepted}/{sp.proposed})",
              file=sys.stderr)
    if not server.started:
        raise InvalidArgumentError(f"could not serve on {args.host}:{args.port} (in use, or not an address of "
                                   "this machine); pick another --host/--port")
    return 0


def _build_service(args: argparse.Namespace, hooks: Any = None) -> tuple[Any, Any, Any]:
    """The model, its (not yet started) engine and the `Service` over them, from the serve/batch arguments.

    `hooks(engine, model_id)` makes the service's metrics hooks (the server's prometheus `Metrics`)."""
    import torch

    from corral.engine.engine import Engine
    from corral.errors import InvalidArgumentError
    from corral.serve.service import Service

    template = _template(args)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    lm = _load_model(args)
    tok = _tokenizer_for(lm)
    seq = min(args.max_seq_len, lm.config.max_position_embeddings)
    batch = args.max_batch
    if args.kv_cache_tokens is not None:
        batch = args.kv_cache_tokens // seq
        if batch < 1:
            raise InvalidArgumentError(f"--kv-cache-tokens {args.kv_cache_tokens} is less than one sequence of "
                                       f"--max-seq-len {seq}")
    draft = _load_draft(args, lm, tok) if args.draft_model else None
    engine = Engine(lm.model, stop_ids=tok.stop_ids, max_batch=batch, max_seq_len=seq, prefill_chunk=args.prefill_chunk,
                    max_queue=args.max_queue, compile=args.compile, draft=draft, draft_tokens=args.draft_tokens)
    if args.compile:
        print("compiling the decode step (a few minutes the first time)...", file=sys.stderr, flush=True)
        engine.warm_up()
    model_id = args.served_model_name or lm.path.name.removesuffix(".gguf")
    aliases = tuple(a for a in (args.model, lm.path.name, "default" if args.model in (None, "default") else None) if a)
    shields, guard_id = _build_shields(args, engine)
    service = Service(engine, tok, model_id, aliases, hooks=hooks(engine, model_id) if hooks else None,
                      chat_template=template, shields=shields, guard_id=guard_id)
    return lm, engine, service


def _check_shield_args(args: argparse.Namespace) -> tuple[bool, bool]:
    """The shield options, checked before any model loads: (input, output) shields of the guard."""
    from corral.errors import InvalidArgumentError
    from corral.guard.shields import parse_shields

    inp, out = parse_shields(args.shield)
    if args.guard is None:
        for flag, given in (("--guard-adapter", args.guard_adapter), ("--guard-policy", args.guard_policy),
                            ("--shield", args.shield != "input,output")):
            if given:
                raise InvalidArgumentError(f"{flag} needs --guard GUARD_MODEL")
    if not 0.0 <= args.guard_threshold <= 1.0:
        raise InvalidArgumentError(f"--guard-threshold {args.guard_threshold}: expected a probability in [0, 1]")
    if args.shield_stream_tokens < 0:
        raise InvalidArgumentError("--shield-stream-tokens must be >= 0 (0: check a stream once, at its end)")
    return inp, out


def _load_guard(model: str, adapter: str | None, policy: str | None, mode: str, threshold: float,
                args: argparse.Namespace) -> tuple[Any, str]:
    """A `Guard` (on the served model's device) and its id, for --guard and --judge."""
    from corral.guard import Guard, load_taxonomy

    taxonomy = load_taxonomy(policy)  # a bad policy file fails before the model loads
    glm = _load_model(argparse.Namespace(model=model, adapter=adapter, device=args.device,
                                         dtype="auto" if args.dtype == "int4" else args.dtype))
    guard = Guard(glm.model, _tokenizer_for(glm), taxonomy, mode=mode, threshold=threshold)
    return guard, glm.path.name.removesuffix(".gguf")


def _build_shields(args: argparse.Namespace, engine: Any) -> tuple[Any, str | None]:
    """The server's `Shields` (the guard runs on the engine's thread: `engine.call`), or (None, None)."""
    if getattr(args, "guard", None) is None and not getattr(args, "injection_shield", False):
        return None, None
    from corral.guard.shields import Shields

    inp, out = _check_shield_args(args)
    guard, guard_id = None, None
    if args.guard is not None:
        guard, guard_id = _load_guard(args.guard, args.guard_adapter, args.guard_policy, args.guard_mode,
                                      args.guard_threshold, args)
    injection = None
    if args.injection_shield:
        from corral.guard.injection import InjectionDetector

        injection = InjectionDetector.load()
    shields = Shields(guard, input=inp and guard is not None, output=out and guard is not None, injection=injection,
                      action=args.shield_action,
                      stream_tokens=args.shield_stream_tokens, run=engine.call, name=guard_id or "guard")
    return shields, guard_id


def cmd_batch(args: argparse.Namespace) -> int:
    from rich.console import Console

    from corral.batch import check_paths, run_batch
    from corral.errors import InvalidArgumentError

    for name, v, lo in (("--max-batch", args.max_batch, 1), ("--max-seq-len", args.max_seq_len, 16),
                        ("--prefill-chunk", args.prefill_chunk, 16)):
        if v < lo:
            raise InvalidArgumentError(f"{name} must be >= {lo}")
    check_paths(args.input, args.output)  # before the model loads
    _, engine, service = _build_service(args)
    result = []
    # The engine keeps the main thread (see Engine.run_beside). Ctrl-C exits at once: every finished line is
    # already in OUTPUT (one write each), and a rerun resumes.
    engine.run_beside(lambda: result.append(run_batch(service, args.input, args.output,
                                                      console=Console(stderr=True))))
    summary = result[0]
    print(summary, file=sys.stderr)
    return 0 if summary.failed == 0 else 1


DISTILL_HELP = {
    "compile": "torch.compile each decoder layer: faster steps after a ~30 s first one (default off for distill)",
    "out": "run folder: student_init/, prune.json, metrics.jsonl, loss.png, checkpoint/, model/ or adapter/, "
           "report.json",
    "method": "full (every student weight trains) | lora | qlora (a LoRA student)",
    "student": "a student model with the teacher's tokenizer (instead of pruning the teacher)",
    "student_layers": "depth pruning: keep this many decoder layers", "student_mlp": "width pruning: MLP size to keep",
    "student_heads": "width pruning: query heads to keep (a multiple of the KV heads)",
    "prune_score": "how layers are ranked: kl (output change without the layer) | bi (block influence)",
    "calib_examples": "training examples used to rank layers, channels and heads",
    "kd_loss": "fkl (forward KL) | rkl (reverse KL) | jsd (generalised JSD, --jsd-beta)",
    "kd_alpha": "loss = (1 - alpha) CE + alpha KD; 0 = plain SFT of the student", "kd_temperature": "KD temperature",
    "jsd_beta": "JSD mixture weight of the teacher, in (0, 1)",
    "teacher_topk": "0: teacher online at every step; k: its top-k written to disk once and read back",
    "teacher_adapter": "a PEFT adapter merged into the teacher at load",
    "sft_baseline": "also train the same initial student with plain CE (out/sft) and compare it in report.json",
    "report_rows": "held-out rows for the report's teacher agreement (the validation split, else training rows)",
    "eval_tasks": "comma-separated corral eval tasks (bundled names or files) scored for every model in the report",
}


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from corral.errors import InvalidArgumentError
    from corral.eval import bundled_tasks, evaluate, load_task
    from corral.eval.report import print_table

    if args.list_tasks:
        for name in bundled_tasks():
            t = load_task(name)
            print(f"{name:<12} {t.kind:<16} {len(t.examples):>4} examples  {t.description}")
        return 0
    if not args.models:
        raise InvalidArgumentError("name at least one MODEL to evaluate (or pass --list-tasks)")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else bundled_tasks()
    if not tasks:
        raise InvalidArgumentError("--tasks names no task")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    report = evaluate(args.models, tasks, limit=args.limit, out=args.out, device=args.device, dtype=args.dtype,
                      batch_tokens=args.batch_tokens, max_batch=args.max_batch, template=_template(args))
    print_table(report, Console(width=max(100, Console().width)))
    print(f"wrote {args.out}/report.json, samples.jsonl, report.png, report.html")
    return 0


def cmd_guard(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from corral.errors import InvalidArgumentError
    from corral.guard import Guard
    from corral.guard.guard import read_conversation, read_rows
    from corral.guard.llama_guard import normalize_conversation

    # Everything is checked before the model loads.
    if not (args.text is not None or args.conversation or args.file or args.eval):
        raise InvalidArgumentError("give what to check: --text \"...\", --conversation FILE.json, --file IN.jsonl "
                                   "or --eval DATA.jsonl")
    if args.report and not args.eval:
        raise InvalidArgumentError("--report goes with --eval")
    if args.file and not args.out and not args.print_prompt:
        raise InvalidArgumentError("--file needs --out OUT.jsonl for the results")
    if args.out and not args.file:
        raise InvalidArgumentError("--out goes with --file")
    if args.print_prompt and (args.file or args.eval):
        raise InvalidArgumentError("--print-prompt shows one prompt: use it with --text or --conversation")
    if not 0.0 <= args.threshold <= 1.0:
        raise InvalidArgumentError(f"--threshold {args.threshold}: expected a probability in [0, 1]")
    for name, v, lo in (("--max-batch", args.max_batch, 1), ("--max-seq-len", args.max_seq_len, 16),
                        ("--max-tokens", args.max_tokens, 1)):
        if v < lo:
            raise InvalidArgumentError(f"{name} must be >= {lo}")
    if args.threads is not None and args.threads < 1:
        raise InvalidArgumentError("--threads must be >= 1")
    if args.out and Path(args.out).resolve() == Path(args.file).resolve():
        raise InvalidArgumentError("--out must not be the --file it reads")
    taxonomy = _guard_policy(args)
    template = _template(args)
    rows = read_rows(args.file, args.assess) if args.file else None
    if args.eval:
        from corral.guard.dataset import data_path, read_labelled

        labelled, _ = read_labelled(args.eval, taxonomy)
    elif args.file is None:
        if args.conversation:
            conv = read_conversation(args.conversation)
        else:
            text = sys.stdin.read() if args.text == "-" else args.text
            conv = [{"role": "user", "content": text}]
        normalize_conversation(conv, args.assess)
    if args.print_prompt:
        from corral.guard.llama_guard import render_prompt, wrap_text
        from corral.registry import resolve_model_path
        from corral.tokenizer import load_tokenizer

        tok = load_tokenizer(resolve_model_path(args.model))
        text = wrap_text(tok, render_prompt(conv, taxonomy, args.assess), template)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lm = _load_model(args)
    guard = Guard(lm.model, _tokenizer_for(lm), taxonomy, mode=args.mode, threshold=args.threshold,
                  on_parse_error=args.on_parse_error, max_tokens=args.max_tokens, template=template,
                  max_batch=args.max_batch, max_seq_len=args.max_seq_len)
    if args.eval:
        from corral.guard.evaluate import evaluate_guard, format_report, write_report

        report, predictions = evaluate_guard(guard, labelled, str(data_path(args.eval)))
        report.update(model=str(lm.path), adapter=args.adapter)
        print(format_report(report))
        if args.report:
            paths = write_report(report, predictions, args.report)
            print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
        return 0
    if rows is None:
        r = guard.check(conv, args.assess, categories=args.categories)
        line = "unsafe" if r.unsafe else "safe"
        if r.unsafe and r.categories:
            line += " " + ",".join(r.categories)
        if r.score is not None:
            line += f" score={r.score:.4f}"
        print(line)
        if not r.verdict.parsed:
            print(f"corral guard: the model's output is not a verdict ({r.verdict.raw[:80]!r}); counted "
                  f"{'unsafe' if r.unsafe else 'safe'} by --on-parse-error {args.on_parse_error}", file=sys.stderr)
        if r.verdict.unknown_codes:
            print(f"corral guard: unknown category code(s) {', '.join(r.verdict.unknown_codes)} (not in "
                  f"{taxonomy.source})", file=sys.stderr)
        return 1 if r.unsafe else 0

    results = guard.check_many([row.conversation for row in rows], [row.assess for row in rows],
                               categories=args.categories)
    agree = labelled = 0
    with open(args.out, "w", encoding="utf-8") as f:
        for row, r in zip(rows, results, strict=True):
            out = {"id": row.id, **r.to_dict()}
            if "label" in row.fields:
                out["label"] = row.fields["label"]
                labelled += 1
                agree += out["label"] == out["verdict"]
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    n_unsafe = sum(r.unsafe for r in results)
    summary = (f"checked {len(results)} conversations: {n_unsafe} unsafe, {len(results) - n_unsafe} safe; "
               f"{guard.parse_errors} output(s) not a verdict ({args.on_parse_error})")
    if labelled:
        summary += f"; agrees with the labels on {agree}/{labelled} ({agree / labelled:.1%})"
    print(f"{summary}; wrote {args.out}", file=sys.stderr)
    return 0


def cmd_redteam(args: argparse.Namespace) -> int:
    import time

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from corral.errors import InvalidArgumentError
    from corral.redteam.report import print_table, read_compare, write_report
    from corral.redteam.run import EndpointTarget, LocalTarget, outcome_dict, outcomes, summarize
    from corral.redteam.suite import load_suite

    # Everything is checked before a model loads.
    if (args.model is None) == (args.endpoint is None):
        raise InvalidArgumentError("give a MODEL to serve here or --endpoint URL, one of the two")
    if args.endpoint is not None:
        local = [f for f, v in (("--guard", args.guard), ("--injection-shield", args.injection_shield),
                                ("--adapter", args.adapter)) if v]
        if local:
            raise InvalidArgumentError(f"{', '.join(local)}: for a local MODEL; an --endpoint has its own shields "
                                       "(start it with corral serve --guard ...)")
    for name, v, lo in (("--max-tokens", args.max_tokens, 1), ("--max-batch", args.max_batch, 1),
                        ("--max-seq-len", args.max_seq_len, 16), ("--concurrency", args.concurrency or 1, 1),
                        ("--limit", 1 if args.limit is None else args.limit, 1)):
        if v < lo:
            raise InvalidArgumentError(f"{name} must be >= {lo}")
    if args.judge is None and (args.judge_adapter or args.judge_policy):
        raise InvalidArgumentError("--judge-adapter and --judge-policy need --judge GUARD_MODEL")
    if not 0.0 <= args.judge_threshold <= 1.0:
        raise InvalidArgumentError(f"--judge-threshold {args.judge_threshold}: expected a probability in [0, 1]")
    if args.threads is not None:
        if args.threads < 1:
            raise InvalidArgumentError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.model is not None:
        _check_shield_args(args)
    attacks, benign = load_suite(args.attacks, args.benign, bundled=not args.no_bundled, limit=args.limit)
    compare = [read_compare(c) for c in args.compare]
    _template(args)

    judge, judge_info = None, None
    if args.judge is not None:
        judge, judge_id = _load_guard(args.judge, args.judge_adapter, args.judge_policy, args.judge_mode,
                                      args.judge_threshold, args)
        judge_info = {"model": judge_id, "adapter": args.judge_adapter, "mode": args.judge_mode,
                      "threshold": args.judge_threshold if args.judge_mode == "score" else None,
                      "taxonomy": judge.taxonomy.source}
    if args.endpoint is not None:
        target: Any = EndpointTarget(args.endpoint, args.api_key or os.environ.get("OPENAI_API_KEY"),
                                     args.endpoint_model, args.max_tokens, args.concurrency or 8)
        target.resolve_model()
        label = args.label or f"{target.description['model']} at {args.endpoint}"
    else:
        _, _, service = _build_service(args)
        target = LocalTarget(service, args.max_tokens, args.concurrency)
        sh = service.shields
        if sh is not None:
            which = [n for n, on in (("input", sh.input), ("output", sh.output), ("injection", sh.injection)) if on]
            target.description["shields"] = ",".join(which)
            target.description["guard"] = service.guard_id
            target.description["shield_action"] = sh.action
        label = args.label or service.model_id + (f" + shields ({target.description['shields']})" if sh else "")

    prompts = attacks + benign
    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    t0 = time.perf_counter()
    with progress:
        asked = progress.add_task("answers", total=len(prompts))
        replies = target.run(prompts, lambda i, r: progress.advance(asked))
        judged = progress.add_task("judging", total=None if judge is not None else 0, visible=judge is not None)
        results = outcomes(prompts, replies, judge, progress=lambda k: progress.advance(judged, k))
        progress.update(judged, total=progress.tasks[judged].completed)
    report = summarize(results, target.description, judge_info, label, args.limit, time.perf_counter() - t0)
    report["compare"] = compare
    write_report(report, [outcome_dict(o) for o in results], args.out)
    print_table(report, Console(width=max(100, Console().width)))
    errors = [o for o in results if o.error]
    if errors:
        print(f"corral redteam: {len(errors)} prompt(s) failed and are left out of the rates; the first: "
              f"{errors[0].id}: {errors[0].error}", file=sys.stderr)
    print(f"wrote {args.out}/report.json, samples.jsonl, report.png, report.html")
    return 0


def _guard_policy(args: argparse.Namespace) -> Any:
    """--policy; else the policy saved with the trained guard (`--adapter`, or MODEL's folder); else Llama Guard 3.
    A --policy that differs from the saved one is used, with a note."""
    from pathlib import Path

    from corral.guard.dataset import same_categories, saved_policy
    from corral.guard.taxonomy import default_taxonomy, load_taxonomy

    model_dir = args.model if args.model and Path(args.model).is_dir() else None
    saved = saved_policy(args.adapter, model_dir)
    if args.policy is None:
        return saved[0] if saved else default_taxonomy()
    taxonomy = load_taxonomy(args.policy)
    if saved and not same_categories(taxonomy, saved[0]):
        print(f"corral guard: note: the guard was trained on the policy in {saved[1]}; --policy {args.policy} "
              "lists other categories", file=sys.stderr)
    return taxonomy


def cmd_synth(args: argparse.Namespace) -> int:
    import torch

    from corral.distill.synth import check_n, make_filters, read_prompts, synth
    from corral.errors import InvalidArgumentError

    for name, v, lo in (("--max-batch", args.max_batch, 1), ("--max-seq-len", args.max_seq_len, 16)):
        if v < lo:
            raise InvalidArgumentError(f"{name} must be >= {lo}")
    if args.augment is not None:
        return _synth_augment(args)
    if args.data or args.docs:
        raise InvalidArgumentError("--data and --docs go with --augment N; a plain synth run takes --prompts")
    if not args.prompts:
        raise InvalidArgumentError("--prompts FILE is required (or --augment N with --data / --docs)")
    params = _params(args, 0.8)
    if params.seed is None:
        params.seed = 0  # every sample's seed derives from it: a rerun (or a resume) draws the same samples
    check_n(args.n, params)  # everything is checked before the model loads
    filters = make_filters(args.filter)
    template = _template(args)
    prompts = read_prompts(args.prompts, args.system, need_answer=any(f.needs_answer for f in filters))
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    lm = _load_model(args)
    tok = _tokenizer_for(lm)
    summary = synth(lm.model, tok, prompts, args.out, n=args.n, params=params, filters=filters, template=template,
                    keep_truncated=args.keep_truncated, max_batch=args.max_batch, max_seq_len=args.max_seq_len,
                    compile=args.compile)
    print(summary)
    return 0


def _synth_augment(args: argparse.Namespace) -> int:
    """`corral synth --augment N`: the recipe's augmentation stage alone, into the folder --out."""
    import json
    from pathlib import Path

    from corral.errors import InvalidArgumentError
    from corral.train.config import FinetuneConfig
    from corral.train.recipe import make_training_data

    if args.prompts or args.filter:
        raise InvalidArgumentError("--augment rewords --data / --docs with its own filter; drop --prompts and "
                                   "--filter")
    if args.augment < 1:
        raise InvalidArgumentError(f"--augment {args.augment}: choose 1 to 64 wordings per row")
    cfg = FinetuneConfig(model=args.model or "default", data=args.data or "", docs=args.docs or [],
                         augment=args.augment, replay=0.0, seed=args.seed or 0, max_seq_len=args.max_seq_len,
                         chat_template=args.chat_template)
    cfg.check()
    out = Path(args.out)
    make_training_data(cfg, out, progress=True)
    s = json.loads((out / "summary.json").read_text())
    t = s.get("teacher", {})
    print(f"augment: {s['facts'] + s['doc_facts']} facts, {t.get('samples', 0)} teacher samples, kept "
          f"{t.get('kept', {})}, rejected {t.get('rejected', {})} -> {out}/train.jsonl ({s['train_rows']} rows), "
          f"{out}/select.jsonl ({s['select_rows']} held-out questions)")
    return 0


FINETUNE_HELP = {
    "data": "training JSONL: chat lines {messages: [...]} or {prompt, completion}; with --task guard, labelled "
            "guard rows {conversation, label, categories, assess} (or a bundled set: train, heldout)",
    "task": "sft (chat or prompt/completion lines) | guard (train a Llama Guard style classifier on labelled rows)",
    "guard_policy": "--task guard: the policy YAML whose categories the prompts list (default Llama Guard 3 "
                    "S1-S14); saved beside the adapter as guard_policy.yaml",
    "guard_repeat_unsafe": "--task guard: train on each unsafe row N times per epoch (the category codes are "
                           "learnt from the unsafe rows alone; 3 for the bundled set)",
    "out": "run folder: metrics.jsonl, loss.png, checkpoint/, adapter/ or model/",
    "method": "lora | qlora (frozen 4-bit base) | full", "val_file": "held-out JSONL",
    "val_split": "fraction of the data held out",
    "resume": "continue the run in --out from its checkpoint", "lora_targets": "comma-separated projections",
    "device": "auto | cpu | cuda[:N]", "precision": "auto (bf16 autocast on CUDA and bf16-capable CPUs) | bf16 | fp32",
    "packing": "pack several examples per row (default: on with --task sft, off with guard)",
    "grad_checkpointing": "recompute activations in backward",
    "compile": "torch.compile each decoder layer: faster steps after a ~30 s first one (default: on with --task sft, "
               "off with guard; eager where it cannot build, e.g. no C++ compiler)",
    "augment": "a teacher writes 2N new wordings of each fact's questions and N of each answer, filtered "
               "(they must keep the answer's key strings; rejects go to OUT/augment/teacher.rejected.jsonl); 0: off",
    "teacher": "the model that writes the augmentation (default: MODEL itself)",
    "docs": "Markdown, text, HTML or PDF files: chunks become plain training text, and the teacher writes "
            "questions about each sentence that states a fact",
    "chunk_chars": "documents are cut into chunks of at most this many characters, along their headings",
    "replay": "share of the training rows that are the base model's own answers to general prompts, so it keeps "
              "what it knew (0: off)",
    "replay_loss": "kl: the replay rows hold the model to the base model's next-token distributions (a KL term) | "
                   "ce: plain cross-entropy on the base model's text",
    "replay_prompts": "JSONL of {prompt} lines for --replay (default: corral's bundled general prompts)",
    "ema": "score and keep a moving average of the trained weights over about this share of the run, not one "
           "step's weights (0: off)",
    "select_every": "score the held-out augmented questions every N steps and keep the best checkpoint "
                    "(default: 8 times a run; 0: off, keep the last)",
    "eval_tasks": "corral eval tasks run before and after training, in OUT/report (comma-separated; none: off)",
}


def _finetune_args(p: argparse.ArgumentParser, distill: bool = False) -> None:
    """One option per FinetuneConfig (or DistillConfig) field (default None: 'not given', so a --config file's value
    stands)."""
    import dataclasses

    from corral.distill.config import DistillConfig
    from corral.train.config import TASK_DEFAULTS, FinetuneConfig

    for fld in dataclasses.fields(DistillConfig if distill else FinetuneConfig):
        if fld.name == "model":
            continue
        flag = "--" + fld.name.replace("_", "-")
        if fld.default is not dataclasses.MISSING:
            default = fld.default
        elif fld.default_factory is not dataclasses.MISSING:
            default = fld.default_factory()
        else:
            default = None
        helptext = (DISTILL_HELP if distill else {}).get(fld.name) or FINETUNE_HELP.get(fld.name, "")
        if fld.name in ("packing", "compile"):  # on by default for sft: --no-packing / --no-compile turn it off
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=None, help=helptext)
        elif fld.name == "docs":
            p.add_argument(flag, nargs="+", default=None, metavar="FILE", help=helptext)
        elif isinstance(default, list):
            p.add_argument(flag, default=None, help=f"{helptext} (default {','.join(default)})")
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if fld.name in ("max_steps", "student_layers", "student_mlp", "student_heads", "select_every",
                            "batch_size", "lora_r"):
                kind = int
            elif fld.name in ("lr", "epochs", "lora_alpha", "lora_dropout", "ema"):
                kind = float
            shown = f" (default {default})" if default is not None else (
                f" (default: {TASK_DEFAULTS['sft'][fld.name]} with --task sft, {TASK_DEFAULTS['guard'][fld.name]} "
                "with guard)" if fld.name in TASK_DEFAULTS["sft"] else "")
            p.add_argument(flag, type=kind, default=None, help=f"{helptext}{shown}".strip())


def _config(args: argparse.Namespace, cls: type) -> Any:
    """The run's config: the --config YAML file's fields, overridden by the options given."""
    import dataclasses
    from pathlib import Path

    from corral.errors import InvalidArgumentError

    values: dict[str, Any] = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise InvalidArgumentError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InvalidArgumentError(f"--config {path}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise InvalidArgumentError(f"--config {path}: expected a mapping of {cls.__name__} fields")
        values.update(loaded)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InvalidArgumentError(f"--config: unknown field(s) {unknown}; see corral {args.verb} --help")
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            if name in ("lora_targets", "eval_tasks") and isinstance(v, str):
                v = [x.strip() for x in v.split(",") if x.strip() and x.strip().lower() != "none"]
            values[name] = v
    if not values.get("model"):
        raise InvalidArgumentError("model is required (positional MODEL, or in --config)")
    if not values.get("data") and not values.get("docs"):
        raise InvalidArgumentError("--data FILE is required (or --docs FILE ... with corral finetune; or in --config)")
    try:
        return cls(**values)
    except TypeError as e:
        raise InvalidArgumentError(f"bad {args.verb} settings: {e}") from None


def _task(cfg: Any) -> Any:
    """The training loop's data side for `--task` (None: the default, chat and prompt/completion lines)."""
    if cfg.task != "guard":
        return None
    from corral.guard.train import GuardTask

    cfg.check()  # bad options first, then the policy file, before any model loads
    return GuardTask(cfg)


def cmd_finetune(args: argparse.Namespace) -> int:
    from corral.train.config import FinetuneConfig
    from corral.train.loop import finetune

    cfg = _config(args, FinetuneConfig)
    run = finetune(cfg, task=_task(cfg))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run
        out = "model/" if cfg.method == "full" else "adapter/"
        print(f"done: {run} (metrics.jsonl, loss.png, {out}{' with guard_policy.yaml' if cfg.task == 'guard' else ''})")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from corral.distill.config import DistillConfig
    from corral.distill.run import distill

    cfg = _config(args, DistillConfig)
    run = distill(cfg, task=_task(cfg))
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {run} (prune.json, metrics.jsonl, loss.png, report.json, "
              f"{'model/' if cfg.method == 'full' else 'adapter/'})")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from corral.errors import InvalidArgumentError
    from corral.formats.hf import save_hf_folder
    from corral.model.loader import load_model
    from corral.tokenizer import load_tokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if args.dtype not in dtypes:
        raise InvalidArgumentError(f"--dtype {args.dtype}: choose float32, bfloat16 or float16")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise InvalidArgumentError(f"--out {out} exists and is not empty; choose a new folder")
    lm = load_model(args.model, device="cpu", dtype="float32", adapter=args.adapter)
    tok = load_tokenizer(lm.path)
    n = lm.merged
    save_hf_folder(lm.model, lm.config, tok, lm.path, out, dtypes[args.dtype])
    print(f"merged {n} LoRA layers into {lm.path.name}; wrote {out} (config.json, model.safetensors, tokenizer)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from corral.errors import InvalidArgumentError
    from corral.model.export import export_gguf

    if args.format != "gguf":
        raise InvalidArgumentError(f"--format {args.format!r}: corral export writes gguf; for an HF folder of a "
                                   "model with an adapter merged in, use corral merge")
    r = export_gguf(args.model, args.out, quant=args.quant, adapter=args.adapter, force=args.force)
    types = ", ".join(f"{n} {k}" for k, n in sorted(r.tensor_types.items(), key=lambda kv: -kv[1]))
    print(f"wrote {r.path} ({r.quant}: {types} tensors; {r.size_bytes / 2**20:.1f} MiB)")
    return 0


def _loopback(host: str, ipaddress: Any) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
