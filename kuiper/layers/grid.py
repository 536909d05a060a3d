# Generated from solutions/08_segmentation.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numba import njit, prange

from kuiper.errors import ShapeError
from kuiper.layers.elementwise import function


BILINEAR, NEAREST, BICUBIC = 0, 1, 2  # F.grid_sample's settings as the kernel's codes
ZEROS, BORDER, REFLECTION = 0, 1, 2
MODES = {"bilinear": BILINEAR, "nearest": NEAREST, "bicubic": BICUBIC}
PADDINGS = {"zeros": ZEROS, "border": BORDER, "reflection": REFLECTION}


@njit(cache=True)
def unnormalize(coord: np.float32, size: int, align_corners: bool) -> np.float32:
    """A grid value in [-1, 1] as a pixel coordinate along an axis of `size` pixels: ±1 the end pixels'
    centres (align_corners) or outer edges. In float32 as PyTorch's CPU kernel computes it: where
    `nearest` meets a tie (a 2× downsampling), the last bit decides the pixel."""
    if align_corners:
        return (coord + np.float32(1)) * np.float32((size - 1) / 2)
    return (coord + np.float32(1)) * np.float32(size / 2) - np.float32(0.5)


@njit(cache=True)
def reflect(coord: np.float32, low: np.float32, twice_span: np.float32) -> np.float32:
    """coord mirrored at low and at low + twice_span / 2 until it lies between them: its distance
    from low, modulo twice the span, folded back at the span."""
    if twice_span <= 0:
        return np.float32(0)
    distance = abs(coord - low)
    extra = distance - np.trunc(distance / twice_span) * twice_span
    return min(extra, twice_span - extra) + low


@njit(cache=True)
def pad_coordinate(coord: np.float32, size: int, padding: int, align_corners: bool) -> np.float32:
    """A pixel coordinate after padding mode `padding` (PADDINGS): zeros leaves it, border clips it into
    [0, size - 1] (NaN to 0, as PyTorch), reflection mirrors it at the end centres (align_corners) or
    edges, then clips."""
    if padding == REFLECTION:
        low = np.float32(0 if align_corners else -0.5)
        coord = reflect(coord, low, np.float32(2 * (size - 1) if align_corners else 2 * size))
    if padding != ZEROS:
        coord = min(max(np.float32(0), coord), np.float32(size - 1))
    return coord


@njit(cache=True)
def cubic(d: float, a: float = -0.75) -> float:
    """Keys' cubic convolution weight of a tap at distance d, |d| < 2 (Keys 1981; lesson 04's
    cubic_weights one tap at a time, for nopython code; PyTorch's a = -0.75)."""
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a


@njit(cache=True)
def tap(coord: float, size: int) -> int:
    """The pixel at integer-valued coord, or -1 outside [0, size - 1] (NaN too)."""
    return int(coord) if 0 <= coord <= size - 1 else -1


@njit(cache=True)
def axis_taps(coord: float, size: int, mode: int, padding: int, align_corners: bool, index: np.ndarray,
              weight: np.ndarray) -> int:
    """Fill index (int64) and weight (float64), 4 each, with the source pixels of grid value coord
    along one axis in `mode` (MODES; -1 for a pixel outside); return how many (1, 2 or 4)."""
    src = unnormalize(coord, size, align_corners)
    if mode == BICUBIC:  # the padding applies to each tap, not to the coordinate
        low = np.floor(src)
        for k in range(4):
            index[k] = tap(pad_coordinate(low - 1 + k, size, padding, align_corners), size)
            weight[k] = cubic(src - low + 1 - k)
        return 4
    src = pad_coordinate(src, size, padding, align_corners)
    if mode == NEAREST:
        index[0], weight[0] = tap(round(src), size), 1.0  # round half to even, as std::nearbyint
        return 1
    low = np.floor(src)
    index[0], weight[0] = tap(low, size), 1 - (src - low)
    index[1], weight[1] = tap(low + 1, size), src - low
    return 2


def affine_grid(theta: np.ndarray, size: tuple[int, ...], align_corners: bool) -> np.ndarray:
    """F.affine_grid: theta (N, 2, 3) or (N, 3, 4) float32 and size (N, C, H, W) or (N, C, D, H, W) ->
    grid (N, H, W, 2) or (N, D, H, W, 3) float32, theta @ (x, y[, z], 1) at each output pixel centre."""
    axes = [(np.linspace(-1, 1, n) if n > 1 else np.zeros(1)) if align_corners else (np.arange(n) * 2 + 1) / n - 1
            for n in size[2:]]
    coords = np.meshgrid(*axes, indexing="ij")  # each (H, W) or (D, H, W)
    base = np.stack([*coords[::-1], np.ones_like(coords[0])], axis=-1).astype(np.float32)  # (..., x y [z] 1)
    grid = base.reshape(1, -1, base.shape[-1]) @ theta.transpose(0, 2, 1)  # (N, points, 2 or 3)
    return grid.reshape(len(theta), *size[2:], theta.shape[1])


@njit(parallel=True, cache=True)
def grid_sample_kernel(x, grid, out, mode, padding, align_corners):
    """out[n, c, d, h, w] = x (N, C, D, H, W) float32 read at grid[n, d, h, w] ((x, y, z), or (x, y) with
    D = 1) by axis_taps in `mode` and `padding` (MODES, PADDINGS); out (N, C, Do, Ho, Wo) float32."""
    batch, channels, depth, height, width = x.shape
    _, out_d, out_h, out_w, k = grid.shape
    pixels = x.reshape(batch, channels, depth * height * width)  # (N, C, D·H·W)
    for p in prange(batch * out_d * out_h):
        n, od, oh = p // (out_d * out_h), p // out_h % out_d, p % out_h
        ix, iy, iz = np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64)
        wx, wy, wz = np.ones(4), np.ones(4), np.ones(4)
        offset, weight = np.empty(64, np.int64), np.empty(64)  # the point's taps: flat pixel, weight
        for ow in range(out_w):
            g = grid[n, od, oh, ow]
            nx = axis_taps(g[0], width, mode, padding, align_corners, ix, wx)
            ny = axis_taps(g[1], height, mode, padding, align_corners, iy, wy)
            nz = axis_taps(g[2], depth, mode, padding, align_corners, iz, wz) if k == 3 else 1
            count = 0
            for a in range(nz):
                for b in range(ny):
                    for e in range(nx):
                        w = wz[a] * wy[b] * wx[e]
                        if iz[a] >= 0 and iy[b] >= 0 and ix[e] >= 0:
                            offset[count], weight[count] = (iz[a] * height + iy[b]) * width + ix[e], w
                            count += 1
                        elif np.isnan(w):  # outside: 0, but NaN · 0 is NaN, as in PyTorch
                            offset[count], weight[count] = 0, w
                            count += 1
            for c in range(channels):
                total = 0.0
                for t in range(count):
                    total += weight[t] * pixels[n, c, offset[t]]
                out[n, c, od, oh, ow] = total


MAX_POINTS = 1 << 28  # an affine grid of more points than this is a damaged file, not a model


@function("F.grid_sample")
def grid_sample(input: np.ndarray, grid: np.ndarray, mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear",
                padding_mode: Literal["zeros", "border", "reflection"] = "zeros",
                align_corners: bool = False) -> np.ndarray:
    """F.grid_sample: input (N, C, H, W) with grid (N, Ho, Wo, 2) -> (N, C, Ho, Wo), or (N, C, D, H, W)
    with (N, Do, Ho, Wo, 3) -> (N, C, Do, Ho, Wo), float32. ShapeError if they do not fit."""
    dims = input.ndim - 2
    if dims not in (2, 3) or grid.shape != (input.shape[0], *grid.shape[1:-1], dims) or grid.ndim != input.ndim:
        raise ShapeError(f"expected an input (N, C, H, W) with a grid (N, Ho, Wo, 2), or (N, C, D, H, W) with "
                         f"(N, Do, Ho, Wo, 3); got input {input.shape} and grid {grid.shape}")
    if dims == 3 and mode == "bicubic":
        raise ShapeError(f"mode='bicubic' samples 4-D inputs only, got {input.shape}")
    x5, grid5 = (input, grid) if dims == 3 else (input[:, :, None], grid[:, None])  # (N, C, D, H, W), (N, Do, Ho, Wo, k)
    out = np.empty((*x5.shape[:2], *grid5.shape[1:4]), np.float32)
    grid_sample_kernel(np.ascontiguousarray(x5, np.float32), np.ascontiguousarray(grid5, np.float32), out,
                       MODES[mode], PADDINGS[padding_mode], align_corners)
    return out if dims == 3 else out[:, :, 0]


@function("F.affine_grid", name="affine_grid")
def affine_grid_layer(theta: np.ndarray, size: tuple, align_corners: bool = False) -> np.ndarray:
    """F.affine_grid of theta (N, 2, 3) for size (N, C, H, W), or (N, 3, 4) for (N, C, D, H, W); the batch
    comes from theta. ShapeError if they do not fit or the grid would exceed MAX_POINTS."""
    dims = len(size) - 2
    if dims not in (2, 3) or theta.shape[1:] != (dims, dims + 1) or min(size[2:]) < 1:
        raise ShapeError(f"expected theta (N, 2, 3) with size (N, C, H, W), or (N, 3, 4) with (N, C, D, H, W); "
                         f"got theta {theta.shape} and size {tuple(size)}")
    if len(theta) * math.prod(size[2:]) > MAX_POINTS:
        raise ShapeError(f"an affine grid of {len(theta)}×{tuple(size[2:])} points exceeds {MAX_POINTS}")
    return affine_grid(np.asarray(theta, np.float32), tuple(size), align_corners)
