"""One tokenizer interface over HF `tokenizer.json`, Llama 3 `tokenizer.model` (tiktoken) and GGUF vocabularies.

Special tokens are parsed only when asked (`encode(text, special=True)`, which the chat template's own text uses);
user text never turns into control tokens, even if it contains the string `<|im_start|>`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from pathlib import Path
from typing import Any

from corral.errors import TokenizerError

# Names llama.cpp also treats as end-of-generation when the metadata does not list them.
EOG_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<|eom_id|>")

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)
# GGUF `tokenizer.ggml.pre` → pre-tokenizer splits, as llama.cpp's llama-vocab.cpp defines them.
_PRE_SPLITS = {
    "gpt2": [GPT2_PATTERN],
    "default": [GPT2_PATTERN],
    "smollm": [r"\p{N}", GPT2_PATTERN],
    "starcoder": [r"\p{N}", GPT2_PATTERN],
    "refact": [r"\p{N}", GPT2_PATTERN],
    "llama-bpe": [LLAMA3_PATTERN],
    "llama3": [LLAMA3_PATTERN],
    "llama-v3": [LLAMA3_PATTERN],
}


class Tokenizer:
    """Token ids ↔ text. Subclasses implement `_encode`, `decode`, `piece`, `token_id`, `_build_token_bytes`."""

    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    stop_ids: set[int]
    special_ids: set[int]
    add_bos: bool = False
    chat_template: str | None = None
    _token_bytes: list[bytes] | None = None

    def encode(self, text: str, special: bool = False, add_bos: bool = False) -> list[int]:
        """Text → ids. `special=True` turns special-token strings into their ids (template text only)."""
        ids = self._encode(text, special)
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def _encode(self, text: str, special: bool) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        raise NotImplementedError

    def piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, as stored (e.g. `Ġthe`)."""
        raise NotImplementedError

    def token_id(self, token: str) -> int | None:
        raise NotImplementedError

    def token_bytes(self) -> list[bytes]:
        """For every id 0..vocab_size-1, the bytes that id adds to `decode(ids, skip_special=False)`; built once.

        A special token gives its name (`<|im_end|>`; tell them apart with `special_ids`), an id the vocabulary
        skips gives b"". A SentencePiece piece keeps its space ("▁the" → b" the"), though decoding drops the
        one space that begins a text. Grammar-constrained decoding matches a grammar against these bytes.
        """
        if self._token_bytes is None:
            self._token_bytes = self._build_token_bytes()
        return self._token_bytes

    def _build_token_bytes(self) -> list[bytes]:
        raise NotImplementedError(f"{type(self).__name__} does not list its token bytes")

    @property
    def bos_token(self) -> str:
        return self.piece(self.bos_id) if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self.piece(self.eos_id) if self.eos_id is not None else ""

    def _add_eog_names(self) -> None:
        for name in EOG_NAMES:
            i = self.token_id(name)
            if i is not None and i in self.special_ids:
                self.stop_ids.add(i)


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer`; two copies, so the special-token switch is never flipped at run time."""

    def __init__(self, tok_json: str, special_ids: set[int], stop_ids: set[int], bos_id: int | None,
                 eos_id: int | None, add_bos: bool, chat_template: str | None):
        from tokenizers import Tokenizer as TK

        self._tok = TK.from_str(tok_json)  # parses special-token strings
        self.tok_json = tok_json
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_ids, self.stop_ids = set(special_ids), set(stop_ids)
        self.bos_id, self.eos_id, self.add_bos, self.chat_template = bos_id, eos_id, add_bos, chat_template
        self._add_eog_names()

    @functools.cached_property
    def _plain(self) -> Any:
        """The copy where special-token strings are ordinary text; made on first use (~60 ms for 49k tokens, off
        the start-up path). Two threads racing here both make an equal copy; one is kept."""
        from tokenizers import Tokenizer as TK

        plain = TK.from_str(self.tok_json)
        plain.encode_special_tokens = True
        return plain

    def _encode(self, text: str, special: bool) -> list[int]:
        return (self._tok if special else self._plain).encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def piece(self, token_id: int) -> str:
        p = self._tok.id_to_token(int(token_id))
        return "" if p is None else p

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _build_token_bytes(self) -> list[bytes]:
        # The decoder says how a vocabulary entry spells its bytes: byte-level BPE maps each byte to one printable
        # character (GPT-2's table); SentencePiece writes spaces as "▁" and raw bytes as "<0xNN>".
        steps = _decoder_steps(json.loads(self._tok.to_str()).get("decoder"))
        kinds = {d.get("type") for d in steps}
        replaces = [(d["pattern"]["String"], d["content"]) for d in steps
                    if d.get("type") == "Replace" and "String" in (d.get("pattern") or {})]
        replaces += [(d.get("replacement", "▁"), " ") for d in steps if d.get("type") == "Metaspace"]
        added = {i: t.content for i, t in self._tok.get_added_tokens_decoder().items()}  # decoded verbatim
        byte_of = _gpt2_byte_decoder()
        out = []
        for i in range(self.vocab_size):
            piece = self._tok.id_to_token(i)
            if i in added:
                out.append(added[i].encode())
            elif piece is None:
                out.append(b"")
            elif "ByteLevel" in kinds and all(c in byte_of for c in piece):
                out.append(bytes(byte_of[c] for c in piece))
            elif "ByteFallback" in kinds and _BYTE_PIECE.fullmatch(piece):
                out.append(bytes([int(piece[3:5], 16)]))
            else:
                for a, b in replaces:
                    piece = piece.replace(a, b)
                out.append(piece.encode())
        return out


class TiktokenTokenizer(Tokenizer):
    """Llama 3's `tokenizer.model`: base64 token + rank per line, BPE by tiktoken, 256 reserved specials."""

    def __init__(self, path: Path, specials: dict[str, int] | None = None, chat_template: str | None = None):
        import tiktoken

        # Parsed here, not with tiktoken.load_tiktoken_bpe: that caches local files by path in /tmp, so a
        # tokenizer.model replaced in place would keep loading the old vocabulary.
        try:
            ranks = {base64.b64decode(tok): int(rank)
                     for tok, rank in (line.split() for line in path.read_text().splitlines() if line.strip())}
        except (ValueError, binascii.Error, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path}: not a tiktoken BPE file (base64 token + rank per line): {e}") from None
        n = len(ranks)
        if specials is None:
            names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                     "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                     "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
            names += [f"<|reserved_special_token_{i}|>" for i in range(3, 256 - len(names) + 3)]
            specials = {name: n + i for i, name in enumerate(names)}
        self._enc = tiktoken.Encoding(name=path.name, pat_str=LLAMA3_PATTERN,
                                      mergeable_ranks=ranks, special_tokens=specials)
        self._specials = specials
        self._id_to_special = {v: k for k, v in specials.items()}
        self.vocab_size = n + len(specials)
        self.special_ids = set(specials.values())
        self.bos_id = specials.get("<|begin_of_text|>")
        self.eos_id = specials.get("<|end_of_text|>")
        self.stop_ids = {i for i in (self.eos_id,) if i is not None}
        self.add_bos = True
        self.chat_template = chat_template
        self._add_eog_names()

    def _encode(self, text: str, special: bool) -> list[int]:
        if special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode(text, disallowed_special=())

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        ids = [i for i in ids if not (skip_special and i in self.special_ids)]
        return self._enc.decode_bytes(ids).decode("utf-8", errors="replace")

    def piece(self, token_id: int) -> str:
        if token_id in self._id_to_special:
            return self._id_to_special[token_id]
        return self._enc.decode_single_token_bytes(token_id).decode("utf-8", errors="backslashreplace")

    def token_id(self, token: str) -> int | None:
        if token in self._specials:
            return self._specials[token]
        try:
            return self._enc.encode_single_token(token.encode())
        except KeyError:
            return None

    def _build_token_bytes(self) -> list[bytes]:
        out = []
        for i in range(self.vocab_size):
            if i in self._id_to_special:
                out.append(self._id_to_special[i].encode())
                continue
            try:
                out.append(self._enc.decode_single_token_bytes(i))
            except KeyError:  # a hole between the ranks and the specials
                out.append(b"")
        return out


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _decoder_steps(d: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A tokenizer.json decoder, `Sequence`s flattened."""
    if not d:
        return []
    if d.get("type") == "Sequence":
        return [s for sub in d.get("decoders", []) for s in _decoder_steps(sub)]
    return [d]


def _gpt2_byte_decoder() -> dict[str, int]:
    """Byte-level BPE's character → byte table (GPT-2's `bytes_to_unicode`, inverted): printable Latin-1 bytes
    stand for themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + k): b for k, b in enumerate(rest)}


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer that goes with a model path: a GGUF file or an HF folder."""
    path = Path(path)
    if path.is_dir():
        return _from_hf_folder(path)
    from corral.formats import packed
    from corral.formats.gguf import GGUFFile

    # Built once from the GGUF's vocabulary (~0.3 s for 49k tokens), then read back from the packed-model cache.
    key = packed.file_key(path, "tokenizer")
    if (a := packed.load_json(key, "tokenizer")) is not None:
        return HFTokenizer(a["json"], set(a["special"]), set(a["stops"]), a["bos"], a["eos"], a["add_bos"],
                           a["template"])
    tok = from_gguf(GGUFFile(path))
    if isinstance(tok, HFTokenizer):
        packed.save_json(key, "tokenizer", {
            "json": tok.tok_json, "special": sorted(tok.special_ids), "stops": sorted(tok.stop_ids),
            "bos": tok.bos_id, "eos": tok.eos_id, "add_bos": tok.add_bos, "template": tok.chat_template})
    return tok


def _read_json(p: Path) -> dict[str, Any]:
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{p}: not valid JSON ({e})") from None


def _token_str(v: Any) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _from_hf_folder(folder: Path) -> Tokenizer:
    tc = _read_json(folder / "tokenizer_config.json")
    gen = _read_json(folder / "generation_config.json")
    cfg = _read_json(folder / "config.json")
    template = tc.get("chat_template")
    if isinstance(template, list):  # a list of named templates: take "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text()
    if (folder / "tokenizer.json").exists():
        tok_json = (folder / "tokenizer.json").read_text()
        data = json.loads(tok_json)
        special = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
        vocab = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        model_vocab = data.get("model", {}).get("vocab", {})

        def tid(name: str | None) -> int | None:
            if name is None:
                return None
            return vocab.get(name, model_vocab.get(name) if isinstance(model_vocab, dict) else None)

        bos = tid(_token_str(tc.get("bos_token")))
        eos = tid(_token_str(tc.get("eos_token")))
        stops = _as_id_set(gen.get("eos_token_id", cfg.get("eos_token_id"))) | ({eos} if eos is not None else set())
        bos = bos if bos is not None else cfg.get("bos_token_id")
        add_bos = bool(tc.get("add_bos_token", False)) or _post_processor_adds_bos(data.get("post_processor"))
        # BOS is added by corral (`add_bos`), not by the post-processor, so every tokenizer kind behaves alike.
        data["post_processor"] = None
        return HFTokenizer(json.dumps(data), special, stops, bos, eos, add_bos, template)
    if (folder / "tokenizer.model").exists():
        specials = None
        added = tc.get("added_tokens_decoder")
        if added:
            specials = {v["content"]: int(k) for k, v in added.items()}
        t = TiktokenTokenizer(folder / "tokenizer.model", specials, template)
        t.stop_ids |= _as_id_set(gen.get("eos_token_id", cfg.get("eos_token_id")))
        return t
    raise TokenizerError(f"{folder}: no tokenizer.json or tokenizer.model; copy the model's tokenizer files there")


def _post_processor_adds_bos(pp: dict[str, Any] | None) -> bool:
    """True when a tokenizer.json post-processor prepends a special token to a single sequence (Llama 3 does)."""
    if not pp:
        return False
    if pp.get("type") == "Sequence":
        return any(_post_processor_adds_bos(p) for p in pp.get("processors", []))
    if pp.get("type") == "TemplateProcessing":
        single = pp.get("single") or []
        return bool(single) and "SpecialToken" in single[0]
    return False


def _as_id_set(v: Any) -> set[int]:
    if v is None:
        return set()
    return {int(x) for x in v} if isinstance(v, list) else {int(v)}


def from_gguf(g: Any) -> Tokenizer:
    """Build a `tokenizers` tokenizer from a GGUF's `tokenizer.ggml.*` metadata (gpt2 BPE or llama SentencePiece)."""
    md = g.metadata
    kind = md.get("tokenizer.ggml.model")
    tokens = g.array("tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError(f"{g.path}: the GGUF carries no tokenizer (tokenizer.ggml.tokens); pass an HF folder")
    types = g.array("tokenizer.ggml.token_type") or [1] * len(tokens)
    control = {i for i, t in enumerate(types) if t == 3}
    user = {i for i, t in enumerate(types) if t == 4}
    if kind == "gpt2":
        tok = _gguf_bpe(tokens, g.array("tokenizer.ggml.merges") or [], md.get("tokenizer.ggml.pre", "default"),
                        control, user)
    elif kind == "llama":
        tok = _gguf_spm(tokens, g.array("tokenizer.ggml.scores") or [0.0] * len(tokens), types,
                        bool(md.get("tokenizer.ggml.add_space_prefix", True)), control, user)
    else:
        raise TokenizerError(
            f"{g.path}: tokenizer model {kind!r} is not supported (gpt2 BPE and llama SentencePiece are)")
    bos, eos = md.get("tokenizer.ggml.bos_token_id"), md.get("tokenizer.ggml.eos_token_id")
    stops = {int(x) for x in (eos, md.get("tokenizer.ggml.eot_token_id"), md.get("tokenizer.ggml.eom_token_id"))
             if x is not None}
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    return HFTokenizer(tok.to_str(), control, stops, bos, eos, add_bos, md.get("tokenizer.chat_template"))


def _added(tok: Any, tokens: list[str], control: set[int], user: set[int]) -> None:
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in sorted(control)])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in sorted(user)])


def _gguf_bpe(tokens: list[str], merges: list[str], pre: str, control: set[int], user: set[int]) -> Any:
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as TK

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = TK(models.BPE(vocab, pairs, ignore_merges=pre in ("llama-bpe", "llama3", "llama-v3")))
    splits = _PRE_SPLITS.get(pre, [GPT2_PATTERN])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    _added(tok, tokens, control, user)
    return tok


def _gguf_spm(tokens: list[str], scores: list[float], types: list[int], space_prefix: bool, control: set[int],
              user: set[int]) -> Any:
    """SentencePiece-BPE (Llama 2 style): merges ranked by the score of the merged piece, bytes as <0xNN>."""
    from tokenizers import Tokenizer as TK
    from tokenizers import decoders, models, normalizers

    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, pid in vocab.items():
        if types[pid] != 1 or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                merges.append((scores[pid], vocab[a], vocab[b], a, b))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    unk = next((tokens[i] for i, t in enumerate(types) if t == 2), None)
    tok = TK(models.BPE(vocab, [(m[3], m[4]) for m in merges], unk_token=unk, fuse_unk=True, byte_fallback=True))
    norms = [normalizers.Replace(" ", "▁")]
    if space_prefix:
        norms.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(norms)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    _added(tok, tokens, control, user)
    return tok


# A text that tells pre-tokenizers apart (the idea of convert_hf_to_gguf.py's `chktxt`): digit runs, contractions,
# whitespace runs and line breaks, punctuation runs, other scripts, emoji.
PRE_PROBE = ("Hello world! I'm sure they're here; we'll see, you'd've. 'S 'T 'VE\n\n  \n\t\tx  y   z    \n"
             "3 33 333 4444 55555 3.14 1,000,000 x2 a1b22c333 ------====== ...!!!??? ``` \"\"\" ''' "
             "Привет мир 你好世界1314 こんにちは 🦙🚀✅ café naïve ÅÄÖ\r\n end  ")
# The llama.cpp pre-tokenizer names an export may write, each rebuilt by `_gguf_bpe` as corral reads it.
GGUF_BPE_PRES = ("smollm", "gpt2", "llama-bpe")


def gguf_vocab(folder: Path, n_vocab: int) -> dict[str, Any]:
    """The GGUF `tokenizer.*` keys (gpt2 BPE) for the byte-level BPE `tokenizer.json` of an HF folder, with the
    chat template. The vocabulary is padded with unused `[PADn]` entries to the model's `n_vocab` embedding rows,
    as convert_hf_to_gguf.py does. `tokenizer.ggml.pre` (how llama.cpp splits text before BPE) is the name of
    `GGUF_BPE_PRES` whose rebuilt tokenizer encodes `PRE_PROBE` exactly as the source; none → `TokenizerError`."""
    tok = _from_hf_folder(folder)
    if not isinstance(tok, HFTokenizer):
        raise TokenizerError(f"{folder}: a tiktoken tokenizer.model; GGUF export needs the model's tokenizer.json")
    data = json.loads(tok._tok.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in {d.get("type") for d in _decoder_steps(data.get("decoder"))}:
        raise TokenizerError(f"{folder}/tokenizer.json: a {model.get('type')} tokenizer without byte-level "
                             "decoding (SentencePiece style); GGUF export supports byte-level BPE (GPT-2, Llama 3, "
                             "SmolLM) tokenizers only")
    if tok.vocab_size > n_vocab:
        raise TokenizerError(f"{folder}: the tokenizer has {tok.vocab_size} tokens but the model only {n_vocab} "
                             "embedding rows; the tokenizer files belong to another model")
    added = tok._tok.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(n_vocab):
        piece = tok._tok.id_to_token(i)
        tokens.append(f"[PAD{i}]" if piece is None else piece)
        # gguf.TokenType: 1 normal, 3 control (special), 4 user-defined (added, not special), 5 unused
        types.append(5 if piece is None else 1 if i not in added else 3 if added[i].special else 4)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    control = {i for i, t in enumerate(types) if t == 3}
    user = {i for i, t in enumerate(types) if t == 4}
    want = tok.encode(PRE_PROBE)
    pre = next((p for p in GGUF_BPE_PRES
                if _gguf_bpe(tokens, merges, p, control, user).encode(PRE_PROBE, add_special_tokens=False).ids == want),
               None)
    if pre is None:
        raise TokenizerError(f"{folder}/tokenizer.json: its pre-tokenizer splits text unlike any llama.cpp knows "
                             f"among {', '.join(GGUF_BPE_PRES)}; llama.cpp would tokenize differently")
    tc = _read_json(folder / "tokenizer_config.json")
    kv: dict[str, Any] = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
                          "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
    ids = {"bos": tok.bos_id, "eos": tok.eos_id, "padding": tok.token_id(_token_str(tc.get("pad_token")) or ""),
           "unknown": tok.token_id(_token_str(tc.get("unk_token") or model.get("unk_token")) or "")}
    kv |= {f"tokenizer.ggml.{k}_token_id": int(v) for k, v in ids.items() if v is not None}
    kv["tokenizer.ggml.add_bos_token"] = bool(tok.add_bos)
    if tok.chat_template:
        kv["tokenizer.chat_template"] = tok.chat_template
    return kv


# --- streaming text ---------------------------------------------------------------------------------------------


class Detokenizer:
    """Streaming ids → text that never emits half a UTF-8 character.

    Each new id is decoded together with a few earlier ones (tokenizers strip or merge at piece boundaries); text
    is released only once it no longer ends in U+FFFD, the mark of an incomplete byte sequence.
    """

    # Special tokens that stay in the text: Llama 3.1 opens a built-in tool call with <|python_tag|> (corral.tools)
    KEEP = ("<|python_tag|>",)

    def __init__(self, tok: Tokenizer):
        self.tok, self.ids, self.prefix, self.read = tok, [], 0, 0
        self.keep = {i: s for s in self.KEEP if (i := tok.token_id(s)) is not None and i in tok.special_ids}

    def add(self, token_id: int) -> str:
        if token_id in self.keep:  # what was pending, then the token's name; decoding starts afresh after it
            pending = self.tok.decode(self.ids[self.prefix:])[len(self.tok.decode(self.ids[self.prefix:self.read])):]
            self.ids.append(token_id)
            self.prefix = self.read = len(self.ids)
            return pending + self.keep[token_id]
        self.ids.append(token_id)
        before = self.tok.decode(self.ids[self.prefix:self.read])
        after = self.tok.decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""


class StopStrings:
    """Cuts the text at the first stop string, holding back any tail that could still become one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text, self.sent, self.hit = "", 0, False

    def feed(self, delta: str) -> str:
        """Add text; return what may be shown now."""
        self.text += delta
        start = max(0, self.sent - self.hold)
        cut = min((i for i in (self.text.find(s, start) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, self.text = True, self.text[:cut]
            end = len(self.text)
        else:
            end = len(self.text) - self.hold
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out
