"""One source, three products: each `solutions/NN_topic.py` lesson becomes its executed notebook,
the `kuiper/` modules its export cells build, and the student workbook in `notebooks/`.

    python tools/sync.py            # export, execute what changed, write student notebooks
    python tools/sync.py --check    # list generated files that are out of date (exit 1 if any)

Directives (nbdev-style comment lines at the top of a code cell):
    #| default_exp tensor      the lesson's default module, kuiper/tensor.py
    #| export                  this cell goes to the default module
    #| export errors           this cell goes to kuiper/errors.py
    #| exercise: <what to do>  the cell holds an exercise between `### BEGIN SOLUTION` and
                               `### END SOLUTION`; the workbook gets a NotImplementedError there
A function decorated `@patch_to(Cls)` in an export cell becomes a method inside `class Cls`
of the generated module, so a lesson can grow a class one cell at a time.

The workbook's exercise cells also get `@exercise("N.M")` (kuiper.course.exercise) above each
function, and their label in the cell metadata; kuiper/exercises.py, generated too, says where each
exercise's reference lives. So a check judges only its own exercise, and a demo cell that calls an
unsolved exercise runs the reference. `build_modules(root, bodies)` with a student's exercise cells
(`student_bodies`) is the student build (kuiper/workspace.py). Sync never reads or writes the
student's workspace. See AUTHORING.md.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "kuiper"
HEADER = "# Generated from {sources} by tools/sync.py: edit the lesson, not this file.\n"
# Methods moved into a class body may name the class in annotations: keep annotations lazy.
PRELUDE = "from __future__ import annotations\n"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
DIRECTIVE = re.compile(r"^\s*#\|\s*(\S+?):?(?:\s+(.*?))?\s*$")


@dataclass(frozen=True)
class Lesson:
    """The files of one lesson: its source, its executed notebook and its student workbook."""

    source: Path

    @property
    def number(self) -> int:
        return int(self.source.name.split("_", 1)[0])

    @property
    def executed(self) -> Path:
        return self.source.with_suffix(".ipynb")

    @property
    def workbook(self) -> Path:
        return self.source.parent.parent / "notebooks" / self.executed.name


def lessons(root: Path = ROOT) -> list[Lesson]:
    """Every lesson under `root/solutions`, in lesson order."""
    return [Lesson(p) for p in sorted((root / "solutions").glob("[0-9][0-9]_*.py"))]


def directives(source: str) -> dict[str, str]:
    """The `#| name value` lines of a cell as {name: value}."""
    found = {}
    for line in source.splitlines():
        match = DIRECTIVE.match(line)
        if match:
            found[match[1]] = match[2] or ""
    return found


def strip_directives(source: str) -> str:
    """The cell's code without its `#|` lines."""
    return "\n".join(line for line in source.splitlines() if not DIRECTIVE.match(line)).strip("\n")


def read_lesson(lesson: Lesson) -> nbformat.NotebookNode:
    """The lesson's cells, read from its py:percent source."""
    return jupytext.read(lesson.source)


# ---- export: lesson cells -> kuiper modules -------------------------------------------------

def export_cells(nb: nbformat.NotebookNode, where: str, number: int = 0,
                 bodies: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(module, code) for each export cell, in order; module is dotted under kuiper.

    `bodies` maps exercise labels ('2.1') to a student's code for that exercise cell: the student
    build takes it in place of the solution's cell."""
    labels = {i: label for i, label, _ in exercises(nb, number)}
    default, cells = None, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        found = directives(cell.source)
        default = found.get("default_exp", default)
        if "export" not in found:
            continue
        module = found["export"] or default
        if module is None:
            raise SystemExit(f"{where}: an export cell comes before any `#| default_exp`")
        code = bodies[labels[i]] if bodies is not None and labels.get(i) in bodies else solution_code(cell.source)
        cells.append((module, code))
    return cells


def _patch_target(node: ast.stmt) -> tuple[str, ast.expr] | None:
    """For `@patch_to(Cls) def f...` the class name and the decorator node, else None."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    for deco in node.decorator_list:
        if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                and deco.func.id == "patch_to" and len(deco.args) == 1
                and isinstance(deco.args[0], ast.Name)):
            return deco.args[0].id, deco
    return None


def assemble(cells: list[str], where: str) -> str:
    """Join a module's cells: imports gathered at the top, `@patch_to(Cls)` functions moved into
    the body of `class Cls`."""
    chunks: list[list[str]] = []
    imports: list[ast.stmt] = []
    class_end: dict[str, tuple[int, int]] = {}  # class -> (chunk, line index just after its body)
    for code in cells:
        lines = code.splitlines()
        keep = [True] * len(lines)
        tree = ast.parse(code)
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.append(node)
                keep[node.lineno - 1:node.end_lineno] = [False] * (node.end_lineno - node.lineno + 1)
            target = _patch_target(node)
            if target is None:
                continue
            name, deco = target
            if name not in class_end:
                raise SystemExit(f"{where}: @patch_to({name}) needs `class {name}` in an earlier cell")
            start = min(d.lineno for d in node.decorator_list) - 1
            method = [line for i, line in enumerate(lines[start:node.end_lineno], start)
                      if not deco.lineno - 1 <= i < deco.end_lineno]
            keep[start:node.end_lineno] = [False] * (node.end_lineno - start)
            _insert_method(chunks, class_end, name, method)
        chunks.append([line for line, k in zip(lines, keep) if k])
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                class_end[node.name] = (len(chunks) - 1, sum(keep[: node.end_lineno]))
    body = "\n\n\n".join("\n".join(c).strip("\n") for c in chunks if any(s.strip() for s in c))
    return format_imports(imports) + ("\n\n\n" if imports and body else "") + body + "\n"


def format_imports(nodes: list[ast.stmt]) -> str:
    """The imports of all cells, merged and sorted into standard-library, third-party and kuiper groups."""
    plain: set[str] = set()
    names: dict[str, set[str]] = {}
    for node in nodes:
        for alias in node.names:
            spelled = alias.name + (f" as {alias.asname}" if alias.asname else "")
            if isinstance(node, ast.Import):
                plain.add(spelled)
            else:
                names.setdefault("." * node.level + (node.module or ""), set()).add(spelled)
    groups: list[list[str]] = [[], [], []]
    for module in sorted(plain | set(names), key=lambda m: (m.lower(), m)):
        top = module.split(".")[0]
        group = groups[0 if top in sys.stdlib_module_names else 2 if top in (PACKAGE, "") else 1]
        if module in plain:
            group.append(f"import {module}")
        if module in names:
            group.append(_from_import(module, sorted(names[module], key=lambda n: (n.lower(), n))))
    return "\n\n".join("\n".join(sorted(g, key=lambda line: not line.startswith("import "))) for g in groups if g)


def _from_import(module: str, names: list[str]) -> str:
    """`from module import a, b`, wrapped in parentheses when longer than 100 characters."""
    line = f"from {module} import {', '.join(names)}"
    if len(line) <= 100:
        return line
    return f"from {module} import (\n" + "".join(f"    {name},\n" for name in names) + ")"


def _insert_method(chunks: list[list[str]], class_end: dict[str, tuple[int, int]],
                   name: str, method: list[str]) -> None:
    """Append `method` (unindented lines) to the body of class `name`, shifting later classes."""
    chunk, at = class_end[name]
    block = [""] + ["    " + line if line.strip() else "" for line in method]
    chunks[chunk][at:at] = block
    for other, (c, line) in class_end.items():
        if c == chunk and line >= at:
            class_end[other] = (c, line + len(block))


def build_modules(root: Path = ROOT, bodies: dict[str, str] | None = None,
                  package: Path | None = None) -> dict[Path, str]:
    """The text of every generated module, keyed by its path under `package` (default root/kuiper).

    With `bodies` (exercise label -> a student's cell, see `export_cells`) this is a student build."""
    package = package or root / PACKAGE
    sources: dict[str, list[str]] = {}
    cells: dict[str, list[str]] = {}
    index: dict[str, dict] = {}
    for lesson in lessons(root):
        rel = lesson.source.relative_to(root).as_posix()
        nb = read_lesson(lesson)
        index.update(exercise_index(nb, lesson.number, lesson.source.stem))
        for module, code in export_cells(nb, rel, lesson.number, bodies):
            cells.setdefault(module, []).append(code)
            if rel not in sources.setdefault(module, []):
                sources[module].append(rel)
    modules = {}
    for module, codes in cells.items():
        path = package / Path(*module.split(".")).with_suffix(".py")
        body = assemble(codes, f"{PACKAGE}.{module}")
        body = ("\n\n" if body.startswith(("class ", "def ", "@")) else "\n") + body
        modules[path] = HEADER.format(sources=", ".join(sources[module])) + PRELUDE + body
    with_exercises = sorted({f"solutions/{entry['lesson']}.py" for entry in index.values()})
    modules[package / "exercises.py"] = (HEADER.format(sources=", ".join(with_exercises))
                                         + format_index(index))
    return modules


def generated_files(root: Path = ROOT) -> list[Path]:
    """The modules on disk that sync wrote (their first line is the generated header)."""
    prefix = HEADER.split("{")[0]
    return [p for p in (root / PACKAGE).rglob("*.py") if p.read_text().startswith(prefix)]


# ---- student workbook ---------------------------------------------------------------------

def exercises(nb: nbformat.NotebookNode, number: int) -> list[tuple[int, str, str]]:
    """(cell index, 'N.M', what to do) for each exercise cell of lesson `number`."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "exercise" in directives(cell.source):
            found.append((i, f"{number}.{len(found) + 1}", directives(cell.source)["exercise"]))
    return found


JIT = ("njit", "jit", "numba.njit", "numba.jit", "cuda.jit", "vectorize", "guvectorize")
WRAP_IMPORT = "from kuiper.course import exercise"
WRAP_LINE = re.compile(r'^\s*@exercise\("(\d+\.\d+)"\)\s*$')


def _decorator(node: ast.expr) -> str:
    """A decorator's name without its arguments: 'njit', 'cuda.jit', 'patch_to'."""
    return ast.unparse(node.func if isinstance(node, ast.Call) else node)


def _jit_callees(nb: nbformat.NotebookNode) -> set[str]:
    """Names read inside the lesson's jit-compiled functions: such functions must stay plain jit
    functions (numba cannot call a Python wrapper from nopython code)."""
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse("\n".join(line for line in cell.source.splitlines()
                                       if not line.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(_decorator(d) in JIT for d in node.decorator_list):
                names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - {node.name}
    return names


def _functions(tree: ast.Module) -> list[tuple[ast.FunctionDef, str, bool]]:
    """(def node, qualified name, is a method of a class in the cell) for each top-level function
    ('Tensor.pad' for `@patch_to(Tensor) def pad`) and each method of a top-level class ('Cursor.value')."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            owner = next((ast.unparse(d.args[0]) for d in node.decorator_list
                          if _decorator(d) == "patch_to" and isinstance(d, ast.Call) and d.args), None)
            found.append((node, f"{owner}.{node.name}" if owner else node.name, False))
        elif isinstance(node, ast.ClassDef):
            found += [(method, f"{node.name}.{method.name}", True) for method in node.body
                      if isinstance(method, ast.FunctionDef)]
    return found


def _device_function(decorators: list[ast.expr]) -> bool:
    """`@cuda.jit(device=True)`: a GPU function only kernels call."""
    return any(_decorator(d) == "cuda.jit" and isinstance(d, ast.Call)
               and any(k.arg == "device" for k in d.keywords) for d in decorators)


def exercise_functions(source: str, jit_callees: set[str] = frozenset()) -> list[tuple[ast.FunctionDef, str, bool]]:
    """(def node, qualified name, wrapped) for each function of an exercise cell: its top-level
    functions, and the methods of its classes that hold a solution block.

    Qualified: 'Tensor.pad' for `@patch_to(Tensor) def pad`, 'Cursor.value' for a method. Wrapped: the
    workbook decorates it with `@exercise("N.M")`; CUDA device functions and jit functions that other
    jit code calls are left plain (numba cannot call a Python wrapper from compiled code)."""
    code = strip_directives(source)
    solutions = [i for i, line in enumerate(code.splitlines(), 1) if line.strip() == BEGIN]
    found = []
    for node, name, method in _functions(ast.parse(code)):
        if method and not any(node.lineno <= line <= node.end_lineno for line in solutions):
            continue
        jit = any(_decorator(d) in JIT for d in node.decorator_list)
        wrapped = not _device_function(node.decorator_list) and not (jit and node.name in jit_callees)
        found.append((node, name, wrapped))
    return found


def reference_code(source: str, names: list[str]) -> str:
    """The solution of the functions `names` of an exercise cell that is not exported, as code the
    wrapper runs to get their reference (kuiper.course.reference); annotations lazy, numba's
    `cache=True` dropped, since code that has no file cannot be cached."""
    tree = ast.parse(solution_code(source))
    keep = [node for node, name, _ in _functions(tree) if name in names]
    for node in keep:
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and _decorator(deco) in JIT:
                deco.keywords = [k for k in deco.keywords if k.arg != "cache"]
    return PRELUDE + ast.unparse(ast.Module(body=keep, type_ignores=[]))


def exercise_index(nb: nbformat.NotebookNode, number: int, stem: str = "") -> dict[str, dict]:
    """Where each exercise's reference lives: label -> lesson, what to do, module, names, wrapped names.

    An exported exercise's reference is in the package (module); one that is not exported (module
    None) carries the code of its top-level functions (reference), and only those are wrapped."""
    index, default = {}, None
    labels = {i: (label, what) for i, label, what in exercises(nb, number)}
    callees = _jit_callees(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        found = directives(cell.source)
        default = found.get("default_exp", default)
        if i not in labels:
            continue
        label, what = labels[i]
        functions = exercise_functions(cell.source, callees)
        module = f"{PACKAGE}.{found['export'] or default}" if "export" in found else None
        top_level = {name for _, name, method in _functions(ast.parse(solution_code(cell.source))) if not method}
        wrapped = [name for _, name, wrap in functions if wrap and (module or name in top_level)]
        index[label] = {"lesson": stem, "what": what, "module": module,
                        "names": [name for _, name, _ in functions], "wrapped": wrapped}
        if module is None and wrapped:
            index[label]["reference"] = reference_code(cell.source, wrapped)
    return index


def format_index(index: dict[str, dict]) -> str:
    """The text of kuiper/exercises.py: one line per exercise."""
    lines = "".join(f"    {label!r}: {entry!r},\n" for label, entry in index.items())
    return ('"""Every exercise of the course: label -> its lesson, what to do, the module and names of its\n'
            'reference, and the names the workbook wraps with `kuiper.course.exercise`."""\n\n'
            f"EXERCISES: dict[str, dict] = {{\n{lines}}}\n")


def wrap_exercise(source: str, label: str, wrapped: list[str]) -> str:
    """The workbook's exercise cell: `@exercise("N.M")` above each wrapped function (right above its
    `def`, or above a jit decorator so numba compiles the plain function), and its import."""
    if not wrapped:
        return source
    lines = source.splitlines()
    at = []
    for node, name, _ in _functions(ast.parse(source)):
        if name in wrapped:
            jit = any(_decorator(d) in JIT for d in node.decorator_list)
            line = min(d.lineno for d in node.decorator_list) if jit else node.lineno
            at.append((line - 1, " " * node.col_offset))
    for line, indent in sorted(at, reverse=True):
        lines.insert(line, f'{indent}@exercise("{label}")')
    return "\n".join([WRAP_IMPORT, "", "", *lines])


def unwrap_exercise(source: str) -> str:
    """A workbook exercise cell without what `wrap_exercise` added: the code the student wrote."""
    return "\n".join(line for line in source.splitlines()
                     if line.strip() != WRAP_IMPORT and not WRAP_LINE.match(line)).strip("\n")


def solution_code(source: str) -> str:
    """An exercise cell's code with its solution in place: directives and BEGIN/END lines gone."""
    return "\n".join(line for line in strip_directives(source).splitlines() if line.strip() not in (BEGIN, END))


def blank_solution(source: str, label: str) -> str:
    """Replace each BEGIN..END SOLUTION block by a NotImplementedError naming the exercise."""
    out, inside = [], False
    for line in strip_directives(source).splitlines():
        if line.strip() == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("{label}")')
            inside = True
        elif line.strip() == END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def workbook(executed: nbformat.NotebookNode, number: int, solved: bool = False) -> nbformat.NotebookNode:
    """The student notebook: exercises blanked and wrapped with `@exercise("N.M")` (see
    kuiper.course.exercise), build directives gone, empty code cells dropped, every output cleared.
    Each exercise cell carries its label in its metadata: {"kuiper": {"exercise": "N.M"}}.
    `solved`: keep the solutions in the exercise cells (a student who solved everything, for tests)."""
    nb = copy.deepcopy(executed)
    found = exercises(nb, number)
    labels = {i: (n, f"Exercise {n}: {what}") for i, n, what in found}
    index = exercise_index(nb, number)
    cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if i in labels:
                label, message = labels[i]
                body = solution_code(cell.source) if solved else blank_solution(cell.source, message)
                cell.source = wrap_exercise(body, label, index[label]["wrapped"])
                cell.metadata[PACKAGE] = {"exercise": label}
            else:
                cell.source = strip_directives(cell.source)
            cell.outputs, cell.execution_count = [], None
            if not cell.source.strip():
                continue
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("jupytext", None)
    nb.metadata.pop(PACKAGE, None)
    return nb


def student_bodies(nb: nbformat.NotebookNode) -> dict[str, str]:
    """Exercise label -> the student's code in a workbook, found by the cell's metadata label, else
    by its `@exercise("N.M")` line or its `NotImplementedError("Exercise N.M: ...")`."""
    bodies = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        label = cell.metadata.get(PACKAGE, {}).get("exercise")
        if label is None:
            match = re.search(r'@exercise\("(\d+\.\d+)"\)|NotImplementedError\("Exercise (\d+\.\d+):', cell.source)
            label = match and (match[1] or match[2])
        if label and label not in bodies:
            bodies[label] = unwrap_exercise(cell.source)
    return bodies


# ---- executed solutions ---------------------------------------------------------------------

def inputs_digest(lesson: Lesson, root: Path = ROOT) -> str:
    """A hash of everything a lesson's outputs depend on: its source, earlier lessons, helpers."""
    digest = hashlib.sha256()
    for earlier in lessons(root):
        if earlier.number <= lesson.number:
            digest.update(earlier.source.read_bytes())
    digest.update((root / PACKAGE / "course.py").read_bytes())
    return digest.hexdigest()[:16]


def same_inputs(a: nbformat.NotebookNode, b: nbformat.NotebookNode) -> bool:
    """True when both notebooks have the same cells (type and source)."""
    return [(c.cell_type, c.source) for c in a.cells] == [(c.cell_type, c.source) for c in b.cells]


#: The environment of every lesson kernel (set here and in conftest.py, so nbval sees the same):
#: no progress bars or library warnings in stored outputs.
QUIET = {"PYTHONHASHSEED": "0", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
         "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONWARNINGS": "ignore"}


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel of this environment, as nbval will."""
    from nbclient import NotebookClient

    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    os.environ["KUIPER_LONG"] = "1"  # stored outputs include the benchmarks a student runs only when asked
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def stale_executed(lesson: Lesson, root: Path = ROOT) -> str | None:
    """Why the executed notebook is out of date, or None when it is current."""
    if not lesson.executed.exists():
        return "never executed"
    stored = nbformat.read(lesson.executed, as_version=4)
    if not same_inputs(stored, read_lesson(lesson)):
        return "cells differ from the .py source"
    if stored.metadata.get(PACKAGE, {}).get("inputs") != inputs_digest(lesson, root):
        return "the lesson or an earlier one changed since it was executed"
    return None


# ---- the chain ----------------------------------------------------------------------------

def _write(path: Path, text: str, changed: list[Path]) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed.append(path)


def sync(root: Path = ROOT, force: bool = False, only: set[int] | None = None) -> list[Path]:
    """Export, execute what changed, regenerate workbooks; return the files written.

    `only`: execute just these lesson numbers (an empty set executes none); the others keep
    their stored outputs even when stale, so an author can re-run one lesson without the rest."""
    changed: list[Path] = []
    modules = build_modules(root)
    for path, text in modules.items():
        _write(path, text, changed)
    for path in set(generated_files(root)) - set(modules):
        path.unlink()
        changed.append(path)
    for lesson in lessons(root):
        reason = "forced" if force else stale_executed(lesson, root)
        if only is not None and lesson.number not in only:
            reason = None
        if reason:
            print(f"executing {lesson.source.name} ({reason})", flush=True)
            nb = execute(read_lesson(lesson), lesson.source.parent)
            nb.metadata[PACKAGE] = {"inputs": inputs_digest(lesson, root)}
            _write(lesson.executed, nbformat.writes(nb) + "\n", changed)
        if not lesson.executed.exists():
            continue
        executed = nbformat.read(lesson.executed, as_version=4)
        _write(lesson.workbook, nbformat.writes(workbook(executed, lesson.number)) + "\n", changed)
    return changed


def check(root: Path = ROOT) -> list[str]:
    """Every generated file that is out of date, with the reason; empty when all are current."""
    problems = []
    modules = build_modules(root)
    for path, text in modules.items():
        if not path.exists() or path.read_text() != text:
            problems.append(f"{path.relative_to(root)}: differs from its lesson's export cells")
    for path in set(generated_files(root)) - set(modules):
        problems.append(f"{path.relative_to(root)}: generated, but no lesson exports it now")
    for lesson in lessons(root):
        reason = stale_executed(lesson, root)
        if reason:
            problems.append(f"{lesson.executed.relative_to(root)}: {reason}")
            continue
        executed = nbformat.read(lesson.executed, as_version=4)
        expected = nbformat.writes(workbook(executed, lesson.number)) + "\n"
        if not lesson.workbook.exists() or lesson.workbook.read_text() != expected:
            problems.append(f"{lesson.workbook.relative_to(root)}: differs from its solution")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report what is out of date")
    parser.add_argument("--force", action="store_true", help="re-execute every lesson (or every --lesson)")
    parser.add_argument("--lesson", type=int, action="append", metavar="NN",
                        help="execute only this lesson (repeatable); others keep their stored outputs")
    parser.add_argument("--no-execute", action="store_true", help="export modules and workbooks, execute nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        print("\n".join(problems) or "all generated files are up to date")
        return 1 if problems else 0
    only = set() if args.no_execute else set(args.lesson) if args.lesson else None
    for path in sync(force=args.force, only=only):
        print(f"{'wrote' if path.exists() else 'removed'} {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
