"""Check the Pedalwick tool-calling sets: tools.json, train.jsonl and eval.jsonl (needs `jsonschema`).

Asserts that every line parses and has the documented shape; that every row's tools are definitions from
tools.json (2 or more, none twice); that every call in train and every acceptable value in eval is one of the
row's tools and validates against the function's JSON schema (dates are real calendar days, a range does not end
before it starts); that eval lists every parameter of an expected function, required ones without "";
that no eval user message occurs in train (compared lower-cased, punctuation dropped) and no argument set an eval
answer accepts occurs as a train call; and the category counts. Prints a summary; exits non-zero on failure.

    python examples/tools/check_sets.py
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import sys
from collections import Counter
from pathlib import Path

from jsonschema import Draft202012Validator

HERE = Path(__file__).resolve().parent
FAMILIES = [("get_station_status", "find_stations", "reserve_bike"),
            ("get_ride_history", "estimate_fare", "top_up_wallet"),
            ("report_bike_issue", "book_repair", "get_repair_status")]
FAMILY = {n: fam for fam in FAMILIES for n in fam}
EVAL_COUNTS = {"simple": 30, "multiple": 25, "parallel": 20, "irrelevance": 25}


def load_jsonl(path):
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise AssertionError(f"{path.name}:{n}: not JSON ({e})") from None
    return rows


def norm(text):
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def canon(name, args):
    return json.dumps([name, {k: args[k] for k in sorted(args)}])


class Checker:
    def __init__(self, tools):
        self.defs = {t["function"]["name"]: t for t in tools}
        self.validators = {n: Draft202012Validator(t["function"]["parameters"]) for n, t in self.defs.items()}
        for t in tools:
            Draft202012Validator.check_schema(t["function"]["parameters"])

    def row_tools(self, where, tools):
        names = [t["function"]["name"] for t in tools]
        assert len(names) >= 2, f"{where}: offers {len(names)} tool(s), fewer than 2"
        assert len(set(names)) == len(names), f"{where}: a tool is offered twice"
        for t in tools:
            name = t["function"]["name"]
            assert self.defs.get(name) == t, f"{where}: {name} differs from tools.json"
        return set(names)

    def call(self, where, offered, name, args):
        assert name in offered, f"{where}: calls {name}, which the row does not offer"
        errors = [e.message for e in self.validators[name].iter_errors(args)]
        assert not errors, f"{where}: {name}{json.dumps(args)}: {errors}"
        props = self.defs[name]["function"]["parameters"]["properties"]
        for k, v in args.items():
            if props[k].get("pattern") == "^[0-9]{4}-[0-9]{2}-[0-9]{2}$":
                dt.date.fromisoformat(v)  # a real calendar day
        if "start_date" in args and "end_date" in args:
            assert args["start_date"] <= args["end_date"], f"{where}: range ends before it starts"


def calls_of(msg):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg.get("tool_calls") or []]


def category(offered, calls):
    """What a row tests, from its calls and offered tools (the rule the generator follows)."""
    if not calls:
        return "irrelevance"
    if len(calls) > 1:
        return "parallel"
    return "multiple" if len(offered & set(FAMILY[calls[0][0]])) > 1 else "simple"


def check_train(chk, rows):
    cats, longs, arg_sets = Counter(), 0, set()
    for i, r in enumerate(rows, 1):
        where = f"train.jsonl:{i}"
        assert set(r) == {"tools", "messages"}, f"{where}: keys {sorted(r)}"
        offered = chk.row_tools(where, r["tools"])
        msgs = r["messages"]
        assert msgs[0]["role"] == "user" and msgs[0]["content"].strip(), f"{where}: must open with a user message"
        assert msgs[1]["role"] == "assistant", f"{where}: the second message must be the assistant's"
        first = calls_of(msgs[1])
        if first:
            assert msgs[1]["content"] is None, f"{where}: a calling assistant message has content null"
            ids = [c["id"] for c in msgs[1]["tool_calls"]]
            assert ids == [f"call_{k}" for k in range(1, len(ids) + 1)], f"{where}: call ids {ids}"
            assert all(c["type"] == "function" for c in msgs[1]["tool_calls"]), where
            for name, args in first:
                chk.call(where, offered, name, args)
                arg_sets.add(canon(name, args))
        else:
            assert isinstance(msgs[1]["content"], str) and msgs[1]["content"].strip(), f"{where}: empty answer"
        if len(msgs) > 2:
            assert first, f"{where}: only a calling row continues after the assistant"
            tools_msgs = msgs[2:2 + len(first)]
            assert [m["role"] for m in tools_msgs] == ["tool"] * len(first), f"{where}: one tool result per call"
            assert [m["tool_call_id"] for m in tools_msgs] == ids, f"{where}: tool_call_id order"
            assert all(isinstance(m["content"], str) and m["content"] for m in tools_msgs), where
            assert len(msgs) == 3 + len(first), f"{where}: length {len(msgs)}"
            final = msgs[-1]
            assert final["role"] == "assistant" and final.get("content") and not final.get("tool_calls"), where
            longs += 1
        else:
            assert len(msgs) == 2, where
        cats[category(offered, first)] += 1
    return cats, longs, arg_sets


def check_eval(chk, rows, train_questions, train_arg_sets):
    cats, ids = Counter(), set()
    for i, r in enumerate(rows, 1):
        where = f"eval.jsonl:{i} ({r.get('id')})"
        assert set(r) == {"id", "category", "tools", "messages", "expected"}, f"{where}: keys {sorted(r)}"
        assert r["id"] not in ids, f"{where}: duplicate id"
        ids.add(r["id"])
        assert r["category"] in EVAL_COUNTS and r["id"].startswith(r["category"] + "-"), where
        offered = chk.row_tools(where, r["tools"])
        assert len(r["messages"]) == 1 and r["messages"][0]["role"] == "user", f"{where}: one user message"
        question = r["messages"][0]["content"]
        assert norm(question) not in train_questions, f"{where}: the question occurs in train.jsonl"
        for e in r["expected"]:
            name, accept = e["name"], e["arguments"]
            assert name in offered, f"{where}: expects {name}, which the row does not offer"
            params = chk.defs[name]["function"]["parameters"]
            assert set(accept) == set(params["properties"]), f"{where}: {name} must list every parameter"
            for p, vals in accept.items():
                assert isinstance(vals, list) and vals, f"{where}: {name}.{p} needs a non-empty list"
                if p in params["required"]:
                    assert "" not in vals, f"{where}: required {name}.{p} cannot be omitted"
            for combo in itertools.product(*accept.values()):
                args = {k: v for k, v in zip(accept, combo, strict=True) if v != ""}
                chk.call(where, offered, name, args)
                assert canon(name, args) not in train_arg_sets, f"{where}: {name}{json.dumps(args)} is in train"
        got = category(offered, [(e["name"], {}) for e in r["expected"]])
        assert got == r["category"], f"{where}: looks like {got}, labelled {r['category']}"
        cats[r["category"]] += 1
    return cats


def main():
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE  # e.g. the output of make_dataset.py --scale 3 --out
    tools = json.loads((folder / "tools.json").read_text(encoding="utf-8"))
    chk = Checker(tools)
    assert 7 <= len(tools) <= 9, f"{len(tools)} functions"
    train = load_jsonl(folder / "train.jsonl")
    evals = load_jsonl(folder / "eval.jsonl")
    scale = max(1, round(len(train) / 360))
    train_cats, longs, arg_sets = check_train(chk, train)
    asked = Counter(norm(m["content"]) for r in train for m in r["messages"] if m["role"] == "user")
    train_questions = set(asked)
    # a larger set (--scale) repeats the hand-written no-call questions, once per scale, with other tools offered
    assert max(asked.values()) <= scale and len(asked) >= len(train) - 60 * (scale - 1), "train repeats a question"
    eval_cats = check_eval(chk, evals, train_questions, arg_sets)
    assert dict(eval_cats) == EVAL_COUNTS, f"eval categories {dict(eval_cats)}"
    assert 300 * scale <= len(train) <= 420 * scale, f"{len(train)} train rows"
    for cat, share in (("simple", 0.40), ("multiple", 0.20), ("parallel", 0.20), ("irrelevance", 0.20)):
        assert abs(train_cats[cat] / len(train) - share) < 0.05, f"train {cat}: {train_cats[cat]}"
    assert 0.10 <= longs / len(train) <= 0.20, f"{longs} rows with tool results"
    sizes = Counter(len(r["tools"]) for r in train)
    print(f"tools.json: {len(tools)} functions: {', '.join(t['function']['name'] for t in tools)}")
    print(f"train.jsonl: {len(train)} rows; " + ", ".join(f"{c} {train_cats[c]}" for c in EVAL_COUNTS)
          + f"; {longs} with tool results and a final answer; tools offered per row: "
          + ", ".join(f"{k}:{sizes[k]}" for k in sorted(sizes)))
    print(f"eval.jsonl: {len(evals)} rows; " + ", ".join(f"{c} {eval_cats[c]}" for c in EVAL_COUNTS)
          + f"; {sum(len(r['expected']) for r in evals)} expected calls")
    print("no eval question occurs in train; no argument set an eval answer accepts is a train call")
    print("all checks passed")


if __name__ == "__main__":
    main()
