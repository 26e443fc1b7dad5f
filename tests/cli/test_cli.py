"""The command line: bad input gives one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corral.registry import default_model_path
from tests import helpers


def run_cli(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral", *args], capture_output=True, text=True, input=stdin,
                          timeout=timeout)


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    helpers.assert_clean_error(r.returncode, r.stderr, *needles)


def test_nonexistent_path():
    assert_clean_error(run_cli("generate", "/no/such/model.gguf", "hi"), "/no/such/model.gguf", "no such file")


def test_truncated_gguf(tmp_path: Path):
    data = default_model_path().read_bytes()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[: len(data) // 3])
    assert_clean_error(run_cli("generate", str(bad), "hi"), "truncated")


def test_garbage_gguf(tmp_path: Path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    assert_clean_error(run_cli("generate", str(bad), "hi"), str(bad))


def test_not_a_gguf(tmp_path: Path):
    bad = tmp_path / "model.gguf"
    bad.write_text("hello, I am not a model")
    assert_clean_error(run_cli("generate", str(bad), "hi"), "not a GGUF file")


def test_gguf_of_another_architecture(tmp_path: Path):
    gguf = pytest.importorskip("gguf", reason="gguf writes the test file")
    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_clean_error(run_cli("generate", str(path), "hi"), "'gpt2'", "not supported")


def test_malformed_config_json(tmp_path: Path):
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 8,')
    assert_clean_error(run_cli("generate", str(tmp_path), "hi"), "config.json", "not valid JSON")


def test_config_of_another_architecture(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    assert_clean_error(run_cli("generate", str(tmp_path), "hi"), "GPT2LMHeadModel", "not supported")


def test_pickle_only_folder_is_refused(tmp_path: Path):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 8,
           "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    assert_clean_error(run_cli("generate", str(tmp_path), "hi"), "never loads pickles")


def test_bad_argument_values():
    assert_clean_error(run_cli("generate", "default", "hi", "--top-p", "0"), "top_p")
    assert_clean_error(run_cli("generate", "default", "hi", "--device", "tpu"), "--device")
    assert_clean_error(run_cli("generate", "default", "hi", "--dtype", "float8"), "--dtype")


@pytest.mark.slow
def test_generate_chat_answers_paris():
    r = run_cli("generate", "default", "Name the capital city of France.", "--chat", "--max-tokens", "32",
                "--threads", "2", "--stats")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "tok/s" in r.stderr


@pytest.mark.slow
def test_chat_session_commands():
    script = "/system Answer in one short sentence.\nName the capital city of France.\n/reset\n/exit\n"
    r = run_cli("chat", "--temperature", "0", "--max-tokens", "24", "--threads", "2", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "system prompt set" in r.stderr and "history cleared" in r.stderr
    assert "tok/s" in r.stderr


def test_tokenize_shows_ids_and_pieces():
    r = run_cli("tokenize", "default", "Hello <|im_start|>")
    assert r.returncode == 0, r.stderr
    assert "19556" in r.stdout and "'Hello'" in r.stdout
    assert "(special)" not in r.stdout  # user text never becomes a control token
    r = run_cli("tokenize", "default", "<|im_start|>", "--special")
    assert "(special)" in r.stdout and "\n       1 " in r.stdout


def test_models_lists_default_first():
    r = run_cli("models")
    assert r.returncode == 0, r.stderr
    first = next(ln for ln in r.stdout.splitlines() if "smollm2" in ln or "gguf" in ln)
    assert "smollm2-135m-instruct" in first and "Q4_1" in first and "8192" in first


def test_a_tokenizer_from_another_model_is_a_clear_error(make_tiny_hf, tok):
    _, folder = make_tiny_hf(name="small-vocab")  # 256 embedding rows
    (folder / "tokenizer.json").write_text(tok._tok.to_str())  # 49152 tokens
    r = run_cli("generate", str(folder), "hello", "--max-tokens", "2")
    assert_clean_error(r, "tokenizer has 49152 tokens", "another model")
