"""The bundled guard, prompt-injection and red-team data: schema, minimum counts, a leak-free split, and that the
committed JSONL files are exactly what scripts/guard_data.py builds from its sources. No model is loaded."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUARD = ROOT / "corral" / "guard" / "data"
REDTEAM = ROOT / "corral" / "redteam" / "data"
CODES = {f"S{i}" for i in range(1, 15)}
WRAPPERS = {"direct", "roleplay", "ignore_previous", "quoted_document", "tool_output"}
PLACEHOLDER = "withheld from this dataset]"


def load(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{path.name}:{n}: blank line"
        rows.append(json.loads(line))
    return rows


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    names = {"guard_train": GUARD / "guard_train.jsonl", "guard_heldout": GUARD / "guard_heldout.jsonl",
             "injection_train": GUARD / "injection_train.jsonl",
             "injection_heldout": GUARD / "injection_heldout.jsonl",
             "attacks": REDTEAM / "attacks.jsonl", "benign": REDTEAM / "benign.jsonl"}
    return {k: load(p) for k, p in names.items()}


def words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[^\W_]+", text.lower()))


def close_pairs(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    """Pairs equal after normalising (case, punctuation, spacing) or with token-set Jaccard above 0.8."""
    norm = lambda t: " ".join(re.findall(r"[^\W_]+", t.lower()))
    bw = [(y, words(y), norm(y)) for y in b]
    out = []
    for x in a:
        wx, nx = words(x), norm(x)
        out += [(x, y) for y, wy, ny in bw if nx == ny or len(wx & wy) / max(1, len(wx | wy)) > 0.8]
    return out


def user_texts(rows: list[dict], key: str = "conversation") -> list[str]:
    return [m["content"] for r in rows for m in r[key] if m["role"] == "user"]


def check_messages(msgs: list[dict], allow_system: bool) -> None:
    assert msgs and all(set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip()
                        for m in msgs)
    if allow_system and msgs[0]["role"] == "system":
        msgs = msgs[1:]
    assert [m["role"] for m in msgs] == ["user" if i % 2 == 0 else "assistant" for i in range(len(msgs))]


def test_guard_rows_schema(data):
    for row in data["guard_train"] + data["guard_heldout"]:
        assert set(row) == {"id", "conversation", "label", "categories", "assess"}, row["id"]
        conv = row["conversation"]
        check_messages(conv, allow_system=False)
        assert row["assess"] == ("user" if conv[-1]["role"] == "user" else "agent"), row["id"]
        assert row["label"] in ("safe", "unsafe"), row["id"]
        assert set(row["categories"]) <= CODES and len(set(row["categories"])) == len(row["categories"]), row["id"]
        assert bool(row["categories"]) == (row["label"] == "unsafe"), row["id"]
        if row["assess"] == "agent" and row["label"] == "unsafe":  # compliance is only ever an opening + placeholder
            assert PLACEHOLDER in conv[-1]["content"], row["id"]


def test_injection_rows_schema(data):
    for row in data["injection_train"] + data["injection_heldout"]:
        assert set(row) == {"id", "text", "label"} and row["label"] in ("injection", "benign"), row
        assert isinstance(row["text"], str) and row["text"].strip(), row["id"]


def test_redteam_rows_schema(data):
    for row in data["attacks"]:
        tool = row["wrapper"] == "tool_output"
        assert set(row) == {"id", "category", "wrapper", "messages", "goal"} | ({"tools"} if tool else set()), row["id"]
        assert row["category"] in CODES | {"PII"} and row["goal"].strip(), row["id"]
        assert row["wrapper"] in WRAPPERS | {"pii_extraction"}, row["id"]
        assert (row["category"] == "PII") == (row["wrapper"] == "pii_extraction"), row["id"]
        if tool:  # a user request, the assistant's call of the row's one tool, the attack in the tool's result
            user, call, result = row["messages"]
            check_messages([user], allow_system=False)
            (c,) = call["tool_calls"]
            assert call["role"] == "assistant" and call["content"] is None and result["role"] == "tool"
            assert c["function"]["name"] == row["tools"][0]["function"]["name"] and json.loads(c["function"][
                "arguments"])
            assert result["tool_call_id"] == c["id"] and result["content"].strip(), row["id"]
            continue
        check_messages(row["messages"], allow_system=True)
        assert row["messages"][-1]["role"] == "user", row["id"]
    for row in data["benign"]:
        assert set(row) == {"id", "messages", "kind"} and row["kind"] in ("benign", "benign_risky"), row
        check_messages(row["messages"], allow_system=True)


def test_ids_unique_across_files(data):
    ids = Counter(r["id"] for rows in data.values() for r in rows)
    assert not [i for i, n in ids.items() if n > 1]


def test_guard_minimum_counts(data):
    train, held = data["guard_train"], data["guard_heldout"]
    unsafe_user = lambda rows, c: sum(r["assess"] == "user" and c in r["categories"] for r in rows)
    for c in sorted(CODES):
        assert unsafe_user(train + held, c) >= 30, c
        assert unsafe_user(held, c) >= 8, c
    benign = lambda rows, prefix="benign-": [r for r in rows if r["id"].startswith(prefix)]
    for r in benign(train + held):
        assert r["label"] == "safe" and r["assess"] == "user", r["id"]
    assert len(benign(train + held)) >= 400
    assert len(benign(train + held, "benign-risky-")) >= 200
    assert len(benign(held)) >= 100
    assert len(benign(held, "benign-risky-")) >= 50
    agent = [r for r in train + held if r["assess"] == "agent"]
    assert len(agent) >= 150
    kinds = Counter((r["label"], r["id"].startswith("agent-benign")) for r in agent)
    assert kinds[("safe", False)] and kinds[("safe", True)] and kinds[("unsafe", False)]  # all three kinds
    assert any(len(r["conversation"]) > 2 for r in train + held if r["label"] == "unsafe")
    # about 75 / 25
    assert 0.2 <= len(held) / len(train + held) <= 0.3


def test_injection_minimum_counts(data):
    rows = data["injection_train"] + data["injection_heldout"]
    for label in ("injection", "benign"):
        assert sum(r["label"] == label for r in rows) >= 250
        assert sum(r["label"] == label for r in data["injection_heldout"]) >= 50
    assert 0.2 <= len(data["injection_heldout"]) / len(rows) <= 0.3


def test_redteam_counts_and_wrappers(data):
    attacks = data["attacks"]
    direct = {r["id"].removesuffix("-direct"): r for r in attacks if r["wrapper"] == "direct"}
    for c in sorted(CODES):
        assert sum(r["category"] == c for r in direct.values()) >= 5, c
        assert {r["wrapper"] for r in attacks if r["category"] == c} == WRAPPERS, c
    for r in attacks:  # every wrapped row hides its own base request, and keeps its goal
        if r["wrapper"] in WRAPPERS - {"direct"}:
            base = direct[re.match(r"atk-s\d+-\d+", r["id"]).group()]
            assert base["messages"][0]["content"] in r["messages"][-1]["content"], r["id"]
            assert base["goal"] == r["goal"] and base["category"] == r["category"], r["id"]
    assert sum(r["wrapper"] == "pii_extraction" for r in attacks) >= 20
    kinds = Counter(r["kind"] for r in data["benign"])
    assert sum(kinds.values()) >= 100 and kinds["benign_risky"] >= sum(kinds.values()) // 2


def test_no_near_duplicates_across_splits(data):
    assert not close_pairs(user_texts(data["guard_heldout"]), user_texts(data["guard_train"]))
    assert not close_pairs([r["text"] for r in data["injection_heldout"]],
                           [r["text"] for r in data["injection_train"]])


def test_redteam_distinct_from_guard_set(data):
    guard = user_texts(data["guard_train"] + data["guard_heldout"])
    own = [r["messages"][-1]["content"] for r in data["attacks"] if r["wrapper"] in ("direct", "pii_extraction")]
    assert not close_pairs(own + user_texts(data["benign"], "messages"), guard)


def test_no_exact_duplicate_rows(data):
    for name in ("guard", "injection"):
        rows = data[f"{name}_train"] + data[f"{name}_heldout"]
        key = (lambda r: json.dumps(r["conversation"])) if name == "guard" else (lambda r: r["text"])
        dup = [k for k, n in Counter(map(key, rows)).items() if n > 1]
        assert not dup, dup[:3]


def test_committed_files_match_the_generator():
    spec = importlib.util.spec_from_file_location("guard_data_script", ROOT / "scripts" / "guard_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        built = module.build()
    finally:
        del sys.modules[spec.name]
    stale = [p for p, text in built.items() if (ROOT / p).read_text(encoding="utf-8") != text]
    assert not stale, f"rerun scripts/guard_data.py: {stale}"
