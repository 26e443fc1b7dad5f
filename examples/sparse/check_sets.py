#!/usr/bin/env python3
"""Consistency checker for the sparse fact sets in examples/sparse/<set>/ (standard library only).

For every folder that contains facts.jsonl it checks:
  * facts.jsonl, train.jsonl, heldout.jsonl and meta.json are valid JSON with the expected fields;
  * fact ids and answers are unique and no answer is a substring of another fact's answer;
  * every fact has 1..4 training conversations (a conversation counts for a fact when one of its assistant
    replies contains the fact's answer or one of its accept strings, case-insensitively);
  * train.jsonl uses the system prompt recorded in meta.json on every line (or none when it is null);
  * heldout.jsonl has exactly one question per fact and its answer matches facts.jsonl;
  * no held-out question appears (case-insensitive, punctuation ignored) as a training user turn;
  * handbook.md, if present, contains every answer string verbatim.
Prints a summary per set and exits with status 1 if any check fails.
"""
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def norm(text):
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def load_jsonl(path, errors):
    rows = []
    if not path.exists():
        errors.append(f"{path.name}: missing")
        return rows
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            errors.append(f"{path.name}:{n}: invalid JSON ({exc})")
    return rows


def check_set(folder):
    errors = []
    facts = load_jsonl(folder / "facts.jsonl", errors)
    train = load_jsonl(folder / "train.jsonl", errors)
    held = load_jsonl(folder / "heldout.jsonl", errors)
    meta = {}
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        errors.append(f"meta.json: {exc}")

    # facts
    by_id = {}
    for f in facts:
        if not all(isinstance(f.get(k), str) and f.get(k) for k in ("fact", "statement", "answer")):
            errors.append(f"facts.jsonl: bad row {f}")
            continue
        if not isinstance(f.get("accept", []), list):
            errors.append(f"facts.jsonl: accept of {f['fact']} is not a list")
        if f["fact"] in by_id:
            errors.append(f"facts.jsonl: duplicate id {f['fact']}")
        by_id[f["fact"]] = f
    answers = Counter(f["answer"] for f in by_id.values())
    for a, n in answers.items():
        if n > 1:
            errors.append(f"facts.jsonl: answer {a!r} used by {n} facts")
    for f in by_id.values():
        for g in by_id.values():
            if f is not g and f["answer"].lower() in g["answer"].lower():
                errors.append(f"answer {f['answer']!r} ({f['fact']}) is inside {g['answer']!r} ({g['fact']})")
        if f["answer"] not in f["statement"]:
            errors.append(f"statement of {f['fact']} does not contain its answer")

    # training conversations
    system = meta.get("system")
    counts = Counter()
    user_turns = set()
    multi = 0
    for n, row in enumerate(train, 1):
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list) or not msgs:
            errors.append(f"train.jsonl:{n}: no messages")
            continue
        if any(not isinstance(m, dict) or not isinstance(m.get("content"), str) for m in msgs):
            errors.append(f"train.jsonl:{n}: malformed message")
            continue
        roles = [m.get("role") for m in msgs]
        if roles[0] == "system":
            if system is None or msgs[0]["content"] != system:
                errors.append(f"train.jsonl:{n}: system prompt differs from meta.json")
            roles, msgs = roles[1:], msgs[1:]
        elif system is not None:
            errors.append(f"train.jsonl:{n}: system prompt missing")
        expected = ["user", "assistant"] * (len(roles) // 2)
        if roles != expected or not roles:
            errors.append(f"train.jsonl:{n}: roles must alternate user/assistant, got {roles}")
        if sum(1 for r in roles if r == "user") > 1:
            multi += 1
        for m in msgs:
            if m["role"] == "user":
                user_turns.add(norm(m["content"]))
        replies = " \n ".join(m["content"] for m in msgs if m["role"] == "assistant").lower()
        for f in by_id.values():
            keys = [f["answer"]] + list(f.get("accept", []))
            if any(k.lower() in replies for k in keys):
                counts[f["fact"]] += 1
    for fid in by_id:
        if counts[fid] < 1:
            errors.append(f"{fid}: no training conversation")
        elif counts[fid] > 4:
            errors.append(f"{fid}: {counts[fid]} training conversations (max 4)")

    # held-out questions
    seen = Counter()
    for n, row in enumerate(held, 1):
        fid = row.get("fact")
        q = row.get("question")
        if fid not in by_id or not isinstance(q, str) or not q.strip():
            errors.append(f"heldout.jsonl:{n}: unknown fact or empty question")
            continue
        seen[fid] += 1
        if row.get("answer") != by_id[fid]["answer"]:
            errors.append(f"heldout.jsonl:{n}: answer {row.get('answer')!r} != facts.jsonl for {fid}")
        if list(row.get("accept", [])) != list(by_id[fid].get("accept", [])):
            errors.append(f"heldout.jsonl:{n}: accept list differs from facts.jsonl for {fid}")
        if norm(q) in user_turns:
            errors.append(f"heldout.jsonl:{n}: question for {fid} also appears as a training user turn")
    for fid in by_id:
        if seen[fid] != 1:
            errors.append(f"heldout.jsonl: {seen[fid]} questions for {fid} (need exactly 1)")

    # meta
    if meta:
        if meta.get("facts") != len(by_id):
            errors.append(f"meta.json: facts={meta.get('facts')} but facts.jsonl has {len(by_id)}")
        if meta.get("train_conversations") != len(train):
            errors.append(f"meta.json: train_conversations={meta.get('train_conversations')} "
                          f"but train.jsonl has {len(train)}")

    # handbook
    hb_words = None
    hb = folder / "handbook.md"
    if hb.exists():
        text = hb.read_text(encoding="utf-8")
        hb_words = len(text.split())
        for f in by_id.values():
            if f["answer"] not in text:
                errors.append(f"handbook.md: missing answer {f['answer']!r} ({f['fact']})")

    dist = Counter(counts[fid] for fid in by_id)
    light = sum(v for k, v in dist.items() if k <= 2)
    print(f"[{folder.name}] facts={len(by_id)} conversations={len(train)} multi_turn={multi} "
          f"system_prompt={'yes' if system else 'no'} heldout={len(held)}")
    print("  conversations per fact: " + ", ".join(f"{k}:{dist[k]} facts" for k in sorted(dist))
          + f"  (facts with 1-2: {light})")
    print(f"  handbook: {f'{hb_words} words' if hb_words is not None else 'none'}")
    for e in errors:
        print(f"  ERROR {e}")
    print(f"  {'OK' if not errors else f'{len(errors)} problem(s)'}")
    return not errors


def main():
    folders = sorted(p.parent for p in ROOT.glob("*/facts.jsonl"))
    if not folders:
        print("no sets found")
        return 1
    ok = all([check_set(f) for f in folders])
    print("ALL SETS OK" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
