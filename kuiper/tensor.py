# Generated from solutions/01_tensor.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from kuiper.errors import DeviceError, DTypeError, ShapeError


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

    @property
    def cols(self) -> int:
        """Size of the last dimension (1 for a 0-d tensor)."""
        return self.shape[-1] if self.ndim >= 1 else 1

    @property
    def rows(self) -> int:
        """Size of the second-last dimension, 1 when there is none."""
        return self.shape[-2] if self.ndim >= 2 else 1

    @property
    def channels(self) -> int:
        """Size of the third-last dimension, 1 when there is none."""
        return self.shape[-3] if self.ndim >= 3 else 1

    def fill(self, values: object, row_major: bool = True) -> Tensor:
        """Fill in place from a flat sequence of exactly `size` values; returns self."""
        flat = np.asarray(values, dtype=self.dtype).ravel()
        if flat.size != self.size:
            raise ShapeError(f"fill needs {self.size} values for shape {self.shape}, got {flat.size}")
        self.data[...] = flat.reshape(self.shape, order="C" if row_major else "F")
        return self

    def reshape(self, *shape: int, row_major: bool = True) -> Tensor:
        """The same elements folded into `shape` (one entry may be -1), in row- or column-major order."""
        shape = resolve_shape(shape, self.shape)
        if row_major:
            return Tensor(self.data.reshape(shape), device=self.device)
        return Tensor(self.data.T.reshape(shape[::-1]).T, device=self.device)

    def flatten(self, row_major: bool = True) -> Tensor:
        """The elements as a 1-d tensor, in row- or column-major order."""
        return self.reshape(self.size, row_major=row_major)

    def pad(self, top: int, bottom: int, left: int, right: int, value: float = 0.0) -> Tensor:
        """A copy with a border of `value` around the last two dimensions."""
        if min(top, bottom, left, right) < 0:
            raise ShapeError(f"padding must be >= 0, got top={top} bottom={bottom} left={left} right={right}")
        if self.ndim < 2:
            raise ShapeError(f"pad needs at least 2 dimensions (rows, cols), got shape {self.shape}")
        shape = self.shape[:-2] + (self.rows + top + bottom, self.cols + left + right)
        out = Tensor.full(shape, value, dtype=self.dtype, device=self.device)
        out.data[..., top:top + self.rows, left:left + self.cols] = self.data
        return out

    def transform(self, fn) -> Tensor:
        """A new tensor `fn(data)`, where `fn` maps a whole array to an array of the same shape."""
        out = backend(self.device).asarray(fn(self.data))
        if out.shape != self.data.shape:
            raise ShapeError(f"transform must keep the shape {self.shape}, the function returned {out.shape}")
        return Tensor(out, dtype=self.dtype, device=self.device)

    def __getitem__(self, index: object) -> Tensor | float | int | bool:
        """Numpy indexing; a tensor that views the same memory, or a number for a single element."""
        value = self.data[index.data if isinstance(index, Tensor) else index]
        return value.item() if value.ndim == 0 else Tensor(value, device=self.device)

    def __setitem__(self, index: object, value: object) -> None:
        self.data[index.data if isinstance(index, Tensor) else index] = (
            value.data if isinstance(value, Tensor) else value)

    def __len__(self) -> int:
        return self.shape[0]

    def clone(self) -> Tensor:
        """An independent copy: changing it leaves the original alone."""
        return Tensor(self.data.copy(), device=self.device)

    def astype(self, dtype: object) -> Tensor:
        """A copy converted to `dtype` (one of DTYPES)."""
        return Tensor(self.data.astype(to_dtype(dtype)), device=self.device)

    def __add__(self, other: object) -> Tensor:
        return _elementwise(self, other, np.add)

    def __sub__(self, other: object) -> Tensor:
        return _elementwise(self, other, np.subtract)

    def __mul__(self, other: object) -> Tensor:
        return _elementwise(self, other, np.multiply)

    def __truediv__(self, other: object) -> Tensor:
        return _elementwise(self, other, np.divide)

    def __radd__(self, other: object) -> Tensor:
        return _elementwise(self, other, np.add)

    def __rmul__(self, other: object) -> Tensor:
        return _elementwise(self, other, np.multiply)

    def __neg__(self) -> Tensor:
        return Tensor(-self.data, device=self.device)

    def to(self, device: str) -> Tensor:
        """This tensor on `device`: itself when it is already there."""
        if device == self.device:
            return self
        return Tensor(self.numpy(), device=device)


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


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The shape that `a` and `b` broadcast to, by numpy's rule."""
    ndim = max(len(a), len(b))
    left_a, left_b = (1,) * (ndim - len(a)) + tuple(a), (1,) * (ndim - len(b)) + tuple(b)
    out = []
    for axis, (m, n) in enumerate(zip(left_a, left_b)):
        if m != n and 1 not in (m, n):
            raise ShapeError(f"cannot broadcast {tuple(a)} with {tuple(b)}: "
                             f"dimension {axis - ndim} is {m} vs {n}, expected equal sizes or 1")
        out.append(n if m == 1 else m)
    return tuple(out)


def _elementwise(a: Tensor, b: object, op) -> Tensor:
    """`op(a, b)` element by element with broadcasting; `b` may be a tensor or a number."""
    b = b if isinstance(b, Tensor) else Tensor(b, dtype=a.dtype, device=a.device)
    if a.device != b.device:
        raise DeviceError(f"operands are on different devices: {a.device!r} and {b.device!r}")
    broadcast_shapes(a.shape, b.shape)
    return Tensor(op(a.data, b.data), device=a.device)
