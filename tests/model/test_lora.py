"""LoRA module swap and PEFT-format adapters: peft loads corral's adapter, corral loads peft's, logits equal."""

from __future__ import annotations

import json

import pytest
import torch

from corral.errors import InvalidArgumentError, ModelFormatError
from corral.model.loader import load_model
from corral.model.lora import LoRALinear, apply_lora, load_adapter, lora_modules, merge_lora, save_adapter

peft = pytest.importorskip("peft", reason="peft is the reference for the adapter format (pip install '.[peers]')")

IDS = torch.tensor([[1, 5, 9, 13, 200, 31, 77, 4, 8, 150, 2, 99]])


def randomize_lora(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)


def random_lora_model(folder):
    """The model in `folder` (fp32) with a r=4 LoRA whose B is random, so the adapter changes the logits."""
    model = load_model(str(folder), device="cpu", dtype="float32").model
    apply_lora(model, r=4, alpha=8)
    randomize_lora(model)
    return model


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        out = model(IDS)
    return (out.logits if hasattr(out, "logits") else out)[0].float()


@pytest.fixture
def tiny(make_tiny_hf):
    hf, folder = make_tiny_hf()
    return hf, folder


def test_fresh_lora_changes_nothing_and_trains_only_the_adapter(tiny):
    _, folder = tiny
    model = load_model(str(folder), device="cpu", dtype="float32").model
    before = logits(model)
    swapped = apply_lora(model, r=4, alpha=8)
    assert len(swapped) == 7 * model.config.num_hidden_layers
    assert torch.equal(logits(model), before)  # B starts at zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_peft_loads_corrals_adapter_with_equal_logits(tiny, tmp_path):
    hf, folder = tiny
    base = logits(hf)  # before peft injects its layers into hf
    model = load_model(str(folder), device="cpu", dtype="float32").model
    apply_lora(model, r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    randomize_lora(model)
    ours = logits(model)
    out = save_adapter(model, tmp_path / "adapter", base_model=str(folder))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    theirs = logits(peft.PeftModel.from_pretrained(hf, out).eval())
    assert (theirs - ours).abs().max() < 1e-4
    assert (theirs - base).abs().max() > 1e-3  # the adapter does something


def test_corral_loads_peft_adapter_with_equal_logits(tiny, tmp_path):
    hf, folder = tiny
    cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "o_proj", "up_proj"],
                          task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf, cfg)
    torch.manual_seed(2)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(tmp_path / "theirs")
    theirs = logits(pm.eval())
    model = load_model(str(folder), device="cpu", dtype="float32").model
    load_adapter(model, tmp_path / "theirs")
    assert (logits(model) - theirs).abs().max() < 1e-4


def test_merge_folds_the_adapter_into_the_weights(tiny, tmp_path):
    _, folder = tiny
    model = random_lora_model(folder)
    with_lora = logits(model)
    assert merge_lora(model) == 7 * model.config.num_hidden_layers
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (logits(model) - with_lora).abs().max() < 1e-4


def test_load_model_merges_an_adapter_given_or_named_as_the_model(tiny, tmp_path):
    """One loader for every command: `adapter=` merges it in fp32; an adapter folder as the model loads its base."""
    _, folder = tiny
    model = random_lora_model(folder)
    want = logits(model)
    save_adapter(model, tmp_path / "adapter", base_model=str(folder))
    given = load_model(str(folder), device="cpu", adapter=tmp_path / "adapter")
    named = load_model(str(tmp_path / "adapter"), device="cpu")
    for lm in (given, named):
        assert lm.merged == 7 * lm.config.num_hidden_layers and lm.path == folder
        assert next(lm.model.parameters()).dtype == torch.float32  # auto: fp32, where LoRA merges exactly
        assert (logits(lm.model) - want).abs().max() < 1e-4
    with pytest.raises(InvalidArgumentError, match="adapter merges into unquantized weights"):
        load_model(str(folder), device="cpu", dtype="int4", adapter=tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": None}))
    with pytest.raises(ModelFormatError, match="no base_model_name_or_path"):
        load_model(str(tmp_path / "adapter"), device="cpu")


def test_bad_requests_are_clear_errors(tiny, tmp_path):
    _, folder = tiny
    model = load_model(str(folder), device="cpu", dtype="float32").model
    with pytest.raises(InvalidArgumentError, match="unknown LoRA target"):
        apply_lora(model, targets=["qq_proj"])
    with pytest.raises(InvalidArgumentError, match="rank"):
        apply_lora(model, r=0)
    with pytest.raises(ModelFormatError, match="not a PEFT adapter"):
        load_adapter(model, tmp_path)
    model.model.layers[0].self_attn.fuse_qkv(torch.nn.Linear(8, 8))
    with pytest.raises(InvalidArgumentError, match="fused"):
        apply_lora(model)


def test_merge_writes_an_hf_folder_transformers_loads_and_adapter_flag(make_tiny_hf, tok, tmp_path):
    import subprocess
    import sys

    transformers = pytest.importorskip("transformers")
    _, folder = make_tiny_hf(name="tiny-vocab", vocab_size=tok.vocab_size)  # the default tokenizer's vocabulary
    (folder / "tokenizer.json").write_text(tok._tok.to_str())
    model = random_lora_model(folder)
    ours = logits(model)
    save_adapter(model, tmp_path / "adapter")
    out = tmp_path / "merged"
    r = subprocess.run([sys.executable, "-m", "corral", "merge", str(folder), "--adapter", str(tmp_path / "adapter"),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "tokenizer.json").is_file()
    theirs = logits(transformers.AutoModelForCausalLM.from_pretrained(out).eval())
    assert (theirs - ours).abs().max() < 1e-4
    assert (logits(load_model(str(out), device="cpu", dtype="float32").model) - ours).abs().max() < 1e-4
    again = subprocess.run([sys.executable, "-m", "corral", "merge", str(folder), "--adapter",
                            str(tmp_path / "adapter"), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr
    gen = subprocess.run([sys.executable, "-m", "corral", "tokenize", str(out), "hello"], capture_output=True,
                         text=True, timeout=60)
    assert gen.returncode == 0
    with_adapter = subprocess.run([sys.executable, "-m", "corral", "generate", str(folder), "hello", "--adapter",
                                   str(tmp_path / "adapter"), "--max-tokens", "4", "--no-stream"],
                                  capture_output=True, text=True, timeout=120)
    merged = subprocess.run([sys.executable, "-m", "corral", "generate", str(out), "hello", "--max-tokens", "4",
                             "--no-stream"], capture_output=True, text=True, timeout=120)
    assert with_adapter.returncode == merged.returncode == 0, with_adapter.stderr + merged.stderr
    assert with_adapter.stdout == merged.stdout
