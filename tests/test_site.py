"""The course site builds offline and every page reads well in a real browser, all local.

The browser tests (slow) build the site once and open every page in Debian's chromium; the fast
tests check the gathered copy that tools/site.py makes for readers.

Each lesson page is checked for what readers must not see (authoring directives, local paths,
stderr streams, solutions left open, code running out of its column) and for the link to its
student workbook; the landing page for its links to every lesson. Screenshots of the landing page
and lesson 01 at 1366x768 go to $KUIPER_SCREENSHOTS (a temporary folder when unset).
"""

import functools
import http.server
import json
import os
import re
import shutil
import sys
import threading
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import site, sync  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
LESSONS = site.lesson_names()
LOCAL_PATH = re.compile(r"/(?:work|root|home|tmp)/")
DIRECTIVE_LINE = re.compile(r"^\s*#\|", re.M)
LAPTOP = {"width": 1366, "height": 768}

# Everything a check needs from one page, gathered in the browser in one call.
PAGE_FACTS = """() => {
  const main = document.querySelector("main");
  const overflowing = [...main.querySelectorAll("pre, div.cell_output")]
    .filter(e => e.checkVisibility() && e.scrollWidth > e.clientWidth + 1)
    .map(e => e.textContent.trim().slice(0, 80));
  return {
    text: main.textContent,
    code: [...main.querySelectorAll("div.cell pre")].map(e => e.textContent),
    stderr: main.querySelectorAll(".stderr").length,
    toggles: main.querySelectorAll("details.above-input").length,
    open_toggles: main.querySelectorAll("details.above-input[open]").length,
    visible_solutions: [...main.querySelectorAll("details.above-input div.cell_input")]
      .filter(e => e.checkVisibility()).length,
    workbook: [...main.querySelectorAll("a.kuiper-workbook")].map(a => a.href),
    links: [...main.querySelectorAll("a")].map(a => a.href),
    overflowing: overflowing,
    page_width: document.documentElement.scrollWidth,
  };
}"""


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


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, driven by Playwright."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """The folder the screenshots go to."""
    folder = Path(os.environ.get("KUIPER_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def visit(browser, url: str, screenshot: Path | None = None) -> tuple[dict, list[str]]:
    """Open `url` at laptop size; the page's facts and every URL it requested."""
    page = browser.new_page(viewport=LAPTOP)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url, wait_until="networkidle")
    facts = page.evaluate(PAGE_FACTS)
    facts["title"] = page.title()
    facts["served"] = {href: fetch(page, href) for href in facts["workbook"]}
    if screenshot:
        page.screenshot(path=str(screenshot))
    page.close()
    return facts, requested


def fetch(page, url: str) -> dict | None:
    """The notebook served at `url` as JSON, None when it is not served."""
    response = page.request.get(url)
    return json.loads(response.body()) if response.ok else None


def exercise_count(name: str) -> int:
    return len(sync.exercises(nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4), 0))


def assert_clean(facts: dict, where: str) -> None:
    """No directive, no solution marker, no local path, no stderr, nothing running off the column."""
    code_directives = [c for c in facts["code"] if DIRECTIVE_LINE.search(c)]
    assert not code_directives, f"{where}: a code cell shows a `#|` directive: {code_directives[0][:200]!r}"
    for marker in ("BEGIN SOLUTION", "END SOLUTION"):
        assert marker not in facts["text"], f"{where}: the page shows {marker!r}"
    path = LOCAL_PATH.search(facts["text"])
    assert path is None, f"{where}: a local path on the page: {facts['text'][path.start() - 60:path.end() + 60]!r}"
    assert facts["stderr"] == 0, f"{where}: {facts['stderr']} stderr outputs (progress bars, warnings) shown"
    assert not facts["overflowing"], f"{where}: code or output wider than its column: {facts['overflowing'][:3]}"
    assert facts["page_width"] <= LAPTOP["width"], f"{where}: the page scrolls sideways ({facts['page_width']} px)"


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSONS)
def test_lesson_page_reads_clean(served, browser, shots, name):
    shot = shots / f"{name}.png" if name == LESSONS[0] else None
    facts, _ = visit(browser, f"{served}/solutions/{name}.html", shot)
    where = f"solutions/{name}.html"

    assert f"Lesson {name[:2]}" in facts["title"], f"{where}: title {facts['title']!r}"
    assert_clean(facts, where)
    exercises = exercise_count(name)
    assert facts["toggles"] == exercises, f"{where}: {facts['toggles']} solution toggles for {exercises} exercises"
    assert facts["open_toggles"] == 0 and facts["visible_solutions"] == 0, f"{where}: a solution shows unfolded"
    assert [h.rsplit("/", 2)[-2:] for h in facts["workbook"]] == [["workbooks", f"{name}.ipynb"]], \
        f"{where}: workbook links {facts['workbook']}"
    workbook = facts["served"][facts["workbook"][0]]
    assert workbook is not None, f"{where}: the workbook link is not served"
    sources = "".join("".join(cell["source"]) for cell in workbook["cells"])
    blanked = set(re.findall(r'NotImplementedError\("Exercise (\d+\.\d+)', sources))
    assert len(blanked) == exercises, f"{where}: the download is not the student workbook ({blanked})"


@pytest.mark.slow
def test_landing_page(served, browser, shots):
    facts, _ = visit(browser, f"{served}/index.html", shots / "index.png")

    assert "Kuiper Course" in facts["title"]
    assert_clean(facts, "index.html")
    for name in LESSONS:
        assert f"{served}/solutions/{name}.html" in facts["links"], f"index.html does not link lesson {name}"
        workbook = f"{served}/workbooks/{name}.ipynb"
        assert workbook in facts["workbook"], f"index.html does not link the workbook {name}.ipynb"
        assert facts["served"][workbook] is not None, f"{workbook} is not served"
    assert f"{served}/AUTHORS.html" in facts["links"], "index.html does not link the authors' page"
    assert "make site" not in facts["text"], "the README's site-skip part is on the landing page"
    for heading in ("Before you start", "How you work", "Stuck?"):
        assert heading in facts["text"], f"index.html lacks the section {heading!r}"


@pytest.mark.slow
def test_authors_page(served, browser):
    facts, _ = visit(browser, f"{served}/AUTHORS.html")
    assert "For course authors" in facts["title"]
    assert "tools/train_yolo.py" in facts["text"]


@pytest.mark.slow
def test_lesson_page_renders_offline(served, browser):
    page = browser.new_page(viewport=LAPTOP)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{served}/solutions/01_tensor.html", wait_until="networkidle")
    page.wait_for_selector("mjx-container", timeout=20_000)
    text = page.inner_text("main")
    figures = page.eval_on_selector_all(
        ".cell_output img", "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
    math = page.eval_on_selector_all("mjx-container", "nodes => nodes.length")
    contents = page.inner_text(".bd-toc")
    page.close()

    assert "PASS Exercise 1.6" in text, "a stored code output is on the page"
    assert figures >= 2, f"expected the lesson's 2 figures to load, {figures} did"
    assert math >= 2, f"expected MathJax to render the lesson's formulas, found {math}"
    missing = [n for n in range(1, 7) if f"Exercise 1.{n}" not in contents]
    assert not missing, f"exercises 1.{missing} are missing from the page contents: {contents}"
    assert any("/_static/mathjax/" in url for url in requested), "MathJax came from the site itself"
    outside = [url for url in requested if not url.startswith(served)]
    assert not outside, f"the page asked for resources off this machine: {outside}"


# ---- the gathered copy, without a browser ------------------------------------------------------

def test_reader_notebook_hides_the_authoring_machinery():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Lesson 99 — Demo\n\nText."),
        nbformat.v4.new_code_cell("#| default_exp demo"),
        nbformat.v4.new_code_cell("#| export\n#| exercise: add\ndef f(a, b):\n    ### BEGIN SOLUTION\n"
                                  "    return a + b\n    ### END SOLUTION", outputs=[
            nbformat.v4.new_output("stream", name="stderr", text="100%|#####| 3/3\n"),
            nbformat.v4.new_output("stream", name="stdout", text="saved /tmp/x.gguf\nkept\n"),
            nbformat.v4.new_output("execute_result", data={"text/plain": "'/root/a'\n3"})]),
        nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", name="stderr", text="w")]),
    ])
    out = site.reader_notebook(nb, "99_demo")

    assert [c.cell_type for c in out.cells] == ["markdown", "code", "code"], "the emptied default_exp cell is gone"
    title, exercise, plain = out.cells
    assert title.source.startswith("# Lesson 99 — Demo\n")
    assert 'href="../workbooks/99_demo.ipynb" download' in title.source
    assert exercise.source == "def f(a, b):\n    return a + b"
    assert exercise.metadata.tags == ["hide-input"]
    assert exercise.metadata.mystnb["code_prompt_show"] == "Show the solution"
    assert [o.get("text") or o.data["text/plain"] for o in exercise.outputs] == ["kept\n", "3"]
    assert plain.outputs == [] and "tags" not in plain.metadata
    assert nb.cells[2].source.startswith("#| export"), "the executed notebook itself is left alone"


def test_front_page_skips_author_parts_and_links_only_present_lessons():
    readme = ("# Course\n\n| [01 A](solutions/01_a.ipynb) | [01_a](notebooks/01_a.ipynb) |\n"
              "| [02 B](solutions/02_b.ipynb) | [02_b](notebooks/02_b.ipynb) |\n"
              "<!-- site: skip -->\n## Build the site\nmake site\n<!-- site: end -->\nEnd.\n")
    page = site.front_page(readme, ["01_a"], {"01_a"})

    assert "[01 A](solutions/01_a.ipynb)" in page
    assert '<a class="kuiper-workbook" href="workbooks/01_a.ipynb" download>01_a</a>' in page
    assert "| 02 B | 02_b |" in page, "links to lessons not present become plain text"
    assert "make site" not in page and page.endswith("End.\n")


def test_toc_lists_the_lessons_present_in_order():
    chapters = site.toc(["01_a", "03_c"])["parts"][0]["chapters"]
    assert chapters == [{"file": "solutions/01_a"}, {"file": "solutions/03_c"}]
    assert site.lesson_names() == sorted(p.stem for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
