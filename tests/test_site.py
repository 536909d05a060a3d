"""The course site builds offline and its lesson-01 page renders in a real browser, all local."""

import functools
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools import site  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The built site, served on 127.0.0.1; yields its base URL."""
    html = site.build(tmp_path_factory.mktemp("site"))
    handler = functools.partial(QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_lesson_page_renders_offline(served):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    requested = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{served}/solutions/01_tensor.html", wait_until="networkidle")
        page.wait_for_selector("mjx-container", timeout=20_000)
        title = page.title()
        text = page.inner_text("main")
        figures = page.eval_on_selector_all(
            ".cell_output img", "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
        math = page.eval_on_selector_all("mjx-container", "nodes => nodes.length")
        browser.close()

    assert "Lesson 01" in title
    assert "PASS Exercise 1.6" in text, "a stored code output is on the page"
    assert figures >= 2, f"expected the lesson's 2 figures to load, {figures} did"
    assert math >= 2, f"expected MathJax to render the lesson's formulas, found {math}"
    assert any("/_static/mathjax/" in url for url in requested), "MathJax came from the site itself"
    outside = [url for url in requested if not url.startswith(served)]
    assert not outside, f"the page asked for resources off this machine: {outside}"
