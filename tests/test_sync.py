"""The one-source pipeline: exported modules, executed lessons and student workbooks stay in step."""

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import sync  # noqa: E402

LESSONS = sync.lessons()


def cell(source: str, kind: str = "code") -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)


def test_generated_files_are_up_to_date():
    problems = sync.check()
    assert not problems, "run `make sync`:\n" + "\n".join(problems)


def test_generated_modules_name_their_lesson():
    generated = sync.generated_files()
    assert ROOT / "kuiper" / "tensor.py" in generated and ROOT / "kuiper" / "errors.py" in generated
    for path in generated:
        header = path.read_text().splitlines()[0]
        sources = header.removeprefix("# Generated from ").split(" by ")[0].split(", ")
        assert all((ROOT / s).is_file() for s in sources), f"{path}: header names {sources}"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.source.stem)
def test_every_exercise_is_announced_and_followed_by_its_check(lesson):
    nb = sync.read_lesson(lesson)
    found = sync.exercises(nb, lesson.number)
    assert len(found) >= 5 if lesson.number == 1 else found, "the lesson has too few exercises"
    for index, label, what in found:
        assert what, f"Exercise {label} says nothing about what to do"
        before = next(c for c in reversed(nb.cells[:index]) if c.cell_type == "markdown")
        assert f"Exercise {label}" in before.source, f"the markdown before Exercise {label} should name it"
        after = next(c for c in nb.cells[index + 1:] if c.cell_type == "code")
        assert f'check("Exercise {label}")' in after.source, f"Exercise {label} is not followed by its check"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.source.stem)
def test_workbook_keeps_signatures_and_hides_solutions(lesson):
    solution = sync.read_lesson(lesson)
    student = nbformat.read(lesson.workbook, as_version=4)
    kept = [c for c in solution.cells if c.cell_type != "code" or sync.strip_directives(c.source).strip()]
    assert len(student.cells) == len(kept), "only code cells that are empty without their directives go"
    by_label = {c.metadata.get("kuiper", {}).get("exercise"): c for c in student.cells}
    for index, label, _ in sync.exercises(solution, lesson.number):
        source = by_label[label].source
        assert f'raise NotImplementedError("Exercise {label}: ' in source
        given = sync.blank_solution(solution.cells[index].source, "").splitlines()
        for line in given:
            if line.lstrip().startswith(("def ", "@", '"""')):
                assert line in source, f"Exercise {label} lost the line {line!r}"
    for c in student.cells:
        if c.cell_type == "code":
            assert sync.BEGIN not in c.source and not sync.directives(c.source)
            assert c.outputs == [] and c.execution_count is None


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.source.stem)
def test_workbook_runs_to_the_end_with_every_check_todo(lesson):
    """Run All on the workbook as handed out: no cell stops it (demo cells fall back to the reference)
    and every check says TODO, naming its own exercise."""
    nb = nbformat.read(lesson.workbook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(lesson.workbook.parent)}}).execute()
    errors = [f"cell {i}: {o.ename}: {o.evalue}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, f"Run All stops: {errors[0]}"
    for _, label, _ in sync.exercises(sync.read_lesson(lesson), lesson.number):
        printed = [o.get("text", "") for c in nb.cells if f'check("Exercise {label}")' in c.source
                   for o in c.outputs if o.get("name") != "stderr"]  # numba's first-compile warnings
        assert printed and printed[0].startswith(f"TODO Exercise {label}: not implemented yet"), \
            f"Exercise {label} in the untouched workbook: {printed}"


def test_patch_to_functions_move_into_their_class():
    cells = [
        "class Box:\n    def __init__(self, n):\n        self.n = n",
        "@patch_to(Box)\n@property\ndef double(self) -> Box:\n    return self.n * 2\n\n\nLIMIT = 3",
        "@patch_to(Box)\ndef grow(self):\n    ### BEGIN SOLUTION\n    self.n += 1\n    ### END SOLUTION",
    ]
    text = sync.assemble(cells, "test")
    namespace = {}
    exec("from __future__ import annotations\n" + text, namespace)
    box = namespace["Box"](4)
    box.grow()
    assert (box.double, namespace["LIMIT"]) == (10, 3)
    assert "patch_to" not in text and text.index("def grow") < text.index("LIMIT")


def test_patch_to_without_its_class_is_reported():
    with pytest.raises(SystemExit, match=r"@patch_to\(Missing\) needs `class Missing`"):
        sync.assemble(["@patch_to(Missing)\ndef f(self):\n    pass"], "kuiper.x")


def test_export_routes_cells_and_blanks_exercises(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "kuiper").mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        cell("#| default_exp things"),
        cell("## Exercise 9.1 — twice", "markdown"),
        cell("#| export\n#| exercise: return twice x\ndef twice(x):\n    \"\"\"2x.\"\"\"\n"
             "    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
        cell("#| export errors\nclass Oops(Exception):\n    pass"),
        cell("print(twice(2))"),
    ])
    source = tmp_path / "solutions" / "09_things.py"
    import jupytext
    jupytext.write(nb, source, fmt="py:percent")
    modules = sync.build_modules(tmp_path)
    things = modules[tmp_path / "kuiper" / "things.py"]
    assert things.startswith("# Generated from solutions/09_things.py by tools/sync.py")
    assert "def twice(x):\n    \"\"\"2x.\"\"\"\n    return 2 * x\n" in things
    assert "class Oops" in modules[tmp_path / "kuiper" / "errors.py"]
    student = sync.workbook(sync.read_lesson(sync.Lesson(source)), 9)
    assert len(student.cells) == 4, "the default_exp cell is empty once its directive is gone: dropped"
    assert student.cells[1].source == ('from kuiper.course import exercise\n\n\n@exercise("9.1")\ndef twice(x):\n'
                                       '    """2x."""\n    raise NotImplementedError("Exercise 9.1: return twice x")')
    assert student.cells[1].metadata["kuiper"] == {"exercise": "9.1"}
    assert sync.student_bodies(student) == {"9.1": student.cells[1].source.split("\n", 4)[4]}
    index = modules[tmp_path / "kuiper" / "exercises.py"]
    assert "'9.1': {'lesson': '09_things', 'what': 'return twice x', 'module': 'kuiper.things'" in index
    assert sync.build_modules(tmp_path, {"9.1": "def twice(x):\n    return x + x"})[
        tmp_path / "kuiper" / "things.py"].endswith("def twice(x):\n    return x + x\n")


def test_merged_imports_do_not_depend_on_set_order():
    """`Function` and `function` tie under str.lower: the order once followed the hash seed, so modules flipped."""
    import ast
    import subprocess

    code = ("import ast; from tools import sync; print(sync.format_imports(ast.parse("
            "'from m import function\\nfrom m import Function\\nfrom m import b\\nimport Zed\\nimport zed').body))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parents[1], env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout
               for seed in range(8)}
    assert outputs == {"import Zed\nimport zed\nfrom m import b, Function, function\n"}, outputs


def test_exercise_methods_notebook_exercises_and_kernels_are_wrapped():
    """Every kind of exercise gets `@exercise` and a reference: a method of a class (only the methods
    holding a solution), a function the package does not export (its solution's code, annotations lazy,
    numba's cache dropped) and a CUDA kernel (device functions that kernels call stay plain)."""
    nb = nbformat.v4.new_notebook(cells=[
        cell("#| default_exp things"),
        cell("#| export\n#| exercise: read it\nclass Cursor:\n    def take(self, n):\n        return n\n\n"
             "    def value(self, t):\n        ### BEGIN SOLUTION\n        return self.take(t)\n"
             "        ### END SOLUTION"),
        cell("#| exercise: fill it\n@njit(parallel=True, cache=True)\ndef fill(x: np.ndarray) -> None:\n"
             "    ### BEGIN SOLUTION\n    x[:] = 1\n    ### END SOLUTION"),
        cell("#| export\n#| exercise: add\n@cuda.jit(device=True)\ndef one(a):\n    ### BEGIN SOLUTION\n    return a\n"
             "    ### END SOLUTION\n\n\n@cuda.jit\ndef add(a):\n    ### BEGIN SOLUTION\n    a[0] = one(a[0])\n"
             "    ### END SOLUTION"),
    ])
    index = sync.exercise_index(nb, 9, "09_things")
    assert [(entry["names"], entry["wrapped"]) for entry in index.values()] == [
        (["Cursor.value"], ["Cursor.value"]), (["fill"], ["fill"]), (["one", "add"], ["add"])]
    assert index["9.2"]["module"] is None and index["9.2"]["reference"] == (
        "from __future__ import annotations\n@njit(parallel=True)\ndef fill(x: np.ndarray) -> None:\n    x[:] = 1")
    assert "reference" not in index["9.1"]
    student = sync.workbook(nb, 9)
    assert '    @exercise("9.1")\n    def value(self, t):\n' in student.cells[0].source
    assert '@exercise("9.2")\n@njit(parallel=True, cache=True)\ndef fill' in student.cells[1].source
    kernels = student.cells[2].source
    assert kernels.count("@exercise") == 1 and '@exercise("9.3")\n@cuda.jit\ndef add' in kernels


def test_the_reference_of_an_unsolved_numba_exercise():
    """A workbook's exercise compiled with @njit is a numba dispatcher, which has no __globals__: the
    fallback to the reference must still find the notebook's namespace (it raised AttributeError)."""
    import numba

    from kuiper import course
    from kuiper.layers import conv

    @numba.njit
    def absorb(conv, after):
        raise NotImplementedError

    found = course.reference("6.7", absorb)  # the package's absorb is a plain function: rebound
    assert found.__code__ is conv.absorb.__code__
    assert found.__globals__["nbformat"] is nbformat, "expected the reference to see this module's names"
