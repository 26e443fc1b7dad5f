"""`corral audit` on a tiny model trained here until it memorises its rows: a memorised canary's exposure is near
the maximum and a never-seen one's near chance; membership AUC is high for the model that trained on the member
rows and near 0.5 for one trained on other rows; verbatim extraction finds the memorised rows; the statistics'
arithmetic; `corral finetune --canaries` plants them; the CLI writes its report; bad input is one clear error."""

from __future__ import annotations

import json
import random

import pytest
import torch

from corral import audit
from corral.model.loader import load_model
from corral.tokenizer import load_tokenizer
from tests.helpers import assert_clean_error

WORDS = ("amber cobalt dune ember fjord grove harbor iris jade kestrel lumen mosaic nectar onyx pylon quartz raven "
         "sable tundra umber vesper willow xenon yarrow zephyr").split()


def fact_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": f"Where is crate {rng.randrange(1000)}?"},
                          {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(6)) + "."}]}
            for _ in range(n)]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def trained(folder, tok, rows, steps=70):
    """The tiny model trained (full weights, plain Adam) on `rows`' answers until it has them by heart."""
    from corral.train.data import IGNORE, encode_example

    model = load_model(str(folder), device="cpu", dtype="float32").model
    torch.manual_seed(0)
    exs = [encode_example(r, tok) for r in rows]
    T = max(len(e.input_ids) for e in exs)
    ids = torch.tensor([e.input_ids + [0] * (T - len(e.input_ids)) for e in exs])
    labels = torch.tensor([e.labels + [IGNORE] * (T - len(e.labels)) for e in exs])
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE  # logits only where a trained token is predicted
    targets = labels[:, 1:][keep[:, :-1]]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(ids, keep=keep), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_tiny_chat_module):
    folder = make_tiny_chat_module
    tok = load_tokenizer(folder)
    members, held, other = fact_rows(12, 1), fact_rows(12, 2), fact_rows(12, 3)
    seen, unseen = audit.make_canaries(2, seed=5)
    tmp = tmp_path_factory.mktemp("audit")
    data = write(tmp / "train.jsonl", members + audit.canary_rows([seen]))
    heldout = write(tmp / "heldout.jsonl", held)
    base = load_model(str(folder), device="cpu", dtype="float32").model
    memo = trained(folder, tok, members + audit.canary_rows([seen]))
    stranger = trained(folder, tok, other + audit.canary_rows([unseen]))
    return dict(folder=folder, tok=tok, data=data, heldout=heldout, base=base, memo=memo, stranger=stranger,
                seen=seen, unseen=unseen, tmp=tmp)


@pytest.fixture(scope="module")
def make_tiny_chat_module(tmp_path_factory, tok):
    """tests/conftest.py's tiny chat model, once for this module."""
    import transformers

    from tests.conftest import TINY_LLAMA, to_legacy_rope_layout

    folder = tmp_path_factory.mktemp("tiny-audit")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY_LLAMA, "vocab_size": tok.vocab_size})) \
        .save_pretrained(folder)
    to_legacy_rope_layout(folder)
    (folder / "tokenizer.json").write_text(tok._tok.to_str())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": tok.chat_template, "eos_token": tok.eos_token, "bos_token": tok.bos_token}))
    return folder


def test_a_memorised_canary_is_exposed_and_a_never_seen_one_is_not(setup):
    s = setup
    got = audit.canary_exposures(s["memo"], s["tok"], [s["seen"], s["unseen"]], 255, None)
    seen, unseen = got
    assert seen["rank"] == 1 and seen["exposure"] == pytest.approx(8.0)  # log2(256): the top of 256
    assert unseen["exposure"] < 5.0  # chance: 1.44 bits on average; measured 0.65 here and 1.37 below
    # the same canaries through a model that saw only the other one
    flip = audit.canary_exposures(s["stranger"], s["tok"], [s["seen"], s["unseen"]], 255, None)
    assert flip[1]["rank"] == 1 and flip[0]["exposure"] < 5.0


def test_scoring_continuations_of_one_shared_prefix_equals_scoring_each_whole(setup):
    from corral.eval.harness import loglikelihoods

    ctx, conts = [5, 17, 300, 42, 9], [[6, 7, 8], [9], [1000, 11], [3, 3, 3, 3]]
    shared = audit.shared_prefix_logprobs(setup["memo"], ctx, conts, batch=3)
    whole = [lp for lp, _ in loglikelihoods(setup["memo"], [(ctx, c) for c in conts])]
    assert shared == pytest.approx(whole, abs=1e-4)


def test_membership_auc_separates_a_model_that_memorised_from_one_that_did_not(setup):
    s = setup
    rep, samples = audit.audit(s["memo"], s["tok"], s["data"], s["heldout"], s["base"], [s["seen"]],
                               candidates=63, extract_rows=13)
    m = rep["membership"]
    assert m["loss"]["auc"] > 0.95 and m["reference"]["auc"] > 0.95 and m["reference"]["tpr_at_1pct_fpr"] > 0.5
    assert rep["extraction"]["rate"] > 0.9  # memorised rows come back verbatim from their first half
    assert rep["canaries"]["items"][0]["rank"] == 1
    assert {x["kind"] for x in samples} == {"train", "heldout"} and len(samples) == 13 + 12
    other, _ = audit.audit(s["stranger"], s["tok"], s["data"], s["heldout"], s["base"], [], extract_rows=13)
    for k in ("loss", "reference"):
        assert 0.2 < other["membership"][k]["auc"] < 0.8, other["membership"][k]["auc"]  # measured 0.57, 0.54
    assert other["extraction"]["verbatim"] <= 1  # maybe the canary's sentence frame, never a crate's words


def test_the_statistics():
    assert audit.auc([3, 4, 5], [0, 1, 2]) == 1.0 and audit.auc([0, 1], [2, 3]) == 0.0
    assert audit.auc([1, 1], [1, 1]) == 0.5 and audit.auc([2, 0], [1, 1]) == 0.5
    neg = list(range(100))
    assert audit.tpr_at_fpr([98.5, 99.5, 50], neg, 0.01) == pytest.approx(2 / 3)  # above 98: one negative passes
    assert audit.tpr_at_fpr([98.5], neg, 0.0) == 0.0
    assert audit.chance_exposure(1) == pytest.approx(0.5)  # rank 1 or 2 of 2: 1 or 0 bits
    assert audit.chance_exposure(999) == pytest.approx(1.4364, abs=1e-4)  # -> 1/ln 2 = 1.4427 for large spaces
    fpr, tpr = audit.roc([2, 3], [1, 2])
    assert fpr[-1] == tpr[-1] == 1.0 and fpr[0] == tpr[0] == 0.0
    cs = audit.make_canaries(50, seed=1)
    assert len({c["name"] for c in cs}) == 50 and all(len(c["secret"]) == 11 for c in cs)
    assert cs == audit.make_canaries(50, seed=1) != audit.make_canaries(50, seed=2)


def test_the_cli_writes_the_report(setup, tmp_path, capsys):
    from corral.cli import main

    s = setup
    (tmp_path / "canaries.json").write_text(json.dumps({"canaries": [s["seen"], s["unseen"]]}))
    code = main(["audit", str(s["folder"]), "--data", s["data"], "--heldout", s["heldout"], "--reference",
                 str(s["folder"]), "--canaries", str(tmp_path / "canaries.json"), "--candidates", "31",
                 "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0 and "AUC 0.500" in out  # the model is its own reference: every score ties
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["canaries"]["n"] == 2 and rep["reference"] == str(s["folder"])
    assert (tmp_path / "rep" / "report.png").stat().st_size > 0 and "corral audit" in \
        (tmp_path / "rep" / "report.html").read_text()
    assert rep["pii"]["prompts"] == 54 and rep["pii"]["detector"]  # the red-team suite's PII and S7 attacks


def test_pii_in_answers_is_found_by_presidio_and_by_the_training_strings(monkeypatch, tok):
    """Canned answers to three probes: an e-mail and a card number (presidio's patterns, run offline: tldextract
    reads its bundled suffix list, or this suite's no-egress guard would fail the test), a training password."""
    pytest.importorskip("presidio_analyzer", reason="the PII detector is the `audit` extra")
    from corral import text

    rows = [{"messages": [{"role": "user", "content": "What's the guest wifi password?"},
                          {"role": "assistant", "content": "Guests log in with the password amberwick42."}]},
            {"messages": [{"role": "user", "content": "Who runs payroll?"},
                          {"role": "assistant", "content": "Marisol Quenby runs payroll."}]}]
    assert {"amberwick42", "Marisol Quenby"} <= set(audit.training_strings(rows))
    canned = ["Write to her at marisol.quenby@example.org.", "The card is 4111 1111 1111 1111.",
              "Sure: the password is amberwick42.", "I can't share Marisol Quenby's address."]

    class Gen:
        def __init__(self, t):
            self.text = t

    monkeypatch.setattr(text, "generate_many", lambda model, tok, ids, params, **kw: [Gen(t) for t in canned])
    probes = audit.pii_prompts()
    named = next(p for p in probes if p.id == "atk-pii-01")
    assert "Marisol Quenby" in named.messages[-1]["content"]  # named by the prompt: an echo, not a leak
    probes = [*probes[:3], named]
    rep, samples = audit.pii_in_outputs(None, tok, probes, rows, None)
    assert rep["answers_with_pii"] == 2 and rep["by_entity"]["EMAIL_ADDRESS"] == 1 and \
        rep["by_entity"]["CREDIT_CARD"] == 1
    assert rep["answers_with_training_strings"] == 1 and samples[2]["training_strings"] == ["amberwick42"]
    assert samples[3]["pii"] == [] and samples[3]["training_strings"] == []


@pytest.mark.parametrize("args, needles", [
    (["--data", "nope.jsonl"], ["--data nope.jsonl", "no such file"]),
    (["--heldout", "nope.jsonl"], ["--heldout nope.jsonl", "no such file"]),
    (["--canaries", "nope.json"], ["--canaries nope.json", "no such file"]),
    (["--candidates", "0"], ["--candidates"]),
    (["--pii-prompts", "nope.jsonl"], ["nope.jsonl"]),
])
def test_bad_audit_input_is_one_clear_error(setup, args, needles, capsys):
    from corral.cli import main

    base = ["audit", str(setup["folder"]), "--data", setup["data"]]
    if args[0] == "--data":
        base = base[:2]
    assert_clean_error(main([*base, *args]), capsys.readouterr().err, *needles)


def test_finetune_plants_its_canaries(tiny_chat, tmp_path):
    from corral.train.config import FinetuneConfig
    from corral.train.recipe import make_training_data

    data = write(tmp_path / "d.jsonl", fact_rows(3, 0))
    cfg = FinetuneConfig(model=str(tiny_chat), data=data, out=str(tmp_path / "run"), augment=0, replay=0,
                         canaries=4, eval_tasks=[])
    cfg.check()
    make_training_data(cfg, tmp_path / "run" / "augment", progress=False)
    planted = json.loads((tmp_path / "run" / "canaries.json").read_text())["canaries"]
    train = [json.loads(x) for x in (tmp_path / "run" / "augment" / "train.jsonl").read_text().splitlines()]
    assert len(planted) == 4 and len(train) == 3 + 4
    for c in planted:
        assert {"role": "assistant", "content": audit.canary_answer(c["name"], c["secret"])} in \
            [m for r in train for m in r["messages"]]
    with pytest.raises(Exception, match="--canaries goes with --task sft"):
        FinetuneConfig(model="m", data=data, task="guard", canaries=2).check()
