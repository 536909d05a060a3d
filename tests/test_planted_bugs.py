"""Checks catch real bugs: for every exercise, typical bugs planted into the reference body must make
its check print FAIL with a message that says what was expected and what came instead.

A lesson's bugs live in tests/planted_bugs/lesson_NN.py:

    BUGS = {"1.4": [("exact text of the solution cell", "the buggy replacement", "what the bug is"), ...]}
    SLOW = True   # optional: the lesson takes more than a few seconds to execute

Each lesson's notebook runs once in one kernel; each bug then re-runs the exercise cell with the
replacement and the check cell after it, and finally the original cell again.
"""

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import sync  # noqa: E402

TABLES = sorted((Path(__file__).parent / "planted_bugs").glob("lesson_[0-9][0-9].py"))
LESSONS = {lesson.number: lesson for lesson in sync.lessons()}


def table(path: Path):
    spec = importlib.util.spec_from_file_location(f"planted_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases():
    for path in TABLES:
        module, number = table(path), int(path.stem.split("_")[1])
        marks = [pytest.mark.slow] if getattr(module, "SLOW", False) else []
        for label, bugs in module.BUGS.items():
            for n, bug in enumerate(bugs):
                yield pytest.param(number, label, bug, id=f"{label}-{n}-{bug[2][:40]}", marks=marks)


class LessonKernel:
    """One lesson's notebook executed once in a kernel, ready to re-run single cells."""

    def __init__(self, number: int):
        self.number = number
        self.nb = sync.read_lesson(LESSONS[number])
        for cell in self.nb.cells:
            if cell.cell_type == "code":
                cell.source = sync.solution_code(cell.source)
        self.client = NotebookClient(self.nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(LESSONS[number].source.parent)}})
        self.context = self.client.setup_kernel()
        self.context.__enter__()
        for index, cell in enumerate(self.nb.cells):
            self.client.execute_cell(cell, index)
        self.client.allow_errors = True
        self.cells = {label: index for index, label, _ in sync.exercises(sync.read_lesson(LESSONS[number]), number)}

    def run(self, source: str, index: int) -> str:
        """Execute `source` as cell `index`; its stdout."""
        cell = nbformat.v4.new_code_cell(source)
        self.client.execute_cell(cell, index)
        return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")

    def check_cell(self, index: int) -> int:
        return next(i for i in range(index + 1, len(self.nb.cells)) if self.nb.cells[i].cell_type == "code")

    def close(self) -> None:
        self.context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def kernels():
    """A factory of lesson kernels that keeps one alive at a time."""
    alive: dict[int, LessonKernel] = {}

    def get(number: int) -> LessonKernel:
        if number not in alive:
            for old in alive.values():
                old.close()
            alive.clear()
            alive[number] = LessonKernel(number)
        return alive[number]

    yield get
    for kernel in alive.values():
        kernel.close()


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_every_exercise_has_two_planted_bugs_that_apply(path):
    number = int(path.stem.split("_")[1])
    nb = sync.read_lesson(LESSONS[number])
    found = {label: sync.solution_code(nb.cells[i].source) for i, label, _ in sync.exercises(nb, number)}
    bugs = table(path).BUGS
    assert sorted(bugs) == sorted(found), f"{path.name} should cover exactly the exercises {sorted(found)}"
    for label, planted in bugs.items():
        assert len(planted) >= 2, f"Exercise {label}: plant at least two bugs"
        for old, new, what in planted:
            assert old in found[label], f"Exercise {label} ({what}): {old!r} is not in the exercise cell (stale table?)"
            assert old != new and what, f"Exercise {label}: a bug changes the code and says what it is"


@pytest.mark.parametrize("number, label, bug", list(cases()))
def test_planted_bug_fails_its_check_saying_expected_and_got(kernels, number, label, bug):
    old, new, what = bug
    kernel = kernels(number)
    index = kernel.cells[label]
    original = kernel.nb.cells[index].source
    assert old in original, f"Exercise {label}: {old!r} is not in the exercise cell (stale table?)"
    try:
        kernel.run(original.replace(old, new), index)
        printed = kernel.run(kernel.nb.cells[kernel.check_cell(index)].source, kernel.check_cell(index))
    finally:
        kernel.run(original, index)
    verdict = printed[printed.rfind(f"FAIL Exercise {label}:"):]  # a check may print notes before its verdict
    assert verdict.startswith(f"FAIL Exercise {label}:"), f"with the bug '{what}' the check printed {printed!r}"
    assert "expected" in verdict.lower(), f"the FAIL message should say what was expected: {printed!r}"
