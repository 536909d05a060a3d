# Generated from solutions/04_conv_pooling.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError
from kuiper.layer import Layer
from kuiper.layers.conv import out_size, pair
from kuiper.registry import register
from kuiper.tensor import Tensor


@njit(parallel=True, cache=True)
def max_pool(x, out, kh, kw, sh, sw, ph, pw, dh, dw):
    """Max over each kh × kw window (stride, padding, dilation) of x (N, C, H, W) into out."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n_batch * channels):
        n, c = nc // channels, nc % channels
        for y in range(oh):
            for x_ in range(ow):
                best = -np.inf
                for i in range(kh):
                    iy = y * sh - ph + i * dh
                    if 0 <= iy < height:
                        for j in range(kw):
                            ix = x_ * sw - pw + j * dw
                            if 0 <= ix < width and x[n, c, iy, ix] > best:
                                best = x[n, c, iy, ix]
                out[n, c, y, x_] = best


def pool_params(layer: Layer) -> tuple:
    """kernel, stride (defaults to kernel), padding and dilation pairs of a pooling operator."""
    kernel = pair(layer.param("kernel_size"), "kernel_size", layer.op, minimum=1)
    stride = layer.param("stride", object, None)
    stride = kernel if stride in (None, ()) else pair(stride, "stride", layer.op, minimum=1)
    return (kernel, stride, pair(layer.param("padding", object, 0), "padding", layer.op),
            pair(layer.param("dilation", object, 1), "dilation", layer.op, minimum=1))


def as_nchw(layer: Layer, x: Tensor) -> np.ndarray:
    """x as contiguous float32 (N, C, H, W); ShapeError naming the layer otherwise."""
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    if data.ndim != 4:
        raise ShapeError(f"{layer.op.where()}: expected input (N, C, H, W), got {data.shape}")
    return data


@register("nn.MaxPool2d", "F.max_pool2d")
class MaxPool2d(Layer):
    """Largest value in each window; padding never wins."""

    def __init__(self, op):
        super().__init__(op)
        self.kernel, self.stride, self.padding, self.dilation = pool_params(self)
        self.ceil_mode = self.param("ceil_mode", bool, False)
        if self.param("return_indices", bool, False):
            raise LayerError(f"{op.where()}: return_indices=True is not supported")

    def forward(self, x: Tensor) -> Tensor:
        data = as_nchw(self, x)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh = out_size(data.shape[2], kh, sh, ph, dh, self.ceil_mode)
        ow = out_size(data.shape[3], kw, sw, pw, dw, self.ceil_mode)
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        max_pool(data, out, kh, kw, sh, sw, ph, pw, dh, dw)
        return Tensor(out, device=x.device)


@njit(parallel=True, cache=True)
def avg_pool(x, out, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    """Mean over each window, PyTorch's way: the divisor counts padding only if asked, never beyond it."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n_batch * channels):
        n, c = nc // channels, nc % channels
        for y in range(oh):
            y0 = y * sh - ph
            y1 = min(y0 + kh, height + ph)
            for x_ in range(ow):
                x0 = x_ * sw - pw
                x1 = min(x0 + kw, width + pw)
                padded_area = (y1 - y0) * (x1 - x0)
                total = np.float32(0.0)
                for iy in range(max(y0, 0), min(y1, height)):
                    for ix in range(max(x0, 0), min(x1, width)):
                        total += x[n, c, iy, ix]
                area = padded_area if count_include_pad else (min(y1, height) - max(y0, 0)) * (
                    min(x1, width) - max(x0, 0))
                out[n, c, y, x_] = total / (divisor if divisor > 0 else area)


@register("nn.AvgPool2d", "F.avg_pool2d")
class AvgPool2d(Layer):
    """Mean of each window."""

    def __init__(self, op):
        super().__init__(op)
        self.kernel, self.stride, self.padding, _ = pool_params(self)
        self.ceil_mode = self.param("ceil_mode", bool, False)
        self.count_include_pad = self.param("count_include_pad", bool, True)
        self.divisor = self.param("divisor_override", (int, type(None)), None, minimum=1) or 0

    def forward(self, x: Tensor) -> Tensor:
        data = as_nchw(self, x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh = out_size(data.shape[2], kh, sh, ph, 1, self.ceil_mode)
        ow = out_size(data.shape[3], kw, sw, pw, 1, self.ceil_mode)
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        avg_pool(data, out, kh, kw, sh, sw, ph, pw, self.count_include_pad, self.divisor)
        return Tensor(out, device=x.device)


@njit(parallel=True, cache=True)
def adaptive_avg_pool(x, out):
    """out[.., i, j] = mean of x over rows floor(iH/O)..ceil((i+1)H/O) and the same for columns."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n_batch * channels):
        n, c = nc // channels, nc % channels
        for i in range(oh):
            y0, y1 = (i * height) // oh, -(-((i + 1) * height) // oh)
            for j in range(ow):
                x0, x1 = (j * width) // ow, -(-((j + 1) * width) // ow)
                total = np.float32(0.0)
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        total += x[n, c, iy, ix]
                out[n, c, i, j] = total / ((y1 - y0) * (x1 - x0))


@register("nn.AdaptiveAvgPool2d", "F.adaptive_avg_pool2d")
class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed output size (None keeps that input dimension)."""

    def __init__(self, op):
        super().__init__(op)
        size = self.param("output_size", (int, tuple))
        self.size = (size, size) if isinstance(size, int) else size
        if len(self.size) != 2 or not all(s is None or (type(s) is int and s >= 1) for s in self.size):
            raise LayerError(f"{op.where()}: output_size should be an int >= 1 or a pair of them, got {size!r}")

    def forward(self, x: Tensor) -> Tensor:
        data = as_nchw(self, x)
        if self.size == (1, 1):  # global average pooling: one mean, no kernel launch
            return Tensor(data.mean(axis=(2, 3), keepdims=True, dtype=np.float32), device=x.device)
        oh, ow = (s if s is not None else d for s, d in zip(self.size, data.shape[2:]))
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        adaptive_avg_pool(data, out)
        return Tensor(out, device=x.device)
