"""`kuiper grade`: run a student's workbooks headlessly and report every exercise as PASS, FAIL or TODO.

Hand-written: no lesson builds this module. A workbook runs in a temporary copy (the student's file is
never written), each cell under a time limit; the `PASS/FAIL/TODO Exercise N.M: message` lines its
check cells print are the verdicts. The package tests of each graded lesson then run against the
student build (`KUIPER_BUILD=student`, see kuiper/workspace.py): the tests a student cannot edit.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kuiper import workspace
from kuiper.errors import KuiperError
from kuiper.exercises import EXERCISES

VERDICT = re.compile(r"^(PASS|FAIL|TODO) Exercise (\d+\.\d+)(?::\s*(.*))?$")
#: A package test file says which lesson it tests with a module-level `LESSON = NN`.
LESSON_LINE = re.compile(r"^LESSON\s*=\s*(\d+)\b", re.MULTILINE)


@dataclass
class Result:
    """The verdict on one exercise: PASS, FAIL or TODO, with the check's message ('' on PASS)."""

    lesson: int
    label: str
    status: str
    message: str = ""


@dataclass
class LessonGrade:
    """A workbook's verdicts and its lesson's package tests (None when not run)."""

    lesson: int
    workbook: str
    results: list[Result] = field(default_factory=list)
    error: str = ""
    tests: dict | None = None


def lesson_of(label: str) -> int:
    return int(label.split(".")[0])


def labels_of(lesson: int) -> list[str]:
    """The exercise labels of a lesson, in order."""
    return [label for label in EXERCISES if lesson_of(label) == lesson]


def parse_verdicts(lines: list[str], lesson: int) -> list[Result]:
    """The first verdict printed for each exercise of `lesson`; TODO 'never ran' for a missing one."""
    found: dict[str, Result] = {}
    for line in lines:
        match = VERDICT.match(line.strip())
        if match and match[2] not in found:
            found[match[2]] = Result(lesson_of(match[2]), match[2], match[1], match[3] or "")
    return [found.get(label) or Result(lesson, label, "TODO", "its check never ran")
            for label in labels_of(lesson)]


def run_workbook(path: Path, timeout: int = 600) -> tuple[list[str], str]:
    """Execute a copy of the workbook at `path` (in the repository's notebooks/ folder, so relative
    paths work as in Jupyter); the stdout lines of its cells, and the first error ('' if none)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_path = str(workspace.ROOT / "notebooks")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            record_timing=False, resources={"metadata": {"path": env_path}})
    quiet = workspace.quiet_environment()
    saved = {name: os.environ.get(name) for name in quiet}
    os.environ.update(quiet)
    try:
        client.execute()
    except Exception as err:  # a cell over its time limit, a dead kernel: report, grade what ran
        return _stdout(nb), f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    return _stdout(nb), errors[0] if errors else ""


def _stdout(nb) -> list[str]:
    return [line for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stdout"
            for line in o.get("text", "").splitlines()]


def test_files(lesson: int) -> list[Path]:
    """The package test files of `lesson` (those that say `LESSON = NN`)."""
    return [p for p in sorted((workspace.ROOT / "tests").glob("test_*.py"))
            if (m := LESSON_LINE.search(p.read_text())) and int(m[1]) == lesson]


def run_tests(lesson: int, folder: Path, timeout: int = 1800) -> dict | None:
    """Run the lesson's package tests on the student build of `folder` in which only this lesson's
    exercises are the student's (the others the reference's): {'passed', 'failed', 'summary'}."""
    files = test_files(lesson)
    if not files:
        return None
    env = os.environ | workspace.quiet_environment() | {
        "KUIPER_BUILD": "student", "KUIPER_WORKSPACE": str(folder), "KUIPER_BUILD_LESSONS": str(lesson)}
    command = [sys.executable, "-m", "pytest", "-q", "--tb=line", "-p", "no:xdist", "-p", "no:nbval",
               "-m", "not slow", "-o", "addopts=-p no:cacheprovider", *map(str, files)]
    try:
        run = subprocess.run(command, cwd=workspace.ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"passed": 0, "failed": 0, "summary": f"timed out after {timeout} s"}
    lines = run.stdout.strip().splitlines()
    summary = lines[-1] if lines else run.stderr.strip()[-200:]
    first = next((line for line in lines if re.match(r"^(/|E\s|\S+\.py:\d+:)", line)), None)
    if first and run.returncode:
        summary += f" (first: {first.removeprefix('E').strip()[:300]})"
    count = {kind: int(m[1]) if (m := re.search(rf"(\d+) {kind}", summary)) else 0 for kind in ("passed", "failed")}
    count["failed"] += int(m[1]) if (m := re.search(r"(\d+) errors?", summary)) else 0
    return count | {"summary": summary}


def grade(folder: Path, lessons: list[int] | None = None, tests: bool = True,
          timeout: int = 600) -> list[LessonGrade]:
    """Grade the workbooks `NN_*.ipynb` in `folder` (all, or those of `lessons`)."""
    found = workspace.workbooks(folder)
    if not found:
        raise KuiperError(f"{folder}: no workbooks (NN_topic.ipynb) here: run `make lab` first")
    if lessons:
        missing = set(lessons) - set(found)
        if missing:
            raise KuiperError(f"{folder}: no workbook for lesson {', '.join(f'{n:02d}' for n in sorted(missing))}")
        found = {n: found[n] for n in lessons}
    grades = []
    for number, path in sorted(found.items()):
        lines, error = run_workbook(path, timeout)
        grade_ = LessonGrade(number, path.name, parse_verdicts(lines, number), error)
        if tests:
            workspace.student_build(folder, quiet=True, lessons={number})  # once, before the test files share it
            grade_.tests = run_tests(number, folder)
        grades.append(grade_)
    return grades


def format_table(grades: list[LessonGrade]) -> str:
    """One line per exercise: lesson, label, verdict, message; a summary line per lesson's tests."""
    rows = []
    for g in grades:
        for r in g.results:
            rows.append(f"{g.lesson:02d}  {r.label:<6} {r.status}  {r.message}".rstrip())
        if g.error:
            rows.append(f"{g.lesson:02d}  the workbook stopped: {g.error}")
        if g.tests is not None:
            rows.append(f"{g.lesson:02d}  package tests on your build: {g.tests['summary']}")
    total = [r.status for g in grades for r in g.results]
    rows.append(f"{total.count('PASS')} PASS, {total.count('FAIL')} FAIL, {total.count('TODO')} TODO "
                f"of {len(total)} exercises")
    return "\n".join(rows)


def grade_class(folder: Path, out: Path, lessons: list[int] | None = None, tests: bool = False,
                timeout: int = 600) -> list[dict]:
    """Grade every student folder `folder/<student>/NN_*.ipynb` into one CSV gradebook at `out`
    (written to a temporary file, then renamed): a row per student, a column per exercise."""
    students = sorted(p for p in folder.iterdir() if p.is_dir() and workspace.workbooks(p))
    if not students:
        raise KuiperError(f"{folder}: no student folders with workbooks (expected {folder}/<student>/NN_topic.ipynb)")
    labels = [label for label in EXERCISES if not lessons or lesson_of(label) in lessons]
    rows = []
    for student in students:
        row = {"student": student.name}
        try:
            graded = grade(student, lessons, tests, timeout)
        except KuiperError as err:
            row["note"] = str(err)
            graded = []
        verdicts = {r.label: r.status for g in graded for r in g.results}
        row |= {label: verdicts.get(label, "") for label in labels}
        row["passed"] = sum(v == "PASS" for v in verdicts.values())
        rows.append(row)
    columns = ["student", *labels, "passed", "note"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", newline="", dir=out.parent, suffix=".tmp", delete=False) as file:
        writer = csv.DictWriter(file, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    shutil.move(file.name, out)
    return rows


def as_json(grades: list[LessonGrade]) -> list[dict]:
    return [asdict(g) for g in grades]


def main(args) -> object:
    """The `kuiper grade` command (see kuiper/cli.py for its options)."""
    if args.class_dir:
        out = args.out or args.class_dir / "gradebook.csv"
        rows = grade_class(args.class_dir, out, args.lesson, args.tests, args.timeout)
        if not args.json:
            print(f"wrote {out}: {len(rows)} students")
        return rows
    grades = grade(args.workspace or workspace.workspace_dir(), args.lesson, not args.no_tests, args.timeout)
    if not args.json:
        print(format_table(grades))
    return as_json(grades)

