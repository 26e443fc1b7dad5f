"""Structured output: token bytes of every tokenizer kind, the llguidance constraint, and the engine under it
(a tiny random-weight model over the default tokenizer's vocabulary must still emit schema-valid JSON)."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from corral.config import ModelConfig
from corral.engine.engine import Engine
from corral.errors import InvalidArgumentError
from corral.grammar import GrammarCompiler
from corral.model.llama import LlamaForCausalLM
from corral.tokenizer import load_tokenizer
from tests.conftest import TIKTOKEN_CORPUS
from tests.engine.test_engine import Collector
from tests.engine.test_engine import submit as engine_submit
from tests.test_tokenizer_spm import write_spm_gguf

jsonschema = pytest.importorskip("jsonschema")

TEXTS = [
    "The quick brown fox jumps over the lazy dog. 1234567 people cheered!",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tprint(f'{x!r}')\n}{[]]\\\n",
    "emoji 😀🎉👍🏽 and 🇫🇷 flags, 👨‍👩‍👧 family",
    "中文测试，日本語のテキスト、한국어 문장입니다。",
    "a    b\t\tc\n\n\n d  \n  \r\n end   ",
    "naïve café <|im_end|> {\"json\": [1, 2.5e-3, null]}",
]

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
        "pet": {"type": "object",
                "properties": {"kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}},
                "required": ["kind"], "additionalProperties": False},
    },
    "required": ["name", "age", "tags", "pet"],
    "additionalProperties": False,
}
RF_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}


def joined(tok, text: str) -> bytes:
    tb = tok.token_bytes()
    return b"".join(tb[i] for i in tok.encode(text))


# --- token bytes -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_of_the_default_tokenizer_spell_the_text(tok, text):
    assert len(tok.token_bytes()) == tok.vocab_size
    assert joined(tok, text) == text.encode()


def test_token_bytes_of_specials_are_their_names(tok):
    tb = tok.token_bytes()
    assert tb[tok.token_id("<|im_end|>")] == b"<|im_end|>"
    assert tok.token_bytes() is tb  # cached


def test_token_bytes_tiktoken(tiktoken_dir):
    t = load_tokenizer(tiktoken_dir)
    assert len(t.token_bytes()) == t.vocab_size and t.token_bytes()[t.eos_id] == b"<|end_of_text|>"
    for text in TEXTS:
        assert joined(t, text) == text.encode(), text


def test_token_bytes_sentencepiece_gguf(tmp_path):
    """SentencePiece pieces carry their space ("▁the" → b" the") and bytes as <0xNN>; the text gains the one
    space that the tokenizer prepends and decoding strips."""
    path = tmp_path / "spm.gguf"
    write_spm_gguf(path)
    t = load_tokenizer(path)
    for text in [*TEXTS, "the cat sat on the mat"]:
        assert joined(t, text) == b" " + text.encode(), text


def _hf_folder(folder, tk) -> None:
    folder.mkdir()
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def test_token_bytes_hf_folders(tmp_path):
    """A byte-level BPE tokenizer.json (Llama 3 / SmolLM style) with a non-special added token, and a Metaspace +
    byte-fallback one (Mistral style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bl = Tokenizer(models.BPE())
    bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bl.decoder = decoders.ByteLevel()
    bl.train_from_iterator([TIKTOKEN_CORPUS], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bl.add_tokens(["<tool call>"])
    _hf_folder(tmp_path / "bytelevel", bl)

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "c"), ("a", "t"), ("▁c", "at")]
    for a, b in merges:
        vocab.setdefault(a, len(vocab))
        vocab.setdefault(b, len(vocab))
        vocab.setdefault(a + b, len(vocab))
    ms = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    ms.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    metaspace = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    ms.decoder = decoders.Sequence([decoders.ByteFallback(), metaspace, decoders.Fuse()])
    ms.add_special_tokens(["<s>", "</s>"])
    _hf_folder(tmp_path / "metaspace", ms)

    t = load_tokenizer(tmp_path / "bytelevel")
    for text in [*TEXTS, "call <tool call> now"]:
        assert joined(t, text) == text.encode(), text
    t = load_tokenizer(tmp_path / "metaspace")
    for text in [*TEXTS, "the cat"]:
        assert joined(t, text) == b" " + text.encode(), text
        assert t.decode(t.encode(text)) == text


# --- compiling response_format -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiler(tok):
    return GrammarCompiler(tok)


def test_text_format_is_unconstrained(compiler):
    assert compiler.compile(None) is None and compiler.compile({"type": "text"}) is None


@pytest.mark.parametrize("rf, words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}, "frob"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/definitions/nope"}}}, "nope"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(a"}}}, "regex"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "must be a JSON Schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}, "must be a JSON Schema"),
    ({"type": "yaml"}, "response_format.type"),
])
def test_bad_response_format_is_an_invalid_argument(compiler, rf, words):
    with pytest.raises(InvalidArgumentError) as e:
        compiler.compile(rf)
    assert words in str(e.value)
    if rf["type"] == "json_schema":
        assert "response_format.json_schema.schema" in str(e.value)


def test_constraint_follows_a_token_stream(tok, compiler):
    """Every token of a valid document is allowed by the mask in turn; the last one completes the grammar."""
    c = compiler.compile(RF_SCHEMA)()
    doc = json.dumps({"name": "Rex", "age": 7, "tags": ["red", "blue"], "pet": {"kind": "dog", "legs": 4}})
    ids = tok.encode(doc)
    for i, t in enumerate(ids):
        assert not c.done
        row = torch.zeros(tok.vocab_size)
        c.mask(row)
        assert row[t] == 0, (i, tok.decode([t]))
        c.accept(t)
    assert c.done and c.error is None


def test_constraint_mask_forbids_and_errors(tok, compiler):
    c = compiler.compile({"type": "json_object"})()
    row = torch.zeros(tok.vocab_size)
    c.mask(row)
    allowed = torch.nonzero(row == 0).flatten().tolist()
    assert allowed and all(tok.token_bytes()[i].startswith(b"{") for i in allowed)
    c.accept(tok.encode("[")[0])  # forbidden
    assert c.error and not c.done


def test_mask_handles_model_vocab_wider_and_narrower(tok, compiler):
    c = compiler.compile({"type": "json_object"})()
    wide = torch.zeros(tok.vocab_size + 64)
    c.mask(wide)
    assert torch.isinf(wide[tok.vocab_size:]).all() and (wide[:tok.vocab_size] == 0).any()
    brace = tok.encode("{")[0]
    narrow = torch.zeros(brace + 1)
    c.mask(narrow)
    assert narrow[brace] == 0 and c.error is None
    c.mask(torch.zeros(brace))  # no "{"-token inside the model's vocabulary
    assert "no token" in c.error


# --- the engine under a constraint -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_on_tok(tok):
    """A tiny random-weight model whose vocabulary is the default tokenizer's (plus 64 padding rows, as checkpoints
    padded to a multiple of 64 have): random logits put every part of the mask to work."""
    cfg = ModelConfig(vocab_size=tok.vocab_size + 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture
def engine(tiny_on_tok, tok):
    eng = Engine(tiny_on_tok, stop_ids=tok.stop_ids, max_batch=8, max_seq_len=256).start()
    yield eng
    eng.shutdown()


@functools.cache
def default_tok():
    from corral.registry import default_model_path
    from corral.tokenizer import load_tokenizer

    return load_tokenizer(default_model_path())


def submit(eng, prompt, constraint=None, **kw) -> Collector:
    return engine_submit(eng, prompt, default_tok(), constraint, **{"max_tokens": 120, **kw})


def test_random_model_emits_schema_valid_json(engine, tok, compiler):
    make = compiler.compile(RF_SCHEMA)
    prompt = tok.encode("Describe a person as JSON:")
    runs = [submit(engine, prompt, make())]  # greedy
    runs += [submit(engine, prompt, make(), temperature=1.0, seed=s) for s in range(5)]
    runs += [submit(engine, prompt, make(), temperature=1.0, top_k=50, repetition_penalty=1.3, seed=9)]
    for c in runs:
        c.wait()
        assert c.finished.finish_reason == "stop", (c.finished, c.text)
        assert all(i < tok.vocab_size for i in c.ids)
        jsonschema.validate(json.loads(c.text), SCHEMA)
    assert len({c.text for c in runs}) > 3  # sampling explored the schema


def test_json_object_from_a_random_model(engine, tok, compiler):
    """Random weights rarely close an open-ended object within max_tokens ("length", a prefix of JSON, as OpenAI
    does); the ones that finish are objects."""
    make = compiler.compile({"type": "json_object"})
    runs = [submit(engine, tok.encode("JSON:"), make(), max_tokens=40, temperature=1.0, seed=s) for s in range(6)]
    for c in runs:
        c.wait()
        assert c.text.startswith("{")
        if c.finished.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)
        else:
            assert c.finished.finish_reason == "length" and len(c.ids) == 40
    assert {c.finished.finish_reason for c in runs} == {"stop", "length"}


def test_unconstrained_rows_are_unchanged_by_constrained_neighbours(engine, tok, compiler):
    make = compiler.compile(RF_SCHEMA)
    prompts = [tok.encode(t) for t in ("Once upon a time", "def main():", "The weather today")]
    kws = [{}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.8, "top_p": 0.9, "seed": 4}]
    alone = [submit(engine, p, max_tokens=20, **kw).wait().ids for p, kw in zip(prompts, kws, strict=True)]
    mixed = []
    for p, kw in zip(prompts, kws, strict=True):
        mixed.append(submit(engine, p, max_tokens=20, **kw))
        submit(engine, p, make(), temperature=1.0, seed=7)
    assert [c.wait().ids for c in mixed] == alone


def test_constraint_error_finishes_the_request_with_error(engine, tok):
    class Broken:
        error: str | None = None
        done = False

        def mask(self, row):
            pass

        def accept(self, tid):
            self.error = "matcher failed"

    c = submit(engine, tok.encode("hi"), Broken()).wait()
    assert c.finished.finish_reason == "error" and "matcher failed" in c.finished.error and len(c.ids) == 1


# --- the real default model ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_answers_in_json(tok, compiler):
    from corral.chat import encode_chat
    from corral.model.loader import load_model

    model = load_model("default", device="cpu").model
    eng = Engine(model, stop_ids=tok.stop_ids, max_batch=2, max_seq_len=512).start()
    try:
        ask = [{"role": "user", "content": "Describe a person named Ann, 31, who likes red, and her dog, as JSON."}]
        c = submit(eng, encode_chat(tok, ask), compiler.compile(RF_SCHEMA)()).wait()
        assert c.finished.finish_reason == "stop", (c.finished, c.text)
        jsonschema.validate(json.loads(c.text), SCHEMA)
        ask = [{"role": "user", "content": "Give the capital cities of France and Japan as a JSON object."}]
        c = submit(eng, encode_chat(tok, ask), compiler.compile({"type": "json_object"})(), max_tokens=100).wait()
        assert c.finished.finish_reason == "stop", (c.finished, c.text)
        assert isinstance(json.loads(c.text), dict)
    finally:
        eng.shutdown()
