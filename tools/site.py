"""Render the course to static HTML (site/_build/html) with Jupyter Book 1, fully offline.

The book's sources are gathered into site/_build/src: the README as the front page and the
executed lessons from solutions/, so the pages show the same outputs nbval checks.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gather(src: Path) -> None:
    """Copy the book's configuration, front page and executed lessons into `src`."""
    shutil.rmtree(src, ignore_errors=True)
    (src / "solutions").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / "site" / name, src / name)
    shutil.copy(ROOT / "README.md", src / "index.md")
    for notebook in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(notebook, src / "solutions" / notebook.name)


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
