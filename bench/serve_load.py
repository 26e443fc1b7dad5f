"""Serving under load: `corral serve` against llama.cpp's C++ `llama-server`, same GGUF and threads, in one run.

What it measures, for each server and each concurrency level (`--clients`, default 1, 4, 16):

- aggregate output tokens/s: all output tokens of the level divided by the level's wall time, from the moment the
  clients start together to the end of the last stream (so the tail, when fewer streams are left, counts too);
- TTFT p50 / p99: time from sending a request to the first SSE chunk that carries non-empty `delta.content`;
- requests, errors, empty responses. An error is a non-200 status, an SSE `error` event or a chunk with an `error`
  field, a stream that ends without `data: [DONE]`, or any client exception (timeouts included). An empty response
  is a 200 stream without errors whose content is empty.

How: each server runs as a subprocess on a free local port, one after the other (never both at once), on the same
GGUF (corral's default model unless `--model`), the same `--threads` and the same number of parallel sequences:
`llama-server -m GGUF -t T --port P -c 16384 --parallel 16 --host 127.0.0.1` and
`python -m corral serve GGUF --host 127.0.0.1 --port P --threads T --max-batch 16`. The script polls GET /health until
it answers 200, reads the model id from GET /v1/models, sends one short untimed warm-up request, then runs the levels
one after another. A level is a fixed amount of work: each of N concurrent clients sends `--requests-per-client`
streaming requests back to back (`POST /v1/chat/completions`, `stream: true`, `temperature: 0`,
`max_tokens: --max-tokens`, `stream_options.include_usage: true`), each with its own short user prompt from an
original list of 32, so no prompt repeats within a level of up to 32 requests (no prefix-cache help for either
server). Both servers get the same prompts in the same order.
Output tokens come from the final usage chunk (`usage.completion_tokens`) when the server sends one, else from the
number of chunks with content. Greedy outputs may stop at end-of-sequence before `max_tokens`, and the two programs
may stop at different points; the mean tokens per request is printed so that this is visible.

Each level runs `--repeats` times (default 3). Speed and TTFT come from the run with the best aggregate, as in
bench/decode_cpu.py: on a shared machine interference only slows a run down (one llama-server level here fell from
~190 to ~3 tok/s for minutes, for no reason of its own). Requests, errors and empty responses are summed over all runs,
so one failure anywhere shows. Every run, with its per-request records and the 1-minute load average before it, goes
to `--json`.

Ratios are corral / llama-server: above 1 is better for corral on throughput, worse on TTFT. The targets (issue 17):
corral >= 1x llama-server's aggregate at 1 client, >= 2x at 4, >= 3x at 16, with 0 errors and 0 empty responses.
Each server's resident memory is read from /proc before its first request, at its peak, and idle after the load.

Run from the repository root with corral installed: `bench/build_llama_server.sh` once (builds
build/llama-server/llama-server), then `python bench/serve_load.py [--threads 2] [--clients 1,4,16] [--json out.json]`.
Needs httpx. Figures on a 2-core machine are noisy: quote ratios, not rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LLAMA_SERVER = ROOT / "build" / "llama-server" / "llama-server"
SERVERS = ("corral", "llama-server")
TARGETS = {1: 1.0, 4: 2.0, 16: 3.0}  # corral / llama-server aggregate by clients (issue 17)
LLAMA_CTX = 16384  # shared by the --parallel slots of llama-server: 1024 tokens each at 16

# Short, original user prompts; request k of client c uses PROMPTS[(c + k * clients) % len(PROMPTS)], so with 16
# clients x 2 requests no prompt repeats within a level (no prefix-cache help for either server).
PROMPTS = [
    "Describe a quiet morning in a fishing village.",
    "Give three tips for keeping a sourdough starter alive.",
    "Why do cats like to sit in cardboard boxes?",
    "Write a short poem about a lighthouse in winter.",
    "Explain what a compass does, for a ten-year-old.",
    "List some things to pack for a weekend of hiking.",
    "What makes a good cup of tea?",
    "Tell a short story about a lost umbrella.",
    "How do bees find their way back to the hive?",
    "Suggest a name for a small bakery and explain it.",
    "What is the difference between weather and climate?",
    "Describe the sound of rain on a tin roof.",
    "Give advice to someone learning to ride a bicycle.",
    "Why is the sky blue during the day?",
    "Write a friendly note inviting a neighbour to dinner.",
    "Explain how a bicycle gear works.",
    "What should a beginner know about growing tomatoes?",
    "Describe a busy train station at rush hour.",
    "How can I make my handwriting neater?",
    "Tell me a fact about octopuses and why it matters.",
    "Plan a simple picnic for four people.",
    "What are the rules of rock, paper, scissors?",
    "Describe the smell of a library full of old books.",
    "How do I fold a paper boat?",
    "Write two sentences about a fox crossing a snowy field.",
    "Why do leaves change colour in autumn?",
    "Give a recipe idea that uses leftover rice.",
    "Explain why ice floats on water.",
    "Describe a market stall selling spices.",
    "What can I do on a rainy afternoon at home?",
    "Tell a very short fable about a patient turtle.",
    "How does a kite stay up in the air?",
]


# An original system prompt (a made-up handbook), repeated and cut to --system-tokens tokens: every request of a
# shared-prefix run starts with it, as clients behind one assistant configuration do.
HANDBOOK = (
    "You are the help desk assistant of the Harbour Street Community Workshop, a volunteer-run space with a wood "
    "shop, a sewing room, a bicycle repair corner and a small electronics bench. Members pay a yearly fee and book "
    "tools through the front desk. The wood shop opens at nine and closes at eight; the table saw and the planer "
    "may only be used after the safety induction, which runs on the first Saturday of every month and takes two "
    "hours. Children under fourteen may visit with an adult but may not use powered tools. Offcuts in the green bin "
    "are free to take; the blue bin is for the stove. The sewing room has four machines, one overlocker and a "
    "cutting table; thread and needles are shared, fabric is not. The bicycle corner lends stands, pumps and hand "
    "tools, and a mechanic volunteers on Tuesday evenings. The electronics bench has two soldering stations with "
    "fume extraction; lead-free solder is supplied. Lost property is kept for one month. Answer questions about "
    "the workshop politely and briefly, and when you do not know, say so and suggest asking at the front desk. "
)


def system_prompt(n_tokens: int) -> str:
    """HANDBOOK repeated and cut to about `n_tokens` tokens of corral's tokenizer for the default model."""
    from corral.registry import default_model_path
    from corral.tokenizer import load_tokenizer

    tok = load_tokenizer(default_model_path())
    text = HANDBOOK
    while len(tok.encode(text)) < n_tokens:
        text += HANDBOOK
    return tok.decode(tok.encode(text)[:n_tokens])


@dataclass
class RequestResult:
    client: int
    index: int
    status: int | None = None
    ttft_s: float | None = None  # to the first chunk with non-empty content
    total_s: float = 0.0
    content_chunks: int = 0
    usage_tokens: int | None = None  # usage.completion_tokens from the final chunk, when sent
    chars: int = 0
    finish_reason: str | None = None
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.content_chunks

    @property
    def empty(self) -> bool:
        return self.error is None and self.chars == 0


@dataclass
class LevelResult:
    clients: int
    requests: int
    errors: int
    empty: int
    output_tokens: int
    wall_s: float
    aggregate_tok_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tokens_per_request: float
    usage_reported: int  # requests whose stream carried a usage chunk
    error_samples: list[str] = field(default_factory=list)
    kv_blocks: int | None = None  # corral: KV blocks allocated right after the level (64 positions of one slot)
    per_request: list[dict] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (as numpy's default), `q` in [0, 100]; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(name: str, gguf: Path, port: int, threads: int, parallel: int, llama_server: Path,
                   corral_args: tuple[str, ...] = (), ctx: int = LLAMA_CTX) -> list[str]:
    if name == "llama-server":
        # prompt caching is on by default; --cache-reuse also reuses a slot's cached chunks after a KV shift
        return [str(llama_server), "-m", str(gguf), "-t", str(threads), "--port", str(port), "-c", str(ctx),
                "--parallel", str(parallel), "--host", "127.0.0.1", "--cache-reuse", "256"]
    return [sys.executable, "-m", "corral", "serve", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads), "--max-batch", str(parallel), *corral_args]


class Server:
    """One server subprocess, its log file, and a way to stop it (and any children) cleanly."""

    def __init__(self, name: str, cmd: list[str], port: int, log_dir: Path):
        self.name, self.cmd, self.port = name, cmd, port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        # Own session, so stop() can signal the whole process group the server may have spawned.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def rss_mib(self, field: str = "VmRSS") -> float | None:
        """The server process's resident memory now (VmRSS) or at its peak (VmHWM), MiB; None off Linux."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    async def wait_ready(self, timeout_s: float) -> float:
        """Poll GET /health until 200; returns seconds waited. Raises RuntimeError on exit or timeout."""
        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before it was ready; "
                                       f"log {self.log_path}:\n{self.log_tail()}")
                try:
                    r = await client.get(self.base_url + "/health")
                    if r.status_code == 200:
                        return time.perf_counter() - t0
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - t0 > timeout_s:
                    raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s; log {self.log_path}:\n"
                                       f"{self.log_tail()}")
                await asyncio.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()


async def kv_blocks(server: Server) -> int | None:
    """corral's KV blocks allocated now (64 positions of one slot), from /metrics."""
    async with httpx.AsyncClient(timeout=10) as http:
        for line in (await http.get(server.base_url + "/metrics")).text.splitlines():
            if line.startswith("corral_kv_cache_blocks{"):
                return int(float(line.split()[-1]))
    return None


async def model_id(client: httpx.AsyncClient, base_url: str) -> str:
    """The first model id from GET /v1/models; "default" when the route fails."""
    try:
        r = await client.get(base_url + "/v1/models")
        r.raise_for_status()
        return r.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return "default"


async def stream_one(client: httpx.AsyncClient, url: str, body: dict, res: RequestResult) -> RequestResult:
    """Send one streaming chat completion and fill `res` from its SSE events."""
    t0 = time.perf_counter()
    done = False
    try:
        async with client.stream("POST", url, json=body) as r:
            res.status = r.status_code
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                res.error = f"HTTP {r.status_code}: {text[:200]}"
                return res
            async for line in r.aiter_lines():
                line = line.strip()
                if line.startswith("error:"):
                    res.error = f"SSE error event: {line[6:].strip()[:200]}"
                    break
                if not line.startswith("data:"):
                    continue  # blank separators, comments, `event:` lines
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = f"error chunk: {json.dumps(chunk['error'])[:200]}"
                    break
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    res.usage_tokens = int(usage["completion_tokens"])
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if res.ttft_s is None:
                            res.ttft_s = time.perf_counter() - t0
                        res.content_chunks += 1
                        res.chars += len(content)
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
        if res.error is None and not done:
            res.error = "stream ended without data: [DONE]"
    except Exception as e:  # every client failure is an error, with its reason
        res.error = f"{type(e).__name__}: {e}"[:300]
    finally:
        res.total_s = time.perf_counter() - t0
    return res


def request_body(model: str, prompt: str, max_tokens: int, system: str = "") -> dict:
    return {
        "model": model,
        "messages": ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def run_level(base_url: str, model: str, clients: int, requests_per_client: int, max_tokens: int,
                    timeout_s: float, system: str = "") -> LevelResult:
    """`clients` concurrent clients, each sending `requests_per_client` streaming requests one after another."""
    url = base_url + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as http:

        async def client_loop(c: int) -> list[RequestResult]:
            out = []
            for k in range(requests_per_client):
                prompt = PROMPTS[(c + k * clients) % len(PROMPTS)]
                out.append(await stream_one(http, url, request_body(model, prompt, max_tokens, system),
                                            RequestResult(c, k)))
            return out

        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop(c) for c in range(clients)))
        wall = time.perf_counter() - t0

    results = [r for rs in per_client for r in rs]
    ok = [r for r in results if r.error is None]
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    errors = [r.error for r in results if r.error is not None]
    return LevelResult(
        clients=clients,
        requests=len(results),
        errors=len(errors),
        empty=sum(r.empty for r in results),
        output_tokens=tokens,
        wall_s=wall,
        aggregate_tok_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        tokens_per_request=tokens / len(ok) if ok else 0.0,
        usage_reported=sum(r.usage_tokens is not None for r in ok),
        error_samples=sorted(set(errors))[:5],
        per_request=[asdict(r) | {"tokens": r.tokens, "empty": r.empty} for r in results],
    )


async def bench_server(name: str, args: argparse.Namespace, gguf: Path, log_dir: Path) -> dict:
    port = free_port()
    # a shared-prefix run needs room for the system prompt in each of llama-server's slots
    ctx = max(LLAMA_CTX, args.parallel * 2048) if args.system_tokens else LLAMA_CTX
    cmd = server_command(name, gguf, port, args.threads, args.parallel, args.llama_server,
                         ("--compile",) if args.compile else (), ctx)
    print(f"\n[{name}] {' '.join(cmd)}", flush=True)
    server = Server(name, cmd, port, log_dir)
    try:
        ready_s = await server.wait_ready(args.startup_timeout)
        rss_ready = server.rss_mib()  # before the first request
        async with httpx.AsyncClient(timeout=httpx.Timeout(args.request_timeout)) as http:
            model = await model_id(http, server.base_url)
            warm = await stream_one(http, server.base_url + "/v1/chat/completions",
                                    request_body(model, PROMPTS[0], 8), RequestResult(-1, 0))
        print(f"[{name}] ready in {ready_s:.1f} s; model id {model!r}; warm-up: "
              f"{'ok' if warm.error is None else 'ERROR ' + warm.error}", flush=True)
        levels = []
        for n in args.clients:
            runs = []
            for i in range(args.repeats):
                load = os.getloadavg()[0]
                lv = await run_level(server.base_url, model, n, args.requests_per_client, args.max_tokens,
                                     args.request_timeout, args.system)
                lv.kv_blocks = await kv_blocks(server) if name == "corral" else None
                print(f"[{name}] {n:>2} clients, run {i + 1}/{args.repeats}: {lv.aggregate_tok_s:7.1f} tok/s "
                      f"aggregate, TTFT p50 {fmt_ms(lv.ttft_p50_s)} ms, {lv.errors} errors, {lv.empty} empty "
                      f"(load average before: {load:.2f})", flush=True)
                runs.append(asdict(lv) | {"loadavg_1m_before": load})
            levels.append(summarize(runs) | {"rss_after_mib": server.rss_mib()})
        await asyncio.sleep(args.idle_wait)  # corral gives back idle KV after a second
        return {"command": cmd, "log": str(server.log_path), "ready_s": ready_s, "model_id": model,
                "warmup_error": warm.error, "levels": levels, "rss_ready_mib": rss_ready,
                "rss_peak_mib": server.rss_mib("VmHWM"), "rss_idle_after_mib": server.rss_mib()}
    finally:
        server.stop()


def summarize(runs: list[dict]) -> dict:
    """One level's figures: speed and TTFT from the run with the best aggregate; counts summed over all runs.

    Interference on a shared machine only slows a run down, so the best run is the steadiest estimate of what the
    server can do; an error or empty response in any run counts.
    """
    best = max(range(len(runs)), key=lambda i: runs[i]["aggregate_tok_s"])
    out = {k: v for k, v in runs[best].items() if k not in ("per_request", "error_samples", "loadavg_1m_before")}
    out |= {
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "empty": sum(r["empty"] for r in runs),
        "error_samples": sorted({e for r in runs for e in r["error_samples"]})[:5],
        "best_run": best,
        "aggregate_tok_s_all_runs": [r["aggregate_tok_s"] for r in runs],
        "runs": runs,
    }
    return out


def fmt_ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.0f}"


def print_report(results: dict[str, dict], clients: list[int]) -> dict[int, dict]:
    header = (f"{'server':<13}{'clients':>8}{'tok/s':>9}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}{'requests':>10}"
              f"{'errors':>8}{'empty':>7}{'tok/req':>9}{'wall s':>8}{'KV blocks':>11}")
    print("\n" + header)
    print("-" * len(header))
    for name, res in results.items():
        if "error" in res:
            print(f"{name:<13}  failed: {res['error'].splitlines()[0]}")
            continue
        print(f"{name:<13}  RSS (MiB): {res['rss_ready_mib'] or 0:.0f} before the first request, "
              f"{res['rss_peak_mib'] or 0:.0f} peak, {res['rss_idle_after_mib'] or 0:.0f} idle after the load")
        for lv in res["levels"]:
            print(f"{name:<13}{lv['clients']:>8}{lv['aggregate_tok_s']:>9.1f}{fmt_ms(lv['ttft_p50_s']):>13}"
                  f"{fmt_ms(lv['ttft_p99_s']):>13}{lv['requests']:>10}{lv['errors']:>8}{lv['empty']:>7}"
                  f"{lv['tokens_per_request']:>9.1f}{lv['wall_s']:>8.1f}"
                  f"{'-' if lv.get('kv_blocks') is None else lv['kv_blocks']:>11}")
            for e in lv["error_samples"]:
                print(f"{'':<13}  error: {e}")

    ratios: dict[int, dict] = {}
    a, b = results.get("corral", {}), results.get("llama-server", {})
    if "levels" not in a or "levels" not in b:
        failed = ", ".join(n for n in SERVERS if n in results and "levels" not in results[n]) or "-"
        print(f"\ncorral/llama-server aggregate = n/a [failed: {failed}]")
        return ratios
    by_n = {lv["clients"]: lv for lv in b["levels"]}
    print("\ncorral / llama-server (throughput: above 1 favours corral; TTFT: below 1 favours corral)")
    for lv in a["levels"]:
        peer = by_n.get(lv["clients"])
        if peer is None:
            continue
        r = {"aggregate": lv["aggregate_tok_s"] / peer["aggregate_tok_s"] if peer["aggregate_tok_s"] else None}
        if lv["ttft_p50_s"] and peer["ttft_p50_s"]:
            r["ttft_p50"] = lv["ttft_p50_s"] / peer["ttft_p50_s"]
        ratios[lv["clients"]] = r
        agg = "-" if r["aggregate"] is None else f"{r['aggregate']:.2f}"
        ttft = f"{r['ttft_p50']:.2f}" if "ttft_p50" in r else "-"
        print(f"  {lv['clients']:>2} clients: aggregate {agg}, TTFT p50 {ttft}")
    for n, target in TARGETS.items():
        if n in ratios and ratios[n]["aggregate"] is not None:
            lv = next(lv for lv in a["levels"] if lv["clients"] == n)
            met = ratios[n]["aggregate"] >= target and lv["errors"] == 0 and lv["empty"] == 0
            print(f"{n:>2} clients: corral/llama-server aggregate = {ratios[n]['aggregate']:.2f} (target >= {target}) "
                  f"[corral errors {lv['errors']}, empty {lv['empty']}; target {'met' if met else 'not met'}]")
    return ratios


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="GGUF file both servers load (default: corral's default)")
    p.add_argument("--threads", type=int, default=2, help="threads for each server (default 2)")
    p.add_argument("--clients", default="1,4,16", help="concurrency levels, comma-separated (default 1,4,16)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of each request (default 128)")
    p.add_argument("--requests-per-client", type=int, default=2,
                   help="streaming requests each client sends back to back, per level (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each level; speed and TTFT from the best, errors summed over all (default 3)")
    p.add_argument("--parallel", type=int, default=16,
                   help="parallel sequences: llama-server --parallel, corral --max-batch (default 16)")
    p.add_argument("--only", choices=SERVERS, default=None, help="run one server only")
    p.add_argument("--compile", action="store_true", help="run corral serve --compile (compiles at start)")
    p.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER,
                   help=f"llama-server binary (default {DEFAULT_LLAMA_SERVER.relative_to(ROOT)})")
    p.add_argument("--startup-timeout", type=float, default=300, help="seconds to wait for GET /health (default 300)")
    p.add_argument("--request-timeout", type=float, default=600, help="per-request timeout, seconds (default 600)")
    p.add_argument("--system-tokens", type=int, default=0,
                   help="shared-prefix run: every request starts with the same system prompt of about this many "
                        "tokens (default 0: none); llama-server gets -c parallel x 2048 for room")
    p.add_argument("--idle-wait", type=float, default=3.0,
                   help="seconds to wait after the last level before reading the idle RSS (default 3)")
    p.add_argument("--json", type=Path, default=None, help="write every figure and per-request record here")
    args = p.parse_args(argv)
    args.clients = [int(x) for x in args.clients.split(",") if x.strip()]
    if min(args.clients, default=0) < 1 or min(args.requests_per_client, args.max_tokens, args.repeats) < 1:
        p.error("--clients, --requests-per-client, --max-tokens and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [args.only] if args.only else list(SERVERS)
    if "llama-server" in names and not args.llama_server.exists():
        print(f"error: {args.llama_server} not found; build it with `bench/build_llama_server.sh` "
              f"(about 6 minutes on 2 cores) or pass --llama-server PATH", file=sys.stderr)
        return 2
    if args.model is None:
        from corral.registry import default_model_path

        args.model = default_model_path()
    gguf = args.model.resolve()
    args.system = system_prompt(args.system_tokens) if args.system_tokens else ""
    print(f"model {gguf}\nthreads {args.threads}, parallel {args.parallel}, clients {args.clients}, "
          f"{args.requests_per_client} requests per client per level, best of {args.repeats} runs, "
          f"max_tokens {args.max_tokens}, temperature 0")

    log_dir = Path(tempfile.mkdtemp(prefix="serve_load_"))
    results: dict[str, dict] = {}
    for name in names:
        try:
            results[name] = asyncio.run(bench_server(name, args, gguf, log_dir))
        except RuntimeError as e:
            print(f"[{name}] {e}", file=sys.stderr)
            results[name] = {"error": str(e)}
    ratios = print_report(results, args.clients)
    print(f"server logs: {log_dir}")

    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "prompts": PROMPTS, "servers": results,
                                         "ratios": {str(k): v for k, v in ratios.items()}}, indent=2))
        print(f"wrote {args.json}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
