# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from typing import Literal

import numpy as np

from kuiper.layers.elementwise import function


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
    """The slices of input along dim, as a tuple."""
    return tuple(np.take(input, i, axis=dim) for i in range(input.shape[dim]))


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
    """(N, C·r², H, W) -> (N, C, H·r, W·r): each group of r² channels becomes an r × r block."""
    n, c, h, w = input.shape
    r = upscale_factor
    blocks = input.reshape(n, c // (r * r), r, r, h, w)  # (N, C, r, r, H, W)
    return blocks.transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


@function("nn.PixelUnshuffle", "F.pixel_unshuffle", "torch.pixel_unshuffle")
def pixel_unshuffle(input, downscale_factor):
    """(N, C, H·r, W·r) -> (N, C·r², H, W), the inverse of pixel_shuffle."""
    n, c, h, w = input.shape
    r = downscale_factor
    blocks = input.reshape(n, c, h // r, r, w // r, r)  # (N, C, H, r, W, r)
    return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h // r, w // r)


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


@function("Tensor.select", "torch.select")
def select(input, dim, index):
    """The slice at index along dim, that dimension removed."""
    return np.take(input, index, axis=dim)
