"""Helpers the lessons use in their cells: grow a class one cell at a time, and check exercises.

Hand-written: no lesson builds this module, and the package's engine code never imports it.
"""

from __future__ import annotations

import importlib.util
import os
import reprlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def check(name: str) -> Iterator[None]:
    """Run the assertions in the `with` block and print one PASS or FAIL line for exercise `name`.

    An unfinished exercise (NotImplementedError) reads as "not done yet" rather than a traceback.
    """
    try:
        yield
    except NotImplementedError:
        print(f"TODO {name}: not implemented yet")
    except AssertionError as err:
        print(f"FAIL {name}: {err or 'an assertion failed'}")
    except Exception as err:  # a student's bug of any kind is reported, not raised
        print(f"FAIL {name}: expected no error, got {type(err).__name__}: {err}")
    else:
        print(f"PASS {name}")


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
