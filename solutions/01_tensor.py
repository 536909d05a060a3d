# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 01 — Tensor
#
# Every layer of an inference engine takes tensors in and gives tensors out: an image is a
# `3 × 224 × 224` tensor, a convolution's weights are a `64 × 3 × 7 × 7` tensor, a language
# model's next-token scores are a `49152`-long tensor. In this lesson you build `kuiper.Tensor`,
# the one data structure every later lesson stands on.
#
# KuiperInfer's C++ `Tensor<float>` wraps an Armadillo cube and hand-writes its shape logic. Ours
# wraps a numpy array, so the arithmetic is numpy's and fast, and what we write is the part that
# teaches: shapes, memory order, padding, broadcasting, and errors that say what went wrong.
#
# You will write:
#
# | exercise | what |
# |---|---|
# | 1.1 | `channels`, `rows`, `cols` of an N-d tensor |
# | 1.2 | `fill` from a flat list, row- or column-major |
# | 1.3 | `reshape`, row- or column-major |
# | 1.4 | `pad` each side of the rows and columns |
# | 1.5 | `transform` every element with a function |
# | 1.6 | the broadcasting rule, `broadcast_shapes` |
# | 1.7 | element-wise arithmetic `+ - * /` on two tensors or a tensor and a number |
#
# Each exercise is followed by a check cell that prints `PASS` when your code is right.

# %%
#| default_exp tensor

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from kuiper.course import check, patch_to, raises

# %% [markdown]
# ## Errors that say what was expected
#
# A student who feeds a `3 × 4` tensor to a reshape into `5 × 2` should read *cannot reshape
# (3, 4) (12 elements) to (5, 2) (10 elements)*, not a numpy traceback from three calls deep.
# Every error `kuiper` raises on bad input derives from `KuiperError`, and also from the matching
# built-in error, so `except ValueError` keeps working.
#
# This cell is exported to `kuiper/errors.py` (the `#| export errors` line says so); later lessons
# add their own errors there.

# %%
#| export errors
class KuiperError(Exception):
    """Base of every error kuiper raises on bad input: catch this to catch them all."""


class ShapeError(KuiperError, ValueError):
    """A shape, size or padding that does not fit; the message gives expected and actual."""


class DTypeError(KuiperError, TypeError):
    """An element type kuiper does not support."""


class DeviceError(KuiperError, RuntimeError):
    """A device that is unknown or not available on this machine."""


# %% [markdown]
# The export step wrote the cell above to `kuiper/errors.py`. From here on the lesson imports it
# from the package, exactly as the generated `kuiper/tensor.py` will.

# %%
#| export
import math
from types import ModuleType

import numpy as np

from kuiper.errors import DeviceError, DTypeError, ShapeError

# %% [markdown]
# ## Element types and devices
#
# Inference computes in `float32`. The LLM lesson stores weights as `float16` and the int8 lesson
# as `int8`; images arrive as `uint8`; token ids and indices are integers. `float64` is left out
# on purpose: one stray double promotes every matrix product it touches to double precision, and
# that alone makes a language model several times slower. Arrays that arrive as `float64` (numpy's
# default) are converted to `float32` on the way in.
#
# Where the numbers live is the tensor's *device*. All array work goes through the module that
# `backend(device)` returns: numpy for `'cpu'` now; lesson 13 adds cupy for `'cuda'` to the same
# table, and nothing else has to change.

# %%
#| export
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "bool")

BACKENDS: dict[str, ModuleType] = {"cpu": np}
SUPPORTED = frozenset(np.dtype(name) for name in DTYPES)  # every layer's output passes here: a quick test first


def to_dtype(dtype: object) -> np.dtype:
    """The numpy dtype for `dtype` (a name or a numpy dtype); DTypeError if kuiper has no such type."""
    if isinstance(dtype, np.dtype) and dtype in SUPPORTED:
        return dtype
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise DTypeError(f"unsupported dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return resolved


def backend(device: str) -> ModuleType:
    """The array module that holds a tensor's data on `device`: numpy on the CPU, cupy on 'cuda'."""
    if device == "cuda" and device not in BACKENDS:
        from kuiper.cuda.device import device_module  # lesson 13; DeviceError saying why when there is no GPU

        BACKENDS["cuda"] = device_module()
    if device not in BACKENDS:
        raise DeviceError(f"unknown device {device!r}: expected one of {', '.join(BACKENDS)}")
    return BACKENDS[device]


# %%
print(to_dtype("float16"), to_dtype(np.int8))
try:
    to_dtype("float64")
except DTypeError as err:
    print("DTypeError:", err)

# %% [markdown]
# ## The `Tensor` class
#
# A `Tensor` is an array plus the device it lives on. The constructor takes anything array-like;
# numpy arrays of a supported dtype are wrapped **without a copy**, which matters when the array
# is a 500 MB weight file mapped from disk.

# %%
#| export
class Tensor:
    """An n-dimensional array on a device: the data every kuiper layer consumes and produces."""

    def __init__(self, data: object, dtype: object = None, device: str = "cpu"):
        array = backend(device).asarray(data)
        if dtype is None:
            dtype = "float32" if array.dtype == np.float64 else array.dtype
        self.data = array.astype(to_dtype(dtype), copy=False)
        self.device = device

    @classmethod
    def full(cls, shape: tuple[int, ...], value: float, dtype: object = "float32",
             device: str = "cpu") -> "Tensor":
        """A tensor of `shape` with every element equal to `value`."""
        return cls(backend(device).full(shape, value, dtype=to_dtype(dtype)), device=device)

    @classmethod
    def zeros(cls, *shape: int, dtype: object = "float32", device: str = "cpu") -> "Tensor":
        """A tensor of zeros: `Tensor.zeros(3, 224, 224)`."""
        return cls.full(shape, 0, dtype, device)

    @classmethod
    def ones(cls, *shape: int, dtype: object = "float32", device: str = "cpu") -> "Tensor":
        """A tensor of ones."""
        return cls.full(shape, 1, dtype, device)

    @classmethod
    def rand(cls, *shape: int, seed: int | None = None, dtype: object = "float32") -> "Tensor":
        """Uniform samples in [0, 1); the same `seed` gives the same tensor."""
        return cls(np.random.default_rng(seed).random(shape), dtype=dtype)

    @classmethod
    def randn(cls, *shape: int, seed: int | None = None, dtype: object = "float32") -> "Tensor":
        """Standard normal samples; the same `seed` gives the same tensor."""
        return cls(np.random.default_rng(seed).standard_normal(shape), dtype=dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(self.data.size)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def numpy(self) -> np.ndarray:
        """The data as a numpy array: shared with the tensor on the CPU, copied from the GPU (lesson 13)."""
        return self.data if isinstance(self.data, np.ndarray) else self.data.get()

    def __array__(self, dtype: object = None, copy: bool | None = None) -> np.ndarray:
        array = self.numpy() if dtype is None else self.numpy().astype(dtype, copy=False)
        return array.copy() if copy else array

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), precision=4, threshold=64)
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device!r})\n{body}"


# %%
t = Tensor.zeros(2, 3)
t

# %%
weights = np.arange(6, dtype=np.float32).reshape(2, 3)
shared = Tensor(weights)
weights[0, 0] = 42
print("shares memory with the numpy array:", shared.data[0, 0] == 42)
print("a float64 array becomes", Tensor(np.ones(3)).dtype)

# %% [markdown]
# ## Exercise 1.1 — channels, rows and cols
#
# KuiperInfer's tensors are 3-d: `channels × rows × cols`. Ours are N-d (a batch of images is
# 4-d, a token sequence 1-d), so we keep KuiperInfer's names for the **last three** dimensions and
# count a missing one as 1: a shape `(8, 3, 224, 224)` has 3 channels, 224 rows and 224 cols; a
# shape `(10,)` has 1 channel, 1 row and 10 cols.

# %%
#| export
#| exercise: return the size of the last, second-last and third-last dimension (1 when missing)
@patch_to(Tensor)
@property
def cols(self) -> int:
    """Size of the last dimension (1 for a 0-d tensor)."""
    ### BEGIN SOLUTION
    return self.shape[-1] if self.ndim >= 1 else 1
    ### END SOLUTION


@patch_to(Tensor)
@property
def rows(self) -> int:
    """Size of the second-last dimension, 1 when there is none."""
    ### BEGIN SOLUTION
    return self.shape[-2] if self.ndim >= 2 else 1
    ### END SOLUTION


@patch_to(Tensor)
@property
def channels(self) -> int:
    """Size of the third-last dimension, 1 when there is none."""
    ### BEGIN SOLUTION
    return self.shape[-3] if self.ndim >= 3 else 1
    ### END SOLUTION


# %%
with check("Exercise 1.1"):
    for shape, expected in [((8, 3, 224, 224), (3, 224, 224)), ((2, 4, 5), (2, 4, 5)), ((4, 5), (1, 4, 5)),
                            ((10,), (1, 1, 10)), ((), (1, 1, 1))]:
        t = Tensor.zeros(*shape)
        got = (t.channels, t.rows, t.cols)
        assert got == expected, f"shape {shape}: expected (channels, rows, cols) = {expected}, got {got}"

# %% [markdown]
# ## Row-major and column-major order
#
# Memory is one long line of numbers; a shape says how to fold it. **Row-major** order (C, numpy,
# PyTorch) walks a row to its end before starting the next; **column-major** order (Fortran,
# Armadillo, and so KuiperInfer inside each channel) walks down a column first. For a matrix with
# $R$ rows and $C$ columns the element at row $i$, column $j$ sits at
#
# $$\text{offset}_\text{row-major}(i, j) = i\,C + j \qquad\qquad \text{offset}_\text{col-major}(i, j) = j\,R + i.$$
#
# For more dimensions the rule is the same: in row-major order the **last** index moves fastest,
# in column-major order the **first** one does. The picture numbers each element by its offset.

# %%
def draw_order(ax, rows: int, cols: int, row_major: bool) -> None:
    """Draw a rows × cols grid, each cell labelled with its offset in memory, and the walk."""
    offset = np.arange(rows * cols).reshape((rows, cols), order="C" if row_major else "F")
    ax.imshow(offset, cmap="Blues", alpha=0.6)
    for (i, j), k in np.ndenumerate(offset):
        ax.text(j, i, str(k), ha="center", va="center", fontsize=14)
    walk = np.argsort(offset, axis=None)
    ax.plot(walk % cols, walk // cols, "-", color="tab:red", lw=1.5, alpha=0.7)
    ax.set_title("row-major (C)" if row_major else "column-major (Fortran)")
    ax.set_xticks(range(cols)), ax.set_yticks(range(rows))
    ax.set_xlabel("column j"), ax.set_ylabel("row i")


fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
draw_order(axes[0], 3, 4, row_major=True)
draw_order(axes[1], 3, 4, row_major=False)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Exercise 1.2 — fill
#
# `fill` copies a flat list of values into the tensor **in place**, in row-major or column-major
# order (this is how KuiperInfer loads weights stored either way). Too many or too few values is
# a `ShapeError` that says how many were expected. Return `self` so calls can be chained.
#
# Hint: numpy's `reshape` takes `order="C"` (row-major) or `order="F"` (column-major).

# %%
#| export
#| exercise: copy `values` into the tensor in row- or column-major order; ShapeError on a count mismatch
@patch_to(Tensor)
def fill(self, values: object, row_major: bool = True) -> Tensor:
    """Fill in place from a flat sequence of exactly `size` values; returns self."""
    ### BEGIN SOLUTION
    flat = np.asarray(values, dtype=self.dtype).ravel()
    if flat.size != self.size:
        raise ShapeError(f"fill needs {self.size} values for shape {self.shape}, got {flat.size}")
    self.data[...] = flat.reshape(self.shape, order="C" if row_major else "F")
    return self
    ### END SOLUTION


# %%
with check("Exercise 1.2"):
    t = Tensor.zeros(2, 3)
    assert t.fill(range(6)) is t, "expected fill to return the tensor itself"
    got = t.numpy().tolist()
    assert got == [[0, 1, 2], [3, 4, 5]], f"row-major fill: expected [[0, 1, 2], [3, 4, 5]], got {got}"
    got = t.fill(range(6), row_major=False).numpy().tolist()
    assert got == [[0, 2, 4], [1, 3, 5]], f"column-major fill: expected [[0, 2, 4], [1, 3, 5]], got {got}"
    cube = Tensor.zeros(2, 3, 4).fill(range(24), row_major=False).numpy()
    want = np.arange(24).reshape(2, 3, 4, order="F")
    assert np.array_equal(cube, want), f"column-major fill of 2 × 3 × 4: expected\n{want}\ngot\n{cube}"
    for count in (5, 7):
        err = raises(ShapeError, t.fill, range(count))
        assert "6" in str(err) and str(count) in str(err), \
                f"expected the message to say 6 needed, {count} given; got: {err}"

# %% [markdown]
# ## Exercise 1.3 — reshape and flatten
#
# Reshaping keeps the elements and their order and changes only the fold. *Which* order matters:
# a row-major reshape reads and writes the elements row by row, a column-major one column by
# column, and the two give different tensors (KuiperInfer's `Reshape(shape, row_major)` offers
# both). One dimension may be `-1`, meaning "whatever makes the sizes match".
#
# Write the column-major case **without** numpy's `order="F"`. The trick: reversing all axes
# (`.T`) turns a column-major walk into a row-major one, so transpose, reshape row-major to the
# reversed shape, and transpose back.

# %%
#| export
def resolve_shape(shape: tuple[int, ...], source: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` with one optional -1 inferred so it holds as many elements as `source`."""
    shape, size = tuple(int(n) for n in shape), math.prod(source)
    if shape.count(-1) > 1 or any(n < -1 for n in shape):
        raise ShapeError(f"invalid shape {shape}: sizes must be >= 0, with at most one -1")
    known = math.prod(n for n in shape if n != -1)
    if -1 in shape and known and size % known == 0:
        shape = tuple(size // known if n == -1 else n for n in shape)
    if -1 in shape or math.prod(shape) != size:
        elements = "" if -1 in shape else f" ({math.prod(shape)} elements)"
        raise ShapeError(f"cannot reshape {source} ({size} elements) to {shape}{elements}")
    return shape


# %%
#| export
#| exercise: return a tensor of `shape` with the elements read and written row- or column-major
@patch_to(Tensor)
def reshape(self, *shape: int, row_major: bool = True) -> Tensor:
    """The same elements folded into `shape` (one entry may be -1), in row- or column-major order."""
    shape = resolve_shape(shape, self.shape)
    ### BEGIN SOLUTION
    if row_major:
        return Tensor(self.data.reshape(shape), device=self.device)
    return Tensor(self.data.T.reshape(shape[::-1]).T, device=self.device)
    ### END SOLUTION


@patch_to(Tensor)
def flatten(self, row_major: bool = True) -> Tensor:
    """The elements as a 1-d tensor, in row- or column-major order."""
    return self.reshape(self.size, row_major=row_major)


# %%
with check("Exercise 1.3"):
    t = Tensor(np.arange(6).reshape(2, 3))
    got = t.reshape(3, 2).numpy().tolist()
    assert got == [[0, 1], [2, 3], [4, 5]], f"row-major reshape: expected [[0, 1], [2, 3], [4, 5]], got {got}"
    got = t.reshape(3, -1, row_major=False).numpy().tolist()
    assert got == [[0, 4], [3, 2], [1, 5]], f"column-major reshape: expected [[0, 4], [3, 2], [1, 5]], got {got}"
    big = Tensor.randn(2, 3, 4, seed=0)
    for shape in [(4, 6), (3, 2, 4), (24,)]:
        for row_major, order in [(True, "C"), (False, "F")]:
            got, want = big.reshape(*shape, row_major=row_major).numpy(), big.numpy().reshape(shape, order=order)
            assert np.array_equal(got, want), \
                f"reshape{shape} row_major={row_major}: expected\n{want}\ngot\n{got}"

# %% [markdown]
# A size mismatch is caught before numpy sees it, and the message names both shapes:

# %%
try:
    Tensor.zeros(3, 4).reshape(5, 2)
except ShapeError as err:
    print("ShapeError:", err)

# %% [markdown]
# ## Exercise 1.4 — padding
#
# Convolutions and pooling (lesson 04) pad their input with a border of a constant value:
# zeros around an image for a convolution, $-\infty$ for max pooling. `pad(top, bottom, left,
# right, value)` adds that border to the last two dimensions (rows and cols) of every channel,
# like KuiperInfer's `Padding`. A negative pad is a `ShapeError`.
#
# Do it the way an engine does: allocate the output filled with `value`, then copy the input
# into the middle with one slice assignment (no `np.pad`).

# %%
#| export
#| exercise: return a new tensor with `value` borders added above, below, left and right of rows × cols
@patch_to(Tensor)
def pad(self, top: int, bottom: int, left: int, right: int, value: float = 0.0) -> Tensor:
    """A copy with a border of `value` around the last two dimensions."""
    ### BEGIN SOLUTION
    if min(top, bottom, left, right) < 0:
        raise ShapeError(f"padding must be >= 0, got top={top} bottom={bottom} left={left} right={right}")
    if self.ndim < 2:
        raise ShapeError(f"pad needs at least 2 dimensions (rows, cols), got shape {self.shape}")
    shape = self.shape[:-2] + (self.rows + top + bottom, self.cols + left + right)
    out = Tensor.full(shape, value, dtype=self.dtype, device=self.device)
    out.data[..., top:top + self.rows, left:left + self.cols] = self.data
    return out
    ### END SOLUTION


# %%
with check("Exercise 1.4"):
    t = Tensor(np.arange(1, 13).reshape(2, 2, 3))
    for top, bottom, left, right in [(1, 2, 3, 1), (0, 0, 2, 0), (2, 0, 0, 1), (0, 1, 1, 3)]:
        p = t.pad(top, bottom, left, right, value=-1)
        want = np.pad(t.numpy(), ((0, 0), (top, bottom), (left, right)), constant_values=-1)
        assert p.shape == want.shape, f"pad{(top, bottom, left, right)}: expected shape {want.shape}, got {p.shape}"
        assert np.array_equal(p.numpy(), want), \
            f"pad{(top, bottom, left, right)}: expected channel 0\n{want[0]}\ngot\n{p.numpy()[0]}"
    assert np.array_equal(t.numpy(), np.arange(1, 13).reshape(2, 2, 3)), "expected the input unchanged, pad wrote into it"
    for bad in [(-1, 0, 0, 0), (0, 0, 0, -2), (0, 0, -1, 0)]:
        raises(ShapeError, t.pad, *bad)
    raises(ShapeError, Tensor.ones(3).pad, 1, 1, 1, 1)

# %%
image = Tensor.rand(6, 6, seed=1)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
for ax, shown, title in [(axes[0], image, "input 6 × 6"),
                         (axes[1], image.pad(2, 2, 1, 1, value=0), "pad(2, 2, 1, 1, value=0)")]:
    ax.imshow(shown.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_title(title)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Transform
#
# KuiperInfer's `Transform(filter)` calls a C++ function on every element. In Python a loop over
# elements is slow: every step runs the interpreter. We keep Python out of the inner loop by
# handing the function the **whole array** at once; numpy ufuncs such as `np.exp` and arithmetic
# on arrays then run in compiled code. First, how slow the loop is:

# %%
def transform_loop(t: Tensor, fn) -> Tensor:
    """Apply a scalar function element by element: clear, and slow."""
    out = Tensor.zeros(*t.shape, dtype=t.dtype)
    flat_in, flat_out = t.numpy().reshape(-1), out.numpy().reshape(-1)
    for k in range(t.size):
        flat_out[k] = fn(flat_in[k])
    return out


x = Tensor.randn(64, 64, 16, seed=0)
start = time.perf_counter()
slow = transform_loop(x, lambda v: max(v, 0))
loop_s = time.perf_counter() - start
start = time.perf_counter()
fast = np.maximum(x.numpy(), 0)
array_s = time.perf_counter() - start
assert np.array_equal(slow.numpy(), fast)

# %%
# NBVAL_IGNORE_OUTPUT
print(f"ReLU on {x.size:,} elements: Python loop {loop_s * 1e3:.1f} ms, "
      f"whole array {array_s * 1e3:.3f} ms ({loop_s / array_s:.0f}x faster)")

# %% [markdown]
# ## Exercise 1.5 — transform
#
# Write `transform(fn)`. Call `fn` once on the array, check it returned an array of the same
# shape (a `ShapeError` naming both shapes otherwise), and return a new tensor of the input's
# dtype on the same device.

# %%
#| export
#| exercise: apply `fn` to the whole array once; same shape and dtype out, ShapeError otherwise
@patch_to(Tensor)
def transform(self, fn) -> Tensor:
    """A new tensor `fn(data)`, where `fn` maps a whole array to an array of the same shape."""
    ### BEGIN SOLUTION
    out = backend(self.device).asarray(fn(self.data))
    if out.shape != self.data.shape:
        raise ShapeError(f"transform must keep the shape {self.shape}, the function returned {out.shape}")
    return Tensor(out, dtype=self.dtype, device=self.device)
    ### END SOLUTION


# %%
with check("Exercise 1.5"):
    t = Tensor([[-1.0, 2.0], [3.0, -4.0]])
    r = t.transform(lambda a: np.maximum(a, 0))
    assert r.numpy().tolist() == [[0, 2], [3, 0]], f"ReLU: expected [[0, 2], [3, 0]], got {r.numpy().tolist()}"
    assert r.dtype == np.float32, f"expected dtype float32, got {r.dtype}"
    assert t.numpy().tolist() == [[-1, 2], [3, -4]], f"expected the input unchanged, got {t.numpy().tolist()}"
    half = Tensor([1, 2, 3], dtype="float16").transform(lambda a: a.astype(np.float64) * 2.5)
    assert half.dtype == np.float16, f"a float16 tensor: expected float16 out, got {half.dtype}"
    err = raises(ShapeError, t.transform, np.ravel)
    assert "(2, 2)" in str(err) and "(4,)" in str(err), f"expected the message to name (2, 2) and (4,), got: {err}"

# %% [markdown]
# ## Indexing and copies
#
# Indexing follows numpy: an integer or slice gives a tensor that **views** the same memory, a
# single element gives a Python number. `clone()` makes an independent copy.

# %%
#| export
@patch_to(Tensor)
def __getitem__(self, index: object) -> Tensor | float | int | bool:
    """Numpy indexing; a tensor that views the same memory, or a number for a single element."""
    value = self.data[index.data if isinstance(index, Tensor) else index]
    return value.item() if value.ndim == 0 else Tensor(value, device=self.device)


@patch_to(Tensor)
def __setitem__(self, index: object, value: object) -> None:
    self.data[index.data if isinstance(index, Tensor) else index] = (
        value.data if isinstance(value, Tensor) else value)


@patch_to(Tensor)
def __len__(self) -> int:
    return self.shape[0]


@patch_to(Tensor)
def clone(self) -> Tensor:
    """An independent copy: changing it leaves the original alone."""
    return Tensor(self.data.copy(), device=self.device)


@patch_to(Tensor)
def astype(self, dtype: object) -> Tensor:
    """A copy converted to `dtype` (one of DTYPES)."""
    return Tensor(self.data.astype(to_dtype(dtype)), device=self.device)


# %%
t = Tensor(np.arange(12).reshape(3, 4))
row = t[1]
row[0] = 100
copy = t.clone()
copy[0, 0] = -1
print("t[1] views t:", t[1, 0], "| clone is separate:", t[0, 0], "| one element:", type(t[2, 3]).__name__)
print("as float16:", t.astype("float16").dtype, "| as int8:", Tensor([1.7, -3.2]).astype("int8").numpy())

# %% [markdown]
# ## Exercise 1.6 — broadcasting
#
# Adding a bias of shape `(64, 1, 1)` to a feature map of shape `(8, 64, 56, 56)` works without
# copying the bias 8 × 56 × 56 times: **broadcasting** stretches size-1 dimensions. The rule, as
# numpy and PyTorch apply it: line the shapes up from the **right**, pad the shorter one with 1s
# on the left, and then in each position the sizes must be equal or one of them 1; the result
# takes the larger. Anything else is a `ShapeError` that names both shapes and the position.
#
# $$(8, 64, 56, 56) \oplus (64, 1, 1) \to (8, 64, 56, 56) \qquad (3, 1) \oplus (1, 4) \to (3, 4)
# \qquad (2, 3) \oplus (4, 3) \to \text{error}$$

# %%
#| export
#| exercise: the broadcast shape of `a` and `b`; ShapeError naming both shapes when they do not fit
def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The shape that `a` and `b` broadcast to, by numpy's rule."""
    ### BEGIN SOLUTION
    ndim = max(len(a), len(b))
    left_a, left_b = (1,) * (ndim - len(a)) + tuple(a), (1,) * (ndim - len(b)) + tuple(b)
    out = []
    for axis, (m, n) in enumerate(zip(left_a, left_b)):
        if m != n and 1 not in (m, n):
            raise ShapeError(f"cannot broadcast {tuple(a)} with {tuple(b)}: "
                             f"dimension {axis - ndim} is {m} vs {n}, expected equal sizes or 1")
        out.append(n if m == 1 else m)
    return tuple(out)
    ### END SOLUTION


# %%
with check("Exercise 1.6"):
    cases = [((8, 64, 56, 56), (64, 1, 1)), ((3, 1), (1, 4)), ((), (5,)), ((1,), (0,)), ((2, 1, 3), (4, 1))]
    for a, b in cases:
        got, want = broadcast_shapes(a, b), np.broadcast_shapes(a, b)
        assert got == want, f"broadcast_shapes({a}, {b}): expected {want}, got {got}"
        assert broadcast_shapes(b, a) == want, f"broadcast_shapes({b}, {a}): expected {want}, got {broadcast_shapes(b, a)}"
    for a, b in [((2, 3), (4, 3)), ((3,), (4,)), ((2, 1), (8, 4, 3))]:
        err = raises(ShapeError, broadcast_shapes, a, b)
        assert str(a) in str(err) and str(b) in str(err), f"expected the message to name {a} and {b}, got: {err}"

# %% [markdown]
# ## Exercise 1.7 — element-wise arithmetic
#
# With the rule in hand, every arithmetic operator goes through one function, `_elementwise`:
# turn a Python number `b` into a tensor of `a`'s dtype on `a`'s device, refuse operands on
# different devices (`DeviceError` naming both), check the shapes with `broadcast_shapes` (so a
# mismatch reads as our error, not numpy's), and let numpy's `op` do the work on the arrays.

# %%
#| export
#| exercise: `op(a, b)` on the arrays: a number becomes a tensor of a's dtype; DeviceError, ShapeError on mismatch
def _elementwise(a: Tensor, b: object, op) -> Tensor:
    """`op(a, b)` element by element with broadcasting; `b` may be a tensor or a number."""
    ### BEGIN SOLUTION
    b = b if isinstance(b, Tensor) else Tensor(b, dtype=a.dtype, device=a.device)
    if a.device != b.device:
        raise DeviceError(f"operands are on different devices: {a.device!r} and {b.device!r}")
    broadcast_shapes(a.shape, b.shape)
    return Tensor(op(a.data, b.data), device=a.device)
    ### END SOLUTION


@patch_to(Tensor)
def __add__(self, other: object) -> Tensor:
    return _elementwise(self, other, np.add)


@patch_to(Tensor)
def __sub__(self, other: object) -> Tensor:
    return _elementwise(self, other, np.subtract)


@patch_to(Tensor)
def __mul__(self, other: object) -> Tensor:
    return _elementwise(self, other, np.multiply)


@patch_to(Tensor)
def __truediv__(self, other: object) -> Tensor:
    return _elementwise(self, other, np.divide)


@patch_to(Tensor)
def __radd__(self, other: object) -> Tensor:
    return _elementwise(self, other, np.add)


@patch_to(Tensor)
def __rmul__(self, other: object) -> Tensor:
    return _elementwise(self, other, np.multiply)


@patch_to(Tensor)
def __neg__(self) -> Tensor:
    return Tensor(-self.data, device=self.device)


# %%
with check("Exercise 1.7"):
    a, b = Tensor.randn(2, 3, 4, seed=0), Tensor.randn(3, 1, seed=1)
    for op in (np.add, np.subtract, np.multiply, np.divide):
        got, want = _elementwise(a, b, op), op(a.numpy(), b.numpy())
        assert got.shape == want.shape, f"{op.__name__}: expected shape {want.shape}, got {got.shape}"
        assert np.allclose(got.numpy(), want), f"{op.__name__}: expected\n{want[0]}\ngot\n{got.numpy()[0]}"
    half = _elementwise(Tensor([1, 2], dtype="float16"), 3, np.multiply)
    assert half.dtype == np.float16, f"float16 tensor * 3: expected dtype float16, got {half.dtype}"
    assert half.numpy().tolist() == [3, 6], f"float16 tensor * 3: expected [3, 6], got {half.numpy().tolist()}"
    err = raises(ShapeError, _elementwise, Tensor.ones(2, 3), Tensor.ones(3, 3), np.add)
    assert "(2, 3)" in str(err) and "(3, 3)" in str(err), f"expected the message to name both shapes, got: {err}"
    other = Tensor.ones(3)
    other.device = "gpu0"  # pretend: only the name is compared
    err = raises(DeviceError, _elementwise, Tensor.ones(3), other, np.add)
    assert "gpu0" in str(err), f"expected the message to name the device 'gpu0', got: {err}"

# %%
features = Tensor.ones(2, 3, 4, 4)
bias = Tensor([10.0, 20.0, 30.0]).reshape(3, 1, 1)
out = features * 2 + bias
print(out.shape, out[1, :, 0, 0].numpy())
try:
    Tensor.ones(2, 3) + Tensor.ones(4, 3)
except ShapeError as err:
    print("ShapeError:", err)

# %% [markdown]
# ## Devices
#
# `to(device)` moves a tensor; for now only `'cpu'` exists, and asking for another device says
# so. Lesson 13 registers `'cuda'` in `BACKENDS` and teaches `to` to copy across.

# %%
#| export
@patch_to(Tensor)
def to(self, device: str) -> Tensor:
    """This tensor on `device`: itself when it is already there."""
    if device == self.device:
        return self
    return Tensor(self.numpy(), device=device)


# %%
print(Tensor.ones(2).to("cpu").device)
try:
    Tensor.ones(2).to("tpu")
except DeviceError as err:
    print("DeviceError:", err)

# %% [markdown]
# ## What you built
#
# `kuiper/tensor.py` now holds everything above that was marked `#| export`: open it and you will
# find one plain `Tensor` class, its methods gathered from the cells of this lesson. Lesson 02
# reads real models exported by PNNX into a graph whose operands are these tensors.
