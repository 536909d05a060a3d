# Generated from solutions/04_conv_pooling.py, solutions/08_segmentation.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError
from kuiper.layer import Layer
from kuiper.layers.conv import lift_1d, out_size, pair, spatial_input, unbatched
from kuiper.registry import register
from kuiper.tensor import Tensor


@njit(parallel=True, cache=True)
def max_pool(x, out, kh, kw, sh, sw, ph, pw, dh, dw):
    """Max over each kh × kw window (stride, padding, dilation) of x (N, C, H, W) into out: per output
    row, the max down the window's rows (for every column), then the max along that row."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    scratch = np.empty((n_batch * channels, width), np.float32)  # one row per plane: no allocation in the loop
    for nc in prange(n_batch * channels):
        n, c, rows = nc // channels, nc % channels, scratch[nc]
        for y in range(oh):
            rows[:] = -np.inf
            for i in range(kh):
                iy = y * sh - ph + i * dh
                if 0 <= iy < height:
                    for ix in range(width):
                        v = x[n, c, iy, ix]
                        rows[ix] = v if v > rows[ix] else rows[ix]
            best = out[n, c, y]
            best[:] = -np.inf
            for j in range(kw):
                offset = j * dw - pw  # output x_ reads rows[x_ * sw + offset]
                first = max(0, -(offset // sw))  # the first x_ with x_ * sw + offset >= 0
                last = min(ow, (width - 1 - offset) // sw + 1)  # one past the last with it < width
                for x_ in range(first, last):
                    v = rows[x_ * sw + offset]
                    best[x_] = v if v > best[x_] else best[x_]


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

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.kernel, self.stride, self.padding, self.dilation = pool_params(self)
        self.ceil_mode = self.param("ceil_mode", bool, False)
        self.return_indices = self.param("return_indices", bool, False)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = as_nchw(self, x)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh = out_size(data.shape[2], kh, sh, ph, dh, self.ceil_mode)
        ow = out_size(data.shape[3], kw, sw, pw, dw, self.ceil_mode)
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        if not self.return_indices:
            max_pool(data, out, kh, kw, sh, sw, ph, pw, dh, dw)
            return Tensor(out, device=x.device)
        indices = np.empty(out.shape, np.int64)  # return_indices: lesson 08's max_pool_indices
        max_pool_indices(data, out, indices, *window_table(data.shape[2], oh, kh, sh, ph),
                         *window_table(data.shape[3], ow, kw, sw, pw), dh, dw)
        return Tensor(out, device=x.device), Tensor(indices, device=x.device)


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

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.kernel, self.stride, self.padding, _ = pool_params(self)
        self.ceil_mode = self.param("ceil_mode", bool, False)
        self.count_include_pad = self.param("count_include_pad", bool, True)
        self.divisor = self.param("divisor_override", (int, type(None)), None, minimum=1) or 0

    @unbatched
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


def adaptive_size(layer: Layer) -> tuple[int | None, int | None]:
    """output_size as a pair; None (PNNX writes 0) keeps that input dimension; LayerError otherwise."""
    size = layer.param("output_size", (int, tuple))
    pair_ = (size, size) if isinstance(size, int) else size
    if len(pair_) != 2 or not all(s is None or (type(s) is int and s >= 0) for s in pair_):
        raise LayerError(f"{layer.op.where()}: output_size should be an int >= 1 or a pair of them, got {size!r}")
    return tuple(s or None for s in pair_)


@register("nn.AdaptiveAvgPool2d", "F.adaptive_avg_pool2d")
class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed output size (None keeps that input dimension)."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.size = adaptive_size(self)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = as_nchw(self, x)
        if self.size == (1, 1):  # global average pooling: one mean, no kernel launch
            return Tensor(data.mean(axis=(2, 3), keepdims=True, dtype=np.float32), device=x.device)
        oh, ow = (s if s is not None else d for s, d in zip(self.size, data.shape[2:]))
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        adaptive_avg_pool(data, out)
        return Tensor(out, device=x.device)


def window_table(size: int, out: int, kernel: int = 0, stride: int = 1,
                 padding: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per output position along one axis: the input index its window starts at (negative in the
    padding) and its number of taps, both int64 (out,). kernel 0 means adaptive windows, rows
    floor(o·size/out) up to ceil((o+1)·size/out) (PyTorch's adaptive pooling)."""
    o = np.arange(out, dtype=np.int64)
    if kernel == 0:
        start = o * size // out
        return start, -(-(o + 1) * size // out) - start
    return o * stride - padding, np.full(out, kernel, np.int64)


@njit(parallel=True, cache=True)
def max_pool_indices(x, out, indices, y_start, y_taps, x_start, x_taps, dh, dw):
    """out = max of x (N, C, H, W) over the windows of the row and column tables (window_table,
    taps dh and dw apart, outside positions skipped); indices = flat iy·W + ix of the first maximum."""
    n_batch, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n_batch * channels):
        n, c = nc // channels, nc % channels
        for y in range(oh):
            for x_ in range(ow):
                best, where = -np.inf, -1
                for i in range(y_taps[y]):
                    iy = y_start[y] + i * dh
                    if 0 <= iy < height:
                        for j in range(x_taps[x_]):
                            ix = x_start[x_] + j * dw
                            if 0 <= ix < width:
                                value = x[n, c, iy, ix]
                                if where < 0 or value > best or np.isnan(value):
                                    best, where = value, iy * width + ix
                out[n, c, y, x_], indices[n, c, y, x_] = best, where


@register("nn.AdaptiveMaxPool2d", "F.adaptive_max_pool2d")
class AdaptiveMaxPool2d(Layer):
    """Max pooling to a fixed output size, with the indices of the maxima if asked."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.size = adaptive_size(self)
        self.return_indices = self.param("return_indices", bool, False)

    @unbatched
    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        data = as_nchw(self, x)
        (height, width), (oh, ow) = data.shape[2:], self.output_shape(data)
        out, indices = np.empty((*data.shape[:2], oh, ow), np.float32), np.empty((*data.shape[:2], oh, ow), np.int64)
        max_pool_indices(data, out, indices, *window_table(height, oh), *window_table(width, ow), 1, 1)
        return (Tensor(out, device=x.device), Tensor(indices, device=x.device)) if self.return_indices else Tensor(
            out, device=x.device)

    def output_shape(self, data: np.ndarray) -> tuple[int, int]:
        return tuple(s if s is not None else d for s, d in zip(self.size, data.shape[2:]))


@register("nn.LPPool2d", "F.lp_pool2d")
class LPPool2d(Layer):
    """The p-norm of each window, as PyTorch: (avg_pool(x^p) · kh·kw)^(1/p), no padding."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.p = float(self.param("norm_type", (int, float), minimum=1e-6))
        self.kernel = pair(self.param("kernel_size"), "kernel_size", op, minimum=1)
        stride = self.param("stride", object, None)
        self.stride = self.kernel if stride in (None, ()) else pair(stride, "stride", op, minimum=1)
        self.ceil_mode = self.param("ceil_mode", bool, False)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = np.power(as_nchw(self, x), np.float32(self.p))
        (kh, kw), (sh, sw) = self.kernel, self.stride
        oh = out_size(data.shape[2], kh, sh, 0, 1, self.ceil_mode)
        ow = out_size(data.shape[3], kw, sw, 0, 1, self.ceil_mode)
        out = np.empty((*data.shape[:2], oh, ow), np.float32)
        avg_pool(data, out, kh, kw, sh, sw, 0, 0, True, 0)
        with np.errstate(invalid="ignore"):  # a negative sum to a fractional power is NaN, as in PyTorch
            return Tensor(np.power(out * np.float32(kh * kw), np.float32(1 / self.p)), device=x.device)


def one_d(layer_2d: type[Layer]) -> type[Layer]:
    """The 1-D form of a 2-D pooling layer: its operator lifted by lift_1d, (N, C, L) run as
    (N, C, 1, L) and every output squeezed back to (N, C, L')."""
    class Pool1d(layer_2d):
        dims = 1

        def __init__(self, op):
            super().__init__(lift_1d(op))

        @unbatched
        def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
            result = super().forward(Tensor(spatial_input(self.op, x, 1), device=x.device))
            outputs = tuple(Tensor(r.numpy()[:, :, 0], device=x.device)
                            for r in (result if isinstance(result, tuple) else (result,)))
            return outputs if isinstance(result, tuple) else outputs[0]

    Pool1d.__name__ = Pool1d.__qualname__ = layer_2d.__name__.replace("2d", "1d")
    return Pool1d


MaxPool1d = register("nn.MaxPool1d", "F.max_pool1d")(one_d(MaxPool2d))
AvgPool1d = register("nn.AvgPool1d", "F.avg_pool1d")(one_d(AvgPool2d))
AdaptiveAvgPool1d = register("nn.AdaptiveAvgPool1d", "F.adaptive_avg_pool1d")(one_d(AdaptiveAvgPool2d))
AdaptiveMaxPool1d = register("nn.AdaptiveMaxPool1d", "F.adaptive_max_pool1d")(one_d(AdaptiveMaxPool2d))
LPPool1d = register("nn.LPPool1d", "F.lp_pool1d")(one_d(LPPool2d))
