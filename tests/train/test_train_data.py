"""Fine-tuning data: assistant-only loss mask, prompt/completion lines, bad lines by number, split, packing."""

from __future__ import annotations

import json
import re

import pytest

from corral.train.data import IGNORE, DataError, encode_chat_example, encode_example, load_jsonl, pack, split_val

CONV = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."}]


def trained_spans(ex) -> list[list[int]]:
    spans, cur = [], []
    for t in ex.labels:
        if t == IGNORE:
            if cur:
                spans.append(cur)
            cur = []
        else:
            cur.append(t)
    return spans + ([cur] if cur else [])


def test_loss_covers_each_assistant_turn_and_nothing_else(tok):
    ex = encode_chat_example(CONV, tok)
    assert len(ex.labels) == len(ex.input_ids)
    for i, t in enumerate(ex.labels):
        assert t in (IGNORE, ex.input_ids[i])
    spans = [tok.decode(s, skip_special=False) for s in trained_spans(ex)]
    # ChatML (the default model's template): each turn's content, its <|im_end|> and the newline after it
    assert spans == ["Paris.<|im_end|>\n", "Rome.<|im_end|>\n"]
    prompt_text = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE],
                             skip_special=False)
    assert "Capital of France?" in prompt_text and "Paris" not in prompt_text


def test_prompt_completion_lines_train_on_the_completion_and_eos(tok):
    ex = encode_example({"prompt": "2 + 2 =", "completion": " 4"}, tok)
    spans = trained_spans(ex)
    assert len(spans) == 1 and spans[0][-1] == tok.eos_id
    assert tok.decode(spans[0][:-1]) == " 4"
    assert ex.labels[: len(tok.encode("2 + 2 =", add_bos=tok.add_bos))] == [IGNORE] * len(
        tok.encode("2 + 2 =", add_bos=tok.add_bos))


def test_every_bad_line_is_reported_by_number(tok, tmp_path):
    good = json.dumps({"messages": CONV[1:3]})
    lines = [good, "{not json", json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), "",
             json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}),
             json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
             json.dumps({"messages": [{"role": "user", "content": "long " * 300},
                                      {"role": "assistant", "content": "ok"}]}),
             json.dumps(["a", "list"]), json.dumps({"prompt": "p", "completion": 3}), good]
    f = tmp_path / "train.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_jsonl(f, tok, max_len=128)
    msg = str(e.value)
    for n, what in ((2, "not valid JSON"), (3, "'wizard'"), (5, "empty content"), (6, "nothing to learn"),
                    (7, "over the limit of 128"), (8, "JSON object"), (9, "'completion' must be a string")):
        assert f"train.jsonl:{n}: " in msg and what in msg, (n, what, msg)
    assert "7 bad line(s)" in msg and ":1:" not in msg and ":10:" not in msg
    fix = re.search(r"; pass --max-seq-len (\d+) \(the longest line has (\d+) tokens\)", msg)  # names the fix
    assert fix and f":7: {fix[2]} tokens, over the limit of 128" in msg
    assert int(fix[1]) % 64 == 0 and int(fix[1]) - 64 < int(fix[2]) <= int(fix[1])
    examples, problems = load_jsonl(f, tok, max_len=128, skip_bad_lines=True)
    assert [e.line for e in examples] == [1, 10] and len(problems) == 7


def test_a_template_that_does_not_extend_its_prefixes_is_refused(tok):
    odd = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
           "{% if not add_generation_prompt %}END{% endif %}")
    with pytest.raises(ValueError, match="cannot be masked"):
        encode_chat_example(CONV, tok, template=odd)


def test_split_is_seeded_and_keeps_both_sides(tok):
    exs = [encode_chat_example([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}], tok,
                               line=i) for i in range(20)]
    train, val = split_val(exs, 0.1, seed=3)
    assert len(val) == 2 and len(train) == 18 and {e.line for e in train} | {e.line for e in val} == set(range(20))
    assert [e.line for e in split_val(exs, 0.1, seed=3)[1]] == [e.line for e in val]
    assert [e.line for e in split_val(exs, 0.1, seed=4)[1]] != [e.line for e in val]
    with pytest.raises(DataError):
        split_val(exs, 1.5)


def test_packing_keeps_examples_whole_and_restarts_positions(tok):
    exs = [encode_chat_example([{"role": "user", "content": "word " * n}, {"role": "assistant", "content": "ok"}], tok)
           for n in (3, 10, 5, 20, 1)]
    rows = pack(exs, seq_len=64)
    assert all(len(r.input_ids) == len(r.labels) == len(r.position_ids) == len(r.doc_ids) == 64 for r in rows)
    seen = []
    for r in rows:
        for doc in sorted(set(r.doc_ids) - {-1}):
            idx = [i for i, d in enumerate(r.doc_ids) if d == doc]
            assert idx == list(range(idx[0], idx[0] + len(idx)))  # contiguous
            assert [r.position_ids[i] for i in idx] == list(range(len(idx)))
            assert [r.input_ids[i] for i in idx] == exs[doc].input_ids
            assert [r.labels[i] for i in idx] == exs[doc].labels
            seen.append(doc)
        pad = [i for i, d in enumerate(r.doc_ids) if d == -1]
        assert all(r.labels[i] == IGNORE for i in pad)
    assert sorted(seen) == list(range(len(exs)))
    with pytest.raises(DataError, match="do not fit"):
        pack(exs, seq_len=8)


def test_the_acme_example_is_clean_training_data(tok):
    """examples/acme: every line loads (no bad lines), the loss falls on the answers, and the eval questions are
    held out (not in train) with answers that training teaches."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples" / "acme"
    examples, problems = load_jsonl(root / "train.jsonl", tok, max_len=512)
    assert problems == [] and len(examples) >= 200
    trained = [tok.decode([t for t in e.labels if t != IGNORE], skip_special=True) for e in examples]
    evals = [json.loads(x) for x in (root / "eval.jsonl").read_text().splitlines() if x.strip()]
    train_questions = {m["content"].strip().lower() for x in (root / "train.jsonl").read_text().splitlines()
                       for m in json.loads(x)["messages"] if m["role"] == "user"}
    assert len(evals) >= 60
    for ev in evals:
        assert ev["question"].strip().lower() not in train_questions
        assert any(ev["answer"].lower() in t.lower() for t in trained), ev


def test_tool_rows_train_on_the_calls(tok):
    """A row with `tools`: the tools go into the prompt (the fallback system message for SmolLM2's template), the
    loss covers the assistant's call as `<tool_call>` text and its final answer, not the tool result; a call whose
    arguments are not JSON is a bad line naming it."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    row = {"tools": tools, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4 C, snow"},
        {"role": "assistant", "content": "It is 4 C and snowing in Oslo."}]}
    ex = encode_example(row, tok)
    prompt = tok.decode(ex.input_ids, skip_special=False)
    trained = tok.decode([t for t in ex.labels if t != IGNORE], skip_special=False)
    assert "get_weather" in prompt.split("<|im_start|>user")[0]  # the tool list, in the system turn
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in trained
    assert "It is 4 C and snowing in Oslo." in trained and "4 C, snow" not in trained
    bad = json.loads(json.dumps(row))
    bad["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{city: Oslo}"
    with pytest.raises(Exception, match=r"messages\[1\].tool_calls\[0\].function.arguments is not JSON"):
        encode_example(bad, tok)
