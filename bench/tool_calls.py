"""Tool calling side by side: `corral serve` against llama.cpp's `llama-server --jinja`, same GGUF, same probes.

Each server runs as a subprocess on a free local port, one after the other, on the same GGUF (corral's default
model unless `--model`) and `--threads`. Every probe of a tool-call task (default: corral's bundled
`tool_calls`, 57 original questions in four categories; `--task FILE` for another JSONL of the same shape, e.g.
examples/tools/eval.jsonl) is sent with the official `openai` client, non-streaming, `temperature: 0`, with the
probe's `tools`, once per `--modes` tool_choice (default `auto` and `required`), four requests at a time (both
servers run four sequences: `--max-batch 4`, `--parallel 4`).

Per server and mode it prints:
- requests and errors (a non-200 answer or a client exception: a call the server could not parse comes back as an
  HTTP 500 from llama-server);
- calls made, and the valid-call rate: calls whose `arguments` are JSON that validates (jsonschema) against the
  called function's parameters, with a name the request offered;
- AST accuracy as `corral eval` scores it (`corral.eval.scoring.calls_match`: names and every argument against
  the accepted values, parallel calls in any order, no call where none is expected), over all probes, over the
  probes that need a call, and over the no-call probes.

Run from the repository root with corral installed: `bench/build_llama_server.sh` once, then
`python bench/tool_calls.py [--threads 2] [--modes auto,required] [--json out.json]`. Needs jsonschema.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import DEFAULT_LLAMA_SERVER, Server, free_port  # noqa: E402

from corral.eval.scoring import calls_match  # noqa: E402
from corral.eval.task import load_task  # noqa: E402


def command(name: str, gguf: Path, port: int, threads: int, llama_server: Path, template: Path | None) -> list[str]:
    if name == "llama-server":
        extra = ["--chat-template-file", str(template)] if template else []
        return [str(llama_server), "-m", str(gguf), "-t", str(threads), "--port", str(port), "-c", "8192",
                "--parallel", "4", "--host", "127.0.0.1", "--jinja", *extra]
    extra = ["--chat-template", str(template)] if template else []
    return [sys.executable, "-m", "corral", "serve", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads), "--max-batch", "4", *extra]


def probe(client: OpenAI, model: str, ex, mode: str, max_tokens: int) -> dict:
    tools = ex.fields["tools"]
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    rec = {"example": ex.where, "category": ex.fields.get("category"), "mode": mode, "error": None, "calls": [],
           "valid": 0, "invalid": 0}
    t0 = time.perf_counter()
    try:
        r = client.chat.completions.create(model=model, messages=ex.messages, tools=tools, tool_choice=mode,
                                           temperature=0, max_tokens=max_tokens)
        msg = r.choices[0].message
        rec["content"], rec["finish_reason"] = msg.content, r.choices[0].finish_reason
        for c in msg.tool_calls or []:
            try:
                args = json.loads(c.function.arguments)
                jsonschema.validate(args, schemas[c.function.name])
                rec["valid"] += 1
            except (json.JSONDecodeError, KeyError, jsonschema.ValidationError, TypeError):
                rec["invalid"] += 1
                args = None
            rec["calls"].append({"name": c.function.name, "arguments": args, "raw": c.function.arguments})
    except Exception as e:  # any failure the client sees (HTTP 500 on an unparsable call, timeouts) is an error
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
    rec["seconds"] = time.perf_counter() - t0
    made = [(c["name"], c["arguments"]) for c in rec["calls"] if c["arguments"] is not None]
    rec["ok"] = rec["error"] is None and rec["invalid"] == 0 and calls_match(made, ex.fields["expected"])
    return rec


def summarize(recs: list[dict]) -> dict:
    calls = sum(r["valid"] + r["invalid"] for r in recs)
    need = [r for r in recs if r["expected"]]
    none = [r for r in recs if not r["expected"]]
    return {"requests": len(recs), "errors": sum(r["error"] is not None for r in recs), "calls": calls,
            "valid_calls": sum(r["valid"] for r in recs),
            "valid_rate": sum(r["valid"] for r in recs) / calls if calls else None,
            "ast_acc": sum(r["ok"] for r in recs) / len(recs),
            "call_acc": sum(r["ok"] for r in need) / len(need) if need else None,
            "no_call_acc": sum(r["ok"] for r in none) / len(none) if none else None}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    from corral.registry import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: corral's default model)")
    ap.add_argument("--task", default="tool_calls", help="a tool_calls task: bundled name or JSONL file")
    ap.add_argument("--modes", default="auto,required")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER)
    ap.add_argument("--chat-template", type=Path, default=None,
                    help="a Jinja chat template both servers use instead of the model's (e.g. "
                         "bench/templates/chatml_tools.jinja: SmolLM2's ChatML with Hermes-style tool calls)")
    ap.add_argument("--only", choices=("corral", "llama-server"), default=None)
    ap.add_argument("--json", type=Path, default=None, help="write every record here")
    args = ap.parse_args(argv)
    gguf = args.model or default_model_path()
    task = load_task(args.task)
    modes = [m for m in args.modes.split(",") if m]
    names = [args.only] if args.only else ["corral", "llama-server"]
    if "llama-server" in names and not args.llama_server.exists():
        print(f"no {args.llama_server}: run bench/build_llama_server.sh first (or --only corral)", file=sys.stderr)
        return 2
    out: dict[str, dict] = {}
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as logs:
        for name in names:
            port = free_port()
            cmd = command(name, gguf, port, args.threads, args.llama_server, args.chat_template)
            srv = Server(name, cmd, port, Path(logs))
            try:
                try:
                    asyncio.run(srv.wait_ready(300))
                except RuntimeError as e:  # one server that cannot start leaves the other's figures standing
                    print(f"{name}: {e}", file=sys.stderr)
                    continue
                client = OpenAI(base_url=srv.base_url + "/v1", api_key="none", max_retries=0, timeout=600)
                model = client.models.list().data[0].id
                for mode in modes:
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(4) as pool:  # both servers run 4 sequences at once
                        recs = list(pool.map(lambda ex, mode=mode, client=client, model=model: {
                            **probe(client, model, ex, mode, args.max_tokens), "expected": ex.fields["expected"]},
                            task.examples))
                    out[f"{name} {mode}"] = {**summarize(recs), "seconds": round(time.perf_counter() - t0, 1)}
                    records += [{"server": name, **r} for r in recs]
                    print(f"{name:12s} {mode:8s} done in {out[f'{name} {mode}']['seconds']} s", flush=True)
            finally:
                srv.stop()
    template = args.chat_template.name if args.chat_template else "the model's"
    print(f"\n{task.name}: {len(task.examples)} probes, {gguf.name}, template {template}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'server':12s} {'mode':8s} {'errors':>6s} {'calls':>5s} {'valid':>7s} {'AST acc':>8s} {'calls ok':>8s} "
          f"{'no-call ok':>10s}")
    for key, s in out.items():
        name, mode = key.split(" ")
        print(f"{name:12s} {mode:8s} {s['errors']:6d} {s['calls']:5d} {pct(s['valid_rate']):>7s} "
              f"{pct(s['ast_acc']):>8s} {pct(s['call_acc']):>8s} {pct(s['no_call_acc']):>10s}")
    if args.json:
        args.json.write_text(json.dumps({"summary": out, "records": records}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
