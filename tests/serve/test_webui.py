"""The web chat page at `/`, driven end to end in headless Chromium against a real `corral serve`.

The browser is Debian's Chromium (`/usr/bin/chromium`), driven by the `playwright` Python package; playwright's own
browser download is never used (this machine has no internet). The server runs in a subprocess with the default model
on a free local port.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "build" / "webui.png"
# No sandbox: tests run as root in containers. The rest keeps Chromium from phoning home or waiting on a network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEALTH_TIMEOUT_S = 300  # model load on a busy 2-core machine
ANSWER_TIMEOUT_MS = 180_000

if not CHROMIUM.exists():
    pytest.skip("web UI test needs Debian's Chromium at /usr/bin/chromium: `apt-get install -y chromium` "
                "(.ci/run does this when run as root)", allow_module_level=True)
from tests.serve.test_serve_live import corral_serve  # noqa: E402 - after the skips above

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="web UI test needs the playwright Python package: `pip install -e '.[test]'` (do not run "
           "`playwright install`; the test drives /usr/bin/chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a `corral serve` with the default model; stopped at the end of the module."""
    with corral_serve(tmp_path_factory.mktemp("webui"), health_timeout=HEALTH_TIMEOUT_S) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """A fresh tab on the chat page (so each test starts with an empty conversation); fails the test on any
    JavaScript error the page raised."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(server + "/")
    # The model picker is filled from GET /v1/models once the script has run.
    sync_api.expect(tab.locator("#model option")).not_to_have_count(0)
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def ask(page, text: str) -> object:
    """Type `text`, press Send, return the locator of the new assistant message."""
    n = page.locator(".msg.assistant").count()
    page.fill("#message", text)
    page.click("#send")
    return page.locator(".msg.assistant").nth(n)


def test_chat_answers_and_screenshot(page):
    page.fill("#temperature", "0")  # greedy: the default model answers this one with "...Paris."
    answer = ask(page, "Name the capital city of France.")
    sync_api.expect(answer).to_have_attribute("data-done", "1", timeout=ANSWER_TIMEOUT_MS)
    text = answer.locator(".body").inner_text()
    assert "Paris" in text, text
    assert answer.locator(".meta.error").count() == 0, answer.inner_text()
    # Usage came back from the server: "N prompt tokens · M tokens · ... tok/s".
    assert re.search(r"\d+ prompt tokens · \d+ tokens?", answer.locator(".meta").inner_text())
    # The user's message is in the transcript too, and the page is ready for the next one.
    assert "capital city of France" in page.locator("#transcript .msg.user").last.inner_text()
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    data = SCREENSHOT.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n")


def test_stop_aborts_stream(page):
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "400")
    answer = ask(page, "Write a long story about a dragon who learns to bake bread.")
    body = answer.locator(".body")
    sync_api.expect(body).to_have_text(re.compile(r"\S"), timeout=ANSWER_TIMEOUT_MS)
    t0 = time.monotonic()
    page.click("#stop")
    sync_api.expect(answer).to_have_attribute("data-done", "1", timeout=10_000)
    stopped_after = time.monotonic() - t0
    text = body.inner_text()
    meta = answer.locator(".meta").inner_text()
    assert "stopped" in meta, meta
    # 400 tokens are ~1,600 characters; stopping right after the first text leaves a few words.
    assert 0 < len(text) < 600, (len(text), text)
    assert stopped_after < 10
    # The page is usable again at once.
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()
