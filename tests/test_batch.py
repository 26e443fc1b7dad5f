"""`corral batch`: an OpenAI batch file through the engine on a tiny random model — per-line status codes, greedy
outputs equal to single requests, resuming after a kill — plus the CLI on the default model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from corral.batch import run_batch
from corral.engine.engine import Engine
from corral.errors import InvalidArgumentError
from corral.model.loader import load_model
from corral.serve import protocol as P
from corral.serve.service import Service
from tests.cli.test_cli import assert_clean_error, run_cli
from tests.test_text import AngleTokenizer


class ByteAngleTokenizer(AngleTokenizer):
    """AngleTokenizer that can also encode text: one token per byte (ids 3.. so bos/eos never appear)."""

    def _encode(self, text: str, special: bool) -> list[int]:
        return [max(3, b) for b in text.encode()]


TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant: "  # short prompts


@pytest.fixture
def service(make_tiny_hf):
    _, folder = make_tiny_hf(max_position_embeddings=512)
    model = load_model(str(folder), device="cpu", dtype="float32").model
    engine = Engine(model, stop_ids=ByteAngleTokenizer().stop_ids, max_batch=4, max_seq_len=256).start()
    try:
        yield Service(engine, ByteAngleTokenizer(), "tiny", chat_template=TEMPLATE)
    finally:
        engine.shutdown()


def req(cid: str, url: str, body: dict) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


def chat(content: str, **kw) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 8,
            "temperature": 0, **kw}


def read_out(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["custom_id"]: r for r in records if r["error"] is None}


def test_mixed_file_one_output_line_per_input_line(service, tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        req("chat-1", "/v1/chat/completions", chat("hello there")),
        req("cmpl-1", "/v1/completions", {"prompt": [5, 17, 200, 33], "max_tokens": 6, "temperature": 0}),
        req("emb-1", "/v1/embeddings", {"input": "some text"}),
        '{"custom_id": "broken", "method": "POST",',
        req("chat-1", "/v1/chat/completions", chat("again")),
        req("img-1", "/v1/images/generations", {"prompt": "a cat"}),
        req("hot", "/v1/chat/completions", chat("hi", temperature=5)),
        req("stream", "/v1/chat/completions", chat("hi", stream=True)),
        "",  # blank lines are not requests
        req("chat-2", "/v1/chat/completions", chat("the cat sat", n=2)),
    ]
    src.write_text("\n".join(lines) + "\n")
    s = run_batch(service, src, dst)
    out = read_out(dst)
    assert len(out) == 9 and (s.total, s.ok, s.failed, s.resumed) == (9, 4, 5, 0)
    assert s.completion_tokens == 8 + 6 + 2 * 8 and s.prompt_tokens > 0

    not_requests = {r["error"]["line"]: r for r in out if r["error"] is not None}
    assert {n: r["error"]["code"] for n, r in not_requests.items()} == {
        4: "invalid_json_line", 5: "duplicate_custom_id", 6: "invalid_url"}
    assert all(r["response"] is None for r in not_requests.values())
    assert not_requests[5]["custom_id"] == "chat-1" and "line 1" in not_requests[5]["error"]["message"]

    res = by_id(out)
    assert {k: r["response"]["status_code"] for k, r in res.items()} == {
        "chat-1": 200, "cmpl-1": 200, "emb-1": 200, "hot": 400, "stream": 400, "chat-2": 200}
    assert all(r["id"].startswith("batch_req_") and r["response"]["request_id"] for r in res.values())
    assert res["hot"]["response"]["body"]["error"]["param"] == "temperature"
    assert res["stream"]["response"]["body"]["error"]["param"] == "stream"
    assert res["emb-1"]["response"]["body"]["object"] == "list"
    assert res["chat-1"]["response"]["body"]["model"] == "tiny"  # the loaded model, whatever the body names

    for cid, content, n in (("chat-1", "hello there", 1), ("chat-2", "the cat sat", 2)):
        body = {**chat(content, n=n), "model": "tiny"}
        alone = asyncio.run(service.chat(P.ChatCompletionRequest.model_validate(body)))
        got = res[cid]["response"]["body"]["choices"]
        assert [c["message"]["content"] for c in got] == [c.message.content for c in alone.choices]
        assert got[0]["message"]["content"]  # eight greedy tokens, not an empty answer
    alone = asyncio.run(service.complete(P.CompletionRequest(model="tiny", prompt=[5, 17, 200, 33], max_tokens=6,
                                                             temperature=0)))
    assert res["cmpl-1"]["response"]["body"]["choices"][0]["text"] == alone.choices[0].text


def test_resume_after_a_kill_equals_a_straight_run(service, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [req(f"c{i}", "/v1/chat/completions", chat(f"question {i}", n=1 + i % 2)) for i in range(5)]
    lines += ["not json", req("p0", "/v1/completions", {"prompt": "the cat", "max_tokens": 5, "temperature": 0})]
    src.write_text("\n".join(lines) + "\n")

    straight = tmp_path / "straight.jsonl"
    run_batch(service, src, straight, concurrency=2)

    resumed = tmp_path / "resumed.jsonl"
    run_batch(service, src, resumed, concurrency=2)
    kept = resumed.read_text().splitlines(keepends=True)
    resumed.write_text("".join(kept[:2]) + kept[2][: len(kept[2]) // 2])  # as a kill -9 mid-write leaves it
    s = run_batch(service, src, resumed, concurrency=2)
    assert (s.total, s.resumed, s.ok, s.failed) == (7, 2, 6, 1)

    out = read_out(resumed)
    assert len(out) == 7
    assert sorted(r["custom_id"] or "" for r in out) == sorted(["", "p0", *(f"c{i}" for i in range(5))])
    want = {k: r["response"]["body"]["choices"] for k, r in by_id(read_out(straight)).items()}
    got = {k: r["response"]["body"]["choices"] for k, r in by_id(out).items()}
    assert got == want

    again = run_batch(service, src, resumed)  # nothing left to do
    assert (again.resumed, again.ok, again.failed, again.completion_tokens) == (7, 6, 1, 0)
    assert len(read_out(resumed)) == 7


def test_refuses_paths_it_cannot_use(service, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(req("a", "/v1/embeddings", {"input": [5, 6]}) + "\n")
    with pytest.raises(InvalidArgumentError, match="no such file"):
        run_batch(service, tmp_path / "missing.jsonl", tmp_path / "out.jsonl")
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        run_batch(service, src, tmp_path)
    with pytest.raises(InvalidArgumentError, match="is the input file"):
        run_batch(service, src, src)
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    with pytest.raises(InvalidArgumentError, match="notes.txt:1: not a line corral batch wrote"):
        run_batch(service, src, other)
    assert other.read_text() == "my notes\n"


def test_cli_errors_are_one_line(tmp_path):
    assert_clean_error(run_cli("batch", "default", str(tmp_path / "nope.jsonl"), str(tmp_path / "out.jsonl")),
                       "nope.jsonl", "no such file")
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    assert_clean_error(run_cli("batch", "default", str(src), str(tmp_path)), "is a directory")


@pytest.mark.slow
def test_cli_on_the_default_model(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join([
        req("a", "/v1/chat/completions", chat("Name the capital city of France.")),
        req("b", "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}),
        req("c", "/v1/embeddings", {"input": ["hello", "world"]}),
    ]) + "\n")
    r = run_cli("batch", "default", str(src), str(dst), "--max-batch", "4", "--max-seq-len", "512")
    assert r.returncode == 0, r.stderr
    out = read_out(dst)
    assert len(out) == 3 and all(x["response"]["status_code"] == 200 for x in out)
    assert "3 of 3 lines ok" in r.stderr and "Traceback" not in r.stderr
