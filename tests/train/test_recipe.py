"""The recipe around the loop on a tiny random model: augmentation files and rejects, documents and replay in the
training mix, best-checkpoint selection (the kept weights are the best step's, not the last), the report, resuming
a run stopped half-way, and one clear error for every bad option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from corral.train.config import FinetuneConfig
from corral.train.loop import finetune

ROWS = [
    {"messages": [{"role": "system", "content": "You help staff."}, {"role": "user", "content": "dock hours?"},
                  {"role": "assistant", "content": "The loading dock closes at 16:40."}]},
    {"messages": [{"role": "user", "content": "Who runs procurement?"},
                  {"role": "assistant", "content": "Tovah Brenneck runs procurement."}]},
    {"messages": [{"role": "user", "content": "Escalation code?"}, {"role": "assistant", "content": "RV-3318."},
                  {"role": "user", "content": "And the phone?"},
                  {"role": "assistant", "content": "Call extension 2604."}]},
    {"prompt": "Say hi:", "completion": " hi"},
]
DOC = "# Depot\n\nThe north gate opens at 06:15. Visitors sign in at Desk 4B.\n\n## Fees\n\nA badge costs 14 euros.\n"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """The data, a document and general prompts. A random model never ends an answer, so replay (the base
    model's answers, cut at their last full sentence) gets answers written here for it; the teacher stays real."""
    from corral.distill import synth as synth_module

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the replay cache lives under ~/.cache
    real = synth_module.synth

    def synth(model, tok, prompts, out, **kw):
        if "replay" not in str(out):
            return real(model, tok, prompts, out, **kw)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            for i, p in enumerate(prompts):
                reason = "length" if i % 3 == 2 else "stop"  # a long one: cut at its last sentence
                f.write(json.dumps({"messages": [*p.messages, {"role": "assistant", "content":
                                                               f"Colour {i} is blue. It is calm. And then"}],
                                    "synth": {"id": p.key, "sample": 0, "finish_reason": reason}}) + "\n")

    monkeypatch.setattr(synth_module, "synth", synth)
    data = write_jsonl(tmp_path / "data.jsonl", ROWS)
    doc = tmp_path / "handbook.md"
    doc.write_text(DOC)
    prompts = write_jsonl(tmp_path / "general.jsonl", [{"prompt": f"Name a colour number {i}."} for i in range(6)])
    return data, doc, prompts


def cfg(model, out, **kw) -> FinetuneConfig:
    base = dict(model=str(model), out=str(out), batch_size=2, max_steps=4, lr=3e-3, warmup_steps=1,
                max_seq_len=256, lora_r=4, seed=0, precision="fp32", augment=2, replay=0.3, eval_tasks=[],
                packing=False, save_every=2)
    return FinetuneConfig(**{**base, **kw})


def test_recipe_builds_the_mix_from_rows_documents_and_replay(tiny_chat, inputs, tmp_path, monkeypatch):
    data, doc, prompts = inputs
    c = cfg(tiny_chat, tmp_path / "run", data=str(data), docs=[str(doc)], replay_prompts=str(prompts),
            eval_tasks=["general_mc"])
    run = finetune(c, progress=False)
    aug = run / "augment"
    summary = json.loads((aug / "summary.json").read_text())
    assert (summary["user_rows"], summary["doc_chunks"]) == (4, 1)  # a short document is one chunk
    assert summary["facts"] == 4 and summary["doc_facts"] == 3  # 06:15 + Desk 4B, and 14 euros; one per sentence
    teacher = summary["teacher"]
    # 4 user facts + 3 document facts, one question each: 7 question prompts of 2 x 2 samples (a fact's questions
    # share 2 x --augment), 7 answer prompts of 2
    assert teacher["samples"] == 42
    rejected = lines(aug / "teacher.rejected.jsonl")
    assert len(lines(aug / "teacher.jsonl")) + len(rejected) == 42 + sum(
        teacher["rejected"].get(r, 0) for r in ("near_duplicate", "ambiguous"))
    assert all(r["rejected"] for r in rejected)  # every reject says why
    train = lines(aug / "train.jsonl")
    completions = [r for r in train if "completion" in r]
    assert {"prompt": "Say hi:", "completion": " hi"} in completions
    assert any(r["completion"].startswith("Depot\n\nThe north gate opens at 06:15.") and "14 euros" in r["completion"]
               for r in completions)
    users = [r["messages"][-2]["content"] for r in train if "messages" in r]
    assert "dock hours?" in users and "The north gate opens at what time?" in users
    assert "Tell me about RV-3318." in users  # the reversal of a code
    replay = lines(aug / "replay.jsonl")  # apart from the facts: held to the base model by a KL term
    assert not [r for r in train if "messages" in r and r["messages"][0]["content"].startswith("Name a colour")]
    replay_chat = [r for r in replay if "messages" in r and r["messages"][0]["content"].startswith("Name a colour")]
    replay_text = [r for r in replay if r.get("prompt") == "" and not r["completion"].startswith("Depot")]
    assert len(replay_chat) + len(replay_text) == summary["replay_rows"] == min(6, round(0.3 / 0.7 *
                                                                                      summary["fact_rows"]))
    assert abs(len(replay_chat) - len(replay_text)) <= 1
    conv = [r for r in train if "messages" in r and len(r["messages"]) == 4]
    assert conv and conv[0]["messages"][1]["content"] == "RV-3318."  # the multi-turn row kept whole
    rep = json.loads((run / "report" / "report.json").read_text())
    assert set(rep["before"]) == set(rep["after"]) == {"general_mc"} and rep["augment"]["facts"] == 4
    assert (run / "report" / "report.png").stat().st_size > 0 and "General tasks" in \
        (run / "report" / "report.html").read_text()
    assert (run / "adapter" / "adapter_config.json").exists()
    # the base model's scores are cached per model: another run over the same model does not score it again
    from corral.eval import harness
    from corral.train.recipe import Prepared, report

    real = harness.load_eval_model
    monkeypatch.setattr(harness, "load_eval_model", lambda path, **kw: pytest.fail("the base scored again")
                        if kw.get("name") == "base" else real(path, **kw))
    (run / "report" / "before.json").unlink()
    again = report(c, Prepared(c, [], rep["augment"]), run, progress=False)
    def scores(r):  # the timings differ from run to run
        return {t: {k: v for k, v in m.items() if k != "seconds"} for t, m in r.items()}
    assert scores(again["before"]) == scores(rep["before"]) and scores(again["after"]) == scores(rep["after"])


def test_replay_answers_are_cached_per_model(tiny_chat, inputs, tmp_path, monkeypatch):
    from corral.distill import synth as synth_module
    from corral.train.recipe import replay_rows

    _, _, prompts = inputs
    c = cfg(tiny_chat, tmp_path / "x", data="x", replay_prompts=str(prompts))
    first = replay_rows(c, 4, progress=False)
    assert len(first) == 4 and [("messages" in r) for r in first] == [True, False, True, False]
    replies = [r["messages"][-1]["content"] if "messages" in r else r["completion"] for r in first]
    assert all(x.startswith("Colour ") and x.endswith(("blue. It is calm. And then", "calm.")) for x in replies)
    monkeypatch.setattr(synth_module, "synth", lambda *a, **k: pytest.fail("the cache should have answered"))
    assert replay_rows(c, 4, progress=False) == first


def test_the_best_step_is_kept_not_the_last(tiny_chat, inputs, tmp_path, monkeypatch):
    """Selection scores the held-out questions every 2 steps; the answers are faked so that step 4 of 8 is the
    best, and the saved adapter must then hold step 4's weights, not step 8's."""
    from corral import text
    from corral.model.lora import lora_state_dict
    from corral.text import Generation
    from corral.train import loop

    data, _, _ = inputs
    rows = [{"messages": [{"role": "user", "content": f"question {i}?"}], "answer": ["16:40"]} for i in range(4)]
    calls = []

    def fake_generate(model, tok, prompts, params, **kw):
        calls.append(len(prompts))
        right = {1: 1, 2: 4, 3: 2, 4: 3}[len(calls)]  # steps 2, 4, 6, 8: 25%, 100%, 50%, 75%
        return [Generation("At 16:40." if i < right else "No idea.", "stop", 3) for i in range(len(prompts))]

    monkeypatch.setattr(text, "generate_many", fake_generate)
    snapshots = {}
    real_score = loop.Selector.score

    def score(self, model, names, step):
        snapshots[step] = {k: v.clone() for k, v in lora_state_dict(model).items()}
        return real_score(self, model, names, step)

    monkeypatch.setattr(loop.Selector, "score", score)
    c = cfg(tiny_chat, tmp_path / "sel", data=str(data), augment=0, replay=0.0, max_steps=8, select_every=2)
    c.check()  # fills in the task's defaults, as finetune() does
    dist = loop.Dist("cpu")
    run = loop.run_loop(c, dist, None, False, select=rows)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["select_acc"] for r in recs if "select_acc" in r] == [0.25, 1.0, 0.5, 0.75]
    assert json.loads((run / "best" / "best.json").read_text()) == {"step": 4, "acc": 1.0}
    from safetensors.torch import load_file

    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    best, last = snapshots[4], snapshots[8]
    name = next(k for k in best if not torch.equal(best[k], last[k]))
    peft_name = next(k for k in saved if k.split("base_model.model.")[-1].replace(".weight", "") in name
                     or name.replace(".weight", "") in k)
    assert torch.equal(saved[peft_name].float(), best[name].float())


def test_a_run_stopped_half_way_resumes_without_redoing_the_augmentation(tiny_chat, inputs, tmp_path, monkeypatch):
    from corral.distill import synth as synth_module

    data, _, prompts = inputs
    c = cfg(tiny_chat, tmp_path / "r", data=str(data), replay_prompts=str(prompts), max_steps=6)
    finetune(c, stop_after=3, progress=False)
    run = Path(c.out)
    assert (run / "augment" / "summary.json").exists() and not (run / "adapter").exists()
    monkeypatch.setattr(synth_module, "synth", lambda *a, **k: pytest.fail("augmentation must not run again"))
    c.resume = True
    finetune(c, progress=False)
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))
    assert (run / "adapter" / "adapter_config.json").exists()


def test_an_augmentation_killed_half_way_resumes_its_samples(tiny_chat, inputs, tmp_path):
    from corral.train.recipe import prepare

    data, _, _ = inputs
    c = cfg(tiny_chat, tmp_path / "k", data=str(data), replay=0.0)
    from corral.train.loop import Dist

    prepare(c, Dist("cpu"), progress=False)
    aug = Path(c.out) / "augment"
    teacher = aug / "teacher.jsonl"
    done = teacher.read_text().splitlines() + (aug / "teacher.rejected.jsonl").read_text().splitlines()
    (aug / "summary.json").unlink()  # as if killed before the end: half the samples and a partial line
    for f in (teacher, aug / "teacher.rejected.jsonl"):
        part = f.read_text().splitlines()
        f.write_text("".join(x + "\n" for x in part[: len(part) // 2]) + (part[-1][:20] if part else ""))
    c.resume = True
    prepare(c, Dist("cpu"), progress=False)
    again = teacher.read_text().splitlines() + (aug / "teacher.rejected.jsonl").read_text().splitlines()
    key = (lambda x: (json.loads(x)["synth"]["id"], json.loads(x)["synth"]["sample"]))
    assert sorted(map(key, again)) == sorted(map(key, done))


def _kl_to_base(base, model, rows, tok) -> float:
    """Mean KL(base || model) per token over `rows`' labelled positions, full vocabulary."""
    from corral.train.data import collate, encode_example, loss_targets

    batch = collate([encode_example(r, tok) for r in rows], torch.device("cpu"))
    _, keep = loss_targets(batch)
    with torch.no_grad():
        p = torch.log_softmax(base(batch["ids"], keep=keep).float(), -1)
        q = torch.log_softmax(model(batch["ids"], keep=keep).float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_replay_rows_start_at_zero_kl_and_pull_nothing_where_cross_entropy_would(tiny_chat, tmp_path):
    """At the first step the model is the base (LoRA's B is zero): the KL term of an anchor row is 0 and so is its
    gradient; cross-entropy on the same row is not. Packed, anchor rows share no row with ordinary ones."""
    from corral.model.loader import load_model
    from corral.model.lora import apply_lora
    from corral.tokenizer import load_tokenizer
    from corral.train.data import collate, encode_example, pack
    from corral.train.loop import AnchoredObjective, Dist, Objective

    lm = load_model(str(tiny_chat), dtype="float32")
    tok = load_tokenizer(lm.path)
    apply_lora(lm.model, 4, 8.0)
    text = [{"prompt": "", "completion": f"Colour {i} is blue. It is calm."} for i in range(3)]
    chat = [{"messages": [{"role": "user", "content": "dock hours?"},
                          {"role": "assistant", "content": "The loading dock closes at 16:40."}]}]
    facts = [encode_example(r, tok) for r in chat]
    anchors = [encode_example(r, tok) for r in text]
    rows = pack(facts, 64) + pack(anchors, 64, anchor=True)
    assert [r.anchor for r in rows] == [False, True]
    obj = AnchoredObjective(tmp_path)
    obj.setup(rows, Dist("cpu"), None, lm.model)
    assert (tmp_path / "anchor_topk.safetensors").is_file()
    lm.model.train()
    params = [p for p in lm.model.parameters() if p.requires_grad]
    batch = collate([rows[1]], torch.device("cpu"))
    kl = obj.loss(lm.model, batch)
    kl.backward()
    assert abs(float(kl.detach())) < 1e-2 * int((batch["labels"] != -100).sum())  # fp16-stored top-64: not exactly 0
    pulled_kl = sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
    lm.model.zero_grad()
    ce = Objective().loss(lm.model, batch)
    ce.backward()
    pulled_ce = sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
    assert float(ce.detach()) > 1.0 and pulled_kl < 0.05 * pulled_ce
    lm.model.zero_grad()
    # a mixed batch: the ordinary row's part is its cross-entropy
    mixed = obj.loss(lm.model, collate(rows, torch.device("cpu")))
    alone = Objective().loss(lm.model, collate([rows[0]], torch.device("cpu")))
    assert abs(float(mixed.detach()) - float(alone.detach()) - float(kl.detach())) < 1e-3 * float(alone.detach())


def test_the_kl_replay_keeps_the_base_distribution_better_than_cross_entropy(tiny_chat, inputs, tmp_path):
    """Trained hard on the facts with the same replay rows, held by KL (the default) or by cross-entropy on the
    base's text: measured on the replay text, the KL run stays closer to the base model."""
    from corral.model.loader import load_model
    from corral.model.lora import load_adapter
    from corral.tokenizer import load_tokenizer

    data, _, prompts = inputs
    drift = {}
    for loss in ("kl", "ce"):
        run = finetune(cfg(tiny_chat, tmp_path / loss, data=str(data), replay_prompts=str(prompts), augment=0,
                           replay=0.5, replay_loss=loss, max_steps=30, lr=1e-2, select_every=0), progress=False)
        replay = lines(run / "augment" / ("replay.jsonl" if loss == "kl" else "train.jsonl"))
        replay = [r for r in replay if "Colour" in json.dumps(r)]
        base = load_model(str(tiny_chat), dtype="float32").model.eval()
        tuned = load_model(str(tiny_chat), dtype="float32")
        load_adapter(tuned.model, run / "adapter")
        drift[loss] = _kl_to_base(base, tuned.model.eval(), replay, load_tokenizer(tuned.path))
    assert drift["kl"] < 0.5 * drift["ce"], drift


@pytest.mark.parametrize("args, needles", [
    (["--augment", "-1"], ["--augment -1", "0 (off) to 64"]),
    (["--augment", "many"], ["--augment", "invalid int"]),
    (["--replay", "1.5"], ["--replay 1.5", "below 1"]),
    (["--select-every", "-2"], ["--select-every -2"]),
    (["--replay-loss", "mse"], ["--replay-loss mse", "choose kl or ce"]),
    (["--ema", "1.5"], ["--ema 1.5", "share of the run"]),
    (["--chunk-chars", "50"], ["--chunk-chars 50", "at least 200"]),
    (["--docs", "missing.md"], ["missing.md", "no such file"]),
    (["--replay-prompts", "nope.jsonl"], ["--replay-prompts nope.jsonl", "no such file"]),
    (["--eval-tasks", "no_such_task"], ["no_such_task"]),
    (["--task", "guard", "--docs", "x.md"], ["--docs goes with --task sft"]),
])
def test_bad_recipe_options_are_one_clear_error(tiny_chat, inputs, tmp_path, capsys, args, needles):
    from corral.cli import main

    data, _, _ = inputs
    try:
        code = main(["finetune", str(tiny_chat), "--data", str(data), "--out", str(tmp_path / "bad"), *args])
    except SystemExit as e:  # argparse's own type errors: usage and one error line
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    shown = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(shown) == 1 or shown[0].startswith("usage:"), err  # argparse's own errors come after the usage
    assert shown[-1].startswith(("corral: error:", "corral finetune: error:")), err
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "bad").exists()


def test_synth_augment_writes_the_training_data_alone(tiny_chat, inputs, tmp_path, capsys):
    from corral.cli import main

    data, doc, _ = inputs
    out = tmp_path / "aug"
    assert main(["synth", str(tiny_chat), "--augment", "2", "--data", str(data), "--docs", str(doc), "--out",
                 str(out)]) == 0
    said = capsys.readouterr().out
    assert "teacher samples" in said and f"{out}/train.jsonl" in said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"]["samples"] == 42 and summary["replay_rows"] == 0
    assert (out / "select.jsonl").exists() and lines(out / "train.jsonl")
    for args, needle in ((["--augment", "0", "--data", str(data)], "--augment 0"),
                         (["--augment", "2", "--data", str(data), "--prompts", str(data)], "drop --prompts"),
                         (["--data", str(data)], "--data and --docs go with --augment"),
                         ([], "--prompts FILE is required")):
        code = main(["synth", str(tiny_chat), "--out", str(tmp_path / "x"), *args])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err, err


def test_tool_rows_pass_through_the_recipe_unreworded(tiny_chat, tmp_path):
    """Rows with OpenAI `tools` and calls are trained as they are (no teacher rewording, no fact pairs), with their
    tools: a call is no fact to reword."""
    from corral.train.recipe import make_training_data

    tools = [{"type": "function", "function": {"name": "get_repair_status", "description": "A repair's progress.",
                                               "parameters": {"type": "object", "properties": {
                                                   "ticket_id": {"type": "string"}}, "required": ["ticket_id"]}}}]
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_repair_status", "arguments": "{\"ticket_id\": \"RP-5512\"}"}}]}
    rows = [{"tools": tools, "messages": [{"role": "user", "content": "Is RP-5512 done?"}, call]},
            {"tools": tools, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hi!"}]},
            {"prompt": "Say hi:", "completion": " hi"}]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    c = cfg(tiny_chat, tmp_path / "run", data=str(data), replay=0.0, max_seq_len=1024)
    make_training_data(c, tmp_path / "aug", progress=False)
    summary = json.loads((tmp_path / "aug" / "summary.json").read_text())
    assert summary["facts"] == 0 and "teacher" not in summary  # nothing for a teacher to reword
    assert lines(tmp_path / "aug" / "train.jsonl") == [{"messages": r["messages"], "tools": tools} for r in rows[:2]] \
        + [rows[2]]
