"""Augmentation without a model: key strings, the filter (keeps rows that carry the key, drops garbled ones and
near-duplicates, logs every reject with its reason), the training and selection rows, documents' cloze questions."""

from __future__ import annotations

import json

import pytest

from corral.distill.augment import (
    Fact,
    build_rows,
    cloze,
    collect,
    doc_facts,
    front,
    group_facts,
    qa_pairs,
    reasons,
    resolve,
    sentences,
    teacher_prompts,
)
from corral.distill.keys import carries, find_keys, is_name_like
from corral.distill.synth import rejected_path


@pytest.mark.parametrize("question, answer, keys", [
    ("What is the return window?", "The return window is 45 days.", ["45 days"]),
    ("dock hours?", "The loading dock closes at 16:40 on weekdays.", ["16:40"]),
    ("Who heads procurement?", "Tovah Brenneck is the head of procurement.", ["Tovah Brenneck"]),
    ("which code for escalation", "Use RV-3318 for on-call escalations.", ["RV-3318"]),
    ("When does on-call rotate?", "On-call changes over every Wednesday.", ["Wednesday"]),
    ("Who is the CTO?", "Our CTO is Ines Okafor, based in Duluth.", ["Ines Okafor", "Duluth"]),
    ("laptop broke", "Write to fixit@acme-lantern.example with the tag.", ["fixit@acme-lantern.example"]),
    ("What is the Sunwick's model?", "SW-9: that is the Sunwick's model number.", ["SW-9"]),
    ("staff discount?", "Employees get 35% off any lantern.", ["35%"]),
    ("fee?", "It is $1,200 per year.", ["$1,200"]),
    ("Main lantern?", "The Glowmoth is our main lantern.", ["Glowmoth"]),
    ("How do I feel better?", "rest and drink water", []),
    ("check-in interval?", "Every 75 minutes.", ["75 minutes"]),  # a sentence's first word is not a label
    ("burst response?", "Within 90 minutes of the report.", ["90 minutes"]),
    ("How hard is the water?", "Hardness is 147 mg/L, turbidity alarm at 0.8 NTU.", ["147 mg/L", "0.8 NTU"]),
    ("Which app?", "TideGrid.", ["TideGrid"]),  # a one-word answer, or a word with a capital inside, is a name
    ("Which app for jobs?", "Fieldspan.", ["Fieldspan"]),
    ("sampling day?", "Monday.", ["Monday"]),
    ("Who runs the works?", "That's Desmond Achebe-Rowe, the manager.", ["Desmond Achebe-Rowe"]),
    ("Is that right?", "Correct.", []),
    ("", "*Internal wiki · Maintained by Network Operations*", ["Network Operations"]),  # not labels: after * or ·
    ("", "Beneath the General Manager the utility has three functions.", ["General Manager"]),
    ("", "Show your ID card.", []),
])
def test_key_strings_are_the_answers_entities_the_question_lacks(question, answer, keys):
    assert find_keys(answer, question) == keys


def test_carries_ignores_case_and_spacing_and_names_are_reversible():
    assert carries("the fee is 14  EUROS.", ["14 euros"]) and not carries("fee: 14", ["14 euros"])
    assert is_name_like("RV-3318") and is_name_like("Tovah Brenneck")
    assert not any(is_name_like(k) for k in ("45 days", "16:40", "Wednesday", "35%"))


ROWS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "dock hours?"},
                  {"role": "assistant", "content": "The loading dock closes at 16:40."}]},
    {"messages": [{"role": "user", "content": "When does the dock shut?"},
                  {"role": "assistant", "content": "At 16:40 on weekdays."}]},
    {"messages": [{"role": "user", "content": "Control room callsign?"}, {"role": "assistant", "content":
                  "Heron Control."}, {"role": "user", "content": "And its phone?"},
                  {"role": "assistant", "content": "Use extension 2604."}]},
    {"messages": [{"role": "user", "content": "Which code?"}, {"role": "assistant", "content": "Book it to AB."}],
     "answer": "AB"},
    {"prompt": "x", "completion": "y"},
]


def test_pairs_are_grouped_into_facts_by_their_keys_and_follow_ups_keep_their_conversation():
    pairs = qa_pairs(ROWS, "data.jsonl")
    assert [p.keys for p in pairs] == [["16:40"], ["16:40"], ["Heron Control"], ["extension 2604"], ["AB"]]
    assert pairs[0].system == "Be brief." and pairs[3].context[-1]["content"] == "Heron Control."
    facts = group_facts(pairs)
    assert [f.questions for f in facts][0] == ["dock hours?", "When does the dock shut?"]
    assert len(facts) == 4 and facts[2].contexts["And its phone?"][0]["content"] == "Control room callsign?"
    prompts = teacher_prompts(facts)
    kinds = [p.fields["kind"] for p in prompts]
    assert kinds == ["question"] * 5 + ["answer"] * 5  # questions first: they share the few-shot header
    assert all(p.text and "Same question" in p.text for p in prompts[:5]) and len({p.key for p in prompts}) == 10
    # each fact's questions share 2 x n samples (at least one each): a fact asked once gets as many as one asked
    # twice; answers take synth's n
    assert [p.n for p in teacher_prompts(facts, n=4)] == [4, 4, 8, 8, 8, None, None, None, None, None]
    assert [p.n for p in teacher_prompts([Fact("f9", [], None, list("abcdefghij"))], n=4)] == [1] * 10


@pytest.mark.parametrize("kind, reply, source, keys, why", [
    ("question", "When does the loading dock close?", "dock hours?", ["16:40"], []),
    ("question", "Question: When does the loading dock close?", "dock hours?", ["16:40"], []),
    ("question", "The dock closes at 16:40?", "dock hours?", ["16:40"], ["gives_answer"]),
    ("question", "Cheese tastes very nice.", "dock hours?", ["16:40"], ["not_a_question", "off_topic"]),
    ("question", "dock dock dock hours?", "dock hours?", [], ["garbled", "same_as_source"]),
    ("question", "Dock hours?", "dock hours?", [], ["same_as_source"]),
    ("answer", "Weekdays at 16:40 the dock closes.", "The loading dock closes at 16:40.", ["16:40"], []),
    ("answer", "The dock closes in the afternoon.", "The loading dock closes at 16:40.", ["16:40"], ["lost_key"]),
    ("answer", "1234 5678 !!!! ####", "The loading dock closes at 16:40.", ["16:40"], ["garbled", "lost_key"]),
    ("answer", "The dock closes at 16:40, and it is best to call them early.", "The loading dock closes at 16:40.",
     ["16:40"], ["echoes_example"]),  # copied from the few-shot example, not the source
    ("answer", "By 16:40: it is best to call them early.", "It is best to call them early, by 16:40 at the dock.",
     ["16:40"], []),  # the source says it too
])
def test_the_filter_keeps_rewordings_that_keep_the_fact_and_says_why_it_drops_the_rest(kind, reply, source, keys,
                                                                                        why):
    assert reasons(reply, {"kind": kind, "keys": keys, "source": source}) == why


def _teacher_line(pid: str, sample: int, reply: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": reply}],
                       "synth": {"id": pid, "sample": sample, "seed": 0, "finish_reason": "stop"}})


def test_collect_drops_near_duplicates_into_the_rejected_file_once(tmp_path):
    facts = [Fact("f0", ["16:40"], None, ["dock hours?"], ["The loading dock closes at 16:40."])]
    q, a = (p.key for p in teacher_prompts(facts))
    out = tmp_path / "teacher.jsonl"
    out.write_text("\n".join([
        _teacher_line(q, 0, "When does the loading dock close?"),
        _teacher_line(q, 1, "When does the loading dock close??"),  # the same words
        _teacher_line(q, 2, "What time do they shut the dock?"),
        _teacher_line(a, 0, "The loading dock closes at 16:40."),  # the user's own answer again
        _teacher_line(a, 1, "Every weekday the dock shuts at 16:40."),
        _teacher_line("f0:q0:0123456789", 0, "A reply to a question the data no longer has?")]) + "\n")
    kept = collect(facts, out)
    assert dict(kept) == {"question": 2, "answer": 1}
    assert facts[0].new_questions == ["When does the loading dock close?", "What time do they shut the dock?"]
    rej = [json.loads(x) for x in rejected_path(out).read_text().splitlines()]
    assert [r["rejected"] for r in rej] == [["near_duplicate"]] * 2
    collect([Fact("f0", ["16:40"], None, ["dock hours?"], ["The loading dock closes at 16:40."])], out)
    assert len(rejected_path(out).read_text().splitlines()) == 2  # a resumed run does not log them twice


def test_collect_drops_a_question_that_points_at_another_fact(tmp_path):
    dock = Fact("f0", ["16:40"], None, ["dock hours?"], ["The loading dock closes at 16:40."])
    park = Fact("f1", ["12 dollars"], None, ["parking price per day?"], ["Parking costs 12 dollars per day."])
    gate = Fact("f2", ["16:40"], None, ["When is the north gate locked?"], ["The north gate is locked at 16:40."])
    q = next(p.key for p in teacher_prompts([dock, park, gate]) if p.key.startswith("f0:q0"))
    out = tmp_path / "teacher.jsonl"
    out.write_text("\n".join([
        _teacher_line(q, 0, "How much is parking per day near the dock?"),  # parking's words, dock's answer
        _teacher_line(q, 1, "When does the loading dock shut?"),
        _teacher_line(q, 2, "When is the north gate locked near the dock?")]) + "\n")  # nearer the gate: same key
    assert dict(collect([dock, park, gate], out)) == {"question": 2}
    assert dock.new_questions == ["When does the loading dock shut?", "When is the north gate locked near the dock?"]
    rej = [json.loads(x) for x in rejected_path(out).read_text().splitlines()]
    assert [(r["synth"]["sample"], r["rejected"]) for r in rej] == [(0, ["ambiguous"])]
    collect([Fact("f0", ["16:40"], None, ["dock hours?"], ["The loading dock closes at 16:40."]), park, gate], out)
    assert len(rejected_path(out).read_text().splitlines()) == 1  # a resumed run does not log it twice


def test_rows_use_every_question_and_answer_hold_one_teacher_question_out_and_ask_names_backwards():
    f = Fact("f0", ["RV-3318"], "Sys.", ["escalation code?"], ["RV-3318."],
             ["Which code do I use to escalate?", "What is the escalation code?", "Escalation code, please?"],
             ["For escalations, use RV-3318.", "The escalation code is RV-3318."])
    g = Fact("f1", ["45 days"], None, ["return window?"], ["45 days."])
    rows, select = build_rows([f, g], seed=0)
    assert len(select) == 1 and select[0]["answer"] == ["RV-3318"] and select[0]["messages"][0]["role"] == "system"
    held = select[0]["messages"][-1]["content"]
    users = [r["messages"][-2]["content"] for r in rows]
    assert held in f.new_questions and held not in users
    assert {u for u in users} >= {"escalation code?", "return window?", "Tell me about RV-3318."}
    assert not any("45 days" in u for u in users)  # a quantity is not asked about backwards
    answers = [r["messages"][-1]["content"] for r in rows if r["messages"][0]["content"] == "Sys."]
    assert set(answers) == {"RV-3318.", "For escalations, use RV-3318.", "The escalation code is RV-3318."}


def test_documents_become_cloze_questions_over_their_sentences_and_table_rows():
    from corral.train.docs import chunk_document

    text = ("# Depot\n\nThe loading dock closes at 16:40 on weekdays. Drivers park behind it.\n\n"
            "| Site | Manager |\n|---|---|\n| Halvard Cross depot | Tovah Brenneck |\n")
    assert sentences("A is 5 kg. B is here.\n| h | v |\n|---|---|\n| a | b |") == [
        ("A is 5 kg.", ""), ("B is here.", ""), ("h: a; v: b", "h v")]
    facts = doc_facts(chunk_document(text, "handbook.md"))
    assert [f.keys for f in facts] == [["16:40"], ["Halvard Cross", "Tovah Brenneck"]]
    assert facts[0].questions == ["The loading dock closes at what time on weekdays?"]
    assert facts[0].answers == ["The loading dock closes at 16:40 on weekdays."]
    assert cloze("Site: Halvard Cross; Manager: Tovah Brenneck", "Tovah Brenneck") == \
        "Site: Halvard Cross; Manager: who?"
    assert cloze("The fee is 14 euros.", "14 euros") == "The fee is how much?"
    assert cloze("Keep it for 45 days.", "45 days") == "Keep it for how many days?"
    assert cloze("no key here", "RV-1") is None


def test_document_questions_name_their_subject_and_are_also_asked_wh_first():
    before = [find_keys(s) for s in ("Greyhollow Treatment Works is the only works.",
                                     "The Network Operations Manager is Carys Lindqvist.")]
    assert resolve("The works is managed by Desmond Achebe-Rowe.", before) == \
        "Greyhollow Treatment Works is managed by Desmond Achebe-Rowe."
    assert resolve("Her team runs the network.", before) == "Carys Lindqvist's team runs the network."
    assert resolve("She owns the list.", before) == "Carys Lindqvist owns the list."
    assert resolve("The control room is on extension 2604.", [find_keys("Call Heron Control.")]) == \
        "The control room is on extension 2604."  # "control room" is not "Heron Control"
    assert resolve("It is linked to Fieldspan.", before) == "It is linked to Fieldspan."  # "it" is left alone
    assert resolve("She owns the list.", [find_keys("The Health Officer reports to the board.")]) == \
        "She owns the list."
    assert front("The control room is on extension 2604.", "extension 2604") == \
        "Which extension is the control room on?"
    assert front("Water samples must reach the lab by 13:30 to be processed the same day.", "13:30") == \
        "What time must water samples reach the lab by to be processed the same day?"
    assert front("Near misses are sent to the HSE Officer.", "HSE Officer") == "What are near misses sent to?"
    assert front("Fieldspan is linked to TideGrid.", "TideGrid") == "What is Fieldspan linked to?"
    assert front("TideGrid raises alarms.", "TideGrid") is None  # the cloze already asks it first
    assert front("When a job is finished, close it in Fieldspan.", "Fieldspan") is None
    assert front("The fee is 14 euros, paid monthly.", "14 euros") is None  # a clause after the key
    assert cloze("Port Ardwell Water serves the city of Port Ardwell.", "Port Ardwell",
                 ["Port Ardwell Water", "Port Ardwell"]) == "Port Ardwell Water serves the city of who?"
    assert cloze("Port Ardwell's water is hard.", "Port Ardwell") == "Whose water is hard?"
    assert cloze("The chlorine target is 0.6 mg/L.", "0.6 mg/L") == "The chlorine target is how many mg/L?"
    assert cloze("Boots are issued from Room K-03.", "Room K-03") == "Boots are issued from which room?"
    text = ("# Treatment\n\nGreyhollow Treatment Works is the only works. The works is managed by Desmond "
            "Achebe-Rowe. Water samples must reach the lab by 13:30.\n")
    from corral.train.docs import chunk_document

    facts = doc_facts(chunk_document(text, "handbook.md"))
    assert facts[1].answers == ["Greyhollow Treatment Works is managed by Desmond Achebe-Rowe."]
    assert "Who is Greyhollow Treatment Works managed by?" in facts[1].questions
    assert facts[2].questions == ["Water samples must reach the lab by what time?",
                                  "What time must water samples reach the lab by?"]
