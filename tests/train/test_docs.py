"""Documents as training data: heading trails, cuts at paragraphs and sentences, no text lost, small parts merged,
HTML and PDF reading, and every error a user can hit (what, where, how to fix)."""

from __future__ import annotations

import random
import re
import sys

import pytest

from corral.errors import InvalidArgumentError
from corral.train.docs import DocumentError, chunk_document, load_documents, read_document

WORDS = ("lantern river copper meadow signal harbour window ledger orchard beacon pencil garden tunnel marble "
         "kettle saddle valley engine violet cabin").split()


def sentence(rng: random.Random, n: int | None = None) -> str:
    words = [rng.choice(WORDS) for _ in range(n or rng.randint(5, 14))]
    return words[0].capitalize() + " " + " ".join(words[1:]) + rng.choice(".!?")


def paragraph(rng: random.Random, n: int) -> str:
    return " ".join(sentence(rng) for _ in range(n))


def heading_lines(doc: str) -> set[int]:
    """0-based indexes of the heading lines of a generated document (ATX outside fences, setext title + rule)."""
    lines, heads, fence = doc.split("\n"), set(), False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            heads.add(i)
        elif not fence and re.fullmatch(r"=+|-+", line) and i and lines[i - 1] and (i < 2 or not lines[i - 2]):
            heads |= {i - 1, i}
    return heads


def generated_doc(seed: int) -> str:
    rng = random.Random(seed)
    out = [paragraph(rng, 2)]
    for s in range(rng.randint(4, 9)):
        level = rng.choice((1, 2, 2, 3, 3, 4))
        title = f"Part {s} {rng.choice(WORDS)}"
        out += [f"{title}\n{'=-'[level > 1] * 8}" if rng.random() < 0.2 else "#" * level + " " + title]
        for _ in range(rng.randint(0, 4)):
            kind = rng.choice(("short", "long", "huge", "list", "table", "code"))
            if kind == "short":
                out.append(sentence(rng))
            elif kind == "long":
                out.append("\n".join(paragraph(rng, 3) for _ in range(rng.randint(1, 3))))
            elif kind == "huge":  # one paragraph longer than any chunk
                out.append(paragraph(rng, rng.randint(15, 30)))
            elif kind == "list":
                out.append("\n".join(f"- {sentence(rng)}" for _ in range(rng.randint(2, 12))))
            elif kind == "table":
                rows = [f"| {rng.choice(WORDS)} | {rng.randint(0, 999)} |" for _ in range(rng.randint(2, 40))]
                out.append("\n".join(["| name | value |", "|---|---|", *rows]))
            else:
                out.append("```python\n# a comment, not a heading\n## neither\nx = 1\n\nprint(x)\n```")
    return "\n\n".join(out) + "\n"


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("sizes", [(1200, 200), (300, 120), (100, 0)])
def test_no_text_is_lost(seed, sizes):
    doc = generated_doc(seed)
    chunks = chunk_document(doc, "gen.md", *sizes)
    joined = "\n".join(c.text for c in chunks)
    lines = doc.split("\n")
    kept = [line for i, line in enumerate(lines) if line.strip() and i not in heading_lines(doc)]
    # every word of every kept line, in order (merged chunks add `#` lines, long tables repeat their header)
    words = iter(joined.split())
    assert all(w in words for w in " ".join(kept).split())
    # rows, items and code lines that fit a chunk are never cut
    for line in kept:
        if line.startswith(("|", "- ", "#", "x =", "print")) and len(line) < sizes[0] - 30:
            assert line in joined
    for c in chunks:
        assert c.text == c.text.strip() and c.text
        # its line is that of its own first text: past the headings it took in and a table header it repeats
        own = [t for t in c.text.split("\n") if t and not re.match(r"#{1,6} ", t)]
        assert own[0][:20] in lines[c.line - 1] or own[0] == "| name | value |" and own[2] == lines[c.line - 1]
        if "```" not in c.text:
            assert len(c.text) <= sizes[0]
        assert c.text.count("```") % 2 == 0  # a code fence is never cut


def test_heading_trail_follows_nesting_and_setext():
    doc = ("Handbook\n========\n\nWelcome to the handbook.\n\nSafety\n------\n\nBe safe at work.\n\n"
           "### Fire drills\n\nDrills happen every spring.\n\n## Leave ##\n\nAsk your manager.\n\n"
           "# Appendix\n\nForms live on the intranet.\n")
    chunks = chunk_document(doc, "h.md", max_chars=200, min_chars=0)
    assert [(c.heading, c.text, c.line) for c in chunks] == [
        ("Handbook", "Welcome to the handbook.", 4),
        ("Handbook > Safety", "Be safe at work.", 9),
        ("Handbook > Safety > Fire drills", "Drills happen every spring.", 13),
        ("Handbook > Leave", "Ask your manager.", 17),
        ("Appendix", "Forms live on the intranet.", 21)]
    assert all(c.source == "h.md" for c in chunks)


def test_hash_lines_in_code_fences_are_not_headings():
    doc = "# Setup\n\nRun this:\n\n```sh\n# install\npip install corral\n```\n\nDone.\n"
    (chunk,) = chunk_document(doc, min_chars=0)
    assert chunk.heading == "Setup" and "# install\npip install corral" in chunk.text


def test_long_section_is_cut_at_paragraphs():
    paras = [f"Paragraph {i} " + "word " * 40 for i in range(6)]  # ~250 characters each
    doc = "# Big\n\n" + "\n\n".join(p.strip() for p in paras)
    chunks = chunk_document(doc, max_chars=600, min_chars=0)
    assert len(chunks) == 3 and all(c.heading == "Big" for c in chunks)
    for c in chunks:  # each chunk is whole paragraphs
        assert all(p.startswith("Paragraph") and p.endswith("word") for p in c.text.split("\n\n"))
    assert [c.line for c in chunks] == [3, 7, 11]


def test_long_paragraph_is_cut_at_sentences_and_a_long_sentence_at_spaces():
    text = " ".join(f"Sentence number {i} talks about the weather today." for i in range(40))
    chunks = chunk_document(text, max_chars=200, min_chars=0)
    assert len(chunks) > 5
    assert all(len(c.text) <= 200 and c.text.startswith("Sentence") and c.text.endswith(".") for c in chunks)
    run_on = "word " * 100  # one "sentence" of 500 characters
    chunks = chunk_document(run_on, max_chars=120, min_chars=0)
    assert all(len(c.text) <= 120 and set(c.text.split()) == {"word"} for c in chunks)
    assert sum(len(c.text.split()) for c in chunks) == 100


def test_small_sections_are_merged_within_a_top_level_section():
    doc = ("# Office\n\n## Keys\n\nAsk reception.\n\n## Parking\n\nLevel two.\n\n## Printers\n\nThird floor.\n\n"
           "# Travel\n\nBook trains early.\n")
    chunks = chunk_document(doc, max_chars=500, min_chars=100)
    assert [c.heading for c in chunks] == ["Office", "Travel"]  # never across the top-level sections
    assert chunks[0].text == "## Keys\n\nAsk reception.\n\n## Parking\n\nLevel two.\n\n## Printers\n\nThird floor."
    assert chunks[0].line == 5
    assert chunk_document(doc, max_chars=500, min_chars=0)[0].heading == "Office > Keys"


def test_table_and_list_kept_whole_when_they_fit():
    table = "\n".join(["| a | b |", "|---|---|"] + [f"| {i} | {i * i} |" for i in range(10)])
    items = "\n".join(f"- item {i} is here" for i in range(8))
    doc = f"# T\n\n{'Intro sentence. ' * 20}\n\n{table}\n\n{items}\n"
    chunks = chunk_document(doc, max_chars=400, min_chars=0)
    assert any(table in c.text for c in chunks) and any(items in c.text for c in chunks)
    long_table = "\n".join(["| a | b |", "|---|---|"] + [f"| row {i} | {i * i} |" for i in range(60)])
    pieces = chunk_document(long_table, max_chars=300, min_chars=0)
    assert len(pieces) > 2 and all(p.text.startswith("| a | b |\n|---|---|\n| row") for p in pieces)


def test_html_becomes_headings_and_list_items(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<html><head><title>T</title><style>p {color: red}</style></head><body>"
                    "<nav><a href='/'>Home</a></nav><h1>Guide</h1><p>Read   this\n first.</p>"
                    "<h2>Steps &amp; tips</h2><ul><li>Open the box</li><li>Plug it in</li></ul>"
                    "<script>alert('x')</script><div>Line one<br>Line two</div></body></html>", encoding="utf-8")
    text = read_document(page)
    assert text == ("# Guide\n\nRead this first.\n\n## Steps & tips\n\n- Open the box\n- Plug it in\n\n"
                    "Line one\nLine two")
    chunks = load_documents([str(page)], min_chars=0)
    assert [c.heading for c in chunks] == ["Guide", "Guide > Steps & tips"]
    assert chunks[1].source == str(page)


def test_markdown_and_text_are_read_as_they_are(tmp_path):
    md = tmp_path / "a.md"
    md.write_bytes(b"\xef\xbb\xbf# A\r\n\r\nText.\r\n")  # BOM and CRLF
    assert read_document(md) == "# A\n\nText.\n"
    (tmp_path / "b.txt").write_text("Plain words.", encoding="utf-8")
    chunks = load_documents([str(md), str(tmp_path / "b.txt")])
    assert [(c.source, c.heading, c.text) for c in chunks] == [(str(md), "A", "Text."),
                                                              (str(tmp_path / "b.txt"), "", "Plain words.")]


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica (written by hand: pypdf cannot lay out text)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)


def test_pdf_text_and_a_pdf_without_text(tmp_path):
    pytest.importorskip("pypdf")
    pdf = tmp_path / "memo.pdf"
    pdf.write_bytes(tiny_pdf("Fire drills happen every spring."))
    assert "Fire drills happen every spring." in read_document(pdf)
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(tiny_pdf(""))
    with pytest.raises(DocumentError, match=r"scan\.pdf.*no extractable text.*scanned image.*OCR"):
        read_document(scan)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nnot really a pdf")
    with pytest.raises(DocumentError, match=r"broken\.pdf.*not a readable PDF"):
        read_document(broken)


def test_pdf_without_pypdf_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # makes `import pypdf` fail
    pdf = tmp_path / "memo.pdf"
    pdf.write_bytes(tiny_pdf("Hello."))
    with pytest.raises(DocumentError, match=r"memo\.pdf: reading PDF needs pypdf: pip install pypdf"):
        read_document(pdf)


def test_unsupported_missing_folder_and_empty(tmp_path):
    (tmp_path / "sheet.xlsx").write_bytes(b"PK")
    with pytest.raises(DocumentError, match=r"sheet\.xlsx: unsupported .*'\.xlsx'.*\.md.*\.pdf.*convert it"):
        read_document(tmp_path / "sheet.xlsx")
    with pytest.raises(DocumentError, match=r"nope\.md: no such file; check the path"):
        read_document(tmp_path / "nope.md")
    with pytest.raises(DocumentError, match=r"is a folder; pass the document files in it"):
        read_document(tmp_path)
    (tmp_path / "blank.txt").write_text(" \n\t\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=r"blank\.txt: the document has no text; check the file, or leave it"):
        read_document(tmp_path / "blank.txt")
    (tmp_path / "only.html").write_text("<script>x()</script><style>p{}</style>", encoding="utf-8")
    with pytest.raises(DocumentError, match=r"only\.html: the document has no text"):
        read_document(tmp_path / "only.html")
    (tmp_path / "heads.md").write_text("# A\n\n## B\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=r"heads\.md: only headings, no text.*leave it out"):
        load_documents([str(tmp_path / "heads.md")])


def test_non_utf8_names_the_byte_and_says_to_convert(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes("Line one\nCaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DocumentError, match=r"latin\.txt:2: not UTF-8 text \(byte 12 is 0xe9\); convert the file to "
                                            r"UTF-8, e\.g\. iconv"):
        read_document(bad)


def test_all_paths_are_checked_before_any_is_read(tmp_path, monkeypatch):
    good = tmp_path / "good.md"
    good.write_text("# A\n\nText.\n", encoding="utf-8")
    read = []
    monkeypatch.setattr("corral.train.docs.read_document", lambda p: read.append(p) or "x")
    with pytest.raises(DocumentError, match=r"missing\.md: no such file"):
        load_documents([str(good), str(tmp_path / "missing.md")])
    assert read == []
    with pytest.raises(DocumentError, match=r"no documents given; pass at least one file"):
        load_documents([])


@pytest.mark.parametrize("max_chars, min_chars, match", [
    (99, 10, r"--chunk-chars 99: a chunk needs at least 100 characters; pass a larger value"),
    (1200, -1, r"min_chars -1: must be at least 0 and below the chunk size \(1200\); pass a value from 0 to"),
    (500, 500, r"min_chars 500: must be .* below the chunk size \(500\); pass a value from 0 to 499")])
def test_bad_sizes_are_invalid_arguments(tmp_path, max_chars, min_chars, match):
    with pytest.raises(InvalidArgumentError, match=match):
        load_documents([str(tmp_path / "unread.md")], max_chars=max_chars, min_chars=min_chars)
    with pytest.raises(InvalidArgumentError, match=match):
        chunk_document("text", max_chars=max_chars, min_chars=min_chars)
