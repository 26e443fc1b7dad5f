"""Key strings: the part of an answer that carries the fact ("16:40", "Tovah Brenneck", "RV-3318", "14 euros").

Augmentation keeps a teacher's rewording only if it still carries the answer's key strings, and checkpoint selection
scores a held-out question by whether the reply carries them, so both need the keys of answers nobody labelled. A
row may name them (`"answer": "16:40"` or a list); otherwise they are read off the answer: the entity-like spans
(numbers with their unit, times, codes, e-mail and web addresses, capitalised names) that the question does not
already contain. No torch, no model: plain regular expressions, so the rule is the same everywhere and testable.
"""

from __future__ import annotations

import re

# A number with an optional currency sign, decimal part, percent sign and one unit word after it ("14 euros",
# "$1,200", "35%", "2.5 kg", "27 days"); the unit word must be lower case so "12 Acme" is not a unit.
_UNIT_NOT = (r"(?!(?:per|a|an|the|and|or|to|of|in|on|at|for|is|are|was|were|from|by|with|if|as|but|so|which|that|"
             r"who|when|where|each|every|it|its|we|you|they|than|then|before|after|until|now|here|there)\b)")
# A unit may have a per-part ("147 mg/L", "50 km/h") or be an upper-case abbreviation ("0.8 NTU", "40 GB").
_NUMBER = (rf"[$€£]?\b\d[\d,]*(?:\.\d+)?(?![\w-])(?:\s?%|(?:\s{_UNIT_NOT}(?:[a-z]{{1,12}}(?:/[A-Za-z]{{1,6}})?|"
           rf"[A-Z]{{2,4}}))(?=[\s.,;:!?)]|$))?")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_MONTH = "|".join(MONTHS)
_PATTERNS = [
    rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s(?:{_MONTH})\b|\b(?:{_MONTH})\s\d{{1,2}}(?:st|nd|rd|th)?\b",  # dates
    # a labelled place: Desk 4B, Building C, Room 12
    rf"\b[A-Z][a-z]+\s(?:[A-Z]{{0,3}}-?\d+[A-Za-z]?|[A-Z])\b(?![-/.:,]\w)(?!\s(?:{_MONTH}))",
    r"\+?\b\d{2,5}(?:-\d{2,4}){1,3}\b|\+?\b\d{2,5}(?: \d{2,4}){2,3}\b",  # phone numbers: 0800 739 1150, 555-0142
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail
    r"https?://\S+[^\s.,;:!?)]|www\.\S+[^\s.,;:!?)]",  # web address
    r"\b\d{1,2}:\d{2}(?:\s?[ap]\.?m\.?)?",  # time of day
    r"\b(?=[A-Za-z0-9_/-]*\d)(?=[A-Za-z0-9_/-]*[A-Za-z])[A-Za-z0-9]+(?:[-_/.][A-Za-z0-9]+)+\b",  # codes: RV-3318, B2/14
    r"\b[A-Z]{2,}\d+[A-Z\d]*\b|\b\d+[A-Z]{2,}\b",  # codes without separators: SW9, AB12C, 3PL
    r"\b\d+[A-Za-z]\b|\b[A-Z]\d+\b",  # short codes: 4B, B12
    r"#\d+",  # ticket / extension numbers
    r"(?:ext\.?|extension|x)\s?\d{2,6}",  # phone extensions
    _NUMBER,
]
_ENTITY = re.compile("|".join(f"(?:{p})" for p in _PATTERNS))
_NAME = re.compile(r"\b[A-Z][\w'’&-]*(?:\s+(?:of|de|van|von|the|and|&)?\s*[A-Z][\w'’&-]*)*")
# Capitalised words that start sentences or are everyday words, never a fact on their own.
_COMMON = set("""i a an the it its it's this that these those there here you your yours we our they their he she
his her my me us them yes no please thanks thank hi hello sure ok okay note also so but and or if when where what
which who whom whose why how in on at by for from to of with as is are was were be been do does did can could will
would should may might must shall each every all any some none both either neither one two three four five six
seven eight nine ten first second third last next our use write call ask send contact email go visit book
bring see check open log file submit employees staff customers everyone new yes that's it's there's here's he's
she's we're you're they're i'm let's what's who's yep nope correct right exactly absolutely indeed within about
around approximately roughly nearly almost over under up only just after before since until per than id ids""".split())
_DAYS_MONTHS = {w.lower() for w in DAYS + MONTHS}
_COMMON |= _DAYS_MONTHS
_WORD = re.compile(r"[\w'’]+")


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def find_keys(answer: str, question: str = "") -> list[str]:
    """The key strings of `answer` that `question` does not contain, in order of appearance. Entity spans (numbers
    with their unit, times, codes, addresses) come first; capitalised names are taken where they do not overlap
    one, with everyday words trimmed off their ends ("The Glowmoth" -> "Glowmoth") and a possessive dropped. A
    single capitalised word that starts a sentence is a key only if it is capitalised mid-sentence somewhere too
    (so "Employees get 35% off" gives "35%" alone), has a capital or digit inside ("TideGrid"), or is the whole
    answer ("Fieldspan."). Days and months count ("changes over every Wednesday"). A sentence's first word is
    not a label ("Every 75 minutes" gives "75 minutes", as "Room 12" gives "Room 12"), nor is it part of a name
    when "the" follows it ("Beneath the General Manager" gives "General Manager"); a list's "·" or a leading "*"
    starts a sentence too. []
    when the answer carries none (a free-text answer: kept, but no filter or score can check it)."""
    q = _norm(question)
    q_words = {w.lower() for w in _WORD.findall(question)}
    taken: list[tuple[int, int]] = []
    pos = 0
    while m := _ENTITY.search(answer, pos):
        start, end = m.start(), m.end()
        first = m.group(0).split(" ", 1)
        if len(first) == 2 and first[0].lower() in _COMMON - _DAYS_MONTHS:  # "Every 75 minutes": not a label
            start += len(first[0]) + 1
            again = _ENTITY.match(answer, start)
            end = max(end, again.end()) if again else end
        taken.append((start, end))
        pos = max(end, m.start() + 1)
    mid_caps = {m.group(0) for m in re.finditer(r"(?<=[^\s.!?:·•*]\s)[A-Z][\w'’-]*", answer)}
    for m in _NAME.finditer(answer):
        words = [(w.start() + m.start(), w.end() + m.start(), w.group(0)) for w in re.finditer(r"\S+", m.group(0))]
        while words and words[0][2].lower() in _COMMON and words[0][2].lower() not in _DAYS_MONTHS:
            words = words[1:]
        while words and words[-1][2].lower() in _COMMON and words[-1][2].lower() not in _DAYS_MONTHS:
            words = words[:-1]
        if not words:
            continue
        s, e = words[0][0], words[-1][1]
        if answer[e - 2: e] in ("'s", "’s"):
            e -= 2
        sentence_start = re.fullmatch(r"[\W_]*", answer[:s]) is not None or re.search(
            r"[.!?:·•]\W*$", answer[:s]) is not None  # after "*", a quote or a "·" too
        word = words[0][2]
        named = (word in mid_caps or word.lower() in _DAYS_MONTHS or re.search(r"[A-Z\d]", word[1:]) is not None
                 or _norm(answer).strip(" .!") == word.lower())  # TideGrid, Monday, or the whole answer
        if sentence_start and not named and len(words) > 2 and words[1][2] in ("the", "a", "an"):
            words = words[2:]  # "Beneath the General Manager ..." -> "General Manager"
            s, word, sentence_start = words[0][0], words[0][2], False
        if len(words) == 1 and (word.lower().rstrip("'’s") in q_words or (sentence_start and not named)):
            continue
        if any(s < te and ts < e for ts, te in taken):
            continue
        taken.append((s, e))
    found: list[tuple[int, str]] = []
    for s, e in taken:
        text = answer[s:e].strip(" .,;:!?\"'()")
        if text and _norm(text) not in q and text.lower() not in _COMMON - _DAYS_MONTHS:
            found.append((s, text))
    out: list[str] = []
    for _, k in sorted(found):
        if k not in out:
            out.append(k)
    return out


def carries(text: str, keys: list[str]) -> bool:
    """Whether `text` contains every key (case- and whitespace-insensitive)."""
    t = _norm(text)
    return all(_norm(k) in t for k in keys)


def is_name_like(key: str) -> bool:
    """A key that can be asked about the other way round ("What is RV-3318?", "Who is Tovah Brenneck?"): a code or
    a name, not a bare quantity, time or day."""
    if re.fullmatch(_NUMBER, key) or re.fullmatch(r"\d{1,2}:\d{2}.*", key) or key.lower() in _DAYS_MONTHS:
        return False
    return bool(re.search(r"[A-Za-z]", key))
