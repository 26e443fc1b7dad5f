"""OpenAI's moderation result shape from a guard's verdict (`POST /v1/moderations`).

OpenAI's categories (omni-moderation) and Llama Guard 3's where they correspond:

| Llama Guard 3                  | OpenAI category keys set                |
|--------------------------------|-----------------------------------------|
| S1 Violent Crimes              | violence, illicit/violent               |
| S2 Non-Violent Crimes          | illicit                                 |
| S3 Sex Crimes                  | sexual, illicit                         |
| S4 Child Exploitation          | sexual/minors, sexual                   |
| S9 Indiscriminate Weapons      | violence, illicit/violent               |
| S10 Hate                       | hate                                    |
| S11 Self-Harm                  | self-harm                               |
| S12 Sexual Content             | sexual                                  |
| S5, S6, S7, S8, S13, S14       | none (no OpenAI counterpart)            |

OpenAI keys no Llama Guard category matches stay false: harassment, harassment/threatening, hate/threatening,
self-harm/intent, self-harm/instructions (a verdict does not say which kind of self-harm), violence/graphic.

The guard's own codes are returned too, as extra keys of `categories` and `category_scores` named by code ("S5"),
for every code of its taxonomy, and in `corral` (an extra field: the verdict, the codes, the guard's score). With a
policy file of your own the OpenAI keys are all false (its codes mean what the file says, not S1-S14's) and only
its codes are set.

Scores: a Llama Guard model gives one probability, P(unsafe) (the scorer's first-token softmax), and a list of
codes; it has no per-category probability. A category's score is P(unsafe) when the verdict names it (an OpenAI key:
when it names a code mapped to it) and 0 otherwise.
"""

from __future__ import annotations

from typing import Any

OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                     "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
                     "sexual/minors", "violence", "violence/graphic")
LLAMA_GUARD_TO_OPENAI: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"),
    "S2": ("illicit",),
    "S3": ("sexual", "illicit"),
    "S4": ("sexual/minors", "sexual"),
    "S9": ("violence", "illicit/violent"),
    "S10": ("hate",),
    "S11": ("self-harm",),
    "S12": ("sexual",),
}


def moderation_result(result: Any, taxonomy: Any) -> dict[str, Any]:
    """One entry of `results`: `{flagged, categories, category_scores, category_applied_input_types, corral}` for a
    `GuardResult` of a text read as a user message."""
    from corral.guard.taxonomy import default_taxonomy

    mapped = taxonomy is default_taxonomy() or taxonomy.source == default_taxonomy().source
    score = 1.0 if result.score is None and result.unsafe else (result.score or 0.0)
    named = set(result.categories)
    cats: dict[str, bool] = dict.fromkeys(OPENAI_CATEGORIES, False)
    scores: dict[str, float] = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
    if mapped:
        for code in named:
            for key in LLAMA_GUARD_TO_OPENAI.get(code, ()):
                cats[key] = bool(result.unsafe)
                scores[key] = score
    for c in taxonomy:
        cats[c.code] = bool(result.unsafe) and c.code in named
        scores[c.code] = score if c.code in named else 0.0
    return {"flagged": bool(result.unsafe), "categories": cats,
            "category_scores": {k: round(v, 6) for k, v in scores.items()},
            "category_applied_input_types": {k: ["text"] for k in cats},
            "corral": {"verdict": "unsafe" if result.unsafe else "safe", "categories": list(result.categories),
                       "score": None if result.score is None else round(result.score, 6),
                       "parsed": result.verdict.parsed, "taxonomy": taxonomy.source}}
