"""Distillation: the KD losses against their formulas, pruning that removes what matters least (and nothing else),
the pruned student as an HF folder transformers loads, and `distill` runs (online and cached teacher, SFT, LoRA
student, resume) on tiny random models."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from corral.distill.config import DistillConfig
from corral.distill.losses import TopK, distill_loss, kd_loss
from corral.errors import InvalidArgumentError

ACME = Path(__file__).resolve().parents[2] / "examples" / "acme" / "train.jsonl"


# --- losses --------------------------------------------------------------------------------------------------------

def _pq(n=5, v=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 2, torch.randn(n, v, generator=g) * 2  # teacher, student logits


def test_kl_losses_follow_their_formulas():
    t, s = _pq()
    p, q = t.softmax(-1), s.softmax(-1)
    fkl = (p * (p.log() - q.log())).sum()
    rkl = (q * (q.log() - p.log())).sum()
    assert float(kd_loss(s, t, "fkl")) == pytest.approx(float(fkl), rel=1e-5)
    assert float(kd_loss(s, t, "rkl")) == pytest.approx(float(rkl), rel=1e-5)
    assert float(kd_loss(s, t, "fkl")) != pytest.approx(float(kd_loss(s, t, "rkl")), rel=1e-2)
    # temperature: both softened, times T^2
    pt, qt = (t / 2).softmax(-1), (s / 2).softmax(-1)
    assert float(kd_loss(s, t, "fkl", temperature=2.0)) == pytest.approx(
        float(4 * (pt * (pt.log() - qt.log())).sum()), rel=1e-5)
    assert float(kd_loss(t, t, "fkl")) == pytest.approx(0.0, abs=1e-5)


def test_jsd_is_symmetric_at_half_and_bounded():
    t, s = _pq(seed=1)
    p, q = t.softmax(-1), s.softmax(-1)
    m = (p + q) / 2
    js = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    assert float(kd_loss(s, t, "jsd", beta=0.5)) == pytest.approx(float(js), rel=1e-5)
    assert float(kd_loss(s, t, "jsd")) == pytest.approx(float(kd_loss(t, s, "jsd")), rel=1e-5)
    assert float(kd_loss(s, t, "jsd")) <= math.log(2) * t.shape[0]
    b = 0.1  # beta weights the teacher's side; the mixture moves with it
    mb = b * p + (1 - b) * q
    want = b * (p * (p / mb).log()).sum() + (1 - b) * (q * (q / mb).log()).sum()
    assert float(kd_loss(s, t, "jsd", beta=b)) == pytest.approx(float(want), rel=1e-5)


def test_alpha_mixes_cross_entropy_and_kd():
    t, s = _pq(seed=2)
    y = torch.tensor([1, 2, 3, 4, 5])
    ce = F.cross_entropy(s, y, reduction="sum")
    assert float(distill_loss(s, y, t, alpha=0.0)) == pytest.approx(float(ce))
    assert float(distill_loss(s, y, None, alpha=0.0)) == pytest.approx(float(ce))  # SFT needs no teacher
    mixed = 0.7 * ce + 0.3 * kd_loss(s, t, "fkl")
    assert float(distill_loss(s, y, t, alpha=0.3)) == pytest.approx(float(mixed), rel=1e-5)


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_topk_loss_is_exact_with_every_token_and_close_with_few(kind):
    v = 200
    g = torch.Generator().manual_seed(3)
    t = torch.randn(8, v, generator=g) * 4  # a peaked teacher, as trained models are
    s = t + torch.randn(8, v, generator=g)
    full = float(kd_loss(s, t, kind))
    lp = F.log_softmax(t, -1)
    every = lp.topk(v, -1)
    assert float(kd_loss(s, TopK(every.values, every.indices), kind)) == pytest.approx(full, rel=1e-4)
    few = lp.topk(32, -1)
    assert float(kd_loss(s, TopK(few.values, few.indices), kind)) == pytest.approx(full, rel=0.1)
    # the gradient reaches the student through the top-k path too
    s2 = s.clone().requires_grad_(True)
    kd_loss(s2, TopK(few.values, few.indices), kind).backward()
    assert s2.grad.abs().sum() > 0


# --- pruning -------------------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_chat(make_tiny_chat):
    """The shared tiny chat model with 4 layers (4 query heads in 2 KV groups, MLP 128): room to prune."""
    return make_tiny_chat(num_hidden_layers=4)


def _model(folder):
    from corral.model.loader import load_model

    return load_model(str(folder), device="cpu", dtype="float32").model


def _calib(vocab: int, n: int = 2, t: int = 48) -> list[torch.Tensor]:
    return [torch.randint(3, vocab, (n, t), generator=torch.Generator().manual_seed(7))]


@pytest.mark.parametrize("score", ["kl", "bi"])
def test_depth_scores_find_a_layer_that_does_nothing(tiny_chat, score):
    from corral.distill.prune import layer_scores, prune_layers

    model = _model(tiny_chat)
    layer = model.model.layers[2]
    layer.self_attn.o_proj.weight.data.zero_()  # the layer adds nothing to the residual stream
    layer.mlp.down_proj.weight.data.zero_()
    batches = _calib(model.config.vocab_size)
    scores = layer_scores(model, batches, score)
    assert min(range(4), key=lambda i: scores[i]) == 2
    assert scores[2] == pytest.approx(0.0, abs=1e-5)
    student = prune_layers(model, [2])
    assert student.config.num_hidden_layers == 3 and len(model.model.layers) == 4  # the teacher is untouched
    with torch.no_grad():
        torch.testing.assert_close(student(batches[0]), model(batches[0]), atol=1e-4, rtol=1e-4)


def test_width_pruning_removes_dead_channels_and_heads_first(tiny_chat):
    from corral.distill.prune import head_scores, mlp_channel_scores, prune_heads, prune_mlp

    model = _model(tiny_chat)
    cfg = model.config
    dead = torch.arange(0, cfg.intermediate_size, 2)  # half the MLP channels never fire
    hd = cfg.head_dim
    for layer in model.model.layers:
        layer.mlp.up_proj.weight.data[dead] = 0
        # in each KV group (heads 0-1 -> kv 0, heads 2-3 -> kv 1) one head is ignored by o_proj
        for h in (1, 2):
            layer.self_attn.o_proj.weight.data[:, h * hd:(h + 1) * hd] = 0
    batches = _calib(cfg.vocab_size)
    with torch.no_grad():
        want = model(batches[0])
    narrow = prune_mlp(model, mlp_channel_scores(model, batches), cfg.intermediate_size // 2)
    assert narrow.config.intermediate_size == cfg.intermediate_size // 2
    with torch.no_grad():
        torch.testing.assert_close(narrow(batches[0]), want, atol=1e-4, rtol=1e-4)
    scores = head_scores(model, batches)
    fewer = prune_heads(model, scores, 2)
    assert fewer.config.num_attention_heads == 2 and fewer.config.head_dim == hd
    with torch.no_grad():
        torch.testing.assert_close(fewer(batches[0]), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(InvalidArgumentError, match="multiple of the 2 KV heads"):
        prune_heads(model, scores, 3)


def test_pruned_student_is_an_hf_folder_transformers_loads(tiny_chat, tok, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference for the HF format")
    from corral.distill.run import calibration_batches, prune
    from corral.formats.hf import save_hf_folder

    model = _model(tiny_chat)
    batches = calibration_batches([list(range(5, 300))], 64, torch.device("cpu"))
    student, info = prune(model, batches, layers=2, mlp=64, heads=2)
    assert info["student"] == {"layers": 2, "mlp": 64, "heads": 2, "parameters": student.config.num_parameters}
    assert len(info["dropped_layers"]) == 2
    out = save_hf_folder(student, student.config, tok, tiny_chat, tmp_path / "student")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    assert sum(p.numel() for p in ref.parameters()) == student.config.num_parameters
    ids = batches[0][:1]
    with torch.no_grad():
        torch.testing.assert_close(student(ids), ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_pruned_student_exports_to_a_gguf_llama_cpp_runs(tiny_chat, tok, tmp_path):
    """Fewer heads than hidden_size / head_dim, a narrower MLP, fewer layers: llama.cpp reads all of it."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the reference for GGUF")
    import numpy as np

    from corral.cli import main
    from corral.distill.run import calibration_batches, prune
    from corral.formats.hf import save_hf_folder

    model = _model(tiny_chat)
    student, _ = prune(model, calibration_batches([list(range(5, 300))], 64, torch.device("cpu")), layers=3,
                       mlp=96, heads=2)
    folder = save_hf_folder(student, student.config, tok, tiny_chat, tmp_path / "student")
    out = tmp_path / "student.gguf"
    assert main(["export", str(folder), "--out", str(out), "--quant", "f32"]) == 0
    ids = tok.encode("The cat sat on the mat, then it said: I'm done! The dog came home, tired and hungry.")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    llm.close()
    with torch.no_grad():
        ours = student(torch.tensor([ids]))[0]
    assert ((theirs - ours).abs().max() / ours.std()).item() < 0.05


# --- runs ----------------------------------------------------------------------------------------------------------

@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(ACME.read_text().splitlines(keepends=True)[:24]))
    return path


def dcfg(teacher, data, out, **kw) -> DistillConfig:
    base = dict(model=str(teacher), data=str(data), out=str(out), student_layers=2, batch_size=4, max_steps=8,
                lr=3e-3, warmup_steps=2, max_seq_len=256, save_every=4, eval_every=100, seed=1, precision="fp32",
                calib_examples=8)
    return DistillConfig(**{**base, **kw})


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _peaked(folder: Path) -> Path:
    """The tiny random teacher with its head scaled up: next-token distributions as peaked as a trained model's
    (a random one's are nearly flat over 49k tokens, where no top-k holds much of the mass)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    sd = load_file(str(path))
    sd["lm_head.weight"] = sd["lm_head.weight"] * 12
    save_file(sd, str(path), metadata={"format": "pt"})
    return folder


def test_distill_online_and_cached_teacher_agree(tiny_chat, data, tmp_path):
    from corral.distill.run import distill

    teacher = _peaked(tiny_chat)
    online = distill(dcfg(teacher, data, tmp_path / "online"), progress=False)
    cached = distill(dcfg(teacher, data, tmp_path / "cached", teacher_topk=64, report=False), progress=False)
    a, b = losses(online), losses(cached)
    assert len(a) == 8 and a[-1] < a[0], a
    assert b == pytest.approx(a, rel=0.05), (a, b)  # top-64 of a 49k vocabulary: close, not equal
    assert b != a
    assert (cached / "teacher_topk.safetensors").is_file()
    assert not (cached / "report.json").exists() and (cached / "model" / "config.json").is_file()  # report=False
    prune_info = json.loads((online / "prune.json").read_text())
    assert prune_info["student"]["layers"] == 2
    from corral.model.loader import load_model

    student = load_model(str(online / "model"), device="cpu", dtype="float32")  # a complete HF folder
    assert student.config.num_hidden_layers == 2
    report = json.loads((online / "report.json").read_text())["models"]
    assert list(report) == ["teacher", "student"]
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert 0.0 <= report["student"]["agreement"] <= 1.0 and report["teacher"]["agreement"] == 1.0
    assert report["student"]["decode_tok_s"] > 0 and report["student"]["size_mb"] > 0


def test_distill_sft_lora_student_and_resume(tiny_chat, data, tmp_path):
    from corral.distill.run import distill

    kd = distill(dcfg(tiny_chat, data, tmp_path / "kd", kd_alpha=1.0, kd_loss="jsd", sft_baseline=True,
                      max_steps=4, eval_tasks=["general_mc"]), progress=False)
    sft = kd / "sft"  # the same initial student, trained with CE alone
    assert len(losses(sft)) == 4 and losses(sft) != losses(kd)
    report = json.loads((kd / "report.json").read_text())["models"]
    assert list(report) == ["teacher", "student", "sft student"]
    assert all(0.0 <= m["eval"]["general_mc"]["acc"] <= 1.0 for m in report.values())  # corral eval's scores
    assert (kd / "eval" / "report.json").is_file()
    lora = distill(dcfg(tiny_chat, data, tmp_path / "lora", method="lora", lora_r=4, teacher_topk=16,
                        precision="bf16", max_steps=3), progress=False)  # bf16 autocast reads the fp16 cache too
    assert (lora / "adapter" / "adapter_model.safetensors").is_file()
    # a run stopped after step 5 (checkpoint at 4) and resumed repeats the straight run
    straight = distill(dcfg(tiny_chat, data, tmp_path / "straight", teacher_topk=16), progress=False)
    part = tmp_path / "part"
    distill(dcfg(tiny_chat, data, part, teacher_topk=16), stop_after=5, progress=False)
    distill(dcfg(tiny_chat, data, part, teacher_topk=16, resume=True), progress=False)
    assert losses(part)[-8:] == pytest.approx(losses(straight), rel=1e-6)


def test_distill_config_errors(tiny_chat, data, tmp_path):
    from corral.distill.run import distill

    with pytest.raises(InvalidArgumentError, match="no student"):
        distill(dcfg(tiny_chat, data, tmp_path / "a", student_layers=None), progress=False)
    with pytest.raises(InvalidArgumentError, match="--kd-loss"):
        distill(dcfg(tiny_chat, data, tmp_path / "b", kd_loss="kl2"), progress=False)
    with pytest.raises(InvalidArgumentError, match="--student-layers 9"):
        distill(dcfg(tiny_chat, data, tmp_path / "c", student_layers=9), progress=False)
    other = tmp_path / "other"
    shutil.copytree(tiny_chat, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["The"], vocab["Ġquick"] = vocab["Ġquick"], vocab["The"]  # same size, other ids
    (other / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(InvalidArgumentError, match="tokenizer differs"):
        distill(dcfg(tiny_chat, data, tmp_path / "d", student_layers=None, student=str(other)), progress=False)


def test_torchrun_distill_two_processes_match_one(tiny_chat, data, tmp_path):
    """`corral distill` under torchrun (FSDP2 on gloo, 2 x batch 2) follows 1 process x batch 4; cached teacher."""
    from tests.train.test_train_loop import one_and_two_processes

    common = ["distill", str(tiny_chat), "--data", str(data), "--student-layers", "2", "--max-steps", "4",
              "--lr", "3e-3", "--max-seq-len", "256", "--warmup-steps", "2", "--seed", "1", "--device", "cpu",
              "--precision", "fp32", "--teacher-topk", "16", "--calib-examples", "8", "--report-rows", "4"]
    one, two, out = one_and_two_processes(common, tmp_path)
    assert "top-1 agreement" in out  # the report
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    assert (two / "model" / "model.safetensors").is_file()
