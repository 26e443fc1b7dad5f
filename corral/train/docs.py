"""Documents as training data: Markdown, plain text, HTML or PDF files → chunks that follow the document's structure.

- A chunk is a section, or a part of one. Cuts fall at headings first, then at blank lines between paragraphs, then
  at sentence ends, and only then at spaces. A fixed-size window cuts a rule from its exception and a table from its
  header; a section is what its writer meant to be read together.
- Every chunk carries its heading trail ("Handbook > Safety > Fire drills"). A paragraph often says "it" or "this
  rule" and means its heading: the teacher that writes questions about a chunk and the model that learns from it
  both need that context, and a reader is shown the trail as the source.
- A small section or paragraph (under `min_chars`) is merged with the next part of the same top-level section, and
  the headings of the sections it absorbs stay in the text as `#` lines; so a chunk is rarely too thin to ask about.
- Fenced code blocks are never cut and `#` lines inside them are not headings; tables and lists stay whole when they
  fit, and a table that does not repeats its header row in every piece.
- No text is lost: every line of the document that is not a heading is in some chunk.

HTML becomes this Markdown-like text through the standard library's parser (h1-h6 → `#` headings, list items →
`- ` lines, `<pre>` → a code fence); PDF text comes from pypdf when it is installed. Nothing here needs torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

from corral.errors import CorralError, InvalidArgumentError

TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".text", ".rst")
SUPPORTED = TEXT_SUFFIXES + (".html", ".htm", ".pdf")

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ITEM = re.compile(r"^(?=[ \t]{0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$))", re.M)  # zero-width, at a list item's start
_SENTENCE = re.compile(r"(?<=[^\s\d][.!?])[\"')\]]*\s+(?![a-z])")  # not in "1. first" nor "e.g. this"
_SPACE = re.compile(r"\s+")
_NEWLINE = re.compile(r"\n")
_TABLE_RULE = re.compile(r"[\s|:-]*-[\s|:-]*")
_CUTS = {"text": (_SENTENCE, _SPACE), "list": (_ITEM, _SENTENCE, _SPACE), "table": (_NEWLINE, _SPACE)}


class DocumentError(CorralError):
    """A document that cannot be read: missing, of an unsupported kind, not UTF-8, empty, or a PDF without text."""


@dataclass
class Chunk:
    """One piece of a document: what a teacher writes questions about and a model reads as context."""

    source: str  # the file path as given
    heading: str  # the heading trail, "Handbook > Safety > Fire drills"; "" before any heading
    text: str  # without the heading line itself; headings of merged sub-sections stay in it as `#` lines
    line: int  # 1-based line in the source where the chunk's text starts


@dataclass
class _Section:
    trail: list[tuple[int, str]]  # (level, title) from the top
    group: int  # which top-level section it belongs to; chunks never span two
    blocks: list[tuple[int, str]] = field(default_factory=list)  # (first line, paragraph, table, list or code)


def read_document(path: str | Path) -> str:
    """The plain text of a .md/.markdown/.txt/.text/.rst (as is), .html/.htm (as Markdown-like text) or .pdf file."""
    path = Path(path)
    suffix = _check_path(path)
    if suffix == ".pdf":
        text = _read_pdf(path)
    else:
        data = path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise DocumentError(f"{path}:{line}: not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}); convert "
                                f"the file to UTF-8, e.g. iconv -f latin1 -t utf-8 {path}") from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if suffix in (".html", ".htm"):
            parser = _HTMLText()
            parser.feed(text)
            parser.close()
            text = parser.text()
    if not text.strip():
        raise DocumentError(f"{path}: the document has no text; check the file, or leave it out")
    return text


def chunk_document(text: str, source: str = "", max_chars: int = 1200, min_chars: int = 200) -> list[Chunk]:
    """Cut Markdown-like text into chunks of at most `max_chars` characters (a code block may be longer; it is never
    cut) along its headings, paragraphs and sentences, merging parts under `min_chars` with the next part of the same
    top-level section. Each chunk carries its heading trail and the line it starts on."""
    _check_sizes(max_chars, min_chars)
    parts = []  # [section, first line, text]: one section's blocks packed up to max_chars
    for sec in _parse(text):
        cur = None
        for line, block in sec.blocks:
            for off, piece in _split_block(block, max_chars):
                piece = piece.strip()  # an indented first line; a block holds no blank line, so `off` stays right
                if cur and len(cur[2]) + 2 + len(piece) <= max_chars:
                    cur[2] += "\n\n" + piece
                else:
                    cur = [sec, line + block.count("\n", 0, off), piece]
                    parts.append(cur)
    groups = _merge([[p] for p in parts], min_chars, max_chars, into_next=True)
    groups = _merge(groups, min_chars, max_chars, into_next=False)  # what is still small joins the chunk before it
    chunks = []
    for g in groups:
        trail, body = _render(g)
        chunks.append(Chunk(source, " > ".join(t for _, t in trail if t), body, g[0][1]))
    return chunks


def load_documents(paths: list[str], max_chars: int = 1200, min_chars: int = 200) -> list[Chunk]:
    """Read and chunk every file in order. Every path is checked before any is read."""
    _check_sizes(max_chars, min_chars)
    if not paths:
        raise DocumentError("no documents given; pass at least one file (" + ", ".join(SUPPORTED) + ")")
    for p in paths:
        _check_path(Path(p))
    chunks = []
    for p in paths:
        found = chunk_document(read_document(p), str(p), max_chars, min_chars)
        if not found:
            raise DocumentError(f"{p}: only headings, no text to learn from; check the file, or leave it out")
        chunks += found
    return chunks


def _check_sizes(max_chars: int, min_chars: int) -> None:
    if max_chars < 100:
        raise InvalidArgumentError(f"--chunk-chars {max_chars}: a chunk needs at least 100 characters; pass a larger "
                                   "value (the default is 1200)")
    if not 0 <= min_chars < max_chars:
        raise InvalidArgumentError(f"min_chars {min_chars}: must be at least 0 and below the chunk size "
                                   f"({max_chars}); pass a value from 0 to {max_chars - 1} (the default is 200)")


def _check_path(path: Path) -> str:
    if not path.exists():
        raise DocumentError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise DocumentError(f"{path}: is a folder; pass the document files in it")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise DocumentError(f"{path}: unsupported kind of document '{suffix}'; supported: {', '.join(SUPPORTED)} "
                            "(convert it to one of them, e.g. to .txt or .md)")
    if not os.access(path, os.R_OK):
        raise DocumentError(f"{path}: cannot be read (permission denied); check its permissions")
    return suffix


def _read_pdf(path: Path) -> str:
    try:
        import pypdf
    except ImportError:
        raise DocumentError(f"{path}: reading PDF needs pypdf: pip install pypdf") from None
    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted:
            reader.decrypt("")
        text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except Exception as e:  # pypdf raises many kinds on a damaged or locked file; all mean "cannot read it"
        raise DocumentError(f"{path}: not a readable PDF ({type(e).__name__}: {e}); check that it opens in a PDF "
                            "viewer, or export its text to a .txt file") from None
    if not text.strip():
        raise DocumentError(f"{path}: the PDF has no extractable text; it may be a scanned image: run OCR on it "
                            "first (e.g. ocrmypdf) or pass its text as a .txt file")
    return text.replace("\r\n", "\n")


_BLOCK_TAGS = {**{t: "\n\n" for t in ("p", "ul", "ol", "table", "blockquote", "section", "article", "header",
                                        "footer", "main", "figure")},
               **{t: "\n" for t in ("div", "tr", "li", "dt", "dd", "hr", "form")}}
_OPEN = {**_BLOCK_TAGS, "li": "\n- ", "td": " | ", "th": " | ", "br": "\n", "pre": "\n\n```\n",
         **{f"h{i}": "\n\n" + "#" * i + " " for i in range(1, 7)}}
_CLOSE = {**_BLOCK_TAGS, "li": "", "pre": "\n```\n\n", **{f"h{i}": "\n\n" for i in range(1, 7)}}


class _HTMLText(HTMLParser):
    """HTML → Markdown-like text: headings as `#` lines, list items as `- ` lines, `<pre>` as a code fence."""

    SKIP = {"script", "style", "nav", "head", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "body":
            self.skip = 0  # a <head> left open
        if tag in self.SKIP or self.skip:
            self.skip += tag in self.SKIP
        else:
            self.pre += tag == "pre"
            self.out.append(_OPEN.get(tag, ""))

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            self.skip -= tag in self.SKIP
        elif tag != "pre" or self.pre:
            self.pre -= tag == "pre"
            self.out.append(_CLOSE.get(tag, ""))

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data if self.pre else _SPACE.sub(" ", data))

    def text(self) -> str:
        lines, fence = [], False
        for line in "".join(self.out).split("\n"):
            fence ^= line.strip() == "```"
            lines.append(line.rstrip() if fence or line.strip() == "```" else " ".join(line.split()))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _parse(text: str) -> list[_Section]:
    """Sections (by ATX and setext headings, outside code fences), each with its blocks (split at blank lines)."""
    sections = [_Section([], 0)]
    stack: list[tuple[int, str]] = []
    group, fence, cur = 0, "", []  # cur: (line number, line) of the open block

    def flush() -> None:
        if cur:
            sections[-1].blocks.append((cur[0][0], "\n".join(s for _, s in cur)))
            cur.clear()

    for n, line in enumerate(text.split("\n"), 1):
        m = _FENCE.match(line)
        if fence:
            cur.append((n, line))
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line[m.end():].strip():
                fence = ""
                flush()
            continue
        if m:
            flush()
            fence = m.group(1)
            cur.append((n, line))
            continue
        if not line.strip():
            flush()
            continue
        atx, setext = _ATX.match(line), _SETEXT.match(line)
        if setext and len(cur) == 1 and not _SETEXT.match(cur[0][1]) and not _ITEM.match(cur[0][1]) \
                and not cur[0][1].lstrip().startswith(("|", ">")):  # one line of plain text, then a rule
            level, title = (1 if setext.group(1)[0] == "=" else 2), cur.pop()[1].strip()
        elif atx:
            flush()
            level, title = len(atx.group(1)), (atx.group(2) or "").strip()
        else:
            cur.append((n, line))
            continue
        stack = [h for h in stack if h[0] < level] + [(level, title)]
        group += len(stack) == 1
        sections.append(_Section(stack, group))
    flush()
    return sections


def _split_block(block: str, max_chars: int) -> list[tuple[int, str]]:
    """(offset, piece) of one block. Code is never cut; a table's pieces each repeat its header row."""
    kind = "code" if _FENCE.match(block) else "list" if _ITEM.match(block) else "text"
    lines = block.split("\n")
    if all(s.lstrip().startswith("|") for s in lines):
        kind = "table"
    if len(block) <= max_chars or kind == "code":
        return [(0, block)]
    if kind == "table" and len(lines) > 2 and _TABLE_RULE.fullmatch(lines[1]):
        head = lines[0] + "\n" + lines[1]
        start = len(head) + 1
        body = _split(block[start:], max(max_chars - start, max_chars // 2), _CUTS["table"])
        return [(start + off, head + "\n" + piece) for off, piece in body]
    return _split(block, max_chars, _CUTS[kind])


def _split(text: str, max_chars: int, cuts: tuple[re.Pattern, ...]) -> list[tuple[int, str]]:
    """(offset, stripped piece) of `text`, each at most max_chars: cut where `cuts[0]` matches, packing as many units
    as fit; a unit still too long is cut by the next pattern, and past the last one every max_chars characters."""
    if len(text.strip()) <= max_chars:
        out = [(0, text)]
    elif not cuts:
        out = [(i, text[i:i + max_chars]) for i in range(0, len(text), max_chars)]
    else:
        ends = [0] + [m.end() for m in cuts[0].finditer(text) if 0 < m.end() < len(text)] + [len(text)]
        out, start = [], None  # start: offset of the open piece
        for a, b in pairwise(ends):
            if start is not None and len(text[start:b].strip()) > max_chars:
                out.append((start, text[start:a]))
                start = None
            if len(text[a:b].strip()) > max_chars:
                out += [(a + off, p) for off, p in _split(text[a:b], max_chars, cuts[1:])]
            elif start is None:
                start = a
        if start is not None:
            out.append((start, text[start:]))
    return [(off + len(p) - len(p.lstrip()), p.strip()) for off, p in out if p.strip()]


def _render(parts: list) -> tuple[list[tuple[int, str]], str]:
    """The heading trail shared by `parts` and their text, with the headings of the sections below it as `#` lines."""
    common = lambda a, b: len(os.path.commonprefix([a, b]))  # works on any two lists, element by element
    trail = parts[0][0].trail
    for sec, _, _ in parts[1:]:
        trail = trail[:common(trail, sec.trail)]
    items, prev = [], None
    for sec, _, body in parts:
        if sec is not prev:  # a section's own last heading is written even when a twin of it came just before
            k = len(trail) if prev is None else max(len(trail), min(common(prev.trail, sec.trail), len(sec.trail) - 1))
            items += ["#" * level + " " + title for level, title in sec.trail[k:] if title]
        items.append(body)
        prev = sec
    return trail, "\n\n".join(items)


def _merge(groups: list[list], min_chars: int, max_chars: int, into_next: bool) -> list[list]:
    """Join each group under min_chars with its neighbour (the next one if `into_next`, else the one before) when
    both lie in the same top-level section and the result fits max_chars."""
    out: list[list] = []
    for g in groups:
        small = len(_render(out[-1] if into_next else g)[1]) < min_chars if out else False
        if small and out[-1][0][0].group == g[0][0].group and len(_render(out[-1] + g)[1]) <= max_chars:
            out[-1] = out[-1] + g
        else:
            out.append(g)
    return out
