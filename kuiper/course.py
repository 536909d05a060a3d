"""Helpers the lessons use in their cells: grow a class one cell at a time, and check exercises.

Hand-written: no lesson builds this module, and the package's engine code never imports it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import re
import reprlib
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

F = TypeVar("F")

#: Benchmarks and long reference comparisons run only when asked (KUIPER_LONG=1). tools/sync.py sets it
#: when it executes a lesson, so the stored outputs and the site show their results; such cells start
#: with `# NBVAL_SKIP` and `if LONG:`, so nbval and a student's "Run All" pass over them quickly.
LONG = os.environ.get("KUIPER_LONG") == "1"

#: The repository's data/ folder: sample inputs, tiny models, and the zoo under data/models.
DATA = Path(__file__).resolve().parents[1] / "data"


def package_file(package: str, inside: str) -> Path:
    """A data file that an installed pip package ships (a tokenizer model, say), found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the pip package {package!r} is not installed: pip install -e '.[dev]'")
    return Path(spec.origin).parent / inside


def patch_to(cls: type) -> Callable[[F], F]:
    """Decorator: add the function below to `cls` as a method (property, classmethod, …).

    The export step moves such functions into the class body, so `kuiper/` reads as plain classes.
    """

    def attach(member: Any) -> Any:
        func = getattr(member, "fget", None) or getattr(member, "__func__", None) or member
        setattr(cls, func.__name__, member)
        return member

    return attach


#: The exercise whose check is running ('2.1' inside `with check("Exercise 2.1")`), else None.
_CHECKING: ContextVar[str | None] = ContextVar("kuiper_checking", default=None)
LABEL = re.compile(r"Exercise (\d+\.\d+)")
_noted: set[str] = set()


@contextmanager
def check(name: str) -> Iterator[None]:
    """Run the assertions in the `with` block and print one PASS, FAIL or TODO line for exercise `name`.

    Inside the block, every other exercise runs its reference (see `exercise`), so the verdict is
    about exercise `name` alone. An unfinished exercise (NotImplementedError) reads as TODO, naming
    the exercise that raised when it is not `name`, rather than a traceback.
    """
    label = LABEL.search(name)
    token = _CHECKING.set(label[1] if label else name)
    try:
        yield
    except NotImplementedError as err:
        raised = LABEL.match(str(err))
        if raised and raised[0] != name:
            print(f"TODO {name}: needs {raised[0]}, not implemented yet")
        else:
            print(f"TODO {name}: not implemented yet")
    except AssertionError as err:
        print(f"FAIL {name}: {err or 'an assertion failed'}")
    except Exception as err:  # a student's bug of any kind is reported, not raised
        print(f"FAIL {name}: expected no error, got {type(err).__name__}: {err}")
    else:
        print(f"PASS {name}")
    finally:
        _CHECKING.reset(token)


def exercise(label: str) -> Callable[[F], F]:
    """Decorator the student workbook puts on each exercise function (tools/sync.py adds it; the
    lesson sources and the package never carry it). The decorated function runs

    * the student's code inside `with check("Exercise <label>")`: the check judges it alone;
    * the reference (the package's function of the same name, see kuiper/exercises.py) inside the
      check of any other exercise, so an unsolved or buggy exercise never changes another's verdict;
    * the student's code elsewhere (demo cells), falling back to the reference, with a printed note,
      while it still raises NotImplementedError: "Run All" runs to the end.

    It wraps functions, methods, generators and numba.cuda kernels (see `_Kernel`).
    """

    def wrap(func: Any) -> Any:
        if type(func).__module__.startswith("numba.cuda"):
            return _Kernel(label, func)
        if inspect.isgeneratorfunction(func):
            @functools.wraps(func)
            def run_generator(*args: Any, **kwargs: Any) -> Any:
                if _CHECKING.get() not in (None, label):
                    return (yield from reference(label, func)(*args, **kwargs))
                steps = func(*args, **kwargs)
                try:
                    first = next(steps)
                except StopIteration as stop:
                    return stop.value
                except NotImplementedError:
                    if _CHECKING.get() == label:
                        raise
                    _note(label)
                    return (yield from reference(label, func)(*args, **kwargs))
                yield first
                return (yield from steps)

            return run_generator

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            checking = _CHECKING.get()
            if checking not in (None, label):
                return reference(label, func)(*args, **kwargs)
            try:
                return func(*args, **kwargs)
            except NotImplementedError:
                if checking == label:
                    raise
                _note(label)
                return reference(label, func)(*args, **kwargs)

        return run

    return wrap


class _Kernel:
    """A CUDA kernel exercise (`@cuda.jit`, on a GPU or numba's simulator), launched as
    `kernel[blocks, threads](*args)` under the rules of `exercise`. A kernel that still holds its
    `raise NotImplementedError("Exercise N.M: ...")` counts as unsolved before it is launched: on a
    GPU a kernel cannot raise."""

    def __init__(self, label: str, kernel: Any) -> None:
        self.label, self.kernel = label, kernel
        self.function = getattr(kernel, "py_func", None) or kernel.fn  # the GPU's dispatcher, the simulator's
        self.__name__, self.__doc__ = self.function.__name__, self.function.__doc__

    def __getitem__(self, config: Any) -> Callable[..., None]:
        return functools.partial(self._launch, config)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kernel, name)

    def _launch(self, config: Any, *args: Any) -> None:
        checking = _CHECKING.get()
        if checking not in (None, self.label):
            return reference(self.label, self)[config](*args)
        try:
            if self._unsolved():
                raise NotImplementedError(f"Exercise {self.label}")
            return self.kernel[config](*args)
        except NotImplementedError:
            if checking == self.label:
                raise
            _note(self.label)
            return reference(self.label, self)[config](*args)

    def _unsolved(self) -> bool:
        code = self.function.__code__
        return "NotImplementedError" in code.co_names and any(
            isinstance(c, str) and LABEL.match(c) and LABEL.match(c)[1] == self.label for c in code.co_consts)


def _note(label: str) -> None:
    """Say once per exercise that a demo runs on the reference."""
    if label not in _noted:
        _noted.add(label)
        print(f"(Exercise {label} not solved yet: using the reference)")


def reference(label: str, student: Any) -> Any:
    """The reference implementation of the exercise function `student` (same name) of exercise `label`.

    A plain Python function is rebound to the student's globals (the notebook's namespace) on top of
    its module's, so it uses the notebook's classes and, through their wrappers, the other exercises.
    numba functions are returned as they are. An exercise that the package does not export carries
    its solution's code in kuiper/exercises.py ("reference"): it runs once per notebook, in a copy of
    the notebook's namespace. LookupError when the exercise has no reference."""
    from kuiper.exercises import EXERCISES

    entry = EXERCISES.get(label)
    if entry is not None and entry["module"] is None and "reference" in entry:
        return _notebook_reference(label, entry["reference"], student)[student.__name__]
    if entry is None or entry["module"] is None:
        raise LookupError(f"Exercise {label} has no reference in the package")
    name = next((n for n in entry["names"] if n.rsplit(".", 1)[-1] == student.__name__), None)
    if name is None:
        raise LookupError(f"Exercise {label} has no function {student.__name__!r} in {entry['module']}")
    found: Any = importlib.import_module(entry["module"])
    for part in name.split("."):
        found = inspect.getattr_static(found, part)
    found = getattr(found, "fget", None) or getattr(found, "__func__", None) or found
    if not isinstance(found, types.FunctionType):
        return found
    rebound = types.FunctionType(found.__code__, {**found.__globals__, **_namespace(student)},
                                 found.__name__, found.__defaults__, found.__closure__)
    rebound.__kwdefaults__ = found.__kwdefaults__
    return rebound


_references: dict[tuple[str, int], dict[str, Any]] = {}


def _namespace(student: Any) -> dict[str, Any]:
    """The globals of the notebook that defined `student`, a function or a numba dispatcher (`@njit`)."""
    return getattr(student, "py_func", student).__globals__


def _notebook_reference(label: str, code: str, student: Any) -> dict[str, Any]:
    """The namespace in which the reference code of a notebook-only exercise ran: a copy of the
    student's (the notebook's) globals, taken the first time, so the student's own definitions stay."""
    key = (label, id(_namespace(student)))
    if key not in _references:
        namespace = dict(_namespace(student))
        exec(compile(code, f"<reference of Exercise {label}>", "exec"), namespace)  # noqa: S102  (the course's own code)
        _references[key] = namespace
    return _references[key]


def agreement(got: Any, want: Any, tolerance: float = 1e-5) -> str:
    """How close `got` is to `want`, relative to the scale of `want`, in words that print the same on
    every machine when they agree (the exact rounding error differs between CPUs)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return f"shapes differ: {got.shape} vs {want.shape}"
    error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
    return f"error / scale < {tolerance:g}" if error < tolerance else f"error / scale {error:.1e} > {tolerance:g}"


def raises(error: type[Exception], call: Callable[..., Any], *args: Any, **kwargs: Any) -> Exception:
    """Call `call(*args, **kwargs)` inside a check and return the `error` it raises.

    Raises AssertionError saying what was expected and what came instead (a result or another error);
    NotImplementedError passes through, so an unfinished exercise still reads as TODO.
    """
    try:
        got = call(*args, **kwargs)
    except error as err:
        return err
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(f"{_call_text(call, args)}: expected {error.__name__}, "
                             f"got {type(err).__name__}: {err}") from err
    raise AssertionError(f"{_call_text(call, args)}: expected {error.__name__}, got {_short(got)}")


def _short(value: Any) -> str:
    """A one-line description: the shape of an array-like, else a repr cut to 60 characters."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, type):
        return f"{type(value).__name__} of shape {tuple(shape)}"
    return reprlib.repr(value)


def _call_text(call: Callable[..., Any], args: tuple[Any, ...]) -> str:
    return f"{getattr(call, '__name__', 'the call')}({', '.join(_short(a) for a in args)})"
