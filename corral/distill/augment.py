"""Augmentation: a teacher rewords a user's own question/answer rows, and writes questions about a document's facts.

Why: a small model fine-tuned on four conversations per fact learns those four questions, not the fact; asked in
other words it answers with another fact's name. More wordings of each question, and of each answer, teach the
fact itself (the Llama 3.1 recipe: synthetic data from a teacher, filtered).

From the user's chat rows, every (user turn, assistant reply) pair is a `QA`. Its key strings (`corral.distill.keys`:
"16:40", "Tovah Brenneck"; or the row's own `answer`) decide what a rewording must keep. Pairs with the same keys are
one fact: their questions and answers are pooled. The teacher (the model itself by default) then writes, through
`corral synth` (batched engine, a seed per sample, resumable, rejects logged with the reason):
- `question`: n new wordings of each question;
- `answer`: n restatements of each answer as one full sentence that keeps its keys verbatim.
A document's sentences that carry a key are facts too: the sentence is the answer, and the sentence with its key
asked for ("The control room is on which extension?"), and asked wh-first where a verb like "is" or "must" allows
("Which extension is the control room on?"), the questions, reworded like a user's. A subject that points back
("The works", "She", "Her team") is first replaced by the name it means in the sentences before it, so the question
says what it asks about.
A filter drops what the teacher garbled (labels left in, repeated words, no letters), questions that are not
questions or that give the answer away, answers that lost a key or copied a few-shot example's phrase
(`echoes_example`), and wordings too close to one already kept
(`near_duplicate`, word-set Jaccard), and questions whose words point at another fact more than at their own
(`ambiguous`: they would teach the model to confuse the two). Rows that ask the fact the other way round ("Tell
me about RV-3318.") are added for keys that are names or codes and belong to one fact only: a model trained on "A
is B" does not answer "B is?" (the reversal curse).

The result (`build_rows`): every pooled question paired with a pooled answer (rotated, so each answer is used),
the reversal rows, the user's own multi-turn conversations as they are, and a held-out share of the teacher's
questions (one per fact) that `corral finetune` scores during training to keep its best checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral import jsonl
from corral.distill.keys import DAYS, MONTHS, carries, find_keys, is_name_like
from corral.distill.synth import Prompt, rejected_path
from corral.eval.scoring import Scorer

# Few-shot completion patterns (no chat template): a 135M instruction model asked in chat to "rewrite this
# question" mostly answers it or rambles; continuing a pattern of generic examples it rewords far more often.
# The examples are domain-neutral on purpose: they teach the form, not any data set's content.
QUESTION_PROMPT = """Each question below is followed by the same question asked in different words.

Question: Where is the nearest fire exit?
Same question in other words: Which way is the closest emergency exit?

Question: parking price per day??
Same question in other words: How much does it cost to park for a day?

Question: My manager asked me to book a flight for a client visit. Which travel agency do we use?
Same question in other words: Which travel agency should I use to book flights for work trips?

Question: who do I call if the printer on floor 2 jams again
Same question in other words: Which person should I contact when the second-floor printer gets stuck?

Question: {q}
Same question in other words:"""
ANSWER_PROMPT = """Each answer below is rewritten as one full sentence that says what was asked and keeps the key fact.

Question: Where is the nearest fire exit?
Answer: Next to the lifts.
Full sentence: The nearest fire exit is next to the lifts.

Question: parking price per day??
Answer: 12 dollars.
Full sentence: Parking costs 12 dollars per day.

Question: Which travel agency do we use?
Answer: We book through Skyline Travel, call them early.
Full sentence: Work trips are booked through Skyline Travel, and it is best to call them early.

Question: {q}
Answer: {a}
Full sentence:"""
REVERSAL_QUESTIONS = ("Tell me about {k}.", "What do you know about {k}?")
QUESTION_SAMPLES = 2  # x n: the teacher's rewordings of each fact's questions, shared among them

_LABEL = re.compile(r"^\s*(?:(?:new|rewritten|reworded|alternative|another|paraphrased?|the)\s+)*"
                    r"(?:question|answer|rewrite|version)\s*\d*\s*[:\-]\s*", re.IGNORECASE)
_QUESTION_WORDS = set("""what which who whom whose when where why how is are was were do does did can could will would
should may might shall have has had tell give list name explain describe show please i i'm im any""".split())
_STOP = set("""a an the is are was were be to of in on at for and or do does did what which who when where why how i
my me you your we our it its this that with from by as can could will would should there their they he she""".split())


@dataclass
class QA:
    """One question and its answer, from a user's row (`source` "FILE:LINE") or a document sentence."""

    question: str
    answer: str
    keys: list[str]
    system: str | None = None
    source: str = ""
    context: list[dict[str, str]] = field(default_factory=list)  # earlier turns of its conversation (no system)


@dataclass
class Fact:
    """The QA pairs that share their key strings, pooled: the unit that is augmented and held out."""

    id: str
    keys: list[str]
    system: str | None
    questions: list[str] = field(default_factory=list)  # the user's (or the document's) own first
    answers: list[str] = field(default_factory=list)
    new_questions: list[str] = field(default_factory=list)  # the teacher's, kept by the filter
    new_answers: list[str] = field(default_factory=list)
    contexts: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # a follow-up question's earlier turns


def qa_pairs(rows: list[dict[str, Any]], source: str = "") -> list[QA]:
    """Each (user turn, assistant reply) of chat rows (`{"messages": [...], "answer"?: str | list}`) as a QA; the
    system prompt is the row's own. A row's `answer` (a list for several) overrides the key strings found in its
    single reply. Prompt/completion rows have no question to reword and give none."""
    out = []
    for n, row in enumerate(rows, 1):
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list):
            continue
        system = next((m["content"] for m in msgs if m.get("role") == "system"), None)
        turns = [i for i in range(len(msgs) - 1)  # (a tool call is no answer to reword)
                 if msgs[i].get("role") == "user" and msgs[i + 1].get("role") == "assistant"
                 and isinstance(msgs[i + 1].get("content"), str) and not msgs[i + 1].get("tool_calls")]
        given = row.get("answer")
        for i in turns:
            q, a = msgs[i]["content"], msgs[i + 1]["content"]
            keys = ([str(x) for x in given] if isinstance(given, list) else [str(given)]) \
                if given is not None and len(turns) == 1 else find_keys(a, q)
            keys = [k for k in keys if k and carries(a, [k])]
            context = [m for m in msgs[:i] if m.get("role") != "system"]
            out.append(QA(q.strip(), a.strip(), keys, system, f"{source}:{n}", context))
    return out


def group_facts(pairs: list[QA]) -> list[Fact]:
    """Pairs with the same (normalised) keys are one fact; pairs without keys are facts of their own."""
    facts: dict[str, Fact] = {}
    for i, p in enumerate(pairs):
        gid = "|".join(sorted(k.lower() for k in p.keys)) if p.keys else f"#{i}"
        f = facts.setdefault(gid, Fact(f"f{len(facts)}", p.keys, p.system))
        if p.question not in f.questions:
            f.questions.append(p.question)
            if p.context:
                f.contexts[p.question] = p.context
        if p.answer not in f.answers:
            f.answers.append(p.answer)
    return list(facts.values())


# --- teacher prompts and filters ----------------------------------------------------------------------------------


def teacher_prompts(facts: list[Fact], n: int = 1) -> list[Prompt]:
    """The synth prompts: a `question` prompt per question, and an `answer` prompt per answer of a fact with keys
    (`n` samples each, synth's). A fact's question prompts share QUESTION_SAMPLES x `n` samples, at least one each:
    a fact its user asked once, or a document sentence, gets as many new wordings as one asked four times (with
    `n` per question, those were the facts a fine-tuned model missed most). Ids are stable (fact id + index) so a
    rerun resumes."""
    # All question prompts, then all answer prompts: each kind shares its few-shot header, whose KV the engine
    # reuses from a finished request with the same header (whole prefill chunks: the headers are over 128 tokens).
    prompts = [_prompt(f"{f.id}:q{i}:{_digest(q)}", QUESTION_PROMPT.format(q=_one_line(q)), "question", f, q,
                       n=-(-QUESTION_SAMPLES * n // len(f.questions)))
               for f in facts for i, q in enumerate(f.questions)]
    for f in facts:
        for i, a in enumerate(f.answers if f.keys else []):
            text = ANSWER_PROMPT.format(q=_one_line(f.questions[0]), a=_one_line(a))
            prompts.append(_prompt(f"{f.id}:a{i}:{_digest(a)}", text, "answer", f, a))
    return prompts


def _digest(text: str) -> str:
    """A short hash of a prompt's source in its id: a rerun over edited data re-asks what changed, and never files
    an old reply under another fact."""
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _prompt(pid: str, text: str, kind: str, f: Fact, source: str, n: int | None = None) -> Prompt:
    return Prompt(pid, [{"role": "user", "content": source}], {"kind": kind, "fact": f.id, "keys": f.keys,
                                                               "source": source}, 0, text=text, n=n)


def clean(reply: str, kind: str) -> str:
    """The teacher's reply without labels ("Question:", "New answer -"), quotes, or anything after its first line
    (questions) or first paragraph (answers)."""
    text = reply.strip()
    text = text.split("\n")[0] if kind != "answer" else text.split("\n\n")[0]
    prev = None
    while prev != text:
        prev = text
        text = _LABEL.sub("", text).strip().strip('"“”').strip()
    return re.sub(r"\s+", " ", text)


def _garbled(text: str) -> bool:
    words = text.lower().split()
    if not words or sum(c.isalpha() for c in text) < 0.5 * len(text.replace(" ", "")):
        return True
    if any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2)):
        return True
    grams = Counter(zip(words, words[1:], words[2:], strict=False))
    return bool(grams) and grams.most_common(1)[0][1] > 2 or bool(
        re.search(r"\b(rewrite|reply with|new question|new answer)\b", text, re.IGNORECASE))


def _is_question(text: str) -> bool:
    first = text.split()[0].lower().strip(",.:;!?") if text.split() else ""
    return text.rstrip().endswith("?") or first in _QUESTION_WORDS


def _grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[\w'’]+", text.lower())
    return set(zip(*(words[i:] for i in range(n)), strict=False))


# Word 4-grams of the answer examples' full sentences: a restatement that repeats one ("... and it is best to call
# them early") copied the example instead of its source, and would teach the student that phrase. (Questions are
# not checked: "Which person should I contact ..." is a form worth copying.)
_EXAMPLE_GRAMS = set().union(*(_grams(m) for m in re.findall(r"Full sentence: (.+)", ANSWER_PROMPT)))


def reasons(reply: str, fields: dict[str, Any]) -> list[str]:
    """Why a teacher reply is rejected ([] if kept): garbled, not_a_question, gives_answer, off_topic (a question
    that shares no content word with its source), lost_key, length, same_as_source, echoes_example (an answer that
    repeats four words of a few-shot example's sentence that its source does not have)."""
    kind, keys, source = fields["kind"], fields.get("keys") or [], fields.get("source", "")
    text = clean(reply, kind)
    why = []
    n = len(text.split())
    if _garbled(text):
        why.append("garbled")
    if kind == "answer":
        if not carries(text, keys):
            why.append("lost_key")
        if n > max(40, 3 * len(source.split())):
            why.append("length")
    else:
        if not _is_question(text):
            why.append("not_a_question")
        if keys and any(k.lower() in text.lower() for k in keys):
            why.append("gives_answer")
        if not 2 <= n <= 40:
            why.append("length")
        if not _stems(text) & _stems(source):
            why.append("off_topic")
    if _words(text) == _words(source):
        why.append("same_as_source")
    if kind == "answer" and (_grams(text) - _grams(source)) & _EXAMPLE_GRAMS:
        why.append("echoes_example")
    return why


def filters() -> list[Scorer]:
    """The augmentation filter as synth scorers, one per reason, so rejects carry their reasons."""
    names = ("garbled", "not_a_question", "gives_answer", "off_topic", "lost_key", "length", "same_as_source",
             "echoes_example")
    return [Scorer(name, (lambda r, f, name=name: name not in reasons(r, f))) for name in names]


def _stems(text: str) -> set[str]:
    """Content words cut to five letters: a crude stem, enough to tell "closes"/"closing" apart from "parking"."""
    return {w[:5] for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) >= 3 and w not in _STOP}


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in re.findall(r"[\w'’-]+", text.lower()) if w not in _STOP) or frozenset(
        re.findall(r"[\w'’-]+", text.lower()))


def jaccard(a: str, b: str) -> float:
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / max(1, len(wa | wb))


# --- from teacher output to training rows --------------------------------------------------------------------------


def collect(facts: list[Fact], teacher_out: Path, dedup: float = 0.8) -> Counter[str]:
    """Reads the kept teacher replies of `teacher_out` (synth's OUT) into each fact's new_questions/new_answers,
    dropping near-duplicates (Jaccard of content words >= `dedup` with one already there, the user's own first)
    and questions that point at another fact (`ambiguous`); those are appended to the rejected file with their
    reason. Returns the kept count per kind."""
    by_id = {f.id: f for f in facts}
    nearest = _nearest_fact(facts)
    kept: Counter[str] = Counter()
    dropped = []
    for rec in sorted(jsonl.records(teacher_out), key=lambda r: (r["synth"]["id"], r["synth"]["sample"])):
        fid, part, digest = (rec["synth"]["id"].split(":") + ["", ""])[:3]
        f = by_id.get(fid)
        kind = {"q": "question", "a": "answer"}.get(part[:1])
        sources = (f.answers if kind == "answer" else f.questions) if f and kind else []
        i = int(part[1:]) if part[1:].isdigit() else -1
        if not 0 <= i < len(sources) or _digest(sources[i]) != digest:
            continue  # a reply to a prompt this data no longer asks (edited between runs)
        text = clean(rec["messages"][-1]["content"], kind)
        pool = (f.answers + f.new_answers) if kind == "answer" else (f.questions + f.new_questions)
        if any(jaccard(text, p) >= dedup for p in pool):
            dropped.append({**rec, "rejected": ["near_duplicate"]})
            continue
        if kind == "question" and nearest(text, f) is not f:
            dropped.append({**rec, "rejected": ["ambiguous"]})
            continue
        (f.new_answers if kind == "answer" else f.new_questions).append(text)
        if kind == "question" and sources[i] in f.contexts:  # a follow-up keeps its conversation
            f.contexts[text] = f.contexts[sources[i]]
        kept[kind] += 1
    rej = rejected_path(teacher_out)
    done = {(r["synth"]["id"], r["synth"]["sample"]) for r in jsonl.records(rej)
            if set(r.get("rejected", [])) & set(_COLLECT_REASONS)}
    with jsonl.Appender(rej) as fh:
        for d in dropped:
            if (d["synth"]["id"], d["synth"]["sample"]) not in done:
                fh.write(d)
    return kept


_COLLECT_REASONS = ("near_duplicate", "ambiguous")


def _nearest_fact(facts: list[Fact]) -> Any:
    """A function (question, its fact) -> the fact the question's content words point at: the one whose own
    questions and answers share the most of them, each weighted by how few facts use it (idf). Its own fact when
    none scores higher, or when the higher one shares a key with it (the same answer). A teacher question that
    points at another fact ("How much time do we need to get there?", written for the burst response time, is
    nearer the standby pay's questions) would teach the model to confuse the two: it is dropped."""
    bags = [set().union(*(_stems(x) for x in f.questions + f.answers)) for f in facts]
    df = Counter(s for b in bags for s in b)
    idf = {s: math.log(len(facts) / n) for s, n in df.items()}
    keys = [{k.lower() for k in f.keys} for f in facts]
    index = {id(f): i for i, f in enumerate(facts)}

    def nearest(question: str, fact: Fact) -> Fact:
        own = index[id(fact)]
        stems = _stems(question)
        score = [sum(idf[s] for s in stems & b) for b in bags]
        best = max(range(len(facts)), key=score.__getitem__)
        return fact if score[best] <= score[own] or keys[best] & keys[own] else facts[best]

    return nearest


def build_rows(facts: list[Fact], seed: int = 0, select_per_fact: int = 1, reversal: bool = True
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, selection rows). Per fact: `select_per_fact` of the teacher's questions held out (when it
    wrote at least two, and the fact has keys) as `{"messages": [system?, user], "answer": keys}`; then as many
    rows as the fact has questions or answers, whichever is more, each question and each answer used in turn (the
    answers in a seeded order); reversal rows for keys that are names or codes of this fact alone."""
    rng = random.Random(seed)
    key_owner = Counter(k.lower() for f in facts for k in f.keys)
    rows, select = [], []
    for f in facts:
        sys_msg = [{"role": "system", "content": f.system}] if f.system else []
        new_q = list(f.new_questions)
        rng.shuffle(new_q)
        held = new_q[:select_per_fact] if f.keys and len(new_q) >= 2 else []
        for q in held:
            select.append({"messages": [*sys_msg, *f.contexts.get(q, []), {"role": "user", "content": q}],
                           "answer": list(f.keys), "fact": f.id})
        questions = f.questions + [q for q in new_q if q not in held]
        answers = f.answers + f.new_answers
        order = list(range(len(answers)))
        rng.shuffle(order)
        for j in range(max(len(questions), len(answers))):  # every question and every answer at least once
            q, a = questions[j % len(questions)], answers[order[j % len(order)]]
            rows.append({"messages": [*sys_msg, *f.contexts.get(q, []), {"role": "user", "content": q},
                                      {"role": "assistant", "content": a}]})
        if reversal:
            for k in f.keys:
                if key_owner[k.lower()] == 1 and is_name_like(k):
                    for j, tmpl in enumerate(REVERSAL_QUESTIONS):
                        a = answers[order[j % len(order)]]
                        rows.append({"messages": [*sys_msg, {"role": "user", "content": tmpl.format(k=k)},
                                                  {"role": "assistant", "content": a}]})
    return rows, select


def doc_facts(chunks: list[Any], start: int = 0) -> list[Fact]:
    """A document's facts: each sentence (or table row, as "header: cell; ...") of each chunk that carries key
    strings, as a fact whose answer is the sentence and whose first question is the sentence with its key asked
    for (`cloze`: "The loading dock closes at what time on weekdays?"), which the teacher then rewords like a
    user's question. A sentence under four words states too little to ask about."""
    facts = []
    for ch in chunks:
        earlier: list[list[str]] = []  # the keys of the chunk's sentences so far
        for sentence, header in sentences(ch.text):
            sentence = resolve(sentence, earlier)
            keys = find_keys(sentence, header)  # a table's header names are labels, not facts
            earlier.append(keys)
            if not keys or len(sentence.split()) < 4:
                continue
            questions = [q for k in keys for q in (cloze(sentence, k, keys), front(sentence, k, keys)) if q]
            if questions:
                facts.append(Fact(f"d{start + len(facts)}", keys, None, list(dict.fromkeys(questions)), [sentence]))
    return facts


_VERBISH = set("is are was were has have had must should can will may might could would also does do".split())


def resolve(sentence: str, earlier: list[list[str]]) -> str:
    """`sentence` with a subject that points back ("The works is ...", "She ...", "Her team ...") replaced by the
    name it means among the key strings of the sentences before it (`earlier`, one list per sentence, in order):
    "The works is managed by who?" cannot be answered on its own, "Greyhollow Treatment Works is managed by who?"
    can. "The X" is resolved only to an earlier name that ends in X followed by a verb ("The control room" is not
    "Heron Control"); "He"/"She"/"His"/"Her" only to a person's name (two or three capitalised words, no place
    word) in the two sentences before. Else unchanged."""
    names = [k for keys in reversed(earlier) for k in keys if not re.search(r"\d", k) and " " in k]
    words = sentence.split(" ")
    if words[0] in ("The", "This", "That"):
        for n_words in (1, 2, 3):  # "The works is": the noun phrase ends where a verb starts
            tail, verb = words[1:1 + n_words], (words[1 + n_words:2 + n_words] or [""])[0].lower()
            if not all(re.fullmatch(r"[a-z][\w-]*", w) for w in tail) or not (
                    verb in _VERBISH or (verb.endswith("s") and not verb.endswith("ss"))):
                continue
            for n in names:
                if [w.lower() for w in n.split()[-len(tail):]] == tail:
                    return " ".join([n, *words[1 + n_words:]])
    if m := re.match(r"(He|She|His|Her)\s", sentence):
        near = [k for keys in reversed(earlier[-2:]) for k in keys]
        people = [k for k in near if re.fullmatch(r"[A-Z][\w'’-]+(?:\s[A-Z][\w'’-]+){1,2}", k)
                  and not _PLACE_WORDS & set(k.lower().split())]
        if people:
            owner = "'s" if m.group(1) in ("His", "Her") else ""
            return f"{people[0]}{owner} {sentence[m.end():]}"
    return sentence


_FRONT = re.compile(r"(?P<subj>[^,;:()]+?)\s+(?P<aux>is|are|was|were|must|should|can|will|may|could|would)\s+"
                    r"(?P<rest>.*?)(?:\s+(?:the|a|an))?")
_SUBORDINATE = set("when if as because while after before once where unless although though since".split())


def front(sentence: str, key: str, keys: list[str] | None = None) -> str | None:
    """The question `cloze` writes with its wh-phrase moved to the front, as people ask it: "The control room is
    on which extension?" -> "Which extension is the control room on?". None where the key opens the sentence
    (the cloze already starts with it), no auxiliary verb ("is", "must", ...) comes before it, a clause comes
    after it, or the subject is long or a subordinate clause ("When a job is ...")."""
    i = _at(sentence, key, keys)
    if i <= 0:
        return None
    after = sentence[i + len(key):].strip().rstrip(".!;: ")
    m = _FRONT.fullmatch(sentence[:i].strip())
    if not m or re.search(r"[,;:()]", after) or len(m.group("subj").split()) > 8 or \
            m.group("subj").split()[0].lower() in _SUBORDINATE:
        return None
    subj = m.group("subj")
    if " " in subj and not any(subj.startswith(k) for k in keys or find_keys(sentence)):
        subj = subj[0].lower() + subj[1:]  # "Water samples must" -> "water samples"; "Fieldspan is" keeps it
    wh = _wh(key)
    body = " ".join(x for x in (wh[0].upper() + wh[1:], m.group("aux"), subj, m.group("rest"), after) if x)
    return body + "?"


_WH = [(r"\+?\d{2,5}(?:[ -]\d{2,4}){1,3}", "which number"),
       (r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", "which e-mail address"), (r"https?://\S+|www\.\S+", "which web address"),
       (r"\d{1,2}:\d{2}.*", "what time"), (r"(?:ext\.?|extension|x)\s?\d+", "which extension"),
       (r"[$€£]\d.*|\d[\d,.]*\s?(?:euros?|dollars?|pounds?|EUR|USD|GBP)", "how much"),
       (r"\d[\d,.]*\s?%", "what percentage"),
       (r"\d[\d,.]*\s?([a-z]+|[A-Za-z]+/[A-Za-z]+|[A-Z]{2,4})", None), (r"\d[\d,.]*", "what number")]


def _wh(key: str) -> str:
    """The wh-phrase that asks for `key`: "how many days", "what time", "who" for a name, "which code" for a
    code, "which desk" for "Desk 4B", else "what"."""
    low = key.lower()
    if low in _DAYS:
        return "which day"
    if low in _MONTHS:
        return "which month"
    for pattern, phrase in _WH:
        if m := re.fullmatch(pattern, key):
            return phrase or f"how many {m.group(1)}"
    if m := re.fullmatch(r"([A-Z][a-z]+)\s(?:[A-Z]{0,3}-?\d+[A-Za-z]?|[A-Z])", key):
        return f"which {m.group(1).lower()}"  # Desk 4B -> which desk
    if re.search(r"\d", key):
        return "which code"
    if re.fullmatch(r"[A-Z][\w'’-]+(?:\s+[A-Z][\w'’-]+){1,2}", key) and not _PLACE_WORDS & set(
            key.lower().replace("'s", "").split()):
        return "who"
    return "what"


def _at(sentence: str, key: str, keys: list[str] | None = None) -> int:
    """Where `key` stands in `sentence` as a whole word and not inside a longer key ("Port Ardwell" in "the city of
    Port Ardwell", not in "Port Ardwell Water"); -1 if nowhere."""
    spans = [(m.start(), m.end()) for k in keys or [] if len(k) > len(key)
             for m in re.finditer(re.escape(k), sentence)]
    for m in re.finditer(rf"(?<!\w){re.escape(key)}(?!\w)", sentence):
        if not any(s <= m.start() and m.end() <= e for s, e in spans):
            return m.start()
    return -1


def cloze(sentence: str, key: str, keys: list[str] | None = None) -> str | None:
    """The sentence as a question asking for `key`: the key replaced by a wh-phrase for its kind (`_wh`), ending in
    "?" ("The fee is how much?"); a name's possessive asks "whose". `keys`: the sentence's other keys, so a key
    inside a longer one is asked where it stands alone. None if the key is not in it."""
    i = _at(sentence, key, keys)
    if i < 0:
        return None
    wh, end = _wh(key), i + len(key)
    if wh == "who" and sentence[end: end + 2] in ("'s", "’s"):
        wh, end = "whose", end + 2
    body = (sentence[:i] + wh + sentence[end:]).strip().rstrip(".!;:")
    return body[0].upper() + body[1:] + "?"


_PLACE_WORDS = set("""lane street road avenue way works depot office centre center hall building room house park
reservoir station team unit ward clinic hospital officer manager control desk gate store stores yard site plant
company ltd inc group app system portal service services committee board""".split())
_DAYS = {d.lower() for d in DAYS}
_MONTHS = {m.lower() for m in MONTHS}


def sentences(text: str) -> list[tuple[str, str]]:
    """(sentence, its table's header row or "") of a chunk: prose split at sentence ends, a bullet per sentence,
    table rows as 'header: cell; ...'."""
    out: list[tuple[str, str]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                continue
            if header is None:
                header = cells
            else:
                out.append(("; ".join(f"{h}: {c}" if h else c for h, c in zip(header, cells, strict=False) if c),
                            " ".join(header)))
            continue
        header = None
        if re.match(r"#{1,6}\s", s):  # a heading of a section merged into this chunk: a title, not a fact
            continue
        s = re.sub(r"^([-*•]|\d+[.)])\s+", "", s).replace("**", "").replace("__", "")
        s = re.sub(r"(?<![\w*])[*_](?=\w)|(?<=[\w.!?])[*_](?![\w*])", "", s)  # *emphasis*
        out += [(x.strip(), "") for x in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"“(])|\s+[·•]\s+", s) if x.strip()]
    return out
