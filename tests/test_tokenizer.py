"""Tokenizers: the default GGUF's vocabulary against llama.cpp's tokenizer, a tiny Llama 3 tiktoken file, and an HF
tokenizer folder exported by transformers from the same GGUF."""

from __future__ import annotations

import json

import pytest

from corral.errors import TokenizerError
from corral.registry import default_model_path
from corral.tokenizer import TiktokenTokenizer, load_tokenizer

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. At 3:45 p.m. on 2024-05-01, 1234567 people cheered!",
    "contractions": "I'm sure you'll see we've done it; they'd say it's ours. DON'T YOU'LL SHE'S",
    "code": "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tprint(f'{x!r}')\n}{[]]\\\n",
    "emoji": "emoji 😀🎉👍🏽 and 🇫🇷 flags, 👨‍👩‍👧 family",
    "cjk": "中文测试，日本語のテキスト、한국어 문장입니다。",
    "whitespace": "a    b\t\tc\n\n\n d  \n  \r\n end   ",
    "leading_space": "   leading spaces",
    "accents": "naïve café Straße Ångström",
    "mixed_specials": "before <|im_start|>user\nhi<|im_end|> after <|endoftext|>",
}
SPECIAL_STRINGS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


@pytest.fixture(scope="module")
def llama_vocab():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the tokenizer reference")
    return llama_cpp.Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)


# --- the default model's GGUF tokenizer ------------------------------------------------------------------------


def test_default_tokenizer_metadata(tok):
    assert tok.vocab_size == 49152
    assert tok.token_id("<|im_end|>") in tok.stop_ids
    assert tok.eos_id in tok.stop_ids
    assert {tok.token_id(s) for s in SPECIAL_STRINGS} <= tok.special_ids
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


@pytest.mark.slow
@pytest.mark.parametrize("special", [False, True], ids=["plain", "special"])
@pytest.mark.parametrize("name", list(TEXTS))
def test_matches_llama_cpp(tok, llama_vocab, name, special):
    text = TEXTS[name]
    ours = tok.encode(text, special=special)
    ref = llama_vocab.tokenize(text.encode(), add_bos=False, special=special)
    assert ours == ref


@pytest.mark.parametrize("name", list(TEXTS))
def test_decode_round_trip(tok, name):
    text = TEXTS[name]
    assert tok.decode(tok.encode(text)) == text
    # With special=True the control tokens are skipped on decode unless asked for.
    assert tok.decode(tok.encode(text, special=True), skip_special=False) == text


@pytest.mark.slow
@pytest.mark.parametrize("s", SPECIAL_STRINGS)
def test_special_strings(tok, llama_vocab, s):
    plain = tok.encode(s)
    assert len(plain) > 1 and not set(plain) & tok.special_ids, "special=False must give ordinary text tokens"
    assert plain == llama_vocab.tokenize(s.encode(), add_bos=False, special=False)
    assert tok.encode(s, special=True) == [tok.token_id(s)]
    assert tok.encode(s, special=True) == llama_vocab.tokenize(s.encode(), add_bos=False, special=True)
    assert tok.decode(plain) == s


@pytest.mark.slow
def test_decode_matches_llama_cpp_pieces(tok, llama_vocab):
    ids = tok.encode(TEXTS["emoji"] + TEXTS["cjk"] + TEXTS["code"])
    assert tok.decode(ids) == llama_vocab.detokenize(ids).decode("utf-8")


# --- tiktoken (Llama 3 `tokenizer.model`) ------------------------------------------------------------------------


def test_tiktoken_round_trip_and_merges(tiktoken_dir):
    t = load_tokenizer(tiktoken_dir)
    assert isinstance(t, TiktokenTokenizer)
    ranks = (tiktoken_dir / "tokenizer.model").read_text().splitlines()
    n = len(ranks)
    assert n == 256 + 40 and t.vocab_size == n + 256
    for text in ["the cat sat on the mat", "hello world", "Unseen wörds 😀 中文\n\n  x", ""]:
        ids = t.encode(text)
        assert t.decode(ids) == text
        assert all(0 <= i < n for i in ids)
    # Merged tokens are used: "the" is one learned token, fewer ids than bytes.
    assert len(t.encode(" the cat sat on the mat")) < len(" the cat sat on the mat")


def test_tiktoken_special_tokens(tiktoken_dir):
    t = load_tokenizer(tiktoken_dir)
    n = t.vocab_size - 256
    eot = t.token_id("<|eot_id|>")
    assert eot == n + 9 and t.bos_id == n and t.eos_id == n + 1
    assert {eot, t.eos_id, t.token_id("<|eom_id|>")} <= t.stop_ids
    text = "user says <|eot_id|> here"
    plain = t.encode(text)
    assert eot not in plain and not set(plain) & t.special_ids
    assert t.decode(plain) == text
    with_special = t.encode(text, special=True)
    assert with_special.count(eot) == 1 and len(with_special) < len(plain)
    assert t.encode("<|eot_id|>", special=True) == [eot]
    assert t.encode("hi", add_bos=True)[0] == t.bos_id
    assert t.decode(with_special) == "user says  here"  # specials skipped by default
    assert t.decode(with_special, skip_special=False) == text


def test_tiktoken_folder_config(tiktoken_dir):
    """tokenizer_config.json's added_tokens_decoder and generation_config.json's eos ids are honoured."""
    n = 256 + 40
    specials = {"<|begin_of_text|>": n, "<|end_of_text|>": n + 1, "<|eot_id|>": n + 2, "<|custom|>": n + 3}
    (tiktoken_dir / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": {str(i): {"content": s, "special": True} for s, i in specials.items()},
        "chat_template": "{{ messages[0]['content'] }}",
    }))
    (tiktoken_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [n + 1, n + 3]}))
    t = load_tokenizer(tiktoken_dir)
    assert t.token_id("<|eot_id|>") == n + 2 and t.token_id("<|custom|>") == n + 3
    assert {n + 1, n + 2, n + 3} <= t.stop_ids
    assert t.encode("<|custom|>", special=True) == [n + 3]
    assert t.chat_template == "{{ messages[0]['content'] }}"


def test_tiktoken_bad_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "tokenizer.model").write_text("this is not base64 and not a rank\n")
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path)


def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path)


def test_tiktoken_file_replaced_in_place(tiktoken_dir, write_tiktoken_model):
    assert load_tokenizer(tiktoken_dir).vocab_size == 256 + 40 + 256
    write_tiktoken_model(tiktoken_dir / "tokenizer.model", 10)
    assert load_tokenizer(tiktoken_dir).vocab_size == 256 + 10 + 256


# --- an HF folder (tokenizer.json) exported by transformers ------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="transformers exports the HF tokenizer folder")
    path = default_model_path()
    folder = tmp_path_factory.mktemp("hf-tokenizer")
    transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_hf_folder_matches_gguf_tokenizer(tok, hf_folder):
    assert (hf_folder / "tokenizer.json").exists()
    t = load_tokenizer(hf_folder)
    assert t.chat_template == tok.chat_template
    assert t.special_ids == tok.special_ids
    assert t.stop_ids >= {tok.token_id("<|im_end|>")}
    for text in TEXTS.values():
        assert t.encode(text) == tok.encode(text)
        assert t.encode(text, special=True) == tok.encode(text, special=True)
        assert t.decode(tok.encode(text)) == text


@pytest.mark.slow
def test_matches_llama_cpp_on_random_strings(tok, llama_vocab):
    """Seeded random strings over characters that stress the pre-tokenizer (digits, apostrophes, spaces, NBSP,
    zero-width, fullwidth, astral-plane and ligature characters, partial special tokens)."""
    import random

    pool = list("aAbZ zé1 2345 \t\n\r.,;'\"!?-_()[]{}<>|/\\#@$%^&*+=~`") + [
        "'s", "'LL", "'re", "  ", "\u00a0", "😀", "中", "ß", "ǅ", "١٢", "<|im_end|>", "<|im", "\u200b", "\u3000", "𝕏",
        "ﬁ", "Ⅻ", "½"]
    rng = random.Random(0)
    for _ in range(500):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(1, 25)))
        for special in (False, True):
            assert tok.encode(s, special=special) == llama_vocab.tokenize(s.encode(), add_bos=False, special=special), s
        assert tok.decode(tok.encode(s)) == s


@pytest.mark.slow
def test_hf_folder_bos_from_post_processor(tok, hf_folder, tmp_path):
    """A tokenizer.json whose post-processor prepends BOS (as Llama 3's does): corral adds it through `add_bos`,
    and the ids equal transformers' `encode` of the same folder."""
    import shutil

    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "bos"
    shutil.copytree(hf_folder, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    bos = json.loads((folder / "tokenizer_config.json").read_text())["bos_token"]
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [tok.token_id(bos)], "tokens": [bos]}},
    }
    (folder / "tokenizer.json").write_text(json.dumps(data))
    t = load_tokenizer(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert t.add_bos and t.bos_id == tok.token_id(bos)
    for text in TEXTS.values():
        ids = t.encode(text, special=True, add_bos=t.add_bos)  # transformers' encode parses special strings
        assert ids == hf.encode(text), text
        assert ids[0] == t.bos_id
        assert t.encode(text) == tok.encode(text)  # the post-processor itself is not applied twice
    assert load_tokenizer(hf_folder).add_bos is False  # the exported SmolLM2 folder adds nothing
