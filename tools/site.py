"""Render the course to static HTML (site/_build/html) with Jupyter Book 1, fully offline.

The book's sources are gathered into site/_build/src, a build artifact made for readers:
- the front page is README.md without its `<!-- site: skip -->` ... `<!-- site: end -->` parts,
  its links to lessons and workbooks pointed at the pages and downloads of this site;
- AUTHORS.md is a page of its own;
- each executed lesson from solutions/ (the outputs nbval checks) with the authoring machinery
  taken out: `#|` directive and `### BEGIN/END SOLUTION` lines removed, stderr streams (progress
  bars, warnings), tracebacks, widgets and output lines that name a local path dropped, exercise solutions folded behind
  a "Show the solution" toggle, and a link to download the student workbook at the top;
- the table of contents, generated from the lessons present, so a new or renamed lesson appears
  without editing anything.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.sync import BEGIN, DIRECTIVE, END  # noqa: E402

LOCAL_PATH = re.compile(r"/(?:work|root|home|tmp)/")
SKIP = re.compile(r"<!-- site: skip -->.*?<!-- site: end -->\n?", re.S)
LINK = re.compile(r"\[([^\]]+)\]\((solutions|notebooks)/(\d\d_\w+)\.ipynb\)")
WIDGET = "application/vnd.jupyter.widget-view+json"
WORKBOOKS = "workbooks"   # the student workbooks, served at <site>/workbooks/NN_topic.ipynb


def lesson_names(root: Path = ROOT) -> list[str]:
    """The executed lessons present, `NN_topic` in lesson order."""
    return [p.stem for p in sorted((root / "solutions").glob("[0-9][0-9]_*.ipynb"))]


def workbook_link(name: str, depth: int) -> str:
    """An HTML link that downloads lesson `name`'s student workbook from a page `depth` folders down."""
    href = "../" * depth + f"{WORKBOOKS}/{name}.ipynb"
    return f'<a class="kuiper-workbook" href="{href}" download>{name}.ipynb</a>'


def front_page(readme: str, names: list[str], workbooks: set[str]) -> str:
    """README.md for the site: skipped parts cut, lesson and workbook links pointed at this site.

    A link to a lesson or workbook that is not present becomes its plain text, so the page
    builds (with --warningiserror) while a lesson is being added or renamed.
    """
    def relink(match: re.Match) -> str:
        text, folder, name = match.groups()
        if folder == "solutions":
            return f"[{text}](solutions/{name}.ipynb)" if name in names else text
        return workbook_link(name, 0).replace(f">{name}.ipynb<", f">{text}<") if name in workbooks else text
    return LINK.sub(relink, SKIP.sub("", readme))


def reader_source(source: str) -> str:
    """A code cell's source without `#|` directives and BEGIN/END SOLUTION marker lines."""
    keep = [line for line in source.splitlines()
            if not DIRECTIVE.match(line) and line.strip() not in (BEGIN, END)]
    return "\n".join(keep).strip("\n")


def reader_outputs(outputs: list) -> list:
    """Outputs without stderr streams, tracebacks or widgets, and without text lines naming a local path."""
    kept = []
    for out in outputs:
        if out.output_type == "stream":
            if out.name == "stderr":
                continue
            out.text = "".join(line for line in out.text.splitlines(keepends=True) if not LOCAL_PATH.search(line))
            if not out.text.strip():
                continue
        elif out.output_type == "error" or WIDGET in out.get("data", {}):
            continue   # tracebacks name local files; a widget here is a progress bar
        elif "text/plain" in out.get("data", {}) and LOCAL_PATH.search(out.data["text/plain"]):
            lines = out.data["text/plain"].splitlines(keepends=True)
            out.data["text/plain"] = "".join(line for line in lines if not LOCAL_PATH.search(line))
        kept.append(out)
    return kept


def reader_notebook(nb: nbformat.NotebookNode, workbook: str | None) -> nbformat.NotebookNode:
    """The executed lesson as readers see it (see the module docstring)."""
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            exercise = any(DIRECTIVE.match(line) and DIRECTIVE.match(line)[1] == "exercise"
                           for line in cell.source.splitlines())
            cell.source = reader_source(cell.source)
            cell.outputs = reader_outputs(cell.outputs)
            if not cell.source and not cell.outputs:
                continue
            if exercise:
                cell.metadata.setdefault("tags", []).append("hide-input")
                cell.metadata["mystnb"] = {"code_prompt_show": "Show the solution",
                                           "code_prompt_hide": "Hide the solution"}
        cells.append(cell)
    nb.cells = cells
    if workbook:
        title = next(c for c in nb.cells if c.cell_type == "markdown")
        heading, _, rest = title.source.partition("\n")
        note = (f":::{{admonition}} Your workbook\n:class: tip\nDownload {workbook_link(workbook, 1)}, the "
                "same lesson with the exercises left for you, or open your copy with `make lab` (see the "
                "[front page](../index.md)).\n:::\n")
        title.source = f"{heading}\n\n{note}{rest}"
    return nb


def toc(names: list[str]) -> dict:
    """The book's table of contents: the front page, every lesson present, the authors' page."""
    return {"format": "jb-book", "root": "index", "parts": [
        {"caption": "Lessons", "chapters": [{"file": f"solutions/{name}"} for name in names]},
        {"caption": "Making the course", "chapters": [{"file": "AUTHORS"}]},
    ]}


def gather(src: Path, root: Path = ROOT) -> None:
    """Write the book's sources for readers into `src` (see the module docstring)."""
    shutil.rmtree(src, ignore_errors=True)
    (src / "solutions").mkdir(parents=True)
    (src / "_extra" / WORKBOOKS).mkdir(parents=True)
    shutil.copy(root / "site" / "_config.yml", src / "_config.yml")
    shutil.copytree(root / "site" / "_static", src / "_static")
    names = lesson_names(root)
    (src / "_toc.yml").write_text(yaml.safe_dump(toc(names), sort_keys=False))
    workbooks = set()
    for name in names:
        if (root / "notebooks" / f"{name}.ipynb").exists():
            shutil.copy(root / "notebooks" / f"{name}.ipynb", src / "_extra" / WORKBOOKS / f"{name}.ipynb")
            workbooks.add(name)
        nb = nbformat.read(root / "solutions" / f"{name}.ipynb", as_version=4)
        nbformat.write(reader_notebook(nb, name if name in workbooks else None), src / "solutions" / f"{name}.ipynb")
    readme = (root / "README.md").read_text()
    (src / "index.md").write_text(front_page(readme, names, workbooks))
    authors = (root / "AUTHORS.md").read_text().replace("](README.md)", "](index.md)")
    (src / "AUTHORS.md").write_text(authors)


def build(out: Path) -> Path:
    """Build the site under `out` and return the folder of its HTML."""
    src = out / "_build" / "src"
    gather(src)
    subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(src), "--path-output", str(out),
                    "--warningiserror", "--quiet"], check=True)
    return out / "_build" / "html"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "site", help="folder that gets _build/html")
    html = build(parser.parse_args().out)
    print(f"site built: {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
