"""The OpenAI-compatible server, driven over real HTTP with the `openai` client, httpx and raw SSE (fast tier).

The app runs in-process under uvicorn (a background thread) on a tiny random-weight model that shares the default
model's tokenizer and chat template. Errors, limits, disconnects and mid-stream failures do not depend on what the
model says, so they are checked here, with the engine slowed down or broken by monkeypatching. What the default model
answers, and `corral serve` itself, are in test_serve_live.py; the fuzzing is in test_serve_fuzz.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import torch
import uvicorn
from openai import OpenAI

from corral.config import ModelConfig
from corral.engine.engine import Engine
from corral.model.llama import LlamaForCausalLM
from corral.serve.app import create_app
from corral.serve.metrics import Metrics
from corral.serve.service import Service

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=2048)
USER = [{"role": "user", "content": "hi"}]
METRIC_NAMES = ("corral_time_to_first_token_seconds", "corral_inter_token_latency_seconds",
                "corral_num_requests_waiting", "corral_num_requests_running", "corral_kv_cache_usage_ratio",
                "corral_prompt_tokens_total", "corral_generation_tokens_total", "corral_requests_total",
                "corral_kv_cache_blocks", "corral_kv_cache_bytes", "corral_prefix_cache_queries_total",
                "corral_prefix_cache_hits_total", "corral_energy_joules_total")


# --- helpers ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(url: str, key: str = "none") -> OpenAI:
    """An OpenAI client that never retries (a retried 503 would hide the first answer)."""
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    """The status and OpenAI's error body `{"error": {"message", "type", "param", "code"}}`; returns the error."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def sse_events(lines: Iterator[str]) -> list[str]:
    """The `data:` payloads of an SSE stream, in order."""
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def running(url: str) -> int:
    return httpx.get(url + "/health", timeout=10).json()["running"]


def metric(url: str, name: str) -> float:
    """The value of one unlabelled-but-for-model sample of /metrics (summed over label sets)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    vals = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    assert vals, f"{name} missing from /metrics"
    return sum(vals)


# --- the in-process server --------------------------------------------------------------------------------------


class InProcessServer:
    """`create_app` under uvicorn in a background thread, on its own engine over a shared model."""

    def __init__(self, model: LlamaForCausalLM, tok, *, max_batch: int = 4, max_seq_len: int = 512,
                 max_queue: int = 64, api_keys: list[str] | None = None, max_body_bytes: int = 8 << 20,
                 shields=None):
        """`shields(engine)`: the server's `Shields` (built on its engine, whose thread runs the guard)."""
        self.engine = Engine(model, stop_ids=tok.stop_ids, max_batch=max_batch, max_seq_len=max_seq_len,
                             max_queue=max_queue).start()
        metrics = Metrics(self.engine, "tiny")
        self.service = Service(self.engine, tok, "tiny", ("default",), hooks=metrics,
                               shields=shields(self.engine) if shields else None, guard_id="tiny-guard")
        self.app = create_app(self.service, metrics, api_keys, max_body_bytes)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "the in-process server to start")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.shutdown()

    def slow_down(self, monkeypatch, seconds: float) -> None:
        """Make every decode step take at least `seconds`, so a request is still running when the test acts."""
        decode = self.engine._decode

        def slow(rows):
            time.sleep(seconds)
            decode(rows)

        monkeypatch.setattr(self.engine, "_decode", slow)


@contextlib.contextmanager
def in_process(model, tok, **kw) -> Iterator[InProcessServer]:
    srv = InProcessServer(model, tok, **kw)
    try:
        yield srv
    finally:
        srv.close()


def tiny_model(vocab_size: int) -> LlamaForCausalLM:
    """A 2-layer random-weight Llama over the default tokenizer's vocabulary (seeded, so runs repeat)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelConfig(vocab_size=vocab_size, **TINY)).eval()
    with torch.no_grad():  # the constructor leaves some weights uninitialised (the loader assigns them all)
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def tiny(tok) -> LlamaForCausalLM:
    return tiny_model(tok.vocab_size)


@pytest.fixture(scope="module")
def srv(tiny, tok) -> Iterator[InProcessServer]:
    with in_process(tiny, tok, max_batch=4, max_seq_len=512) as s:
        yield s


# --- fast: routes and shapes ------------------------------------------------------------------------------------


def test_models_health_tokenize_roundtrip(srv):
    c = client(srv.url)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    assert c.models.retrieve("default").id == "tiny"  # an alias answers with the served id
    assert httpx.get(srv.url + "/health").json() == {"status": "ok", "model": "tiny", "running": 0, "waiting": 0}
    text = "Hello, world! Ünïcödé and 漢字."
    tk = httpx.post(srv.url + "/tokenize", json={"prompt": text}).json()
    assert tk["count"] == len(tk["tokens"]) > 0 and tk["max_model_len"] == 512
    assert httpx.post(srv.url + "/detokenize", json={"tokens": tk["tokens"]}).json() == {"prompt": text}


def test_embeddings_are_unit_vectors(srv):
    e = client(srv.url).embeddings.create(model="tiny", input=["one", "two words", "and three words"])
    v = np.array([d.embedding for d in e.data])
    assert v.shape == (3, 64) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    one = client(srv.url).embeddings.create(model="tiny", input="one", dimensions=1, encoding_format="float")
    assert abs(one.data[0].embedding[0]) == pytest.approx(1)


def test_usage_counts_match_tokenize_and_logprobs(srv):
    c = client(srv.url)
    msgs = [{"role": "user", "content": "Count the tokens of this."}]
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0, logprobs=True,
                                  extra_body={"ignore_eos": True})
    tk = httpx.post(srv.url + "/tokenize", json={"messages": msgs}).json()
    assert r.usage.prompt_tokens == tk["count"]
    assert r.usage.completion_tokens == len(r.choices[0].logprobs.content) == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == "length"


def test_metrics_names_and_counters(srv):
    before = metric(srv.url, "corral_generation_tokens_total")
    r = client(srv.url).completions.create(model="tiny", prompt="one two three", max_tokens=5, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5
    text = httpx.get(srv.url + "/metrics").text
    for name in METRIC_NAMES:
        assert re.search(rf"^{name}(_bucket|_count)?{{", text, re.M), name
    assert metric(srv.url, "corral_generation_tokens_total") == before + 5
    assert metric(srv.url, "corral_num_requests_running") == 0
    assert metric(srv.url, "corral_kv_cache_blocks") >= 1 and metric(srv.url, "corral_prefix_cache_queries_total") >= 3


# --- fast: errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b'{"model": "tiny", "messages": [', b"[1, 2]", b"null", b""])
def test_malformed_body_is_400(srv, raw):
    r = httpx.post(srv.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


@pytest.mark.parametrize(("field", "value"), [("temperature", 5), ("top_p", 0), ("max_tokens", 0), ("n", 0),
                                              ("messages", []), ("top_logprobs", 21), ("presence_penalty", 1.0),
                                              ("stop", [""])])
def test_bad_values_are_400_naming_the_field(srv, field, value):
    kw = {"model": "tiny", "messages": USER, "max_tokens": 2, field: value}
    if field == "top_logprobs":
        kw["logprobs"] = True
    with pytest.raises(openai.BadRequestError) as e:
        client(srv.url).chat.completions.create(**kw)
    assert_openai_error(e.value.response, 400, param=field)


def test_unknown_model_and_route_are_404(srv):
    c = client(srv.url)
    calls = [lambda: c.chat.completions.create(model="gpt-4o", messages=USER),
             lambda: c.completions.create(model="gpt-4o", prompt="x"),
             lambda: c.embeddings.create(model="gpt-4o", input="x"),
             lambda: c.models.retrieve("gpt-4o")]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert_openai_error(e.value.response, 404, code="model_not_found", param="model")
    assert_openai_error(httpx.post(srv.url + "/v1/nope", json={}), 404, code="not_found")
    assert_openai_error(httpx.delete(srv.url + "/v1/models"), 405)


def test_context_length_exceeded(srv):
    c = client(srv.url)
    long = [{"role": "user", "content": "word " * 600}]  # > 512 tokens
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=long)
    assert_openai_error(e.value.response, 400, code="context_length_exceeded", param="messages")
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=USER, max_tokens=600, stream=True)
    assert_openai_error(e.value.response, 400, code="context_length_exceeded", param="max_tokens")
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt=[5] * 512, max_tokens=1)
    assert_openai_error(e.value.response, 400, code="context_length_exceeded", param="prompt")
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="tiny", input="word " * 600)
    assert_openai_error(e.value.response, 400, code="context_length_exceeded", param="input")


def test_api_keys(tiny, tok):
    with in_process(tiny, tok, api_keys=["k1", "k2"]) as s:
        for key in ("", "wrong", "k1x"):
            with pytest.raises(openai.AuthenticationError) as e:
                client(s.url, key or "none").models.list()
            assert_openai_error(e.value.response, 401, code="invalid_api_key")
        r = httpx.post(s.url + "/tokenize", json={"prompt": "x"})
        assert_openai_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(s.url + "/health").status_code == 200  # probes and scrapers need no key
        assert httpx.get(s.url + "/metrics").status_code == 200
        for key in ("k1", "k2"):
            assert client(s.url, key).models.list().data[0].id == "tiny"
        out = client(s.url, "k2").chat.completions.create(model="tiny", messages=USER, max_tokens=2)
        assert out.choices[0].message.role == "assistant"


def test_body_too_large_is_413(tiny, tok):
    with in_process(tiny, tok, max_body_bytes=4096) as s:
        big = [{"role": "user", "content": "x" * 5000}]
        with pytest.raises(openai.APIStatusError) as e:
            client(s.url).chat.completions.create(model="tiny", messages=big, max_tokens=2)
        assert_openai_error(e.value.response, 413, code="request_too_large")
        # A chunked body has no content-length; the limit must still hold (and never turn into a 5xx).
        body = json.dumps({"model": "tiny", "messages": big, "max_tokens": 2}).encode()
        chunks = (body[i:i + 1000] for i in range(0, len(body), 1000))
        r = httpx.post(s.url + "/v1/chat/completions", content=chunks, headers={"content-type": "application/json"})
        assert_openai_error(r, 413, code="request_too_large")
        small = client(s.url).chat.completions.create(model="tiny", messages=USER, max_tokens=2)
        assert small.usage.completion_tokens <= 2


def test_queue_full_is_503_with_retry_after(tiny, tok, monkeypatch):
    with in_process(tiny, tok, max_batch=1, max_queue=1) as s:
        s.slow_down(monkeypatch, 0.02)
        body = {"model": "tiny", "messages": USER, "max_tokens": 300, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=s.url, timeout=30) as h:
            with h.stream("POST", "/v1/chat/completions", json=body) as a:
                lines = a.iter_lines()
                wait_until(lambda: running(s.url) == 1, 10, "the first request to hold the only slot")
                with h.stream("POST", "/v1/chat/completions", json=body) as b:  # queued: the queue is now full
                    assert b.status_code == 200 and httpx.get(s.url + "/health").json()["waiting"] == 1
                    r = h.post("/v1/chat/completions", json={**body, "stream": False})
                    assert_openai_error(r, 503)
                    assert int(r.headers["retry-after"]) >= 1
                    with pytest.raises(openai.InternalServerError) as e:
                        client(s.url).chat.completions.create(model="tiny", messages=USER, stream=True)
                    assert e.value.status_code == 503
                    next(lines)
        wait_until(lambda: running(s.url) == 0, 5, "both slots to be freed")
        assert client(s.url).completions.create(model="tiny", prompt="x", max_tokens=1).choices[0].finish_reason


def test_out_of_range_seed_is_answered(srv):
    r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2,
                                                      "temperature": 1, "seed": 2**64}, timeout=2)
    assert r.status_code in (200, 400)


def test_tiny_temperature_and_top_p_act_greedy(srv):
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "ignore_eos": True}
    greedy = httpx.post(srv.url + "/v1/completions", json={**body, "temperature": 0}).json()["choices"][0]["text"]
    for extra in ({"temperature": 1e-45}, {"temperature": 1, "top_p": 1e-300}):
        r = httpx.post(srv.url + "/v1/completions", json={**body, **extra, "seed": 1})
        assert r.status_code == 400 or r.json()["choices"][0]["text"] == greedy, extra


def test_http_metric_labels_are_bounded(srv):
    for i in range(40):
        httpx.get(f"{srv.url}/v1/models/probe-{i}")
        httpx.get(f"{srv.url}/v1/probe-{i}")
    text = httpx.get(srv.url + "/metrics").text
    assert sum(line.startswith("corral_http_requests_total{") for line in text.splitlines()) < 20


# --- fast: streams that fail or lose their client ---------------------------------------------------------------


def test_failed_step_sends_an_sse_error_event(srv, monkeypatch):
    calls = []

    def broken(rows):  # the first token comes from prefill; the first decode step fails
        calls.append(len(rows))
        raise RuntimeError("injected decode failure")

    monkeypatch.setattr(srv.engine, "_decode", broken)
    body = {"model": "tiny", "messages": USER, "max_tokens": 20, "ignore_eos": True, "stream": True,
            "logprobs": True}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = sse_events(r.iter_lines())
    assert calls and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert any(c.get("choices") and c["choices"][0]["delta"].get("content") is not None for c in chunks[1:-1])
    err = chunks[-1]["error"]
    assert err["type"] == "server_error" and "injected decode failure" in err["message"]
    # The openai client turns the event into an exception instead of a silently short answer.
    with pytest.raises(openai.APIError, match="injected decode failure"):
        for _ in client(srv.url).completions.create(model="tiny", prompt="x", max_tokens=20, stream=True,
                                                    extra_body={"ignore_eos": True}):
            pass
    with pytest.raises(openai.InternalServerError) as e:
        client(srv.url).chat.completions.create(model="tiny", messages=USER, max_tokens=20,
                                                extra_body={"ignore_eos": True})
    assert_openai_error(e.value.response, 500)
    monkeypatch.undo()
    assert client(srv.url).chat.completions.create(model="tiny", messages=USER, max_tokens=3).usage
    assert running(srv.url) == 0


def test_stream_disconnect_frees_the_slot(srv, monkeypatch):
    srv.slow_down(monkeypatch, 0.01)
    body = {"model": "tiny", "messages": USER, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert running(srv.url) == 1
    t0 = time.monotonic()
    wait_until(lambda: running(srv.url) == 0, 2, "the slot of a disconnected stream to be freed")
    assert time.monotonic() - t0 < 2 and metric(srv.url, "corral_num_requests_running") == 0


def test_non_stream_disconnect_frees_the_slot(srv, monkeypatch):
    srv.slow_down(monkeypatch, 0.01)
    body = {"model": "tiny", "prompt": "x", "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    wait_until(lambda: running(srv.url) == 0, 2, "the slot of a disconnected request to be freed")


# --- fast: OpenAI details -----------------------------------------------------------------------------------------


def test_stream_chunks_carry_null_finish_reason_and_usage(srv):
    body = {"model": "tiny", "messages": USER, "max_tokens": 3, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body) as r:
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *middle, last = chunks
    for c in middle:
        assert c["usage"] is None and len(c["choices"]) == 1
        assert "finish_reason" in c["choices"][0] and "logprobs" in c["choices"][0]
    assert middle[0]["choices"][0]["finish_reason"] is None and middle[-1]["choices"][0]["finish_reason"]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] >= 1


def test_echo_with_logprobs_scores_the_prompt_tokens(srv):
    prompt = "the quick brown fox"
    ids = httpx.post(srv.url + "/tokenize", json={"model": "tiny", "prompt": prompt}).json()["tokens"]
    r = client(srv.url).completions.create(model="tiny", prompt=prompt, max_tokens=3, echo=True, logprobs=2,
                                           temperature=0, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith(prompt)
    assert len(lp.tokens) == len(ids) + 3 == len(lp.token_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens[: len(ids)]) == prompt
    # a prompt token's logprob equals what the model gives it: score the prompt prefix as a completion
    first = client(srv.url).completions.create(model="tiny", prompt=ids[:1], max_tokens=1, logprobs=20,
                                               temperature=0, extra_body={"ignore_eos": True})
    top = first.choices[0].logprobs.top_logprobs[0]
    if lp.tokens[1] in top:
        assert abs(top[lp.tokens[1]] - lp.token_logprobs[1]) < 1e-4


def test_user_message_without_content_is_a_400(srv):
    r = httpx.post(srv.url + "/v1/chat/completions",
                   json={"model": "tiny", "messages": [{"role": "user", "content": None}]})
    assert_openai_error(r, 400)


LONE = '"\\ud800"'  # a JSON escape of a lone UTF-16 surrogate: valid JSON, not text


@pytest.mark.parametrize(("route", "body", "param"), [
    ("chat/completions", f'{{"model": "tiny", "messages": [{{"role": "user", "content": {LONE}}}]}}', "messages"),
    ("chat/completions", f'{{"model": "tiny", "messages": [{{"role": "user", "content": [{{"type": "text", '
                         f'"text": {LONE}}}]}}]}}', "messages"),
    ("chat/completions", f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "stop": [{LONE}]}}',
     "stop"),
    ("completions", f'{{"model": "tiny", "prompt": {LONE}}}', "prompt"),
    ("completions", f'{{"model": "tiny", "prompt": ["ok", {LONE}]}}', "prompt"),
    ("embeddings", f'{{"model": "tiny", "input": {LONE}}}', "input"),
    ("moderations", f'{{"input": {LONE}}}', "input"),
    ("tokenize", f'{{"model": "tiny", "prompt": {LONE}}}', "prompt"),
    ("chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", '
                         '"image_url": {"url": "x"}}]}]}', None),
    ("chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text"}]}]}', None),
    ("chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', None),
])
def test_what_cannot_become_token_ids_is_a_400(srv, route, body, param):
    """Every request whose text cannot be turned into token ids gets OpenAI's 400 body, not a 500 or a reset."""
    path = "/tokenize" if route == "tokenize" else f"/v1/{route}"
    r = httpx.post(srv.url + path, content=body.encode(), headers={"content-type": "application/json"})
    err = assert_openai_error(r, 400)
    if param and "surrogate" not in err["message"]:
        raise AssertionError(err)
    if param:
        assert param in err["message"], err


@pytest.mark.parametrize("template", ["{{ raise_exception('roles must alternate user/assistant') }}",
                                      "{{ messages[0]['content'] + 1 }}", "{% for m in messages %}{{ m.nope.x }}"
                                      "{% endfor %}"])
def test_a_chat_template_that_fails_is_a_400(srv, monkeypatch, template):
    monkeypatch.setattr(srv.service, "chat_template", template)
    for path, body in (("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_tokens": 1}),
                       ("/tokenize", {"model": "tiny", "messages": USER})):
        r = httpx.post(srv.url + path, json=body)
        assert_openai_error(r, 400, param="messages")


def test_openapi_lists_the_statuses_the_server_sends(srv):
    spec = httpx.get(srv.url + "/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat and {"200", "400", "401", "404", "413", "503"} <= set(chat)
    assert "ErrorResponse" in spec["components"]["schemas"]


def test_logit_bias(srv):
    c = client(srv.url)
    base = c.completions.create(model="tiny", prompt="hello", max_tokens=3, temperature=0,
                                extra_body={"ignore_eos": True})
    ids = httpx.post(srv.url + "/tokenize", json={"model": "tiny", "prompt": "!"}).json()["tokens"]
    forced = c.completions.create(model="tiny", prompt="hello", max_tokens=3, temperature=0,
                                  logit_bias={str(ids[0]): 100}, extra_body={"ignore_eos": True})
    assert forced.choices[0].text == "!!!" != base.choices[0].text
    for bad in ({"999999999": 1}, {"x": 1}, {"5": 500}):
        assert_openai_error(httpx.post(srv.url + "/v1/completions", json={
            "model": "tiny", "prompt": "hi", "logit_bias": bad}), 400, param="logit_bias")
