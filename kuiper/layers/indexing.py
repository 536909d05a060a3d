# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from typing import Literal

import numpy as np

from kuiper.layers.elementwise import function
from kuiper.layers.shape import Slice
from kuiper.registry import register
from kuiper.tensor import Tensor


@function("Tensor.expand")
def expand(input, sizes):
    """input broadcast to `sizes` (−1 keeps a dimension)."""
    sizes = tuple(sizes)
    lead = len(sizes) - input.ndim
    shape = tuple(input.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return np.broadcast_to(input, shape)


@function("Tensor.repeat", name="repeat")
def repeat(input, sizes):
    """input tiled `sizes` times along each dimension (extra leading dimensions allowed)."""
    return np.tile(input, sizes)


@function("torch.tile", "Tensor.tile")
def tile(input, dims):
    """input tiled `dims` times; a shorter dims tiles the trailing dimensions."""
    return np.tile(input, dims)


@function("torch.flip", "Tensor.flip")
def flip(input, dims):
    """input reversed along dims."""
    return np.flip(input, axis=tuple(dims) if isinstance(dims, tuple) else dims)


@function("torch.roll", "Tensor.roll")
def roll(input, shifts, dims=None):
    """input rotated by shifts along dims (of the flattened tensor without dims)."""
    return np.roll(input, shifts, axis=dims)


@function("torch.t", "Tensor.t")
def t(input):
    """The transpose of a matrix (a vector is returned as it is)."""
    return input.T


@function("torch.unbind", "Tensor.unbind")
def unbind(input, dim=0):
    """The slices of input along dim, as a tuple of views (no copies, as torch.unbind)."""
    return tuple(np.moveaxis(input, dim, 0))


@function("torch.narrow", "Tensor.narrow")
def narrow(input, dim, start, length):
    """length elements from start along dim."""
    return np.take(input, np.arange(start, start + length) % input.shape[dim], axis=dim)


@function("torch.index_select", "Tensor.index_select")
def index_select(input, dim, index):
    """The elements at `index` (a vector of int64) along dim."""
    return np.take(input, index.astype(np.int64), axis=dim)


@function("torch.gather", "Tensor.gather")
def gather(input, dim, index):
    """out[i][j][k] = input[i][index[i][j][k]][k] for dim 1, and likewise for other dims."""
    return np.take_along_axis(input, index.astype(np.int64), axis=dim)


@function("nn.PixelShuffle", "F.pixel_shuffle", "torch.pixel_shuffle")
def pixel_shuffle(input, upscale_factor):
    """(..., C·r², H, W) -> (..., C, H·r, W·r): each group of r² channels becomes an r × r block."""
    *lead, c, h, w = input.shape
    r, k = upscale_factor, len(lead)
    blocks = input.reshape(*lead, c // (r * r), r, r, h, w)  # (..., C, r, r, H, W)
    order = (*range(k), k, k + 3, k + 1, k + 4, k + 2)  # (..., C, H, r, W, r)
    return blocks.transpose(order).reshape(*lead, c // (r * r), h * r, w * r)


@function("nn.PixelUnshuffle", "F.pixel_unshuffle", "torch.pixel_unshuffle")
def pixel_unshuffle(input, downscale_factor):
    """(..., C, H·r, W·r) -> (..., C·r², H, W), the inverse of pixel_shuffle."""
    *lead, c, h, w = input.shape
    r, k = downscale_factor, len(lead)
    blocks = input.reshape(*lead, c, h // r, r, w // r, r)  # (..., C, H, r, W, r)
    order = (*range(k), k, k + 2, k + 4, k + 1, k + 3)  # (..., C, r, r, H, W)
    return blocks.transpose(order).reshape(*lead, c * r * r, h // r, w // r)


@function("nn.ChannelShuffle", "F.channel_shuffle", "torch.channel_shuffle", "aten::channel_shuffle")
def channel_shuffle(input, groups):
    """Channels (g, C/g) reordered as (C/g, g), ShuffleNet's mixing of groups (a setting or a 0-d tensor)."""
    n, c, groups = *input.shape[:2], int(groups)
    grouped = input.reshape(n, groups, c // groups, *input.shape[2:])  # (N, g, C/g, ...)
    return grouped.swapaxes(1, 2).reshape(input.shape)


TORCH_DTYPES = {"torch.float": "float32", "torch.float32": "float32", "torch.half": "float16",
                "torch.float16": "float16", "torch.long": "int64", "torch.int64": "int64", "torch.int": "int32",
                "torch.int32": "int32", "torch.int8": "int8", "torch.uint8": "uint8", "torch.bool": "bool"}


@function("Tensor.to", "Tensor.type")
def to(input, dtype: Literal[tuple(TORCH_DTYPES)], copy=False):
    """input converted to a torch dtype kuiper has (floats of 64 bits run as float32)."""
    return input.astype(TORCH_DTYPES[dtype])


@function("torch.argsort", "Tensor.argsort", "aten::argsort")
def argsort(input, dim=-1, descending=False):
    """The indices that sort input along dim (stable, as torch's sort on distinct values)."""
    order = np.argsort(-input if bool(descending) else input, axis=int(dim), kind="stable")
    return order.astype(np.int64)


@function("torch.sort", "Tensor.sort", "aten::sort")
def sort(input, dim=-1, descending=False):
    """input sorted along dim (stable) and the indices that sort it; dim may be a 0-d tensor (aten::sort)."""
    order = argsort(input, int(dim), descending)
    return np.take_along_axis(input, order, axis=int(dim)), order


@function("Tensor.select", "torch.select")
def select(input, dim, index):
    """The slice at index along dim, that dimension removed."""
    return np.take(input, index, axis=dim)


@function("nn.Embedding", "F.embedding")
def embedding(input, weight, padding_idx=None, max_norm: Literal[None] = None):
    """The rows of weight (num_embeddings, dim) picked by the integer tensor input: (...) -> (..., dim)."""
    return np.take(weight, input.astype(np.int64), axis=0, mode="raise")


@function("torch.masked_select", "Tensor.masked_select")
def masked_select(input, mask):
    """The elements of input where mask holds (both broadcast), as a vector in row-major order."""
    values, mask = np.broadcast_arrays(input, mask)
    return values[mask.astype(bool)]


@function("torch.repeat_interleave", "Tensor.repeat_interleave")
def repeat_interleave(input, repeats, dim=None, output_size=None):
    """Each element (each slice along dim; of the flattened tensor without dim) repeated `repeats`
    times, an int or one count per element."""
    return np.repeat(input.ravel() if dim is None else input, repeats, axis=dim)


@function("torch.diag", "Tensor.diag")
def diag(input, diagonal=0):
    """A vector as a square matrix with it on a diagonal, or a matrix's diagonal as a vector
    (`diagonal` > 0 above the main one)."""
    return np.diag(input, k=diagonal)


@function("torch.cross", "Tensor.cross", "torch.linalg.cross")
def cross(input, other, dim=None):
    """The cross product of 3-vectors along dim (None: the first dimension of size 3, as torch.cross)."""
    dim = input.shape.index(3) if dim is None else dim
    return np.cross(input, other, axis=dim)


@function("Tensor.index", "aten::index")
def index(input, expr):
    """input[expr]: one entry per leading dimension, None for all of it (`:`), else ints or bools (a
    list or a tensor); numpy's advanced indexing follows torch's rules."""
    return input[tuple(slice(None) if item is None else np.asarray(item) for item in expr)]


@function("Tensor.index_put", "torch.index_put", "Tensor.index_put_")
def index_put(input, indices, values, accumulate=False):
    """A copy of input with input[indices] = values, or += values (repeated indices adding up)."""
    out = input.copy()
    key = tuple(slice(None) if item is None else np.asarray(item) for item in indices)
    if accumulate:
        np.add.at(out, key, values)
    else:
        out[key] = values
    return out


def coordinates(index: np.ndarray, dim: int) -> tuple[np.ndarray, ...]:
    """scatter's key: each element of index at its own coordinates, but at index's value along dim."""
    key = list(np.indices(index.shape, sparse=True))
    key[dim] = index.astype(np.int64)
    return tuple(key)


@function("torch.scatter", "Tensor.scatter", "aten::scatter")
def scatter(input, dim, index, src=None, value=None, reduce: Literal[None] = None):
    """A copy of input with out[index[i][j]][j] = src[i][j] for dim 0 (likewise for other dims),
    or `value` wherever index points; dim may be a 0-d tensor (aten::scatter)."""
    out = input.copy()
    out[coordinates(index, int(dim))] = value if src is None else src[tuple(slice(0, n) for n in index.shape)]
    return out


@function("torch.scatter_add", "Tensor.scatter_add", "aten::scatter_add")
def scatter_add(input, dim, index, src):
    """A copy of input with src[i][j] added at out[index[i][j]][j] for dim 0; repeated indices add up."""
    out = input.copy()
    np.add.at(out, coordinates(index, int(dim)), src[tuple(slice(0, n) for n in index.shape)])
    return out


def assign(input: np.ndarray, dim: int, where: slice | int, src: np.ndarray) -> np.ndarray:
    """A copy of input with its part at `where` (a slice or an index) along dim replaced by src."""
    out = input.copy()
    key = [slice(None)] * input.ndim
    key[dim] = where
    out[tuple(key)] = src
    return out


@function("torch.slice_scatter", "Tensor.slice_scatter")
def slice_scatter(input, src, dim=0, start=None, end=None, step=1):
    """A copy of input with input[start:end:step] along dim replaced by src."""
    return assign(input, dim, slice(start, end, step), src)


@function("torch.select_scatter", "Tensor.select_scatter", "aten::select_scatter")
def select_scatter(input, src, dim, index):
    """A copy of input with the slice at index along dim replaced by src (dim, index: ints or 0-d tensors)."""
    return assign(input, int(dim), int(index), src)


@register("Tensor.slice_copy")
class SliceCopy(Slice):
    """`x[2:10, 3] = y` as PNNX writes it: a copy of x with the part Tensor.slice would read replaced by y."""

    def forward(self, x: Tensor, src: Tensor) -> Tensor:
        positions = np.arange(x.numpy().size).reshape(x.shape)  # each element's place in x.ravel()
        picked = super().forward(Tensor(positions)).numpy()  # the places the slice reads
        out = x.numpy().copy()
        out.reshape(-1)[picked] = np.broadcast_to(src.numpy(), picked.shape)
        return Tensor(out, device=x.device)
