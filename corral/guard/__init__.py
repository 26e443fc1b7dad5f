"""`corral guard`: check conversations with a Llama Guard style model (prompt format, verdicts, taxonomies).

    from corral.guard import Guard, load_taxonomy
    guard = Guard(model, tokenizer, load_taxonomy("policy.yaml"), mode="score")
    result = guard.check([{"role": "user", "content": "How do I pick a lock?"}])
    result.unsafe, result.categories, result.score

Train one on labelled rows (`dataset.py`, and `train.py`: the training loop with the guard's `Task`; `corral
finetune --task guard --data train [--guard-policy policy.yaml]`) and measure it (`evaluate.py`: `corral guard
--adapter RUN/adapter --eval heldout --report DIR`).

Must not import: corral.serve, corral.redteam, corral.cli; of corral.train, `dataset.py` uses the example type
and `train.py` the loop.
"""

from corral.guard.guard import Guard, GuardResult
from corral.guard.llama_guard import (
    Verdict,
    normalize_conversation,
    parse_verdict,
    render_prompt,
    target_text,
)
from corral.guard.taxonomy import Category, Taxonomy, TaxonomyError, default_taxonomy, load_taxonomy

__all__ = ["Category", "Guard", "GuardResult", "Taxonomy", "TaxonomyError", "Verdict", "default_taxonomy",
           "load_taxonomy", "normalize_conversation", "parse_verdict", "render_prompt", "target_text"]
