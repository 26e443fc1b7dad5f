"""Training a guard: guard rows become the exact prompt `Guard` reads plus the verdict it should write (loss on the
verdict and end of turn only), custom policies, bad rows, and `corral finetune --task guard` on a tiny model (the loss
falls; the adapter and its policy load through `corral guard --adapter`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from corral.chat import encode_chat
from corral.errors import InvalidArgumentError
from corral.guard import Guard, parse_verdict, render_prompt, target_text
from corral.guard.dataset import (
    BUNDLED,
    POLICY_FILE,
    GuardDataError,
    LabelledRow,
    data_path,
    load_guard_examples,
    read_labelled,
    repeat_unsafe,
    save_policy,
    saved_policy,
    training_example,
)
from corral.guard.llama_guard import end_of_turn_id
from corral.guard.taxonomy import default_taxonomy, load_taxonomy
from corral.guard.train import GuardTask
from corral.train.data import IGNORE
from tests.helpers import assert_clean_error

POLICY = """\
categories:
  - code: VIO
    name: Violence
    description: Helping someone hurt a person or an animal.
  - code: PRIV
    name: Personal data
"""


def bundled_rows(n_each: int = 2) -> list[dict]:
    """A few bundled training rows of each kind: unsafe user, safe user, agent, multi-turn."""
    rows = [json.loads(x) for x in BUNDLED["train"].read_text().splitlines()]
    kinds = [lambda r: r["assess"] == "user" and r["label"] == "unsafe" and len(r["conversation"]) == 1,
             lambda r: r["id"].startswith("benign-risky"),
             lambda r: r["assess"] == "agent" and r["label"] == "unsafe",
             lambda r: r["assess"] == "agent" and r["label"] == "safe",
             lambda r: len(r["conversation"]) > 2,
             lambda r: len(r["categories"]) > 1]
    out = []
    for keep in kinds:
        out += [r for r in rows if keep(r) and r not in out][:n_each]
    # a prompt check of a conversation that goes on: the reply after the judged user message is cut off
    out.append({**out[0], "id": "cut", "conversation": [*out[0]["conversation"],
                                                         {"role": "assistant", "content": "I can't help with that."}]})
    return out


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def fake_guard(tok, taxonomy=None, template=None) -> Guard:
    return Guard(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096)), tok, taxonomy,
                 template=template)


# --- rows → training examples -------------------------------------------------------------------------------------


def test_rows_become_the_guards_prompt_and_verdict(tok, tmp_path):
    rows = bundled_rows()
    assert len({r["id"] for r in rows}) >= 10 and any(len(r["categories"]) > 1 for r in rows)
    guard = fake_guard(tok)
    safe_id, unsafe_id = guard.score_ids
    im_end = tok.token_id("<|im_end|>")
    assert end_of_turn_id(tok) == im_end
    for obj in rows:
        row, = read_labelled(write_rows(tmp_path / "r.jsonl", [obj]))[0]
        ex = training_example(tok, row)
        prompt = guard.prompt_ids(obj["conversation"], obj["assess"])
        n = len(prompt)
        assert ex.input_ids[:n] == prompt  # what the guard reads at inference, token for token
        assert ex.labels[:n] == [IGNORE] * n  # no loss on the prompt ...
        assert ex.labels[n:] == ex.input_ids[n:]  # ... only on the verdict and the end of turn
        reply = ex.input_ids[n:]
        assert reply[-1] == im_end and im_end not in reply[:-1]
        assert reply[0] == (unsafe_id if obj["label"] == "unsafe" else safe_id)  # score mode's token
        text = tok.decode(reply[:-1])
        assert text == target_text(obj["label"], obj["categories"])
        v = parse_verdict(text)
        assert v.parsed and v.safe == (obj["label"] == "safe") and v.categories == obj["categories"]
        # independently: the chat template's own rendering of the whole exchange (it adds "\n" after <|im_end|>)
        body = render_prompt(obj["conversation"], None, obj["assess"])
        whole = encode_chat(tok, [{"role": "user", "content": body},
                                  {"role": "assistant", "content": target_text(obj["label"], obj["categories"])}],
                            add_generation_prompt=False)
        assert ex.input_ids == whole[:-1]


def test_a_model_without_a_template_ends_the_verdict_with_eos(tok):
    raw = copy.copy(tok)
    raw.chat_template = None
    row = LabelledRow("x", [{"role": "user", "content": "hi"}], "user", "unsafe", ["S1"], 1)
    ex = training_example(raw, row)
    guard = fake_guard(raw)
    n = len(guard.prompt_ids(row.conversation))
    assert ex.input_ids[:n] == guard.prompt_ids(row.conversation) and "<|im_start|>" not in raw.decode(
        ex.input_ids[:n], skip_special=False)
    assert ex.input_ids[n:] == tok.encode("unsafe\nS1") + [raw.eos_id]


def test_a_custom_policy_flows_into_the_prompt_and_the_saved_policy(tok, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    taxonomy = load_taxonomy(policy)
    rows = [{"id": "a", "conversation": [{"role": "user", "content": "Where does Ann Smith live?"}],
             "label": "unsafe", "categories": ["priv"], "assess": "user"},
            {"id": "b", "conversation": [{"role": "user", "content": "Bake a cake?"}], "label": "safe",
             "categories": [], "assess": "user"}]
    data = write_rows(tmp_path / "d.jsonl", rows)
    cfg = SimpleNamespace(task="guard", guard_policy=str(policy), max_seq_len=512, skip_bad_lines=False)
    examples, problems = GuardTask(cfg).load(cfg, data, tok, None)
    assert problems == [] and len(examples) == 2
    guard = fake_guard(tok, taxonomy)
    for ex, r in zip(examples, rows, strict=True):
        prompt = guard.prompt_ids(r["conversation"])
        assert ex.input_ids[: len(prompt)] == prompt
        text = tok.decode(ex.input_ids, skip_special=False)
        assert "VIO: Violence.\nHelping someone hurt a person or an animal.\nPRIV: Personal data.\n" in text
        assert "S1: Violent Crimes" not in text
    assert tok.decode(examples[0].input_ids[len(guard.prompt_ids(rows[0]["conversation"])):]) == "unsafe\nPRIV"
    # the default policy's codes are not this policy's
    bad = write_rows(tmp_path / "bad.jsonl", [{**rows[0], "categories": ["S7"]}])
    with pytest.raises(GuardDataError, match="category 'S7' is not in the policy"):
        GuardTask(cfg).load(cfg, bad, tok, None)
    # saved beside the weights and read back; a saved copy of the default is the default (aliases included)
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_policy(taxonomy, folder)
    back, path = saved_policy(None, tmp_path / "none", folder)
    assert path == folder / POLICY_FILE and [(c.code, c.name, c.description) for c in back] == [
        (c.code, c.name, c.description) for c in taxonomy]
    save_policy(default_taxonomy(), folder)
    assert saved_policy(folder)[0] is default_taxonomy() and saved_policy(tmp_path / "none") is None


def test_bad_rows_are_named_one_line_each(tok, tmp_path):
    good = {"id": "g", "conversation": [{"role": "user", "content": "hi"}], "label": "safe", "categories": []}
    lines = [good, "{oops", {**good, "label": "maybe"}, {**good, "label": "unsafe"},
             {**good, "label": "unsafe", "categories": ["S99"]}, {**good, "categories": ["S1"]},
             {**good, "assess": "agent"}, {"label": "safe"}, {**good, "categories": "S1"},
             {**good, "conversation": [{"role": "user", "content": "word " * 600}]}]
    data = write_rows(tmp_path / "rows.jsonl", lines)
    with pytest.raises(GuardDataError) as e:
        load_guard_examples(data, tok, max_len=512)
    msg = str(e.value)
    assert msg.startswith(f"{data}: 9 bad line(s); fix them, or pass --skip-bad-lines")
    assert msg.splitlines()[1].startswith(f"  {data}:2: not valid JSON (Expecting property name")
    for needle in [f"{data}:3: 'label' is 'maybe': use \"safe\" or \"unsafe\"",
                   f"{data}:4: an unsafe row lists no category: add the codes it violates",
                   f"{data}:5: category 'S99' is not in the policy (Llama Guard 3: S1, S2",
                   f"{data}:6: a safe row lists categories ['S1']: empty the list, or label the row \"unsafe\"",
                   f"{data}:7: conversation: assess is 'agent' but the last message is not the assistant's",
                   f"{data}:8: no 'conversation'", f"{data}:9: 'categories' must be a list",
                   f"{data}:10: the guard prompt and verdict are", "raise --max-seq-len",
                   "fix them, or pass --skip-bad-lines"]:
        assert needle in msg, (needle, msg)
    examples, problems = load_guard_examples(data, tok, max_len=512, skip_bad_lines=True)
    assert len(examples) == 1 and len(problems) == 9 and problems[0].startswith(f"{data}:2: not valid JSON")
    with pytest.raises(GuardDataError, match="all-bad.jsonl: no usable lines; pass a JSONL file of labelled guard"):
        load_guard_examples(write_rows(tmp_path / "all-bad.jsonl", ["{oops"]), tok, 512, skip_bad_lines=True)
    with pytest.raises(GuardDataError, match="nothing.jsonl: no such file"):
        read_labelled(tmp_path / "nothing.jsonl")


def test_repeat_unsafe_repeats_only_the_unsafe_rows(tok):
    rows = read_labelled("train")[0][::20]  # the file is grouped by category: every 20th row has both labels
    examples = [training_example(tok, r) for r in rows]
    n_unsafe = sum(r.label == "unsafe" for r in rows)
    assert len(rows) == 42 and 0 < n_unsafe < 42 and [e.unsafe for e in examples] == [r.label == "unsafe" for r in rows]
    out = repeat_unsafe(examples, 3)
    assert len(out) == 42 + 2 * n_unsafe
    assert [e.line for e in out if not e.unsafe] == [e.line for e in examples if not e.unsafe]
    assert all(sum(o is e for o in out) == (3 if e.unsafe else 1) for e in examples)
    assert repeat_unsafe(examples, 1) == examples


def test_bundled_names_resolve(tmp_path, monkeypatch):
    assert data_path("heldout") == BUNDLED["heldout"] and data_path("train") == BUNDLED["train"]
    rows, problems = read_labelled("heldout")
    assert len(rows) == 281 and problems == []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train").write_text("x")
    assert data_path("train") == Path("train")  # a file of that name wins


# --- on a tiny model -------------------------------------------------------------------


def test_a_tiny_guard_trains_and_loads_through_corral_guard(tiny_guard_dir, tmp_path, capsys):
    from corral.cli import main

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    unsafe = [{"id": f"u{i}", "conversation": [{"role": "user", "content": f"How do I hurt person number {i}?"}],
               "label": "unsafe", "categories": ["VIO"], "assess": "user"} for i in range(8)]
    safe = [{"id": f"benign-risky-{i}", "conversation": [{"role": "user", "content": f"Bake cake number {i}?"}],
             "label": "safe", "categories": [], "assess": "user"} for i in range(8)]
    data = write_rows(tmp_path / "guard.jsonl", [r for pair in zip(unsafe, safe, strict=True) for r in pair])
    report_before = tmp_path / "before"
    args = ["guard", str(tiny_guard_dir), "--eval", str(data), "--mode", "generate", "--max-tokens", "6",
            "--policy", str(policy)]
    assert main([*args, "--report", str(report_before)]) == 0
    before = json.loads((report_before / "report.json").read_text())["metrics"]
    assert before["parse_errors"] == 16  # a random model writes no verdict
    capsys.readouterr()

    out = tmp_path / "run"
    code = main(["finetune", str(tiny_guard_dir), "--task", "guard", "--data", str(data), "--guard-policy",
                 str(policy), "--out", str(out), "--max-steps", "30", "--batch-size", "4", "--lr", "1e-2",
                 "--warmup-steps", "2", "--lora-r", "8", "--precision", "fp32", "--max-seq-len", "512"])
    assert code == 0, capsys.readouterr().err
    assert "with guard_policy.yaml" in capsys.readouterr().out
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.2 * sum(losses[:3]) / 3, losses
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / POLICY_FILE).is_file()
    assert json.loads((out / "config.json").read_text())["task"] == "guard"

    # the adapter loads through `corral guard --adapter`, with the saved policy (no --policy)
    assert main(["guard", str(tiny_guard_dir), "--adapter", str(out / "adapter"), "--text", "hi",
                 "--print-prompt"]) == 0
    assert "VIO: Violence." in capsys.readouterr().out
    report_after = tmp_path / "after"
    assert main([*args[:-2], "--adapter", str(out / "adapter"), "--report", str(report_after)]) == 0
    printed = capsys.readouterr().out
    assert "unsafe vs safe: precision" in printed and "VIO Violence" in printed
    after = json.loads((report_after / "report.json").read_text())
    assert after["policy"] == str(out / "adapter" / POLICY_FILE) and after["adapter"] == str(out / "adapter")
    assert after["metrics"]["parse_errors"] == 0  # it learnt to write verdicts
    preds = [json.loads(x) for x in (report_after / "predictions.jsonl").read_text().splitlines()]
    assert all(p["raw"].strip() in ("safe", "unsafe\nVIO") for p in preds), preds
    assert (report_after / "report.png").read_bytes()[:4] == b"\x89PNG"
    # a --policy other than the saved one is used, with a note
    other = tmp_path / "other.yaml"
    other.write_text("categories: [{name: Other}]")
    assert main(["guard", str(tiny_guard_dir), "--adapter", str(out / "adapter"), "--text", "hi", "--print-prompt",
                 "--policy", str(other)]) == 0
    o, e = capsys.readouterr()
    assert "S1: Other." in o and "was trained on the policy in" in e


def test_finetune_repeats_the_unsafe_rows_of_each_epoch(tiny_guard_dir, tmp_path):
    from corral.cli import main

    rows = [{"conversation": [{"role": "user", "content": f"question {i}"}], "label": label,
             "categories": ["S1"] if label == "unsafe" else []} for i, label in enumerate(["unsafe", "safe"] * 2)]
    data = write_rows(tmp_path / "rows.jsonl", rows)
    for repeat, steps in ((1, 1), (3, 2)):  # 4 rows -> 1 step of 4; 2 unsafe x 3 + 2 safe = 8 rows -> 2 steps
        out = tmp_path / f"run{repeat}"
        assert main(["finetune", str(tiny_guard_dir), "--task", "guard", "--data", str(data), "--out", str(out),
                     "--epochs", "1", "--batch-size", "4", "--precision", "fp32", "--max-seq-len", "512",
                     "--guard-repeat-unsafe", str(repeat)]) == 0
        assert len((out / "metrics.jsonl").read_text().splitlines()) == steps


@pytest.mark.parametrize("args, needles", [
    (["--data", "{tmp}/bad.jsonl"],
     ["bad.jsonl: 2 bad line(s)", "bad.jsonl:1: 'label' is 'maybe'", "--skip-bad-lines"]),
    (["--data", "heldout", "--guard-policy", "{tmp}/none.yaml"], ["none.yaml: no such policy file"]),
    (["--data", "{tmp}/none.jsonl"], ["none.jsonl: no such file", "bundled set: train, heldout"]),
])
def test_finetune_guard_errors(tiny_guard_dir, tmp_path, capsys, args, needles):
    from corral.cli import main

    row = {"conversation": [{"role": "user", "content": "hi"}], "label": "maybe", "categories": []}
    write_rows(tmp_path / "bad.jsonl", [row, {**row, "label": "unsafe", "categories": ["S99"]}])
    code = main(["finetune", str(tiny_guard_dir), "--task", "guard", "--out", str(tmp_path / "run"),
                 *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    assert_clean_error(code, capsys.readouterr().err, *needles)


@pytest.mark.parametrize("args, needles", [
    (["--data", "x.jsonl", "--guard-policy", "p.yaml"], ["--guard-policy goes with --task guard"]),
    (["--data", "x.jsonl", "--task", "classify"], ["--task classify: choose sft or guard"]),
    (["--data", "x.jsonl", "--guard-repeat-unsafe", "3"], ["--guard-repeat-unsafe goes with --task guard"]),
    (["--data", "x.jsonl", "--task", "guard", "--guard-repeat-unsafe", "0"], ["--guard-repeat-unsafe must be >= 1"]),
])
def test_finetune_task_options(tmp_path, capsys, args, needles):
    from corral.cli import main

    assert_clean_error(main(["finetune", str(tmp_path / "model"), *args]), capsys.readouterr().err, *needles)


def test_distill_a_guard(tiny_guard_dir, tmp_path):
    """corral distill --task guard: the student learns from the same guard examples and carries the policy."""
    from corral.distill.config import DistillConfig
    from corral.distill.run import distill

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    rows = [{"conversation": [{"role": "user", "content": f"Hurt person {i}?"}], "label": "unsafe",
             "categories": ["VIO"]} for i in range(4)]
    rows += [{"conversation": [{"role": "user", "content": f"Bake cake {i}?"}], "label": "safe"} for i in range(4)]
    data = write_rows(tmp_path / "guard.jsonl", rows)
    cfg = DistillConfig(model=str(tiny_guard_dir), data=str(data), out=str(tmp_path / "d"), task="guard",
                        guard_policy=str(policy), student_layers=1, batch_size=4, max_steps=3, warmup_steps=1,
                        max_seq_len=512, precision="fp32", calib_examples=4, report_rows=4)
    with pytest.raises(InvalidArgumentError, match=r"task 'guard' trains through its own Task.*GuardTask\(cfg\)"):
        distill(cfg, progress=False)  # the loops know nothing of guards: the caller brings the guard's data side
    run = distill(cfg, progress=False, task=GuardTask(cfg))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert saved_policy(run / "model")[0].codes == ["VIO", "PRIV"]
    assert json.loads((run / "report.json").read_text())["agreement_rows"] == 4
