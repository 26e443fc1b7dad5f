"""corral eval: scorers, format and JSON checks, acc/acc_norm and perplexity against direct computations with the
model's logits, task files (bundled, user YAML/JSONL, bad ones), the API on loaded models, and the CLI end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from corral.eval import EvalModel, TaskError, bundled_tasks, evaluate, load_task, run_task
from corral.eval.harness import encode_pair, loglikelihoods, score_reply
from corral.eval.scoring import make_scorer, mc_predictions, normalize, perplexity_metrics
from corral.eval.task import arithmetic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny(tiny_chat):
    from corral.eval import load_eval_model

    return load_eval_model(str(tiny_chat), device="cpu", dtype="float32", name="tiny")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, from one unbatched forward: (len(ids) - 1,)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


# --- scorers ------------------------------------------------------------------------------------------------------


def test_normalize():
    assert normalize("  The  Cat,\n sat. ") == "the cat, sat."
    assert normalize("  The  Cat,\n sat. ", ["lower", "punct", "articles", "whitespace", "strip"]) == "cat sat"
    assert normalize(" A ", []) == " A "


def test_exact_contains_regex():
    ex = {"answer": "Paris"}
    assert make_scorer("exact")("  paris ", ex)
    assert not make_scorer("exact")("Paris.", ex)
    assert make_scorer({"type": "exact", "normalize": ["lower", "punct", "strip"]})("Paris.", ex)
    assert not make_scorer({"type": "exact", "normalize": []})("paris", ex)
    assert make_scorer("contains")("It is PARIS, of course", ex)
    assert not make_scorer("contains")("It is Lyon", ex)
    assert make_scorer("contains")("the answer is 42", {"answer": 42})  # numbers are compared as text
    assert make_scorer("contains")("it is Rome", {"answer": ["Paris", "Rome"]})  # any of several
    assert make_scorer("regex:^\\d{3}$")("123", {}) and not make_scorer("regex:^\\d{3}$")("1234", {})
    assert make_scorer({"type": "regex", "pattern": "yes", "ignore_case": True})("YES!", {})
    assert make_scorer("regex")("code TRV-7741 here", {"answer": "TRV-\\d+"})  # the answer is the pattern
    assert make_scorer("regex").needs_answer and not make_scorer("regex:x").needs_answer


@pytest.mark.parametrize("spec, good, bad", [
    ("lowercase", "all small here.", "Not all small"),
    ("uppercase", "ROME!", "Rome"),
    ("max_words:3", "one two three", "one two three four"),
    ("min_words:3", "one two three", "one two"),
    ("max_chars:5", " abcde ", "abcdef"),
    ("bullets:3", "Fruits:\n- apple\n* cherry\n  - plum\n", "- apple\n- cherry"),
    ("numbered:2", "1. boil\n2) pour", "1. boil\n2. pour\n3. drink"),
    ({"type": "starts_with", "text": "Yes"}, "Yes, it is.", "No. Yes"),
    ({"type": "ends_with", "text": "That is all."}, "Sleep heals. That is all.\n", "That is all. Bye"),
    ({"type": "ends_with", "text": "bye", "ignore_case": True}, "Good BYE", "Good bye!"),
    ({"type": "contains_all", "words": ["river", "bridge"]}, "A bridge over the River.", "A river only."),
    ({"type": "excludes", "words": ["cute"]}, "An acute, small cat.", "A cute cat."),
    ("no_commas", "Rain falls. It is wet.", "Rain, rain."),
    ("quoted", ' "Hello there!" ', '"Hello" there'),
])
def test_format_checks(spec, good, bad):
    s = make_scorer(spec)
    assert s(good, {}) and not s(bad, {})
    assert not s.needs_answer


def test_json_checks():
    assert make_scorer("json")('{"a": 1}', {})
    assert make_scorer("json")('```json\n{"a": 1}\n```', {})  # a fenced reply counts
    assert not make_scorer({"type": "json", "fences": False})('```json\n{"a": 1}\n```', {})
    assert not make_scorer("json")('{"a": 1', {}) and not make_scorer("json")("hello", {})
    keys = make_scorer({"type": "json", "keys": ["name", "age"]})
    assert keys('{"name": "Ada", "age": 36}', {}) and not keys('{"name": "Ada"}', {}) and not keys("[1]", {})
    assert make_scorer("json:name,age")('{"name": "Ada", "age": 36}', {})
    arr = make_scorer({"type": "json", "json_type": "array"})
    assert arr("[1, 2]", {}) and not arr('{"a": 1}', {})
    pytest.importorskip("jsonschema")
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}
    s = make_scorer({"type": "json", "schema": schema})
    assert s('["red", "green", "blue"]', {}) and not s('["red", "green"]', {}) and not s("[1, 2, 3]", {})


def test_bad_scorer_specs():
    from corral.eval.scoring import ScorerSpecError

    for spec in ("nonsense", "lowercase:3", {"type": "max_words"}, {"type": "max_words", "n": "x"},
                 "regex:(", {"type": "json", "schema": {"type": 12}}, {"type": "exact", "normalize": ["upper"]}):
        with pytest.raises(ScorerSpecError):
            make_scorer(spec)


# --- metrics ------------------------------------------------------------------------------------------------------


def test_acc_and_acc_norm_by_hand():
    # summed log-likelihoods favour the short choice; per character the long one wins
    assert mc_predictions([-4.0, -6.0], ["ab", "abcdef"]) == (0, 1)  # -2.0/char vs -1.0/char
    assert mc_predictions([-3.0, -3.0, -6.0], ["x", "y", "zzz"]) == (0, 2)  # ties: the first, as np.argmax
    assert mc_predictions([-2.0, -4.0], ["a", "bb"]) == (0, 0)  # a tie after normalising: the first
    assert mc_predictions([-1.0, -2.0], ["Paris", "Rome"]) == (0, 0)  # -0.2 vs -0.5


def test_perplexity_metrics_by_hand():
    m = perplexity_metrics(nll_sum=10.0, tokens=5, n_bytes=20)
    assert m["ppl"] == pytest.approx(math.exp(2.0))
    assert m["bits_per_byte"] == pytest.approx(10.0 / 20 / math.log(2))
    assert m["bits_per_token"] == pytest.approx(2.0 / math.log(2))


def test_loglikelihoods_equal_the_direct_computation(tiny):
    reqs = [([1, 5, 9, 200], [17, 33]), ([1, 7], [8, 9, 10, 11, 12]), ([1] * 30, [4]), ([2], [3, 3])]
    for batch_tokens in (16, 4096):  # one sequence per batch, and all of them padded into one
        got = loglikelihoods(tiny.model, reqs, batch_tokens=batch_tokens)
        for (ctx, cont), (ll, greedy) in zip(reqs, got, strict=True):
            lp = direct_logprobs(tiny.model, ctx + cont)[len(ctx) - 1:]
            assert ll == pytest.approx(float(lp.sum()), abs=1e-4)
            with torch.no_grad():
                pred = tiny.model(torch.tensor([ctx + cont]))[0, len(ctx) - 1:-1].argmax(-1)
            assert greedy == bool((pred == torch.tensor(cont)).all())
    # a greedy continuation is recognised as one
    with torch.no_grad():
        nxt = int(tiny.model(torch.tensor([[1, 5, 9]]))[0, -1].argmax())
    assert loglikelihoods(tiny.model, [([1, 5, 9], [nxt])])[0][1] is True


def test_multiple_choice_task_matches_the_model_logits(tiny, tmp_path):
    data = [{"question": "Which is a colour?", "choices": ["blue", "a very long wrong answer", "seven"], "answer": 0},
            {"question": "Pick the number", "choices": ["cat", "12"], "answer": "12"},
            {"question": "Odd one", "choices": ["yes", "no", "maybe", "tomorrow"], "answer": 3}]
    write(tmp_path / "mc.jsonl", "".join(json.dumps(d) + "\n" for d in data))
    write(tmp_path / "mc.yaml", 'kind: multiple_choice\ndata: mc.jsonl\nprompt: "Q: {{ question }}\\nA:"\n')
    task = load_task(tmp_path / "mc.yaml")
    metrics, records = run_task(tiny, task)
    acc = acc_norm = 0
    for d, rec in zip(data, records, strict=True):
        gold = d["answer"] if isinstance(d["answer"], int) else d["choices"].index(d["answer"])
        lls = []
        for c in d["choices"]:
            ctx, cont = encode_pair(tiny.tok, f"Q: {d['question']}\nA:", " " + c)
            assert ctx + cont == tiny.tok.encode(f"Q: {d['question']}\nA: {c}")
            lls.append(float(direct_logprobs(tiny.model, ctx + cont)[len(ctx) - 1:].sum()))
        assert rec["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
        pred_norm = max(range(len(lls)), key=lambda i: (lls[i] / len(d["choices"][i]), -i))
        assert (rec["pred"], rec["pred_norm"], rec["gold"]) == (pred, pred_norm, gold)
        acc += pred == gold
        acc_norm += pred_norm == gold
    assert metrics == {"acc": acc / 3, "acc_norm": acc_norm / 3}


def test_chat_multiple_choice_scores_after_the_generation_prompt(tiny, tmp_path):
    from corral.chat import encode_chat

    write(tmp_path / "mc.yaml", "kind: multiple_choice\nchat: true\nsystem: Be brief.\nexamples:\n"
          "  - {question: 'Sky colour?', choices: [blue, green], answer: 0}\n")
    task = load_task(tmp_path / "mc.yaml")
    assert task.target_delimiter == ""
    _, records = run_task(tiny, task)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky colour?"}]
    ctx = encode_chat(tiny.tok, msgs)
    lls = [float(direct_logprobs(tiny.model, ctx + tiny.tok.encode(c))[len(ctx) - 1:].sum()) for c in ("blue", "green")]
    assert records[0]["loglikelihoods"] == pytest.approx(lls, abs=1e-4)


def test_encode_pair_moves_trailing_spaces_to_the_continuation(tok):
    ctx, cont = encode_pair(tok, "Answer: ", "Paris")
    assert ctx == tok.encode("Answer:") and ctx + cont == tok.encode("Answer: Paris")


@pytest.mark.parametrize("max_len", [1024, 16])  # one window, and several
def test_perplexity_is_exp_of_the_mean_nll(tiny, tmp_path, max_len):
    texts = ["The bakery on the corner opens before sunrise, and the ovens are hot by five.",
             "A bicycle turns the push of a rider's legs into forward motion; gears decide how far."]
    write(tmp_path / "p.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts))
    write(tmp_path / "p.yaml", f"kind: perplexity\ndata: p.jsonl\nmax_len: {max_len}\n")
    metrics, records = run_task(tiny, load_task(tmp_path / "p.yaml"))
    nll, n = 0.0, 0
    for t, rec in zip(texts, records, strict=True):
        ids = [tiny.tok.eos_id] + tiny.tok.encode(t)  # no BOS for this tokenizer: EOS starts the text
        for s in range(0, len(ids) - 1, max_len):  # disjoint windows, each token predicted once
            nll -= float(direct_logprobs(tiny.model, ids[s: s + max_len + 1]).sum())
        n += len(ids) - 1
        assert rec["tokens"] == len(ids) - 1
    assert metrics["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(nll / sum(len(t.encode()) for t in texts) / math.log(2),
                                                     rel=1e-5)
    assert metrics["bits_per_token"] == pytest.approx(nll / n / math.log(2), rel=1e-5)


# --- tasks --------------------------------------------------------------------------------------------------------


def test_bundled_tasks():
    assert {"acme_qa", "arithmetic", "general_mc", "format", "prose"} <= set(bundled_tasks())
    acme = load_task("acme_qa")
    src = [json.loads(x) for x in (ROOT / "examples" / "acme" / "eval.jsonl").read_text().splitlines() if x.strip()]
    assert [e.fields for e in acme.examples] == src and acme.chat
    assert acme.examples[0].messages[0] == {"role": "system",
                                            "content": "You are the Acme Lanternworks internal assistant."}
    mc = load_task("general_mc")
    assert len(mc.examples) == 40 and all(len(e.fields["choices"]) == 4 for e in mc.examples)
    assert sorted(e.fields["answer"] for e in mc.examples) == sorted(list(range(4)) * 10)
    fmt = load_task("format")
    assert 10 <= len(fmt.examples) <= 15 and all(e.checks for e in fmt.examples) and fmt.metrics == ["acc",
                                                                                                      "checks_acc"]
    assert load_task("prose").kind == "perplexity"


def test_bundled_tasks_ship_as_package_data():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "tasks/*" in cfg["tool"]["setuptools"]["package-data"]["corral.eval"]


def test_arithmetic_is_generated_with_a_fixed_seed():
    a, b = arithmetic(50, seed=1234), arithmetic(50, seed=1234)
    assert a == b != arithmetic(50, seed=1)
    for p in a:
        assert int(p["answer"]) == eval(f"{p['a']} {p['op']} {p['b']}")  # noqa: S307 - digits and one operator
    task = load_task("arithmetic")
    assert [e.fields for e in task.examples[:50]] == a
    assert task.examples[0].text.endswith(f"Q: What is {a[0]['a']} {a[0]['op']} {a[0]['b']}?\nA:")
    ok, verdicts = score_reply(task, task.examples[0], f" {a[0]['answer']}")
    assert ok and verdicts == {"exact": True}
    assert not score_reply(task, task.examples[0], " 1")[0]


def test_user_yaml_generate_task(tiny, tmp_path):
    write(tmp_path / "mine.yaml", """
name: mine
kind: generate
description: a user task
prompt: "Say {{ word }}:"
max_tokens: 6
stop: ["\\n"]
extract: "(\\\\w+)"
score: [{type: regex, pattern: "."}]
examples:
  - {word: hello, checks: [max_chars:0]}
  - {word: bye}
  - messages: [{role: user, content: "Say yes"}]
""")
    task = load_task(tmp_path / "mine.yaml")
    assert task.name == "mine" and task.examples[2].messages == [{"role": "user", "content": "Say yes"}]
    assert task.metrics == ["acc", "checks_acc"]
    metrics, records = run_task(tiny, task)
    assert [r["prompt"] for r in records] == ["Say hello:", "Say bye:", [{"role": "user", "content": "Say yes"}]]
    for ex, rec in zip(task.examples, records, strict=True):
        assert 0 < len(tiny.tok.encode(rec["reply"])) <= 6 + 1 and "\n" not in rec["reply"]
        assert (rec["ok"], rec["checks"]) == score_reply(task, ex, rec["reply"])
    assert records[0]["ok"] is False  # max_chars:0 fails any reply
    assert metrics["acc"] == sum(r["ok"] for r in records) / 3
    # the same run again gives the same replies (greedy, batch invariant)
    assert [r["reply"] for r in run_task(tiny, task)[1]] == [r["reply"] for r in records]


def test_jsonl_task_files_say_their_kind(tmp_path):
    t = load_task(write(tmp_path / "qa.jsonl", '{"question": "2+2?", "answer": "4"}\n'))
    assert t.kind == "generate" and [s.name for s in t.scorers] == ["contains"]
    t = load_task(write(tmp_path / "fmt.jsonl", '{"prompt": "Shout", "checks": ["uppercase"]}\n'))
    assert t.kind == "generate" and not t.scorers and t.examples[0].checks[0].name == "uppercase"
    assert load_task(write(tmp_path / "mc.jsonl", '{"question": "?", "choices": ["a", "b"], "answer": 1}\n')).kind \
        == "multiple_choice"
    assert load_task(write(tmp_path / "t.jsonl", '{"text": "hello"}\n')).kind == "perplexity"
    assert load_task(write(tmp_path / "doc.txt", "Some text.\n")).kind == "perplexity"


@pytest.mark.parametrize("name, text, where, says", [
    ("syntax.yaml", "kind: generate\nprompt: [unclosed\n", ":3", "not valid YAML"),
    ("unknown.yaml", "kind: generate\ndata: x.jsonl\nscoring: exact\n", ":3", "unknown key 'scoring'"),
    ("kind.yaml", "kind: essay\nexamples: [{prompt: a, answer: b}]\n", ":1", "kind 'essay'"),
    ("nodata.yaml", "kind: generate\ndata: missing.jsonl\n", ":2", "does not exist"),
    ("template.yaml", "kind: generate\nprompt: '{{ qestion }}'\nscore: [contains]\nexamples:\n  - {question: a, "
     "answer: b}\n", ":5", "qestion"),
    ("noanswer.yaml", "kind: generate\nscore: [exact]\nexamples:\n  - {prompt: a, answer: b}\n  - {prompt: c}\n",
     ":5", "needs an `answer`"),
    ("scorer.yaml", "kind: generate\nscore: [fuzzy]\nexamples: [{prompt: a}]\n", ":2", "unknown scorer 'fuzzy'"),
    ("check.yaml", "kind: generate\nexamples:\n  - {prompt: a, checks: [max_words]}\n", ":3", "needs `n`"),
    ("mc.yaml", "kind: multiple_choice\nexamples:\n  - {prompt: a, choices: [x, y], answer: 0}\n  - {prompt: b, "
     "choices: [x, y], answer: 2}\n", ":4", "`answer`"),
    ("bad.jsonl", '{"prompt": "a", "answer": "b"}\n{"prompt": "c", "answer": \n', ":2", "not valid JSON"),
    ("notask.jsonl", '{"foo": 1}\n', ":1", "cannot tell the task kind"),
])
def test_bad_task_files_name_file_and_line(tmp_path, name, text, where, says):
    path = write(tmp_path / name, text)
    with pytest.raises(TaskError) as e:
        load_task(path)
    msg = str(e.value)
    assert f"{path}{where}" in msg and says in msg, msg


def test_unknown_task_name():
    with pytest.raises(TaskError, match="neither a bundled task"):
        load_task("no_such_task")


# --- the API and the CLI ------------------------------------------------------------------------------------------


def test_evaluate_takes_loaded_models_and_paths(tiny, tiny_chat, tmp_path):
    tasks = ["general_mc", "prose"]
    by_object = evaluate([(tiny.model, tiny.tok), EvalModel("named", tiny.model, tiny.tok)], tasks, limit=4,
                         progress=False)
    by_path = evaluate([str(tiny_chat)], tasks, limit=4, dtype="float32", device="cpu", progress=False,
                       out=tmp_path / "rep")
    assert list(by_object["results"]) == ["model1", "named"]
    a, b = by_object["results"]["model1"], by_path["results"][str(tiny_chat)]
    for t in tasks:
        for m in by_object["tasks"][t]["metrics"]:
            assert a[t][m] == pytest.approx(b[t][m], rel=1e-6), (t, m)
    assert a["general_mc"]["n"] == 4 and by_path["tasks"]["general_mc"]["examples"] == 4
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["results"] == by_path["results"]


def test_an_adapter_folder_evaluates_as_its_merged_model(tiny_chat, tmp_path):
    from corral.eval import load_eval_model
    from corral.model.loader import load_model
    from corral.model.lora import apply_lora, merge_lora, save_adapter

    lm = load_model(str(tiny_chat), device="cpu", dtype="float32")
    apply_lora(lm.model, r=4, alpha=8.0)
    torch.manual_seed(1)
    for name, p in lm.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # B starts at zero: make the adapter change something
    save_adapter(lm.model, tmp_path / "adapter", base_model=str(tiny_chat))
    merge_lora(lm.model)
    em = load_eval_model(str(tmp_path / "adapter"), device="cpu")
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        assert torch.allclose(em.model(ids), lm.model(ids), atol=1e-4)
        assert not torch.allclose(em.model(ids), load_model(str(tiny_chat), device="cpu").model(ids), atol=1e-3)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_cli_eval_end_to_end(tiny_chat, tmp_path):
    write(tmp_path / "caps.yaml", "kind: generate\nchat: true\nmax_tokens: 4\nscore: [contains]\nexamples:\n"
          "  - {question: 'Capital of France?', answer: Paris}\n  - {question: 'Capital of Peru?', answer: Lima}\n")
    out = tmp_path / "report"
    r = run_cli("eval", str(tiny_chat), str(tiny_chat), "--tasks", f"general_mc,{tmp_path / 'caps.yaml'},arithmetic",
                "--limit", "3", "--out", str(out), "--device", "cpu", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["tasks"]) == ["general_mc", "caps", "arithmetic"]
    assert list(rep["results"]) == [str(tiny_chat), f"{tiny_chat}#2"]
    res = rep["results"][str(tiny_chat)]
    assert set(res["general_mc"]) >= {"acc", "acc_norm", "n", "seconds"} and res["caps"]["n"] == 2
    assert res == {t: {**v, "seconds": res[t]["seconds"]} for t, v in rep["results"][f"{tiny_chat}#2"].items()}
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "general_mc" in page and "report.png" in page
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * (3 + 2 + 3)
    assert "general_mc" in r.stdout and "acc_norm" in r.stdout and "report.json" in r.stdout


def test_cli_eval_errors_are_one_line(tiny_chat, tmp_path):
    bad = write(tmp_path / "bad.yaml", "kind: generate\nexamples:\n  - {prompt: a, checks: [max_words]}\n")
    for args, needle in ((["--tasks", str(bad)], f"{bad}:3"), (["--tasks", "nope"], "neither a bundled task"),
                         (["--limit", "0"], "--limit")):
        r = run_cli("eval", str(tiny_chat), *args, "--out", str(tmp_path / "o"))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("corral: error:") and needle in lines[0], r.stderr
    r = run_cli("eval", "--list-tasks")
    assert r.returncode == 0 and "general_mc" in r.stdout and "arithmetic" in r.stdout


@pytest.mark.slow
def test_default_model_on_arithmetic(tmp_path):
    t0 = time.perf_counter()
    rep = evaluate(["default"], ["arithmetic"], limit=5, out=tmp_path, progress=False)
    res = rep["results"]["default"]["arithmetic"]
    assert res["n"] == 5 and 0.0 <= res["acc"] <= 1.0
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert all(s["finish_reason"] in ("stop", "length") and "\n" not in s["reply"] for s in samples)
    assert sum(any(c.isdigit() for c in s["reply"]) for s in samples) >= 4  # the 4-shot prompt is followed
    assert time.perf_counter() - t0 < 60


# --- tool calls ---------------------------------------------------------------------------------------------------


def test_calls_match_is_an_order_free_ast_match():
    from corral.eval.scoring import calls_match

    want = [{"name": "f", "arguments": {"a": ["Oslo"], "n": [2, ""]}}, {"name": "g", "arguments": {}}]
    assert calls_match([("g", {}), ("f", {"a": " oslo"})], want)  # any order; optional left out; case, space
    assert calls_match([("f", {"a": "Oslo", "n": 2.0}), ("g", {})], want)
    for wrong in ([("f", {"a": "Oslo"})], [("f", {"a": "Oslo", "n": True}), ("g", {})],
                  [("f", {"n": 2}), ("g", {})], [("f", {"a": "Oslo", "x": 1}), ("g", {})],
                  [("f", {"a": "Oslo"}), ("f", {"a": "Oslo"})]):
        assert not calls_match(wrong, want), wrong
    assert calls_match([], []) and not calls_match([("g", {})], [])


def test_tool_calls_task_bundled_and_checked(tmp_path):
    t = load_task("tool_calls")
    cats = {e.fields["category"] for e in t.examples}
    assert t.kind == "tool_calls" and len(t.examples) == 57 and cats == {"simple", "multiple", "parallel",
                                                                        "irrelevance"}
    assert t.metrics[:3] == ["acc", "call_acc", "no_call_acc"] and "parallel_acc" in t.metrics
    row = {"tools": [{"type": "function", "function": {"name": "f"}}], "messages": [{"role": "user",
                                                                                       "content": "x"}]}
    assert load_task(write(tmp_path / "ok.jsonl", json.dumps({**row, "expected": []}) + "\n")).kind == "tool_calls"
    for bad, says in (({**row, "expected": [{"name": "nope"}]}, "expected\\[0\\]"),
                      ({**row, "expected": [{"name": "f", "arguments": {"a": "x"}}]}, "list of acceptable"),
                      ({**row, "tools": [{"type": "function", "function": {"name": "a b"}}], "expected": []},
                       "tools\\[0\\].function.name")):
        with pytest.raises(TaskError, match=says):
            load_task(write(tmp_path / "bad.jsonl", json.dumps(bad) + "\n"))


def test_tool_calls_task_runs_with_the_grammar(tiny):
    """On a random-weight model (prompted with the tools, decoded under the lazy grammar): the metrics add up from
    the records, and a no-call example is right exactly when no call was made."""
    task = load_task("tool_calls")
    metrics, records = run_task(tiny, task, limit=12)
    assert set(metrics) >= {"acc", "call_acc"} and len(records) == 12
    n_call = sum(1 for r in records if r["expected"])
    assert metrics["call_acc"] == pytest.approx(sum(r["ok"] for r in records if r["expected"]) / n_call)
    for r in records:
        if not r["expected"]:
            assert r["ok"] == (r["calls"] == [])
        assert all(isinstance(c["arguments"], dict) for c in r["calls"])
