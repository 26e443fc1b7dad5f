"""corral synth on a tiny random model: valid chat JSONL that fine-tuning accepts, n samples with their own seeds,
filters, resuming a killed run, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from corral.distill.synth import Prompt, PromptFileError, make_filters, read_prompts, rejected_path, synth
from corral.engine.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [{"prompt": "Name a colour."},
           {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]},
           {"prompt": "Count to three.", "id": "count"}]


@pytest.fixture
def teacher(tiny_chat):
    from corral.eval import load_eval_model

    em = load_eval_model(str(tiny_chat), device="cpu", dtype="float32")
    return em.model, em.tok


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run(teacher, prompts, out, **kw):
    model, tok = teacher
    kw.setdefault("params", SamplingParams(temperature=1.0, max_tokens=6, seed=3))
    kw.setdefault("keep_truncated", True)  # a random model rarely stops by itself
    return synth(model, tok, prompts, out, progress=False, **kw)


def test_synth_writes_chat_jsonl_that_finetune_accepts(teacher, tmp_path):
    from corral.train.data import load_jsonl

    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "data.jsonl"
    s = run(teacher, prompts, out, n=2)
    kept, rejected = lines(out), lines(rejected_path(out))
    assert (s.prompts, s.samples, s.resumed, s.kept, s.rejected) == (3, 6, 0, len(kept), len(rejected))
    assert len(kept) + len(rejected) == 6 and all(r["rejected"] == ["empty"] for r in rejected)
    assert len(kept) >= 4
    for rec in kept:
        msgs = rec["messages"]
        assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"] == msgs[-1]["content"].strip() != ""
        assert msgs[:-1] in ([{"role": "user", "content": "Name a colour."}], PROMPTS[1]["messages"],
                             [{"role": "user", "content": "Count to three."}])
    # n samples per prompt, each with its own seed
    pairs = sorted((r["synth"]["id"], r["synth"]["sample"]) for r in kept + rejected)
    assert len(set(pairs)) == 6 and {j for _, j in pairs} == {0, 1} and ("id:count", 0) in pairs
    assert len({r["synth"]["seed"] for r in kept + rejected}) == 6
    by_prompt: dict[str, set[str]] = {}
    for r in kept:
        by_prompt.setdefault(r["synth"]["id"], set()).add(r["messages"][-1]["content"])
    assert any(len(v) == 2 for v in by_prompt.values())  # two samples of one prompt differ
    examples, problems = load_jsonl(out, teacher[1], max_len=512)
    assert len(examples) == len(kept) and not problems


def test_samples_do_not_depend_on_batching(teacher, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    run(teacher, prompts, tmp_path / "a.jsonl", n=2, max_batch=16)
    run(teacher, prompts, tmp_path / "b.jsonl", n=2, max_batch=1)

    def texts(p):
        return sorted((r["synth"]["id"], r["synth"]["sample"], r["messages"][-1]["content"]) for r in lines(p))
    assert texts(tmp_path / "a.jsonl") == texts(tmp_path / "b.jsonl") != []


def test_filter_keeps_only_accepted_answers(teacher, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    first = tmp_path / "first.jsonl"
    run(teacher, prompts, first, n=1)
    reply = {r["synth"]["id"]: r["messages"][-1]["content"] for r in lines(first)}
    a, b = (p.key for p in read_prompts(prompts))
    assert set(reply) == {a, b}
    # the same prompts (same ids, so the same samples) with expected answers: one the reply contains, one not
    rows = [{**PROMPTS[0], "answer": reply[a].split()[0].upper()}, {**PROMPTS[1], "answer": "never said \u2603"}]
    out = tmp_path / "filtered.jsonl"
    s = run(teacher, write_jsonl(tmp_path / "pa.jsonl", rows), out, n=1, filters=make_filters(["contains"]))
    assert [r["synth"]["id"] for r in lines(out)] == [a] and lines(out)[0]["messages"][-1]["content"] == reply[a]
    assert [(r["synth"]["id"], r["rejected"]) for r in lines(rejected_path(out))] == [(b, ["contains"])]
    assert (s.kept, s.rejected, s.reasons) == (1, 1, {"contains": 1})
    # a filter that needs answers refuses a prompt file without them, naming the line
    with pytest.raises(PromptFileError, match=r"p\.jsonl:1: a --filter compares with the expected answer"):
        read_prompts(prompts, need_answer=True)
    # checks that look at the reply alone need no answers
    out2 = tmp_path / "words.jsonl"
    run(teacher, prompts, out2, n=1, filters=make_filters(["max_words:1000", "max_chars:0"]))
    assert lines(out2) == [] and all(r["rejected"] == ["max_chars:0"] for r in lines(rejected_path(out2)))


def test_a_prompt_with_its_own_n_gets_that_many_samples(teacher, tmp_path):
    prompts = [Prompt("a", [{"role": "user", "content": "Name a colour."}], {}, 1, n=3),
               Prompt("b", [{"role": "user", "content": "Count to three."}], {}, 2)]
    out = tmp_path / "o.jsonl"
    s = run(teacher, prompts, out, n=1)
    done = sorted((r["synth"]["id"], r["synth"]["sample"]) for r in lines(out) + lines(rejected_path(out)))
    assert done == [("a", 0), ("a", 1), ("a", 2), ("b", 0)] and s.samples == 4


def test_truncated_answers_are_rejected_unless_kept(teacher, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    out = tmp_path / "o.jsonl"
    run(teacher, prompts, out, n=2, keep_truncated=False)
    assert lines(out) == [] and {tuple(r["rejected"]) for r in lines(rejected_path(out))} <= {("truncated",),
                                                                                              ("empty",)}


def test_resume_skips_what_is_done(teacher, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    full = tmp_path / "full.jsonl"
    run(teacher, prompts, full, n=2)
    done = full.read_text().splitlines(keepends=True)
    assert len(done) >= 4
    # a killed run: three whole lines and half of the fourth
    part = tmp_path / "part.jsonl"
    part.write_text("".join(done[:3]) + done[3][: len(done[3]) // 2])
    s = run(teacher, prompts, part, n=2)
    assert s.resumed == 3 and s.kept + s.rejected == 3

    def key(p):
        return sorted(json.dumps(r, sort_keys=True) for r in lines(p) + lines(rejected_path(p)))
    assert key(part) == key(full)  # the same samples, none twice, the partial line gone
    # nothing left to do; then a new prompt appended to the file: only its samples run
    assert run(teacher, prompts, part, n=2).kept == 0
    write_jsonl(prompts, [*PROMPTS, {"prompt": "One more?"}])
    s = run(teacher, prompts, part, n=2)
    assert (s.resumed, s.kept + s.rejected) == (6, 2)
    # a file synth did not write is not resumed
    other = write_jsonl(tmp_path / "other.jsonl", [{"messages": []}])
    with pytest.raises(Exception, match="not a line corral synth wrote"):
        run(teacher, prompts, other, n=1)


def test_bad_prompt_files(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok"}\nnot json\n{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", '
                 '"content": "b"}]}\n{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n{"foo": 2}\n')
    with pytest.raises(PromptFileError) as e:
        read_prompts(p)
    msg = str(e.value)
    assert "4 bad line(s)" in msg
    for n, says in ((2, "not valid JSON"), (3, "the last message must be the user's"), (5, "id 1 is used twice"),
                    (6, "expected a 'messages' list or a non-empty 'prompt'")):
        assert f"{p}:{n}: {says}" in msg, msg
    # repeated prompts without ids are told apart
    q = write_jsonl(tmp_path / "rep.jsonl", [{"prompt": "a"}, {"prompt": "a"}])
    keys = [x.key for x in read_prompts(q)]
    assert len(set(keys)) == 2 and keys[1] == keys[0] + "#1"


def test_cli_synth(tiny_chat, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    out = tmp_path / "data.jsonl"
    args = [sys.executable, "-m", "corral", "synth", str(tiny_chat), "--prompts", str(prompts), "--out", str(out),
            "--n", "2", "--max-tokens", "5", "--keep-truncated", "--device", "cpu", "--dtype", "float32"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got = lines(out) + lines(rejected_path(out))
    assert len(got) == 4 and all(x["synth"]["seed"] is not None for x in got)
    assert "synth:" in r.stdout and str(out) in r.stdout
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)  # resumed: nothing to do
    assert r.returncode == 0 and len(lines(out) + lines(rejected_path(out))) == 4, r.stderr
    assert "all 4 samples were already done" in r.stdout
    for extra, needle in ((["--temperature", "0"], "identical answers"), (["--filter", "fuzzy"], "unknown scorer"),
                          (["--filter", "contains"], "no 'answer'")):
        r = subprocess.run(args + extra, capture_output=True, text=True, timeout=300, cwd=ROOT)
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and err[0].startswith("corral: error:") and needle in r.stderr, r.stderr
