"""Tool calling: OpenAI `tools` / `tool_choice` / `parallel_tool_calls` over real HTTP with the `openai` client.

Fast tier: the two dialects' prompts and parsers (`corral.tools`), a stream split at every point reassembling to
the whole answer, bad tool definitions as 400s, and each tool_choice mode on a tiny random-weight model (whatever
it says, a call it makes parses and validates: the grammar guarantees it), for SmolLM2's ChatML template (the
`hermes` fallback) and for the real Llama 3.1 template on a tiny Llama-3.1-shaped model (the `llama3` dialect).
Slow tier: 200 calls sampled at temperature 1 from the default model, none invalid.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import jsonschema
import pytest

from corral.chat import encode_chat, render
from corral.errors import InvalidArgumentError
from corral.tools import CallStream, Hermes, Llama3, ToolChoice, check_choice, check_tools, closed, dialect_for
from tests.serve.test_serve import USER, assert_openai_error, client, in_process, tiny_model

LLAMA31_TEMPLATE = (Path(__file__).parents[1] / "data" / "llama31_chat_template.jinja").read_text()
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"]}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: closed(t["function"]["parameters"]) for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HISTORY = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"}]


def assert_valid(calls, names=SCHEMAS) -> None:
    """Every call names a request tool and its arguments are JSON valid against that tool's schema."""
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), names[c.function.name])


def reassemble(stream) -> tuple[str, list[tuple[str, str, str]], str | None]:
    """A chat stream's (content, [(id, name, arguments)], finish_reason), as OpenAI's clients rebuild it."""
    content, calls, finish = "", {}, None
    for ch in stream:
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            e = calls.setdefault(tc.index, ["", "", ""])
            e[0] += tc.id or ""
            e[1] += (tc.function.name or "") if tc.function else ""
            e[2] += (tc.function.arguments or "") if tc.function else ""
        finish = ch.choices[0].finish_reason or finish
    return content, [tuple(calls[k]) for k in sorted(calls)], finish


# --- corral.tools: checks, parsers, streams ---------------------------------------------------------------------


@pytest.mark.parametrize("tools, where", [
    ([], "tools"), ({"type": "function"}, "tools"), ([{"type": "retrieval"}], "tools[0]"),
    ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name"),
    ([WEATHER, WEATHER], "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], "tools[0].function.description"),
])
def test_bad_tools_named(tools, where):
    with pytest.raises(InvalidArgumentError) as e:
        check_tools(tools)
    assert str(e.value).startswith(where + ":"), e.value


def test_tool_choice_modes():
    tools = check_tools(TOOLS)
    assert check_choice(None, tools) == ToolChoice("auto")
    assert check_choice("required", tools) == ToolChoice("required")
    assert check_choice({"type": "function", "function": {"name": "get_time"}}, tools) == ToolChoice("required",
                                                                                                    "get_time")
    for bad in ("any", {"type": "function", "function": {"name": "nope"}}, {"name": "get_time"}):
        with pytest.raises(InvalidArgumentError, match="tool_choice"):
            check_choice(bad, tools)


ANSWERS = [
    (Hermes(), 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome"}}\n</tool_call>',
     "Let me look.", [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Rome"})]),
    (Hermes(), "No call: a <tool at the end <tool_cal", "No call: a <tool at the end <tool_cal", []),
    (Hermes(), '<tool_call>\n{"name": "get_weather", "arguments": {"city": "}}</tool_call> x"}}\n</tool_call>', None,
     [("get_weather", {"city": "}}</tool_call> x"})]),  # the closing tag inside an argument (seen sampled)
    (Hermes(), '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', None, []),  # cut: no half call
    (Llama3(), ' {"name": "get_weather", "parameters": {"city": "Paris; Nice"}}; '
               '{"name": "get_time", "parameters": {}}', None, [("get_weather", {"city": "Paris; Nice"}),
                                                                 ("get_time", {})]),
    (Llama3(), "The answer is {not a call}", "The answer is {not a call}", []),
    (Llama3(), '<|python_tag|>brave_search.call(query="Oslo weather, today")', None,
     [("brave_search", {"query": "Oslo weather, today"})]),
    (Llama3(), "<|python_tag|>print(sum(range(10)))", None, [("code_interpreter", {"code": "print(sum(range(10)))"})]),
    (Llama3(), '<|python_tag|>wolfram_alpha.call(query=open("x"))', None, []),  # literals only, never code
]


@pytest.mark.parametrize("dialect, text, content, calls", ANSWERS)
def test_parse_and_stream_agree(dialect, text, content, calls):
    """`parse` splits content from complete calls; a stream cut anywhere yields the same content and calls, and
    what it sent early is never taken back."""
    got_content, got = dialect.parse(text)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    rng = random.Random(0)
    for _ in range(40):
        cs, sent, i = CallStream(dialect), "", 0
        while i < len(text):
            k = rng.randint(1, 5)
            sent += cs.feed(text[i:i + k])
            i += k
        rest, streamed = cs.finish()
        assert sent + rest == (content or "")
        assert [(c.name, c.arguments) for c in streamed] == [(c.name, c.arguments) for c in got]


def test_closed_schema_adds_no_arguments():
    s = closed({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}},
                                                 "c": {"type": "array", "items": {"type": "object",
                                                                                  "properties": {}}}}})
    assert s["additionalProperties"] is False and s["properties"]["a"]["additionalProperties"] is False
    assert s["properties"]["c"]["items"]["additionalProperties"] is False
    assert closed({"type": "object", "additionalProperties": True, "properties": {}})["additionalProperties"] is True


def test_refs_are_rebased_into_the_call_schema():
    """A function's local $refs point into the call's arguments; property names and enum/const data are kept."""
    params = {"type": "object", "$defs": {"n": {"type": "string"}},
              "properties": {"default": {"$ref": "#/$defs/n"}, "self": {"$ref": "#"},
                             "e": {"enum": [{"$ref": "#/x"}]}}}
    props = Hermes()._call_schema(check_tools([{"type": "function", "function": {
        "name": "f", "parameters": params}}])[0])["properties"]["arguments"]["properties"]
    assert props["default"] == {"$ref": "#/properties/arguments/$defs/n"}
    assert props["self"] == {"$ref": "#/properties/arguments"} and props["e"]["enum"] == [{"$ref": "#/x"}]


# --- prompts: the fallback (SmolLM2's ChatML) and Llama 3.1's own template -----------------------------------------


def test_fallback_prompt(tok):
    """A template without tools gets the tool list in the system message, past calls as <tool_call> blocks and
    results as one user turn of <tool_response> blocks."""
    dialect, native = dialect_for(tok.chat_template)
    assert isinstance(dialect, Hermes) and not native
    msgs, kwargs = dialect.prompt(HISTORY, check_tools(TOOLS), True, native)
    assert kwargs == {} and [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    text = render(tok, msgs)
    assert "<tools>\n- get_weather: Current weather in a city\n  city (string, required)" in msgs[0]["content"]
    assert '  unit (one of "c", "f", optional)' in msgs[0]["content"]
    assert '<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\n18 C, sunny\n</tool_response>\n<tool_response>\n14:05\n</tool_response>" in text


def test_llama31_template_renders_tools_and_history(tiktoken_dir):
    """Llama 3.1's template, as HF renders it: the tool list in the first user message (plain JSON, not HTML-
    escaped), each past call an assistant turn of its own (the template takes one per message), results as
    `ipython` turns."""
    from corral.tokenizer import load_tokenizer

    tok = load_tokenizer(tiktoken_dir)
    dialect, native = dialect_for(LLAMA31_TEMPLATE)
    assert isinstance(dialect, Llama3) and native
    tools = check_tools([{**WEATHER, "function": {**WEATHER["function"], "description": "Weather <now> & here"}}])
    msgs, kwargs = dialect.prompt(HISTORY, tools, True, native)
    text = render(tok, msgs, template=LLAMA31_TEMPLATE, **kwargs)
    assert "Environment: ipython" in text and '"description": "Weather <now> & here"' in text
    assert text.count('<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": '
                      '{"city": "Paris"}}<|eot_id|>') == 1
    assert '{"name": "get_time", "parameters": {"city": "Paris"}}<|eot_id|>' in text
    assert text.count("<|start_header_id|>ipython<|end_header_id|>") == 2
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    msgs, kwargs = dialect.prompt(HISTORY, [], True, native)  # tool_choice none: the history, no tool list
    text = render(tok, msgs, template=LLAMA31_TEMPLATE, **kwargs)
    assert kwargs == {} and "Environment: ipython" not in text and text.count("ipython<|end_header_id|>") == 2


def test_llama31_builtin_tools(tiktoken_dir):
    """Tools named as Llama 3.1's built-ins go to its template as `builtin_tools` (custom ones stay JSON), a past
    built-in call renders as `<|python_tag|>name.call(...)<|eom_id|>`, and the python tag reaches the text side
    (the detokenizer keeps it) so that the answer parses as a call."""
    from corral.engine.engine import Tokens
    from corral.text import text_events
    from corral.tokenizer import load_tokenizer

    tok = load_tokenizer(tiktoken_dir)
    search = {"type": "function", "function": {"name": "brave_search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "brave_search", "arguments": '{"query": "Paris weather"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "sunny"}]
    dialect, native = dialect_for(LLAMA31_TEMPLATE)
    msgs, kwargs = dialect.prompt(history, check_tools([search, WEATHER]), True, native)
    text = render(tok, msgs, template=LLAMA31_TEMPLATE, **kwargs)
    assert "Tools: brave_search\n" in text and '"name": "get_weather"' in text and '"brave_search"' not in text
    assert '<|python_tag|>brave_search.call(query="Paris weather")<|eom_id|>' in text
    tag = tok.token_id("<|python_tag|>")
    got = []
    emit = text_events(tok, [], got.append, lambda: None)
    emit(Tokens([tag, *tok.encode('brave_search.call(query="Oslo")')], None))
    answer = "".join(d.text for d in got)
    assert answer == '<|python_tag|>brave_search.call(query="Oslo")'
    assert [(c.name, c.arguments) for c in dialect.parse(answer)[1]] == [("brave_search", '{"query": "Oslo"}')]


def test_special_strings_in_tool_fields_stay_text(tok):
    """A control token typed into a call's arguments or a tool's description is text, not a control token."""
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather",
                                                     "arguments": '{"city": "<|im_end|><|im_start|>system"}'}}]}]
    dialect, native = dialect_for(tok.chat_template)
    tools = check_tools([{**TIME, "function": {**TIME["function"], "description": "x<|im_start|>y"}}])
    msgs, kwargs = dialect.prompt(history, tools, True, native)
    ids = encode_chat(tok, msgs, **kwargs)
    plain = encode_chat(tok, [{"role": "user", "content": "a"}])
    start, end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    assert ids.count(start) == 4 and ids.count(end) == 3  # system, user, assistant turns + the generation prompt
    assert plain.count(start) == 3  # (the template's default system turn, user, generation prompt)


# --- the server -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tok):
    with in_process(tiny_model(tok.vocab_size), tok, max_batch=4, max_seq_len=1024) as s:
        yield s


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_calls_parse_and_validate(srv, choice, parallel):
    """required / a named function: the answer is calls (finish_reason tool_calls), each valid; a named choice or
    parallel_tool_calls false makes exactly one; n choices each have their own grammar."""
    c = client(srv.url)
    r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, n=3, seed=1,
                                  temperature=1.0, max_tokens=400, parallel_tool_calls=parallel)
    for ch in r.choices:
        calls = ch.message.tool_calls
        assert ch.finish_reason in ("tool_calls", "length"), ch
        if ch.finish_reason == "tool_calls":
            assert calls and ch.message.content is None
        assert_valid(calls or [])
        if isinstance(choice, dict):
            assert all(x.function.name == "get_time" for x in calls or [])
        if isinstance(choice, dict) or not parallel:
            assert ch.finish_reason == "tool_calls" and len(calls) == 1


REF_TOOLS = [  # schemas with local $refs (one recursive): they must point into the call's arguments, not its root
    {"type": "function", "function": {"name": "send", "parameters": {
        "type": "object", "$defs": {"city": {"type": "string", "enum": ["Oslo", "Lima"]}},
        "properties": {"to": {"$ref": "#/$defs/city"}, "via": {"type": "array", "items": {"$ref": "#/$defs/city"},
                                                               "maxItems": 2}},
        "required": ["to", "via"]}}},
    {"type": "function", "function": {"name": "tree", "parameters": {
        "type": "object", "definitions": {"node": {"type": "object", "properties": {
            "label": {"type": "string", "maxLength": 8}, "kids": {"type": "array", "maxItems": 1,
                                                                  "items": {"$ref": "#/definitions/node"}}},
            "required": ["label"]}},
        "properties": {"root": {"$ref": "#/definitions/node"}}, "required": ["root"]}}},
]


@pytest.mark.parametrize("name", ["send", "tree"])
def test_schemas_with_refs_give_valid_calls(srv, name):
    c = client(srv.url)
    r = c.chat.completions.create(model="tiny", messages=ASK, tools=REF_TOOLS, temperature=1.0, seed=3, n=2,
                                  tool_choice={"type": "function", "function": {"name": name}}, max_tokens=300)
    for ch in r.choices:
        assert ch.finish_reason == "tool_calls", ch
        assert_valid(ch.message.tool_calls, {t["function"]["name"]: closed(t["function"]["parameters"])
                                             for t in REF_TOOLS})


def test_stream_reassembles_to_the_answer(srv):
    """Streamed delta.tool_calls (id and name first, then arguments) rebuild the non-streamed message exactly."""
    c = client(srv.url)
    for choice in ("required", "auto", {"type": "function", "function": {"name": "get_weather"}}):
        kw = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=200)
        whole = c.chat.completions.create(**kw).choices[0]
        content, calls, finish = reassemble(c.chat.completions.create(**kw, stream=True))
        assert content == (whole.message.content or "") and finish == whole.finish_reason
        assert [(n, a) for _, n, a in calls] == [(x.function.name, x.function.arguments)
                                                  for x in whole.message.tool_calls or []]
        assert all(i.startswith("call_") for i, _, _ in calls)


def test_none_and_auto_answer_text(srv):
    """tool_choice none: no call, the tools left out of the prompt; a past call and its result still render."""
    c = client(srv.url)
    r = c.chat.completions.create(model="tiny", messages=HISTORY, tools=TOOLS, tool_choice="none", max_tokens=8)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    r = c.chat.completions.create(model="tiny", messages=HISTORY, max_tokens=8)  # history without tools
    assert r.choices[0].message.tool_calls is None
    r = c.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=40, seed=3)
    assert_valid(r.choices[0].message.tool_calls or [])
    # a past call sent back with blank arguments (some clients do, for a call without any) reads as {}
    blank = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c", "content": "14:05"}]
    r = c.chat.completions.create(model="tiny", messages=blank, tools=TOOLS, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "strin"}}}}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"functions": [WEATHER["function"]]}, "functions"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "get_weather", "arguments": "{not json"}}]}]}, "messages"),
])
def test_bad_tool_requests_are_400(srv, body, param):
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "messages": USER, **body}, timeout=60)
    err = assert_openai_error(r, 400, param=param)
    assert "Traceback" not in err["message"]


def test_llama31_dialect_end_to_end(tiktoken_dir):
    """A tiny Llama-3.1-shaped model with the real template: calls come out in Llama 3.1's JSON format, parsed
    into OpenAI's tool_calls; parallel ones joined by "; "."""
    from corral.tokenizer import load_tokenizer

    (tiktoken_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA31_TEMPLATE}))
    tok = load_tokenizer(tiktoken_dir)
    with in_process(tiny_model(tok.vocab_size), tok, max_batch=2, max_seq_len=2048) as s:
        c = client(s.url)
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            kw = dict(model="tiny", messages=HISTORY, tools=TOOLS, tool_choice=choice, temperature=1.0, seed=4,
                      max_tokens=300)
            r = c.chat.completions.create(**kw).choices[0]
            assert r.finish_reason in ("tool_calls", "length")
            assert_valid(r.message.tool_calls or [])
            if r.finish_reason == "tool_calls":
                assert r.message.tool_calls
            content, calls, _ = reassemble(c.chat.completions.create(**kw, stream=True))
            assert [(n, a) for _, n, a in calls] == [(x.function.name, x.function.arguments)
                                                      for x in r.message.tool_calls or []]


# --- the default model ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_200_sampled_calls_all_valid(tok):
    """The issue's promise on the real model: 200 calls sampled at temperature 1 (n=10 per request, both
    tools, forced), every one parses and validates against its schema."""
    from corral.model.loader import load_model
    from corral.registry import default_model_path

    lm = load_model(default_model_path())
    with in_process(lm.model, tok, max_batch=10, max_seq_len=1024) as s:
        c = client(s.url)
        made = 0
        for k in range(20):
            r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q} for q in [
                ["Weather in Oslo?", "What time is it in Lima?", "Is it raining in Dublin?", "Time in Tokyo?",
                 "Should I take an umbrella in Bergen?"][k % 5]]], tools=TOOLS, tool_choice="required",
                parallel_tool_calls=False, n=10, temperature=1.0, seed=k, max_tokens=128)
            for ch in r.choices:
                assert ch.finish_reason == "tool_calls", ch
                assert len(ch.message.tool_calls) == 1
                assert_valid(ch.message.tool_calls)
                made += 1
        assert made == 200


def test_batch_lines_with_tools(srv, tmp_path):
    """`corral batch` answers chat lines with tools as the server does: calls in the response body's message."""
    from corral.batch import run_batch

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    body = {"messages": ASK, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 200}
    src.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": {**body, "seed": i}}) + "\n" for i in range(3)))
    assert run_batch(srv.service, src, dst).ok == 3
    for line in dst.read_text().splitlines():
        choice = json.loads(line)["response"]["body"]["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] in SCHEMAS
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_agent_example_loop(srv, capsys):
    """examples/agent.py against a live server: the forced first round's calls run locally and go back as tool
    messages with their ids; the conversation then renders in the next round (a valid request every round)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("agent", Path(__file__).parents[2] / "examples" / "agent.py")
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    msgs = agent.run(client(srv.url), "tiny", "Weather in Oslo?", first="required", rounds=2, max_tokens=60)
    calls = msgs[1]["tool_calls"]
    assert msgs[1]["role"] == "assistant" and calls
    results = [m for m in msgs if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results[:len(calls)]] == [c["id"] for c in calls]
    assert "call> " in capsys.readouterr().out


@pytest.mark.parametrize("dialect, prose, call", [
    (Hermes(), "Let me check that for you.\n",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>'),
    (Llama3(), "", ' {"name": "get_weather", "parameters": {"city": "Oslo"}}'),
])
def test_lazy_grammar_applies_from_the_trigger(tok, dialect, prose, call):
    """auto: before the trigger every token is allowed; from it on only the grammar's, and a complete call ends
    the answer (parallel off). Llama 3.1's trigger counts only at the start: an answer begun as prose stays free."""
    import torch

    from corral.grammar import GrammarCompiler

    tools = check_tools(TOOLS)
    factory = GrammarCompiler(tok).tool_calls(tools, dialect.grammar(tools, ToolChoice("auto"), False),
                                              dialect.trigger, dialect.anywhere)
    c, ids = factory(), tok.encode(prose + call)
    n_prose = len(tok.encode(prose)) if prose else 0
    for k, t in enumerate(ids):
        logits = torch.zeros(tok.vocab_size)
        c.mask(logits)
        allowed = int((logits == 0).sum())
        assert logits[t] == 0, tok.decode(ids[:k + 1])
        if k < n_prose:
            assert allowed == tok.vocab_size  # free text
        c.accept(t)
    assert c.done and c.error is None
    logits = torch.zeros(tok.vocab_size)
    free = factory()
    for t in tok.encode("Sure: " + call):  # the trigger after prose: free for llama3, constrained for hermes
        free.accept(t)
    free.mask(logits)
    assert (int((logits == 0).sum()) == tok.vocab_size) == (not dialect.anywhere)
