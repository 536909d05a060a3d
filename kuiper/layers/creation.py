# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np

from kuiper.layers.elementwise import function
from kuiper.layers.indexing import TORCH_DTYPES


def dtype_of(dtype: str | None, default: np.dtype | str = "float32") -> str:
    """PNNX's torch dtype name (torch.long, ...) as a numpy dtype name; `default` for None."""
    return np.dtype(default).name if dtype is None else TORCH_DTYPES[dtype]


def shape_of(size) -> tuple[int, ...]:
    """A size setting (int or tuple) or a size tensor as a tuple of ints."""
    return (size,) if isinstance(size, int) else tuple(int(v) for v in np.ravel(size))


@function("torch.full")
def full(size, fill_value, dtype=None):
    """A tensor of `size` filled with fill_value (float32 unless dtype says otherwise)."""
    return np.full(shape_of(size), fill_value, dtype_of(dtype))


@function("torch.ones")
def ones(size, dtype=None):
    """A tensor of `size` filled with 1."""
    return np.ones(shape_of(size), dtype_of(dtype))


@function("torch.zeros", "torch.empty")
def zeros(size, dtype=None):
    """A tensor of `size` filled with 0 (also for torch.empty, whose contents are unspecified)."""
    return np.zeros(shape_of(size), dtype_of(dtype))


@function("torch.full_like")
def full_like(input, fill_value, dtype=None):
    """A tensor shaped like input filled with fill_value (input's dtype unless dtype says otherwise)."""
    return np.full(input.shape, fill_value, dtype_of(dtype, input.dtype))


@function("torch.ones_like")
def ones_like(input, dtype=None):
    """A tensor shaped like input filled with 1."""
    return np.ones(input.shape, dtype_of(dtype, input.dtype))


@function("torch.zeros_like", "torch.empty_like")
def zeros_like(input, dtype=None):
    """A tensor shaped like input filled with 0."""
    return np.zeros(input.shape, dtype_of(dtype, input.dtype))


@function("Tensor.new_full")
def new_full(input, size, fill_value, dtype=None):
    """A tensor of `size` filled with fill_value, of input's dtype unless dtype says otherwise."""
    return np.full(shape_of(size), fill_value, dtype_of(dtype, input.dtype))


@function("Tensor.new_ones")
def new_ones(input, size, dtype=None):
    """A tensor of `size` filled with 1, of input's dtype unless dtype says otherwise."""
    return np.ones(shape_of(size), dtype_of(dtype, input.dtype))


@function("Tensor.new_zeros", "Tensor.new_empty")
def new_zeros(input, size, dtype=None):
    """A tensor of `size` filled with 0, of input's dtype unless dtype says otherwise."""
    return np.zeros(shape_of(size), dtype_of(dtype, input.dtype))


@function("Tensor.fill", "Tensor.fill_")
def fill(input, value):
    """A tensor like input with every element set to value."""
    return np.full_like(input, value)


@function("torch.arange")
def arange(start=0, end=None, step=1, dtype=None):
    """start, start + step, ... below end; int64 when start, end and step are integers, as torch."""
    start, end = (0, start) if end is None else (start, end)
    values = [v.item() if isinstance(v, np.ndarray) else v for v in (start, end, step)]
    integral = all(isinstance(v, (int, np.integer)) for v in values)
    return np.arange(*values, dtype=dtype_of(dtype, "int64" if integral else "float32"))


@function("Tensor.type_as")
def type_as(input, other):
    """input converted to other's dtype."""
    return input.astype(other.dtype)


@function("Tensor.expand_as")
def expand_as(input, other):
    """input broadcast to other's shape."""
    return np.broadcast_to(input, other.shape)


@function("Tensor.reshape_as", "Tensor.view_as")
def reshape_as(input, other):
    """input's elements in other's shape."""
    return input.reshape(other.shape)


@function("Tensor.unflatten", "torch.unflatten")
def unflatten(input, dim, sizes):
    """Dimension dim split into `sizes` (one may be −1)."""
    dim = dim % input.ndim
    return input.reshape(*input.shape[:dim], *sizes, *input.shape[dim + 1:])


@function("torch.clone", "Tensor.detach", "torch.detach")
def clone(input, memory_format=None):
    """A copy of input."""
    return input.copy()
