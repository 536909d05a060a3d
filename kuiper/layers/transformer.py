# Generated from solutions/08_segmentation.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import copy
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit
from threadpoolctl import ThreadpoolController

from kuiper.errors import ShapeError
from kuiper.layer import Layer
from kuiper.layers.activation import activate_range, GELU, GELU_TANH, SIGMOID, SILU, TANH
from kuiper.layers.conv import scratch, SUMS
from kuiper.layers.elementwise import softmax
from kuiper.layers.linear import Linear
from kuiper.layers.shape import Permute, Transpose
from kuiper.registry import LAYERS
from kuiper.tensor import Tensor


BLAS = ThreadpoolController()  # numpy's BLAS library: one thread per product while tiles run
THREADS = numba.get_num_threads()
POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="kuiper-tiles")
ROWS = 512  # rows per product at most: with far fewer, the library spends its time packing the weight
COLUMNS = 64  # the narrowest strip of columns a tile is cut to
NO_ACTIVATION = -1  # an epilogue without activation; the others are lesson 05's codes (GELU, ...)
NO_RESIDUAL = np.zeros((0, 0), np.float32)  # the residual rows of an epilogue that adds none


def tiles(images: int, length: int, width: int, threads: int) -> list[tuple[int, int, int, int]]:
    """(first row, end row, first column, end column) of the tiles of an output of `images`·`length`
    rows and `width` columns: ROWS rows at most, never across two images; when that gives fewer
    tiles than `threads`, each row span is cut into strips of COLUMNS columns or more."""
    step = max(1, min(length, ROWS))
    spans = [(n * length + s, n * length + min(s + step, length)) for n in range(images)
             for s in range(0, length, step)]
    parts = max(1, min(threads // max(1, len(spans)), width // COLUMNS))
    cuts = [width * i // parts for i in range(parts + 1)]
    return [(start, stop, cuts[i], cuts[i + 1]) for start, stop in spans for i in range(parts)]


def run_tiles(work: Callable[[tuple[int, int, int, int]], None], found: list[tuple[int, int, int, int]]) -> None:
    """work(tile) for every tile, the tiles dealt round the pool's threads, each product on one BLAS
    thread (two products side by side share no barrier)."""
    with BLAS.limit(limits=1, user_api="blas"):
        if len(found) <= 1 or THREADS == 1:
            for tile in found:
                work(tile)
            return
        shares = [found[t::THREADS] for t in range(THREADS)]
        for _ in POOL.map(lambda share: [work(tile) for tile in share], shares):
            pass


@njit(nogil=True, cache=True, error_model="numpy")
def linear_epilogue(y, bias, code, residual, out, channels_first):
    """out = activation(y + bias) + residual for y (R, C) float32 (overwritten), bias (C,), `code` an
    activation of lesson 05's `activate_range` or NO_ACTIVATION, residual (R, C) or NO_RESIDUAL, out
    (R, C) any strides; with `channels_first` out is the transpose of a (C, R) block."""
    rows, size = y.shape
    spare = np.empty(size, np.float32)
    for r in range(rows):
        row = y[r]
        for j in range(size):
            row[j] += bias[j]
        if code != NO_ACTIVATION:
            activate_range(row, spare, 0, size, code)
            row[:] = spare
    added = residual.size > 0
    if channels_first:
        for j in range(size):
            if added:
                for r in range(rows):
                    out[r, j] = y[r, j] + residual[r, j]
            else:
                for r in range(rows):
                    out[r, j] = y[r, j]
    else:
        for r in range(rows):
            if added:
                for j in range(size):
                    out[r, j] = y[r, j] + residual[r, j]
            else:
                for j in range(size):
                    out[r, j] = y[r, j]


ACTIVATIONS = {"nn.GELU": GELU, "F.gelu": GELU, "nn.SiLU": SILU, "F.silu": SILU, "nn.Sigmoid": SIGMOID,
               "F.sigmoid": SIGMOID, "torch.sigmoid": SIGMOID, "nn.Tanh": TANH, "F.tanh": TANH}
CHANNELS_FIRST = (0, 3, 1, 2)  # the permute from (N, H, W, C) back to (N, C, H, W)


def linear_tiles(x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray, code: int, residual: np.ndarray | None,
                 channels_first: bool) -> np.ndarray:
    """x (N, L, K) float32 contiguous times weight_t (K, C), plus bias (C,), activation `code`, residual
    (the output's shape, or None): (N·L, C), or with `channels_first` (N, C, L). Tile by tile."""
    n, length, k = x.shape
    width = weight_t.shape[1]
    rows = x.reshape(n * length, k)  # (N, L, K) -> (N·L, K)
    out = np.empty((n, width, length) if channels_first else (n * length, width), np.float32)

    def work(tile: tuple[int, int, int, int]) -> None:
        start, stop, left, right = tile
        y = np.matmul(rows[start:stop], weight_t[:, left:right], out=scratch((stop - start, right - left), "linear"))
        image, first = divmod(start, length)
        if channels_first:  # the (C', R) block of image `image`, seen as (R, C')
            target = out[image, left:right, first:first + stop - start].T
            extra = NO_RESIDUAL if residual is None else residual[image, left:right, first:first + stop - start].T
        else:
            target = out[start:stop, left:right]
            extra = NO_RESIDUAL if residual is None else residual[start:stop, left:right]
        linear_epilogue(y, bias[left:right], code, extra, target, channels_first)

    run_tiles(work, tiles(n, length, width, THREADS))
    return out


def tiled_forward(self: Linear, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """activation(x Wᵀ + b) (+ residual) over x's last dimension by `linear_tiles`; channels-first
    (N, C, H, W) from x (N, H, W, in) when the permute back is fused. ShapeError naming the layer when
    x's last dimension is not in_features or the residual is missing, extra or of another shape."""
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    k, width = self.weight_t.shape
    if data.ndim == 0 or data.shape[-1] != k or (self.channels_first and data.ndim != 4):
        raise ShapeError(f"{self.op.where()}: expected input (..., {k})"
                         f"{' of 4 dimensions' if self.channels_first else ''}, got {data.shape}")
    n, *middle, _ = data.shape if self.channels_first else (1, *data.shape)
    shape = (n, width, *middle) if self.channels_first else (*data.shape[:-1], width)
    extra = None if residual is None else np.ascontiguousarray(residual.numpy(), dtype=np.float32)
    if (extra is None) == self.residual or (extra is not None and extra.shape != shape):
        expected = f"a residual of shape {shape}" if self.residual else "no residual"
        raise ShapeError(f"{self.op.where()}: expected {expected}, got {None if extra is None else extra.shape}")
    bias = np.zeros(width, np.float32) if self.bias is None else self.bias
    images = data.reshape(n, -1, k)  # (N, H·W, in) channels-first, else (1, rows, in)
    extra = None if extra is None else extra.reshape(n, width, -1) if self.channels_first else extra.reshape(-1, width)
    out = linear_tiles(images, self.weight_t, bias, self.activation, extra, self.channels_first)
    return Tensor(out.reshape(shape), device=x.device)


def fuse_linear(self: Linear, after: Layer) -> Linear | None:
    """This Linear with `after` in its epilogue: an ACTIVATIONS activation (before the rest), the
    permute CHANNELS_FIRST (before a residual), a residual sum (SUMS, last); else None. A copy."""
    fused, kind, plain = copy.copy(self), after.op.type, not (self.channels_first or self.residual)
    if kind in ACTIVATIONS and self.activation == NO_ACTIVATION and plain:
        fused.activation = GELU_TANH if after.op.params.get("approximate") == "tanh" else ACTIVATIONS[kind]
    elif isinstance(after, Permute) and tuple(after.dims) == CHANNELS_FIRST and plain:
        fused.channels_first = True
    elif kind == "pnnx.Expression" and after.op.params.get("expr") in SUMS and not self.residual:
        fused.residual = True
    else:
        return None
    return fused


Linear.activation, Linear.channels_first, Linear.residual = NO_ACTIVATION, False, False
Linear.forward, Linear.fuse = tiled_forward, fuse_linear


SOFTMAXES = ("F.softmax", "nn.Softmax", "torch.softmax")


def factor(layer: Layer) -> float | None:
    """c of a pnnx.Expression mul(@0,c) or mul(c,@0) with c a number (attention's 1/√d), else None."""
    found = re.fullmatch(r"mul\(@0,([-+.\deE]+)\)|mul\(([-+.\deE]+),@0\)", str(layer.op.params.get("expr")))
    return None if layer.op.type != "pnnx.Expression" or found is None else float(found.group(1) or found.group(2))


class StackedProducts(Layer):
    """torch.matmul of two stacks of matrices with the same batch dimensions, the products dealt round
    the pool (one BLAS thread each), each times `scale` while in the cache; then softmax over the last
    dimension and the swap of two dimensions when fused (attention: q·kᵀ·scale → softmax, p·v → transpose)."""

    def __init__(self, op, scale: float = 1.0, softmax_last: bool = False, swap: tuple[int, int] | None = None):
        super().__init__(op)
        self.scale, self.softmax_last, self.swap = scale, softmax_last, swap

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        x, y = a.numpy(), b.numpy()
        if x.ndim < 3 or x.shape[:-2] != y.shape[:-2] or x.shape[-1] != y.shape[-2]:
            out = np.matmul(x, y) * np.float32(self.scale)  # a vector or broadcast batch: numpy's product
        else:
            stack, rows, columns = x.shape[:-2], x.shape[-2], y.shape[-1]
            left, right = x.reshape(-1, rows, x.shape[-1]), y.reshape(-1, *y.shape[-2:])  # views where strides allow
            out = np.empty((*stack, rows, columns), np.result_type(x, y))
            flat = out.reshape(-1, rows, columns)

            def work(tile: tuple[int, int, int, int]) -> None:
                np.matmul(left[tile[0]], right[tile[0]], out=flat[tile[0]])
                if self.scale != 1.0:
                    flat[tile[0]] *= np.float32(self.scale)

            run_tiles(work, [(i, i + 1, 0, columns) for i in range(len(flat))])
        out = softmax(out, -1) if self.softmax_last else out
        return Tensor(out if self.swap is None else np.swapaxes(out, *self.swap), device=a.device)

    def fuse(self, after: Layer) -> "StackedProducts | None":
        """This product then `after`, in this order only: × a constant, softmax over the last dimension,
        a transpose."""
        found, done = factor(after), self.softmax_last or self.swap is not None
        if found is not None and self.scale == 1.0 and not done:
            return StackedProducts(self.op, found)
        if after.op.type in SOFTMAXES and after.settings.get("dim") == -1 and not done:
            return StackedProducts(self.op, self.scale, True)
        if isinstance(after, Transpose) and self.swap is None:
            return StackedProducts(self.op, self.scale, self.softmax_last, after.dims)
        return None


LAYERS["torch.matmul"].fuse = lambda self, after: StackedProducts(self.op).fuse(after)
