"""`corral serve` as a subprocess with the default model (SmolLM2-135M), driven with the `openai` client and httpx:
answers, exact usage counts, logprobs, embeddings, 16 concurrent streams, disconnects and the CLI's limit flags.

The helpers and the error-shape checks are shared with test_serve.py (the fast, in-process tier).
"""

from __future__ import annotations

import base64
import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.serve.test_serve import (
    METRIC_NAMES,
    USER,
    assert_openai_error,
    client,
    free_port,
    metric,
    running,
    wait_until,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HEALTH_TIMEOUT_S = 120
HTTP_TIMEOUT_S = 60  # a plain request on a loaded CI machine can take longer than httpx's default 5 s


@contextlib.contextmanager
def corral_serve(tmp: Path, *args: str, health_timeout: float = HEALTH_TIMEOUT_S) -> Iterator[str]:
    """Run `python -m corral serve [args]` on a free port; yields its base URL once /health answers."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "corral", "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", "2",
           *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + health_timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"corral serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"corral serve did not answer /health in {health_timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[str]:
    """`corral serve` with the default model and 16 slots."""
    with corral_serve(tmp_path_factory.mktemp("serve"), "--max-batch", "16") as url:
        yield url


@pytest.fixture(scope="module")
def model_id(live) -> str:
    return client(live).models.list().data[0].id


FRANCE = [{"role": "user", "content": "Name the capital city of France."}]


def test_live_chat_answers_and_counts_exactly(live, model_id):
    c = client(live)
    assert [m.id for m in c.models.list().data] == [model_id]
    r = c.chat.completions.create(model=model_id, messages=FRANCE, temperature=0, logprobs=True, top_logprobs=5)
    ch = r.choices[0]
    assert "Paris" in ch.message.content and ch.message.role == "assistant" and ch.finish_reason == "stop"
    tk = httpx.post(live + "/tokenize", timeout=HTTP_TIMEOUT_S, json={"messages": FRANCE}).json()
    assert r.usage.prompt_tokens == len(tk["tokens"])
    # One logprobs entry per generated token; the end-of-turn token is neither counted nor shown.
    assert r.usage.completion_tokens == len(ch.logprobs.content)
    assert "".join(t.token for t in ch.logprobs.content) == ch.message.content
    for t in ch.logprobs.content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True) and all(v <= 0 for v in tops)
        assert t.logprob <= 0 and t.token == t.top_logprobs[0].token and t.logprob == tops[0]  # greedy: the argmax
        assert bytes(t.bytes).decode() == t.token
    assert c.chat.completions.create(model="default", messages=FRANCE, temperature=0).choices[0].message.content \
        == ch.message.content


def test_live_chat_stream_equals_non_stream(live, model_id):
    c = client(live)
    ref = c.chat.completions.create(model=model_id, messages=FRANCE, temperature=0)
    chunks = list(c.chat.completions.create(model=model_id, messages=FRANCE, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, logprobs=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ref.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert len({ch.id for ch in chunks}) == 1
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        ref.usage.prompt_tokens, ref.usage.completion_tokens, ref.usage.total_tokens)
    assert all(ch.usage is None for ch in chunks[:-1])
    assert usage.completion_tokens == sum(len(ch.choices[0].logprobs.content) for ch in chunks
                                          if ch.choices and ch.choices[0].logprobs)
    body = {"model": model_id, "messages": FRANCE, "temperature": 0, "stream": True}
    with httpx.stream("POST", live + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n") and raw.count("[DONE]") == 1


def test_live_completions_n2_echo_and_stream(live, model_id):
    c = client(live)
    prompt = "The capital of France is"
    r = c.completions.create(model=model_id, prompt=prompt, max_tokens=8, temperature=0, n=2, echo=True, logprobs=2)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert r.choices[0].text == r.choices[1].text and r.choices[0].text.startswith(prompt)
    assert "Paris" in r.choices[0].text
    n_prompt = httpx.post(live + "/tokenize", timeout=HTTP_TIMEOUT_S, json={"prompt": prompt}).json()["count"]
    assert r.usage.prompt_tokens == n_prompt  # the prompt counts once for both choices
    lp = r.choices[0].logprobs
    assert r.usage.completion_tokens == 2 * (len(lp.tokens) - n_prompt) == 16
    assert "".join(lp.tokens) == r.choices[0].text  # echo: the prompt's tokens are scored too, the first is None
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:n_prompt])
    for chosen, top in zip(lp.token_logprobs[n_prompt:], lp.top_logprobs[n_prompt:], strict=True):
        assert chosen <= 0 and len(top) == 2 and chosen == max(top.values())
    assert lp.text_offset[n_prompt] == len(prompt)
    stream = c.completions.create(model=model_id, prompt=prompt, max_tokens=8, temperature=0, n=2, stream=True,
                                  stream_options={"include_usage": True})
    texts = ["", ""]
    reasons = [None, None]
    for ch in stream:
        for choice in ch.choices:
            texts[choice.index] += choice.text
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
        last = ch
    assert texts == [r.choices[0].text[len(prompt):]] * 2 and reasons == ["length", "length"]
    assert last.usage.completion_tokens == 16


def test_live_embeddings(live, model_id):
    c = client(live)
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "The quarterly tax filing deadline is near."]
    e = c.embeddings.create(model=model_id, input=texts)  # the client asks for base64 and decodes it
    v = np.array([d.embedding for d in e.data])
    assert v.shape == (3, 576) and [d.index for d in e.data] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert e.usage.prompt_tokens == sum(httpx.post(live + "/tokenize", timeout=HTTP_TIMEOUT_S,
                                                   json={"prompt": t}).json()["count"] for t in texts)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]  # holds for this model and these texts (0.94 vs 0.8)
    flt = httpx.post(live + "/v1/embeddings", timeout=HTTP_TIMEOUT_S, json={"model": model_id, "input": texts}).json()
    b64 = httpx.post(live + "/v1/embeddings", timeout=HTTP_TIMEOUT_S, json={"model": model_id, "input": texts,
                                                    "encoding_format": "base64"}).json()
    for f, b in zip(flt["data"], b64["data"], strict=True):
        assert np.frombuffer(base64.b64decode(b["embedding"]), "<f4").tolist() == f["embedding"]
    short = c.embeddings.create(model=model_id, input=texts[0], dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64 and math.isclose(np.linalg.norm(short.data[0].embedding), 1,
                                                               rel_tol=1e-5)


def test_live_metrics_after_requests(live, model_id):
    before = metric(live, "corral_generation_tokens_total")
    r = client(live).chat.completions.create(model=model_id, messages=FRANCE, temperature=0, max_tokens=4)
    text = httpx.get(live + "/metrics", timeout=HTTP_TIMEOUT_S).text
    for name in METRIC_NAMES:
        assert name in text, name
    assert metric(live, "corral_generation_tokens_total") == before + r.usage.completion_tokens
    assert metric(live, "corral_time_to_first_token_seconds_count") >= 1


TOPICS = ["the sea", "a mountain", "bread", "winter", "a violin", "the moon", "trains", "a garden", "coffee",
          "rain", "a library", "chess", "bees", "a desert", "the city at night", "a lighthouse"]


def test_live_16_concurrent_streams_equal_the_same_requests_alone(live, model_id):
    c = client(live)

    def ask(topic: str, stream: bool) -> str:
        kw = dict(model=model_id, messages=[{"role": "user", "content": f"Write two sentences about {topic}."}],
                  temperature=0, max_tokens=48)
        if not stream:
            return c.chat.completions.create(**kw).choices[0].message.content
        return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(**kw, stream=True)
                       if ch.choices)

    alone = [ask(t, stream=False) for t in TOPICS]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: ask(t, stream=True), TOPICS))
    assert together == alone
    assert len(set(alone)) == len(alone)


def test_live_disconnects_free_their_slots(live, model_id):
    body = {"model": model_id, "messages": FRANCE, "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", live + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(8):
            next(lines)
        assert running(live) == 1
    wait_until(lambda: running(live) == 0, 3, "the slot of a disconnected stream to be freed")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live + "/v1/chat/completions", json={**body, "stream": False},
                   timeout=httpx.Timeout(30, read=1.0))
    wait_until(lambda: metric(live, "corral_num_requests_running") == 0, 3,
               "the slot of a disconnected non-streaming request to be freed")


def test_live_limit_flags(tmp_path):
    """--api-key, --max-body-bytes, --max-seq-len, --max-batch and --max-queue reach the app and the engine."""
    args = ("--api-key", "sekrit", "--max-body-bytes", "4096", "--max-seq-len", "128", "--max-batch", "1",
            "--max-queue", "1")
    with corral_serve(tmp_path, *args) as url:
        assert httpx.get(url + "/health", timeout=HTTP_TIMEOUT_S).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            client(url).models.list()
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        c = client(url, "sekrit")
        mid = c.models.list().data[0].id
        assert c.models.retrieve(mid).model_extra["max_model_len"] == 128
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=mid, messages=[{"role": "user", "content": "x" * 5000}])
        assert_openai_error(e.value.response, 413, code="request_too_large")
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=mid, messages=[{"role": "user", "content": "word " * 150}])
        assert_openai_error(e.value.response, 400, code="context_length_exceeded")
        auth = {"Authorization": "Bearer sekrit"}
        body = {"model": mid, "messages": USER, "max_tokens": 90, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=url, headers=auth, timeout=60) as h:
            with h.stream("POST", "/v1/chat/completions", json=body) as a:
                lines = a.iter_lines()
                for _ in range(2):
                    next(lines)
                with h.stream("POST", "/v1/chat/completions", json=body) as b:
                    assert b.status_code == 200
                    with pytest.raises(openai.InternalServerError) as e:
                        c.chat.completions.create(model=mid, messages=USER, max_tokens=2)
                    assert_openai_error(e.value.response, 503)
                    assert e.value.response.headers["retry-after"] == "1"
        wait_until(lambda: running(url) == 0, 5, "the slots to be freed")


PERSON = {"type": "object", "additionalProperties": False,
          "properties": {"name": {"type": "string", "maxLength": 30},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "role": {"enum": ["engineer", "manager", "designer"]},
                         "skills": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
                         "address": {"type": "object", "additionalProperties": False,
                                     "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                                     "required": ["city", "zip"]}},
          "required": ["name", "age", "role", "skills", "address"]}


def test_live_json_schema_output_always_validates(live, model_id):
    import json

    import jsonschema

    c = client(live)
    msgs = [{"role": "user", "content": "Invent an employee of a small company and describe them as JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    settings = [{"temperature": 0}] + [{"temperature": 1.0, "seed": s} for s in range(4)]
    with ThreadPoolExecutor(len(settings)) as pool:
        answers = list(pool.map(lambda kw: c.chat.completions.create(
            model=model_id, messages=msgs, max_tokens=200, response_format=fmt, **kw), settings))
    for kw, r in zip(settings, answers, strict=True):
        assert r.choices[0].finish_reason == "stop", (kw, r.choices[0].message.content)
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    obj = c.chat.completions.create(model=model_id, messages=msgs, max_tokens=200, temperature=0,
                                    response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=model_id, messages=msgs, response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "frob"}}})


def test_serve_refuses_a_public_address_without_keys():
    r = subprocess.run([sys.executable, "-m", "corral", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--api-key" in r.stderr and "Traceback" not in r.stderr
