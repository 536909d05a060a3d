"""The student's workspace and the student build of the package.

Hand-written: no lesson builds this module.

* The workspace (`workspace/`, git-ignored; another folder with KUIPER_WORKSPACE=DIR) holds the
  student's copies of the workbooks. `create` copies each `notebooks/NN_*.ipynb` that is not there yet
  and never overwrites a file; `reset` restores one lesson, keeping the old file as a backup.
* The student build is the package that tools/sync.py exports from `solutions/`, with the code of
  every exported exercise cell taken from the student's workbook instead (an unsolved exercise keeps
  raising its NotImplementedError). It lives in `<workspace>/.build/<digest>/kuiper`, a complete
  package (hand-written modules and data files copied), rebuilt when a workbook or lesson changes.
* With KUIPER_BUILD=student, `import kuiper` gives the student build (kuiper/__init__.py calls
  `use_student_build` before anything else): the CLI, the lessons' demo cells and the package tests
  then run on the student's own code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent
MARKER = "STUDENT_BUILD"
KEEP_BUILDS = 8  # the most recently used student builds kept in <workspace>/.build
#: The repository: this package's parent, or for a student build the repository it was built from.
ROOT = (Path(json.loads((PACKAGE / MARKER).read_text())["root"]) if (PACKAGE / MARKER).exists()
        else PACKAGE.parent)
WORKBOOK = re.compile(r"^(\d\d)_\w+\.ipynb$")


class WorkspaceError(Exception):
    """A workspace that cannot be used: missing, or a lesson without a workbook. Not a KuiperError:
    this module must import before the package (kuiper.errors) does."""


def workspace_dir() -> Path:
    """The student's workspace: $KUIPER_WORKSPACE, or workspace/ in the repository."""
    return Path(os.environ.get("KUIPER_WORKSPACE") or ROOT / "workspace")


def workbooks(folder: Path) -> dict[int, Path]:
    """The workbooks `NN_topic.ipynb` in `folder`, by lesson number."""
    if not folder.is_dir():
        return {}
    return {int(m[1]): p for p in sorted(folder.iterdir()) if (m := WORKBOOK.match(p.name))}


def handouts() -> dict[int, Path]:
    """The workbooks as handed out, in notebooks/."""
    return workbooks(ROOT / "notebooks")


def create(folder: Path | None = None) -> list[Path]:
    """Copy every handed-out workbook that `folder` does not have yet; return the files written.
    An existing file is never touched."""
    folder = folder or workspace_dir()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in handouts().values():
        target = folder / path.name
        if not target.exists():
            _copy_atomic(path, target)
            written.append(target)
    return written


def reset(lesson: int, folder: Path | None = None) -> tuple[Path, Path | None]:
    """Restore lesson `lesson`'s workbook as handed out; the old one is kept as
    `NN_topic.ipynb.bak-<YYYYmmdd-HHMMSS>`. Returns (the workbook, the backup or None)."""
    folder = folder or workspace_dir()
    source = handouts().get(lesson)
    if source is None:
        raise WorkspaceError(f"no lesson {lesson:02d}: the lessons are {', '.join(f'{n:02d}' for n in handouts())}")
    target, backup = folder / source.name, None
    if target.exists():
        backup = target.with_name(f"{target.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        target.rename(backup)
    folder.mkdir(parents=True, exist_ok=True)
    _copy_atomic(source, target)
    return target, backup


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy to a temporary file beside `target`, then rename: never a half-written workbook."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        tmp.write(source.read_bytes())
    os.replace(tmp.name, target)


# ---- the student build ------------------------------------------------------------------------

def _sync() -> ModuleType:
    """tools/sync.py, the exporter (loaded from the repository by path: tools/ is not installed)."""
    if "kuiper_sync" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kuiper_sync", ROOT / "tools" / "sync.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["kuiper_sync"] = module
        spec.loader.exec_module(module)
    return sys.modules["kuiper_sync"]


def quiet_environment() -> dict[str, str]:
    """The environment lesson kernels run with (tools/sync.py QUIET): no progress bars, no warnings."""
    return dict(_sync().QUIET)


def student_bodies(folder: Path) -> tuple[dict[str, str], list[str]]:
    """Exercise label -> the student's cell, from every workbook in `folder`; and warnings for cells
    that do not parse or lose a function, which fall back to the handed-out (unsolved) cell."""
    import ast

    import nbformat

    sync = _sync()
    given: dict[str, str] = {}
    for path in handouts().values():
        given |= sync.student_bodies(nbformat.read(path, as_version=4))
    bodies, warnings = {}, []
    for path in workbooks(folder).values():
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as err:  # an unreadable notebook file: say so, build the handed-out version
            warnings.append(f"{path.name}: cannot read it ({err}): using the unsolved exercises")
            continue
        for label, code in sync.student_bodies(nb).items():
            if label not in given:
                continue
            try:
                defined = {n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            except SyntaxError as err:
                warnings.append(f"{path.name}: Exercise {label} has a syntax error (line {err.lineno}): "
                                f"built as unsolved")
                continue
            needed = {n.name for n in ast.parse(given[label]).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            if needed - defined:
                warnings.append(f"{path.name}: Exercise {label} no longer defines {', '.join(sorted(needed - defined))}: "
                                f"built as unsolved")
                continue
            bodies[label] = code
    return given | bodies, warnings


def _digest(bodies: dict[str, str]) -> str:
    """What a student build depends on: the lessons, the exporter, the hand-written modules, the bodies."""
    digest = hashlib.sha256()
    files = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py")) + [ROOT / "tools" / "sync.py"]
    files += sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(bodies, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def build_lessons() -> set[int] | None:
    """The lessons whose exercises a student build takes from the workspace: $KUIPER_BUILD_LESSONS
    (comma-separated numbers; `kuiper grade` sets it to the lesson it tests), else all (None)."""
    value = os.environ.get("KUIPER_BUILD_LESSONS", "").strip()
    try:
        return {int(n) for n in value.split(",")} if value else None
    except ValueError:
        raise WorkspaceError(f"KUIPER_BUILD_LESSONS={value!r}: expected lesson numbers like 4 or 1,2,3") from None


def student_build(folder: Path | None = None, quiet: bool = False, lessons: set[int] | None = None) -> Path:
    """The student build of the workspace `folder`, built if it is not current: its package folder.

    `lessons`: only these lessons' exercises are the student's, the others the reference's (None: all).
    Built in a temporary folder and renamed into place, so concurrent runs never see half a build."""
    folder = (folder or workspace_dir()).resolve()
    bodies, warnings = student_bodies(folder)
    if lessons is not None:
        bodies = {label: code for label, code in bodies.items() if int(label.split(".")[0]) in lessons}
    if not quiet:
        for warning in warnings:
            print(f"kuiper: {warning}", file=sys.stderr)
    builds = folder / ".build"
    final = builds / _digest(bodies)
    if (final / "kuiper" / MARKER).exists():
        final.touch()  # recently used: kept by the clean-up below
        return final / "kuiper"
    builds.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=builds, prefix=".tmp-"))
    try:
        shutil.copytree(PACKAGE, tmp / "kuiper", ignore=shutil.ignore_patterns("__pycache__"))
        sync = _sync()
        for path in sync.generated_files(ROOT):
            (tmp / path.relative_to(ROOT)).unlink()
        for path, text in sync.build_modules(ROOT, bodies, tmp / "kuiper").items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (tmp / "data").symlink_to(ROOT / "data", target_is_directory=True)
        (tmp / "kuiper" / MARKER).write_text(json.dumps({"workspace": str(folder), "root": str(ROOT)}) + "\n")
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same build first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final.touch()
    kept = sorted((p for p in builds.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in kept[KEEP_BUILDS:]:
        shutil.rmtree(old, ignore_errors=True)
    return final / "kuiper"


def use_student_build() -> None:
    """Make `kuiper` the student build: called by kuiper/__init__.py when KUIPER_BUILD=student.

    Forgets the reference's kuiper modules imported so far, then executes the student build's
    package as `sys.modules['kuiper']`; the import statement that started it returns that module."""
    package = student_build(lessons=build_lessons())
    for name in [n for n in sys.modules if n == "kuiper" or n.startswith("kuiper.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location("kuiper", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kuiper"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        for name in [n for n in sys.modules if n == "kuiper" or n.startswith("kuiper.")]:
            del sys.modules[name]
        if isinstance(err, NotImplementedError):
            message = unsolved_message(err, "needs")
        else:
            message = f"kuiper: KUIPER_BUILD=student: your build ({package}) does not import: {type(err).__name__}: {err}"
        if Path(sys.argv[0]).name == "kuiper" or sys.argv[0] == "-m":  # the command line: one line, exit 1
            raise SystemExit(message) from None
        raise ImportError(message) from err


def is_student_build() -> bool:
    """Whether the `kuiper` package in use is a student build."""
    return (PACKAGE / MARKER).exists()


def unsolved_message(err: NotImplementedError, verb: str = "has not solved") -> str:
    """The one line the CLI prints when the student build reaches an unsolved exercise."""
    spec = importlib.util.spec_from_file_location("kuiper_exercises", PACKAGE / "exercises.py")
    index = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(index)
    EXERCISES = index.EXERCISES  # noqa: N806  (read by path: the package may be half imported)

    match = re.match(r"Exercise (\d+\.\d+)", str(err))
    if match is None or match[1] not in EXERCISES:
        return f"kuiper: not implemented: {err}"
    entry = EXERCISES[match[1]]
    name = entry["names"][0].rsplit(".", 1)[-1] if entry["names"] else "?"
    where = workspace_dir() / f"{entry['lesson']}.ipynb"
    shown = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
    if verb == "needs":
        return (f"kuiper: your build needs Exercise {match[1]} ({name}, lesson {entry['lesson'][:2]}) even to import: "
                f"solve it in {shown}, or run without KUIPER_BUILD=student")
    return (f"kuiper: your build has not solved Exercise {match[1]} ({name}, lesson {entry['lesson'][:2]}) yet: "
            f"solve it in {shown}, or run without KUIPER_BUILD=student")
