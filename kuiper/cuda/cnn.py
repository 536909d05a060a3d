# Generated from solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from kuiper.cuda.device import array_module
from kuiper.cuda.kernels import block_threads, blocks_for
from kuiper.errors import LayerError, ShapeError
from kuiper.layers.conv import out_size


@cuda.jit
def im2col_kernel(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, ow):
    """cols[(c·kh + i)·kw + j, y·ow + x'] = x[c, y·sh - ph + i·dh, x'·sw - pw + j·dw], 0 outside the image."""
    idx = cuda.grid(1)
    n_rows, n_cols = cols.shape
    if idx < n_rows * n_cols:
        row, col = idx // n_cols, idx % n_cols
        c, i, j = row // (kh * kw), row // kw % kh, row % kw
        iy = col // ow * sh - ph + i * dh
        ix = col % ow * sw - pw + j * dw
        inside = 0 <= iy < x.shape[1] and 0 <= ix < x.shape[2]
        cols[row, col] = x[c, iy, ix] if inside else float32(0.0)


def pairs(*values) -> list[tuple[int, int]]:
    """Each int or (int, int) as a pair."""
    return [(v, v) if isinstance(v, int) else tuple(v) for v in values]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """2-d convolution of x (N, C, H, W) with weight (K, C/groups, kh, kw) -> (N, K, OH, OW): a direct
    kernel for depthwise, one GEMM for 1×1, the im2col kernel + a GEMM per image for the rest."""
    n_batch, channels, height, width = x.shape
    k_out, c_group, kh, kw = weight.shape
    if channels != c_group * groups or k_out % groups:
        raise ShapeError(f"conv2d: input {x.shape} and weight {weight.shape} do not match with groups={groups}")
    (sh, sw), (ph, pw), (dh, dw) = pairs(stride, padding, dilation)
    oh, ow = out_size(height, kh, sh, ph, dh), out_size(width, kw, sw, pw, dw)
    xp = array_module(x)
    gemm_weight = weight.reshape(groups, k_out // groups, c_group * kh * kw)
    if groups == channels > 1:  # depthwise: 9 multiply-adds per output, no GEMM to speak of
        out = xp.empty((n_batch, k_out, oh, ow), np.float32)
        threads = block_threads(out.size)
        depthwise_conv_kernel[blocks_for(out.size, threads), threads](x, weight, out, sh, sw, ph, pw, dh, dw)
    elif (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):  # 1×1: the image already is the column matrix
        out = xp.matmul(gemm_weight, x.reshape(n_batch, groups, c_group, height * width))
    else:
        cols = xp.empty((channels * kh * kw, oh * ow), np.float32)
        out = xp.empty((n_batch, k_out, oh * ow), np.float32)
        threads = block_threads(cols.size)
        for n in range(n_batch):
            im2col_kernel[blocks_for(cols.size, threads), threads](x[n], cols, kh, kw, sh, sw, ph, pw, dh, dw, ow)
            out[n] = xp.matmul(gemm_weight, cols.reshape(groups, -1, oh * ow)).reshape(k_out, oh * ow)
    out = out.reshape(n_batch, k_out, oh, ow)
    if bias is not None:
        out += bias[:, None, None]
    return out


@cuda.jit
def depthwise_conv_kernel(x, w, out, sh, sw, ph, pw, dh, dw):
    """out[n, k, y, x'] = Σ_ij w[k, 0, i, j] · x[n, k // m, y·sh - ph + i·dh, x'·sw - pw + j·dw], m = K / C."""
    idx = cuda.grid(1)
    n_batch, k_out, oh, ow = out.shape
    if idx < out.size:
        n, k, y, x_ = idx // (k_out * oh * ow), idx // (oh * ow) % k_out, idx // ow % oh, idx % ow
        c = k // (k_out // x.shape[1])
        total = float32(0.0)
        for i in range(w.shape[2]):
            iy = y * sh - ph + i * dh
            for j in range(w.shape[3]):
                ix = x_ * sw - pw + j * dw
                if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3]:
                    total += w[k, 0, i, j] * x[n, c, iy, ix]
        out[n, k, y, x_] = total


@cuda.jit
def max_pool2d_kernel(x, out, kh, kw, sh, sw, ph, pw, dh, dw):
    """The largest value of each window of x (N, C, H, W): one thread per output; padding never wins."""
    idx = cuda.grid(1)
    n_batch, channels, oh, ow = out.shape
    if idx < out.size:
        n, c, y, x_ = idx // (channels * oh * ow), idx // (oh * ow) % channels, idx // ow % oh, idx % ow
        best = float32(-math.inf)
        for i in range(kh):
            iy = y * sh - ph + i * dh
            for j in range(kw):
                ix = x_ * sw - pw + j * dw
                if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3] and x[n, c, iy, ix] > best:
                    best = x[n, c, iy, ix]
        out[n, c, y, x_] = best


@cuda.jit
def avg_pool2d_kernel(x, out, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """The mean of each window of x (N, C, H, W) by PyTorch's rules: one thread per output."""
    idx = cuda.grid(1)
    n_batch, channels, oh, ow = out.shape
    height, width = x.shape[2], x.shape[3]
    if idx < out.size:
        n, c, y, x_ = idx // (channels * oh * ow), idx // (oh * ow) % channels, idx // ow % oh, idx % ow
        y0, x0 = y * sh - ph, x_ * sw - pw  # the window, padding included: [y0, y1) × [x0, x1)
        y1 = y0 + kh if y0 + kh < height + ph else height + ph
        x1 = x0 + kw if x0 + kw < width + pw else width + pw
        top, bottom = (y0 if y0 > 0 else 0), (y1 if y1 < height else height)  # the part inside the image
        left, right = (x0 if x0 > 0 else 0), (x1 if x1 < width else width)
        total = float32(0.0)
        for iy in range(top, bottom):
            for ix in range(left, right):
                total += x[n, c, iy, ix]
        if divisor > 0:
            area = divisor
        elif count_include_pad:
            area = (y1 - y0) * (x1 - x0)
        else:
            area = (bottom - top) * (right - left)
        out[n, c, y, x_] = total / float32(area)


def pool2d(x, mode: str, kernel, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
           count_include_pad: bool = True, divisor: int = 0):
    """Max or average pooling of x (N, C, H, W); stride defaults to the kernel size."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pairs(kernel, kernel if stride is None else stride, padding, dilation)
    if mode not in ("max", "avg"):
        raise LayerError(f"pool2d: mode {mode!r}, expected 'max' or 'avg'")
    oh = out_size(x.shape[2], kh, sh, ph, dh, ceil_mode)
    ow = out_size(x.shape[3], kw, sw, pw, dw, ceil_mode)
    out = array_module(x).empty((*x.shape[:2], oh, ow), np.float32)
    threads = block_threads(out.size)
    grid = blocks_for(out.size, threads)
    if mode == "max":
        max_pool2d_kernel[grid, threads](x, out, kh, kw, sh, sw, ph, pw, dh, dw)
    else:
        avg_pool2d_kernel[grid, threads](x, out, kh, kw, sh, sw, ph, pw, count_include_pad, divisor)
    return out


@cuda.jit
def relu_kernel(x, out):
    """out = max(x, 0), element by element."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i] if x[i] > float32(0.0) else float32(0.0)


@cuda.jit
def sigmoid_kernel(x, out):
    """out = 1 / (1 + exp(-x))."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = float32(1.0) / (float32(1.0) + math.exp(-x[i]))


@cuda.jit
def silu_kernel(x, out):
    """out = x · sigmoid(x)."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i] / (float32(1.0) + math.exp(-x[i]))


@cuda.jit
def hardswish_kernel(x, out):
    """out = x · relu6(x + 3) / 6."""
    i = cuda.grid(1)
    if i < x.size:
        gate = x[i] + float32(3.0)
        gate = float32(0.0) if gate < float32(0.0) else float32(6.0) if gate > float32(6.0) else gate
        out[i] = x[i] * gate / float32(6.0)


@cuda.jit
def relu6_kernel(x, out):
    """out = min(max(x, 0), 6)."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = float32(0.0) if x[i] < float32(0.0) else float32(6.0) if x[i] > float32(6.0) else x[i]


@cuda.jit
def hardsigmoid_kernel(x, out):
    """out = min(max(x / 6 + 1/2, 0), 1)."""
    i = cuda.grid(1)
    if i < x.size:
        gate = x[i] / float32(6.0) + float32(0.5)
        out[i] = float32(0.0) if gate < float32(0.0) else float32(1.0) if gate > float32(1.0) else gate


ACTIVATIONS = {"relu": relu_kernel, "relu6": relu6_kernel, "sigmoid": sigmoid_kernel, "silu": silu_kernel,
               "hardswish": hardswish_kernel, "hardsigmoid": hardsigmoid_kernel}


def activation(x, name: str):
    """The activation `name` (relu, sigmoid, silu, hardswish) of x, any shape."""
    if name not in ACTIVATIONS:
        raise LayerError(f"activation: unknown {name!r}, expected one of {', '.join(ACTIVATIONS)}")
    flat = x.reshape(-1)
    out = array_module(x).empty_like(flat)
    threads = block_threads(flat.size)
    ACTIVATIONS[name][blocks_for(flat.size, threads), threads](flat, out)
    return out.reshape(x.shape)


@cuda.jit
def gather2d_kernel(x, rows, cols, out):
    """out[n, c, y, x'] = x[n, c, rows[y], cols[x']]: nearest-neighbour resizing, one thread per output."""
    idx = cuda.grid(1)
    n_batch, channels, oh, ow = out.shape
    if idx < out.size:
        n, c, y, x_ = idx // (channels * oh * ow), idx // (oh * ow) % channels, idx // ow % oh, idx % ow
        out[n, c, y, x_] = x[n, c, rows[y], cols[x_]]


def resize_nearest(x, rows, cols):
    """x (N, C, H, W) resized to (N, C, len(rows), len(cols)) by reading source row rows[y], column cols[x']."""
    if x.ndim != 4 or (rows.size and int(rows.max()) >= x.shape[2]) or (cols.size and int(cols.max()) >= x.shape[3]):
        raise ShapeError(f"resize_nearest: rows up to {rows.max()} and columns up to {cols.max()} for x {x.shape}")
    out = array_module(x).empty((*x.shape[:2], rows.size, cols.size), np.float32)
    threads = block_threads(out.size)
    gather2d_kernel[blocks_for(out.size, threads), threads](x, rows, cols, out)
    return out
