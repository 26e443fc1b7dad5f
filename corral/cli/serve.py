"""`corral serve` (the OpenAI-compatible server and its chat page) and `corral batch` (an OpenAI Batch API file,
offline). Both run the continuous-batching engine on the main thread beside their own work (`Engine.run_beside`).

Python: `serve(ServeConfig(model="default", port=8001))`, `batch(BatchConfig(input="in.jsonl", output="out.jsonl"))`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from corral.cli.common import build_service, describe_shields
from corral.errors import InvalidArgumentError
from corral.options import (
    EngineOptions,
    HardwareOptions,
    KeyOptions,
    ModelOptions,
    ShieldOptions,
    SpeedOptions,
    at_least,
    opt,
)


@dataclass
class ServeConfig(HardwareOptions, KeyOptions, ShieldOptions, EngineOptions, SpeedOptions, ModelOptions):
    max_seq_len: int = 2048
    host: str = opt("127.0.0.1", "bind address (others than loopback need --api-key or --allow-no-auth)")
    port: int = opt(8000, "port")
    allow_no_auth: bool = opt(False, "serve on a non-loopback address without API keys")
    served_model_name: str | None = opt(None, "the model id clients use (default: the file name)")
    max_body_bytes: int = opt(8 << 20, "request body limit in bytes")
    log_level: str = opt("warning", "uvicorn log level")


@dataclass
class BatchConfig(EngineOptions, SpeedOptions, ModelOptions):
    max_seq_len: int = 2048
    input: str = opt("", "batch input file (JSONL)", positional=True, metavar="INPUT")
    output: str = opt("", "batch output file (JSONL); resumed if it exists", positional=True, metavar="OUTPUT")


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(cfg: ServeConfig) -> int:
    """Serve until Ctrl-C or SIGTERM."""
    import os
    import signal

    import uvicorn

    from corral.model.llama import Q8
    from corral.serve.app import create_app
    from corral.serve.metrics import Metrics

    keys = cfg.api_key + [k.strip() for k in os.environ.get("CORRAL_API_KEYS", "").split(",") if k.strip()]
    if not keys and not cfg.allow_no_auth and not _loopback(cfg.host):
        raise InvalidArgumentError(f"--host {cfg.host} would expose the API without keys; pass --api-key KEY "
                                   "(or CORRAL_API_KEYS), or --allow-no-auth if the network is yours alone")
    cfg.check()
    at_least(("--port", cfg.port, 1))
    cfg.shields()
    from corral.cost import Hardware

    watts = Hardware.load(cfg.hardware).watts  # the energy counter's fallback where RAPL/NVML cannot be read
    lm, engine, service = build_service(cfg, hooks=lambda eng, model_id: Metrics(eng, model_id, watts))
    model_id, seq, batch = service.model_id, engine.max_seq_len, engine.max_batch
    app = create_app(service, service.hooks, keys, cfg.max_body_bytes)
    kv_bytes = engine.cache.bytes_per_token() * engine.kv_tokens_total
    kv_dtype = "q8_0" if engine.cache.k[0].dtype == Q8 else str(engine.cache.k[0].dtype).removeprefix("torch.")
    shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    url, key_arg = f"http://{shown}:{cfg.port}", '"<your key>"' if keys else '"none"'
    spec = f"; drafts by {cfg.draft_model} (k={cfg.draft_tokens})" if engine.drafter is not None else ""
    if sh := describe_shields(service):
        spec += (f"; shields: {sh['shields'].replace(',', ', ')}"
                 + (f" by {sh['guard']} ({sh['guard_mode']})" if sh["guard"] else "")
                 + f", blocks get {'a refusal' if sh['shield_action'] == 'refuse' else 'an error'}")
    print(f"corral serve — {model_id} on {lm.model.device}; KV cache of up to {batch} slots x {seq} tokens "
          f"({kv_bytes / 2**30:.2f} GiB {kv_dtype}, "
          f"{'allocated as used' if engine.grows else 'allocated now'})"
          f"{spec}{'; API keys required' if keys else ''}\n"
          f"  chat page: {url}/\n  API:       {url}/v1   (docs {url}/docs, metrics {url}/metrics)\n\n"
          f"  from openai import OpenAI\n"
          f"  client = OpenAI(base_url=\"{url}/v1\", api_key={key_arg})\n"
          f"  r = client.chat.completions.create(model=\"{model_id}\", "
          f"messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}])\n"
          f"  print(r.choices[0].message.content)\n", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
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
        raise InvalidArgumentError(f"could not serve on {cfg.host}:{cfg.port} (in use, or not an address of "
                                   "this machine); pick another --host/--port")
    return 0


def batch(cfg: BatchConfig) -> int:
    """Answer every line of the input file; exit 0 when all succeeded, 1 when some failed."""
    from rich.console import Console

    from corral.batch import check_paths, run_batch

    cfg.check()
    check_paths(cfg.input, cfg.output)  # before the model loads
    _, engine, service = build_service(cfg)
    result = []
    # The engine keeps the main thread (see Engine.run_beside). Ctrl-C exits at once: every finished line is
    # already in OUTPUT (one write each), and a rerun resumes.
    engine.run_beside(lambda: result.append(run_batch(service, cfg.input, cfg.output, console=Console(stderr=True))))
    print(result[0], file=sys.stderr)
    return 0 if result[0].failed == 0 else 1


BATCH_DESCRIPTION = """\
Run every request of INPUT through the continuous-batching engine and append the results to OUTPUT.

INPUT lines: {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
  url: /v1/chat/completions, /v1/completions or /v1/embeddings. The body's "model" may be
  left out or name anything: the loaded MODEL answers every line. "stream": true is refused.
OUTPUT lines: OpenAI's batch output format, in completion order (match them by custom_id).
  An existing OUTPUT is resumed: lines it already answers are skipped.
Exit code: 0 when every line succeeded, 1 when some failed (their errors are in OUTPUT)."""

VERBS = {
    "serve": (ServeConfig, serve, "serve a model behind an OpenAI-compatible API and a web chat page", ()),
    "batch": (BatchConfig, batch, "answer an OpenAI Batch API input file (JSONL) offline; resumable",
              ("model", "input", "output"), BATCH_DESCRIPTION),
}
