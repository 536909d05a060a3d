"""The student's side: a workspace nothing overwrites, the student build of the package, the exercise
wrapper's reference fallback, and `kuiper grade` on a student who solved some, all or none."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numba
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kuiper import course, grade, workspace  # noqa: E402
from tools import sync  # noqa: E402

LESSONS = sync.lessons()


def solved_cells(lesson: sync.Lesson) -> dict[str, str]:
    """Exercise label -> the workbook cell a student who solved it would have (the solution's code)."""
    solved = sync.workbook(nbformat.read(lesson.executed, as_version=4), lesson.number, solved=True)
    return {c.metadata["kuiper"]["exercise"]: c.source for c in solved.cells if c.metadata.get("kuiper")}


def solve(folder: Path, lesson: sync.Lesson, labels: dict[str, str]) -> None:
    """Put the given cells (label -> source) into the workspace's workbook of `lesson`."""
    path = folder / lesson.workbook.name
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        label = cell.metadata.get("kuiper", {}).get("exercise")
        if label in labels:
            cell.source = labels[label]
    nbformat.write(nb, path)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("*.ipynb")}


def test_a_fresh_workspace_is_created_and_never_overwritten(tmp_path):
    written = workspace.create(tmp_path)
    assert sorted(p.name for p in written) == sorted(lesson.workbook.name for lesson in LESSONS)
    mine = tmp_path / LESSONS[0].workbook.name
    mine.write_text(mine.read_text().replace("raise NotImplementedError", "return 42  # mine", 1))
    before = snapshot(tmp_path)
    assert workspace.create(tmp_path) == []
    assert snapshot(tmp_path) == before, "a second `make lab` changed the student's files"


def test_reset_restores_one_lesson_and_keeps_the_old_one(tmp_path):
    workspace.create(tmp_path)
    first, second = (tmp_path / lesson.workbook.name for lesson in LESSONS[:2])
    first.write_text(first.read_text().replace("raise NotImplementedError", "return 42  # mine", 1))
    second.write_text(second.read_text().replace("raise NotImplementedError", "return 7  # mine", 1))
    edited_second = second.read_bytes()
    target, backup = workspace.reset(LESSONS[0].number, tmp_path)
    assert target == first and target.read_bytes() == LESSONS[0].workbook.read_bytes()
    assert backup.name.startswith(f"{first.name}.bak-") and "return 42  # mine" in backup.read_text()
    assert second.read_bytes() == edited_second, "reset touched another lesson"
    with pytest.raises(workspace.WorkspaceError, match="no lesson 99"):
        workspace.reset(99, tmp_path)


def test_the_workspace_follows_kuiper_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("KUIPER_WORKSPACE", str(tmp_path / "grading" / "ada"))
    assert workspace.workspace_dir() == tmp_path / "grading" / "ada"
    monkeypatch.delenv("KUIPER_WORKSPACE")
    assert workspace.workspace_dir() == ROOT / "workspace"


def test_sync_check_never_reads_or_writes_the_workspace(tmp_path, monkeypatch):
    """`make check` (and `make sync`, the same exporter) looks only at solutions/, kuiper/, notebooks/."""
    monkeypatch.setenv("KUIPER_WORKSPACE", str(tmp_path))
    workspace.create(tmp_path)
    mine = tmp_path / LESSONS[0].workbook.name
    mine.write_text(mine.read_text().replace("raise NotImplementedError", "return 42  # mine", 1))
    before = snapshot(tmp_path)
    sync.check()
    assert snapshot(tmp_path) == before
    assert "workspace" not in (ROOT / "tools" / "sync.py").read_text().split('"""', 2)[2], \
        "sync's code must not know the workspace"
    assert "workspace/" in (ROOT / ".gitignore").read_text().splitlines()


def test_exercise_wrapper_checks_itself_uses_the_reference_elsewhere(capsys):
    """In a check of another exercise, the reference; in its own, the student's; in a demo, a fallback."""
    from kuiper.tensor import Tensor

    @course.exercise("1.6")
    def broadcast_shapes(a, b):
        raise NotImplementedError("Exercise 1.6: the broadcast shape")

    @course.exercise("1.4")
    def pad(self, top, bottom, left, right, value=0.0):
        return "student's pad"

    with course.check("Exercise 1.6"):
        broadcast_shapes((2, 1), (1, 3))
    with course.check("Exercise 1.1"):
        assert broadcast_shapes((2, 1), (1, 3)) == (2, 3)
        assert pad(Tensor.ones(1, 1), 1, 0, 0, 0).shape == (2, 1), "the reference pad"
    with course.check("Exercise 1.4"):
        assert pad(Tensor.ones(1, 1), 1, 0, 0, 0) == "student's pad"
    assert broadcast_shapes((4,), (1,)) == (4,)
    assert broadcast_shapes((5,), (1,)) == (5,)
    assert capsys.readouterr().out.splitlines() == [
        "TODO Exercise 1.6: not implemented yet", "PASS Exercise 1.1", "PASS Exercise 1.4",
        "(Exercise 1.6 not solved yet: using the reference)"]


def test_a_todo_names_the_exercise_that_raised(capsys):
    with course.check("Exercise 2.3"):
        raise NotImplementedError("Exercise 2.1: parse a value")
    with course.check("Exercise 2.3"):
        raise NotImplementedError("Exercise 2.3: Kahn's algorithm")
    assert capsys.readouterr().out.splitlines() == [
        "TODO Exercise 2.3: needs Exercise 2.1, not implemented yet", "TODO Exercise 2.3: not implemented yet"]


def test_raises_says_expected_and_got():
    def fill(error=None):
        if error:
            raise error
        return [1, 2]

    with pytest.raises(AssertionError, match=r"fill\(KeyError\('x'\)\): expected ValueError, got KeyError: 'x'"):
        course.raises(ValueError, fill, KeyError("x"))
    with pytest.raises(AssertionError, match=r"fill\(\): expected ValueError, got \[1, 2\]"):
        course.raises(ValueError, fill)
    assert str(course.raises(ValueError, fill, ValueError("6 values"))) == "6 values"
    with pytest.raises(NotImplementedError):
        course.raises(ValueError, fill, NotImplementedError("Exercise 1.1: todo"))


def test_generator_exercises_fall_back_before_their_first_item(capsys):
    import kuiper.exercises

    kuiper.exercises.EXERCISES["0.1"] = {"lesson": "00_x", "what": "", "module": "tests.test_workspace",
                                        "names": ["count"], "wrapped": ["count"]}
    try:
        @course.exercise("0.1")
        def count(n):
            raise NotImplementedError("Exercise 0.1: count")
            yield

        assert list(count(3)) == [0, 1, 2]
        with course.check("Exercise 0.1"):
            list(count(3))
    finally:
        del kuiper.exercises.EXERCISES["0.1"]
    assert capsys.readouterr().out.splitlines() == [
        "(Exercise 0.1 not solved yet: using the reference)", "TODO Exercise 0.1: not implemented yet"]


def count(n):
    """The reference of the generator exercise above."""
    yield from range(n)


def test_notebook_only_exercises_fall_back_to_their_solution_code(capsys):
    """An exercise the package does not export runs its solution's code, in a copy of the notebook's
    namespace (here this module's: SCALE), and the student's own definitions stay."""
    import kuiper.exercises

    kuiper.exercises.EXERCISES["0.3"] = {"lesson": "00_x", "what": "", "module": None, "names": ["scaled"],
                                        "wrapped": ["scaled"], "reference": "def scaled(x):\n    return SCALE * x"}
    try:
        @course.exercise("0.3")
        def scaled(x):
            raise NotImplementedError("Exercise 0.3: scale it")

        assert scaled(2) == 6
        with course.check("Exercise 0.3"):
            scaled(2)
    finally:
        del kuiper.exercises.EXERCISES["0.3"]
    assert capsys.readouterr().out.splitlines() == [
        "(Exercise 0.3 not solved yet: using the reference)", "TODO Exercise 0.3: not implemented yet"]


SCALE = 3


class FakeKernel:
    """Stands in for a numba.cuda kernel: `kernel[blocks, threads](launches)` appends (its function's
    name, the launch configuration) to the list `launches`; the function is never run (on a GPU, a
    kernel's `raise` does not reach Python)."""

    def __init__(self, fn):
        self.py_func = fn

    def __getitem__(self, config):
        return lambda launches: launches.append((self.py_func.__qualname__, config))


FakeKernel.__module__ = "numba.cuda.fake"


def _fill(out):
    out[0] = 1


_fill.__name__ = "fill"
fill = FakeKernel(_fill)  # the reference kernel of the exercise below


def test_cuda_kernel_exercises_fall_back_and_read_todo_when_unsolved(capsys, monkeypatch):
    """A kernel exercise that still raises NotImplementedError is unsolved before it runs: a demo launch
    runs the reference kernel, its check says TODO; a solved one runs the student's kernel."""
    import kuiper.exercises

    def fill(out):
        raise NotImplementedError("Exercise 0.4: fill")

    def solved(out):
        out[0] = 2

    solved.__name__ = "fill"
    monkeypatch.setitem(kuiper.exercises.EXERCISES, "0.4", {"lesson": "00_x", "what": "", "names": ["fill"],
                                                             "module": "tests.test_workspace", "wrapped": ["fill"]})
    launches = []
    kernel = course.exercise("0.4")(FakeKernel(fill))
    kernel[2, 32](launches)
    with course.check("Exercise 0.4"):
        kernel[4, 32](launches)
    course.exercise("0.4")(FakeKernel(solved))[1, 8](launches)
    assert [(name.rsplit(".", 1)[-1], config) for name, config in launches] == [("_fill", (2, 32)), ("solved", (1, 8))]
    assert kernel.__name__ == "fill"
    assert capsys.readouterr().out.splitlines() == [
        "(Exercise 0.4 not solved yet: using the reference)", "TODO Exercise 0.4: not implemented yet"]


#: What a notebook's namespace gives the reference code of a notebook-only exercise when it runs.
NOTEBOOK_GLOBALS = {"njit": numba.njit, "prange": numba.prange}


def test_every_wrapped_exercise_has_a_reference():
    from kuiper.exercises import EXERCISES

    for label, entry in EXERCISES.items():
        for name in entry["wrapped"]:
            student = SimpleNamespace(__name__=name.rsplit(".", 1)[-1], __globals__=NOTEBOOK_GLOBALS)
            assert callable(course.reference(label, student)), f"Exercise {label}: {name}"


def test_a_solved_workspace_builds_the_reference_package(tmp_path):
    """The student build of a student who solved everything is the reference, module for module."""
    for lesson in LESSONS:
        nbformat.write(sync.workbook(nbformat.read(lesson.executed, as_version=4), lesson.number, solved=True),
                       tmp_path / lesson.workbook.name)
    bodies, warnings = workspace.student_bodies(tmp_path)
    assert warnings == []
    reference = sync.build_modules()
    assert sync.build_modules(ROOT, bodies) == reference


def test_the_student_build_takes_the_students_code_and_survives_broken_cells(tmp_path):
    workspace.create(tmp_path)
    lesson = LESSONS[0]
    cells = solved_cells(lesson)
    solve(tmp_path, lesson, {"1.4": cells["1.4"].replace("left:left + self.cols", "left:left + self.cols + 0"),
                             "1.2": "def fill(self", "1.6": "def not_broadcast_shapes(a, b):\n    return a"})
    bodies, warnings = workspace.student_bodies(tmp_path)
    assert any("Exercise 1.2 has a syntax error (line 1)" in w for w in warnings)
    assert any("Exercise 1.6 no longer defines broadcast_shapes" in w for w in warnings)
    package = workspace.student_build(tmp_path, quiet=True)
    tensor = (package / "tensor.py").read_text()
    assert "left:left + self.cols + 0" in tensor, "the student's 1.4"
    assert 'raise NotImplementedError("Exercise 1.2: ' in tensor and 'raise NotImplementedError("Exercise 1.6: ' in tensor
    assert "@exercise" not in tensor and "import exercise" not in tensor
    assert (package / "cuda" / "sgemv.cu").is_file() and (package / "cli.py").is_file()
    assert json.loads((package / workspace.MARKER).read_text())["workspace"] == str(tmp_path.resolve())
    assert workspace.student_build(tmp_path, quiet=True) == package, "an unchanged workspace is not rebuilt"


def student_env(folder: Path) -> dict[str, str]:
    return os.environ | {"KUIPER_BUILD": "student", "KUIPER_WORKSPACE": str(folder), "PYTHONPATH": str(ROOT)}


def test_kuiper_build_student_imports_the_student_build(tmp_path):
    """With lesson 03's register solved, `import kuiper` gives the student's package."""
    workspace.create(tmp_path)
    solve(tmp_path, LESSONS[2], solved_cells(LESSONS[2]))
    code = "import kuiper, kuiper.tensor; print(kuiper.tensor.__file__); kuiper.Tensor.zeros(2, 3).cols"
    run = subprocess.run([sys.executable, "-c", code], env=student_env(tmp_path), capture_output=True, text=True)
    assert run.stdout.startswith(str(tmp_path.resolve() / ".build")), run.stdout + run.stderr
    assert run.stderr.strip().endswith("NotImplementedError: Exercise 1.1: return the size of the last, "
                                       "second-last and third-last dimension (1 when missing)")


def test_the_cli_names_the_first_unsolved_exercise_on_its_path(tmp_path):
    workspace.create(tmp_path)
    command = [sys.executable, "-m", "kuiper", "run", "data/models/mobilenet_v2.pnnx.param", "data/images/coffee.jpg"]
    run = subprocess.run(command, cwd=ROOT, env=student_env(tmp_path), capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == (f"kuiper: your build needs Exercise 3.3 (register, lesson 03) even to import: solve it in "
                          f"{tmp_path / '03_registry.ipynb'}, or run without KUIPER_BUILD=student\n")
    solve(tmp_path, LESSONS[2], solved_cells(LESSONS[2]))
    run = subprocess.run(command, cwd=ROOT, env=student_env(tmp_path), capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == (f"kuiper: your build has not solved Exercise 2.1 (parse_value, lesson 02) yet: solve it in "
                          f"{tmp_path / '02_graph.ipynb'}, or run without KUIPER_BUILD=student\n")


@pytest.mark.slow
def test_grade_two_solved_one_buggy_the_rest_todo(tmp_path):
    """The issue's first 'done when': two exercises of lesson 01 solved, one with a planted bug."""
    workspace.create(tmp_path)
    cells = solved_cells(LESSONS[0])
    solve(tmp_path, LESSONS[0], {"1.2": cells["1.2"], "1.4": cells["1.4"],
                                 "1.6": cells["1.6"].replace("out.append(n if m == 1 else m)", "out.append(max(m, n))")})
    before = snapshot(tmp_path)
    (result,) = grade.grade(tmp_path, [1], tests=False)
    verdicts = {r.label: (r.status, r.message) for r in result.results}
    assert verdicts == {"1.1": ("TODO", "not implemented yet"), "1.2": ("PASS", ""), "1.3": ("TODO", "not implemented yet"),
                        "1.4": ("PASS", ""), "1.5": ("TODO", "not implemented yet"),
                        "1.6": ("FAIL", "broadcast_shapes((1,), (0,)): expected (0,), got (1,)"),
                        "1.7": ("TODO", "not implemented yet")}
    assert result.error == "" and snapshot(tmp_path) == before, "grading must not write the student's workbook"
    table = grade.format_table([result])
    assert "01  1.6    FAIL  broadcast_shapes((1,), (0,)): expected (0,), got (1,)" in table
    assert table.endswith("2 PASS, 1 FAIL, 4 TODO of 7 exercises")


@pytest.mark.slow
def test_grade_a_class_into_one_csv(tmp_path):
    for student, solved in [("ada", ["1.1", "1.2"]), ("bob", [])]:
        workspace.create(tmp_path / "class" / student)
        cells = solved_cells(LESSONS[0])
        solve(tmp_path / "class" / student, LESSONS[0], {label: cells[label] for label in solved})
    out = tmp_path / "gradebook.csv"
    rows = grade.grade_class(tmp_path / "class", out, [1])
    lines = out.read_text().splitlines()
    assert lines[0] == "student,1.1,1.2,1.3,1.4,1.5,1.6,1.7,passed,note"
    assert lines[1:] == ["ada,PASS,PASS,TODO,TODO,TODO,TODO,TODO,2,", "bob,TODO,TODO,TODO,TODO,TODO,TODO,TODO,0,"]
    assert [r["passed"] for r in rows] == [2, 0]
    assert not list(tmp_path.glob("*.tmp")), "the gradebook is written to a temporary file, then renamed"


def solved_workspace(folder: Path) -> Path:
    for lesson in LESSONS:
        nbformat.write(sync.workbook(nbformat.read(lesson.executed, as_version=4), lesson.number, solved=True),
                       folder / lesson.workbook.name)
    return folder


def cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kuiper", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_a_student_who_solved_everything_runs_mobilenet_like_the_reference(tmp_path):
    images = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "data" / "images").glob("*.jpg"))
    args = ["run", "data/models/mobilenet_v2.pnnx.param", *images]
    reference = cli(args)
    student = cli(args, student_env(solved_workspace(tmp_path)))
    assert reference.returncode == 0 and reference.stdout.count("\n") == len(images)
    assert (student.returncode, student.stdout) == (0, reference.stdout)


@pytest.mark.slow
def test_a_student_who_solved_everything_generates_like_the_reference(tmp_path):
    model = ROOT / "data" / "models" / "smollm2-135m-instruct-q4_1.gguf"
    if not model.exists():
        pytest.skip(f"{model} missing: run `make models`")
    args = ["generate", str(model), "--prompt", "What is the capital of France?", "--max-tokens", "16"]
    reference = cli(args)
    student = cli(args, student_env(solved_workspace(tmp_path)))
    assert reference.returncode == 0 and len(reference.stdout) > 10
    assert (student.returncode, student.stdout) == (0, reference.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.source.stem)
def test_a_student_who_solved_everything_grades_all_pass(tmp_path, lesson):
    solve_all = sync.workbook(nbformat.read(lesson.executed, as_version=4), lesson.number, solved=True)
    nbformat.write(solve_all, tmp_path / lesson.workbook.name)
    (result,) = grade.grade(tmp_path, [lesson.number], tests=False)
    assert [(r.label, r.status) for r in result.results] == [(r.label, "PASS") for r in result.results], \
        [(r.label, r.message) for r in result.results if r.status != "PASS"]


def test_kuiper_lab_creates_resets_and_says_so(tmp_path):
    created = cli(["lab", "--workspace", str(tmp_path)])
    assert created.stdout == f"{tmp_path}: {len(LESSONS)} new workbook(s), 0 kept as they were\n"
    again = cli(["lab", "create", "--workspace", str(tmp_path)])
    assert again.stdout == f"{tmp_path}: 0 new workbook(s), {len(LESSONS)} kept as they were\n"
    reset = json.loads(cli(["lab", "reset", "1", "--workspace", str(tmp_path), "--json"]).stdout)
    assert reset["workbook"] == str(tmp_path / LESSONS[0].workbook.name)
    assert Path(reset["backup"]).name.startswith(f"{LESSONS[0].workbook.name}.bak-")
    missing = cli(["lab", "reset", "--workspace", str(tmp_path)])
    assert (missing.returncode, missing.stderr) == (1, "kuiper: error: kuiper lab reset needs the lesson number: "
                                                      "kuiper lab reset 04\n")
