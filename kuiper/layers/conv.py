# Generated from solutions/04_conv_pooling.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import copy
import math
import os
import threading

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError
from kuiper.layer import Layer
from kuiper.layers.activation import exp_approx, Hardsigmoid, Hardswish, ReLU, ReLU6, Sigmoid, SiLU
from kuiper.registry import register
from kuiper.tensor import Tensor


def out_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
             ceil_mode: bool = False) -> int:
    """How many outputs a window of `kernel` makes along an axis of `size` (PyTorch's rule)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@njit(parallel=True, cache=True)
def im2col_images(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Unfold images x (N, C, H, W) into cols (C*kh*kw, N, oh*ow): a row per (c, i, j) tap of the
    window, the images side by side along it."""
    n_batch, channels, height, width = x.shape
    for task in prange(channels * kh * kw * n_batch):
        row, n = task // n_batch, task % n_batch
        c, i, j = row // (kh * kw), row // kw % kh, row % kw
        shift = j * dw - pw  # output column x_ reads input column x_ * sw + shift
        x_lo = min(ow, max(0, -(shift // sw)))
        x_hi = max(x_lo, min(ow, (width - 1 - shift) // sw + 1))
        for y in range(oh):
            iy = y * sh - ph + i * dh
            line = cols[row, n, y * ow:(y + 1) * ow]
            if iy < 0 or iy >= height:
                line[:] = 0.0
                continue
            line[:x_lo] = 0.0
            if sw == 1:
                line[x_lo:x_hi] = x[n, c, iy, x_lo + shift:x_hi + shift]
            else:
                for x_ in range(x_lo, x_hi):
                    line[x_] = x[n, c, iy, x_ * sw + shift]
            line[x_hi:] = 0.0


COLUMN_BYTES = 32 * 2**20  # the most column memory one im2col + matrix multiply may use


_scratch = threading.local()


def scratch(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array of `shape`: the same memory on every call from one thread (grown when
    too small), another for each thread, so that graphs run in parallel threads never share it."""
    size = math.prod(shape)
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _scratch.buffer = np.empty(size, np.float32)
    return buffer[:size].reshape(shape)


@njit(parallel=True, cache=True)
def depthwise_conv(x, w, out, sh, sw, ph, pw, dh, dw):
    """out[n, k] = w[k] ⋆ x[n, k // m]: each output channel reads one input channel.

    Row by row: every tap (i, j) of the window adds its weight times a shifted input row to the
    output row, over the range [x_lo, x_hi) of outputs whose input lies inside the image."""
    n_batch, channels, height, width = x.shape
    _, k_out, oh, ow = out.shape
    kh, kw = w.shape[2], w.shape[3]
    multiplier = k_out // channels
    for nk in prange(n_batch * k_out):
        n, k = nk // k_out, nk % k_out
        c = k // multiplier
        for y in range(oh):
            row = out[n, k, y]
            row[:] = 0.0
            for i in range(kh):
                iy = y * sh - ph + i * dh
                if iy < 0 or iy >= height:
                    continue
                source = x[n, c, iy]
                for j in range(kw):
                    shift = j * dw - pw
                    x_lo = min(ow, max(0, -(shift // sw)))
                    x_hi = max(x_lo, min(ow, (width - 1 - shift) // sw + 1))
                    weight = w[k, 0, i, j]
                    for x_ in range(x_lo, x_hi):
                        row[x_] += weight * source[x_ * sw + shift]


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pair(value: object, name: str, op, minimum: int = 0) -> tuple[int, int]:
    """A PNNX int or (int, int) parameter as a pair of ints >= `minimum`; LayerError otherwise."""
    pair_ = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(pair_, tuple) and len(pair_) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair_)):
        raise LayerError(f"{op.where()}: {name} should be an int or a pair of ints, got {value!r}")
    if min(pair_) < minimum:
        raise LayerError(f"{op.where()}: {name} should be at least {minimum}, got {value!r}")
    return pair_


def conv_padding(value: object, kernel: tuple[int, int], dilation: tuple[int, int], op) -> tuple[int, int]:
    """Padding as a pair: PNNX writes a pair, or 'valid' / 'same' (stride 1) as strings."""
    if value == "valid":
        return 0, 0
    if value == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if any(t % 2 for t in total):
            raise LayerError(f"{op.where()}: padding='same' with an even window is asymmetric, not supported")
        return total[0] // 2, total[1] // 2
    return pair(value, "padding", op)


class ConvLayer(Layer):
    """What Conv2d and ConvTranspose2d share: channels, groups, window, bias, and the input check."""

    def __init__(self, op):
        super().__init__(op)
        self.c_in, self.c_out = self.param("in_channels", int, minimum=1), self.param("out_channels", int, minimum=1)
        self.groups = self.param("groups", int, 1, minimum=1)
        if self.c_in % self.groups or self.c_out % self.groups:
            raise LayerError(f"{op.where()}: groups={self.groups} must divide in_channels={self.c_in} "
                             f"and out_channels={self.c_out}")
        self.kernel = pair(self.param("kernel_size"), "kernel_size", op, minimum=1)
        self.stride = pair(self.param("stride", object, 1), "stride", op, minimum=1)
        self.dilation = pair(self.param("dilation", object, 1), "dilation", op, minimum=1)
        self.bias = self.weight("bias", (self.c_out,)) if self.param("bias", bool, False) else None

    def input(self, x: Tensor) -> np.ndarray:
        """x as contiguous float32 (N, in_channels, H, W); ShapeError naming the layer otherwise."""
        data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        if data.ndim != 4 or data.shape[1] != self.c_in:
            raise ShapeError(f"{self.op.where()}: expected input (N, {self.c_in}, H, W), got {data.shape}")
        return data


@register("nn.Conv2d")
class Conv2d(ConvLayer):
    """2-d convolution: 1×1 as a GEMM, depthwise as a direct kernel, the rest as im2col + GEMM."""

    def __init__(self, op):
        super().__init__(op)
        self.padding = conv_padding(self.param("padding", object, 0), self.kernel, self.dilation, op)
        if self.param("padding_mode", str, "zeros") != "zeros":
            raise LayerError(f"{op.where()}: padding_mode {op.params['padding_mode']!r} is not supported, "
                             f"only 'zeros'")
        self.weight_ = self.weight("weight", (self.c_out, self.c_in // self.groups, *self.kernel))
        self.gemm_weight = np.ascontiguousarray(self.weight_.reshape(self.groups, self.c_out // self.groups, -1))
        self.depthwise = self.groups == self.c_in and self.groups > 1
        self.shift = np.zeros(self.c_out, np.float32) if self.bias is None else self.bias
        self.activation = IDENTITY  # the activation fused into the epilogue (see "Fusing", below)

    def forward(self, x: Tensor) -> Tensor:
        data = self.input(x)
        n_batch, _, height, width = data.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh, ow = out_size(height, kh, sh, ph, dh), out_size(width, kw, sw, pw, dw)
        if self.depthwise:
            planes = np.empty((n_batch, self.c_out, oh * ow), np.float32)
            depthwise_conv(data, self.weight_, planes.reshape(n_batch, self.c_out, oh, ow), sh, sw, ph, pw, dh, dw)
        elif (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and (n_batch == 1 or self.groups > 1):
            cols = data.reshape(n_batch, self.groups, -1, height * width)
            planes = np.matmul(self.gemm_weight, cols).reshape(n_batch, self.c_out, oh * ow)
        elif self.groups > 1:
            planes = np.empty((n_batch, self.groups, self.c_out // self.groups, oh * ow), np.float32)
            cols = scratch((self.c_in * kh * kw, 1, oh * ow))
            for n in range(n_batch):
                im2col_images(data[n:n + 1], cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
                np.matmul(self.gemm_weight, cols.reshape(self.groups, -1, oh * ow), out=planes[n])
            planes = planes.reshape(n_batch, self.c_out, oh * ow)
        else:
            out = np.empty((n_batch, self.c_out, oh * ow), np.float32)
            rows = self.c_in * kh * kw
            step = max(1, COLUMN_BYTES // (4 * rows * oh * ow))  # images per matrix multiply
            for start in range(0, n_batch, step):
                images = data[start:start + step]
                cols = scratch((rows, len(images), oh * ow))
                im2col_images(images, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
                product = self.gemm_weight[0] @ cols.reshape(rows, -1)  # (K, n·OH·OW)
                epilogue(product.reshape(self.c_out, len(images), oh * ow).transpose(1, 0, 2), self.shift,
                         self.activation, out[start:start + step])
            return Tensor(out.reshape(n_batch, self.c_out, oh, ow), device=x.device)
        epilogue(planes, self.shift, self.activation, planes)  # + bias, then the fused activation
        return Tensor(planes.reshape(n_batch, self.c_out, oh, ow), device=x.device)

    def fuse(self, after: Layer) -> Conv2d | None:
        """This convolution with `after`'s activation in its epilogue, if the epilogue has it (a copy:
        the unfused layer stays as it was), else None."""
        if self.activation != IDENTITY or type(after) not in EPILOGUES:
            return None
        fused = copy.copy(self)
        fused.activation = EPILOGUES[type(after)]
        return fused


@njit(parallel=True, cache=True)
def col2im(cols, out, kh, kw, sh, sw, ph, pw, dh, dw, height, width):
    """Add each column of cols (N, K*kh*kw, H*W) into out (N, K, OH, OW) at its window: im2col's reverse."""
    n_batch, k_out, oh, ow = out.shape
    for nk in prange(n_batch * k_out):
        n, k = nk // k_out, nk % k_out
        for i in range(kh):
            for j in range(kw):
                row = (k * kh + i) * kw + j
                for y in range(height):
                    oy = y * sh - ph + i * dh
                    if 0 <= oy < oh:
                        for x_ in range(width):
                            ox = x_ * sw - pw + j * dw
                            if 0 <= ox < ow:
                                out[n, k, oy, ox] += cols[n, row, y * width + x_]


@register("nn.ConvTranspose2d")
class ConvTranspose2d(ConvLayer):
    """Transposed 2-d convolution: a GEMM makes every kernel copy, col2im adds them into place."""

    def __init__(self, op):
        super().__init__(op)
        self.padding = pair(self.param("padding", object, 0), "padding", op)
        self.output_padding = pair(self.param("output_padding", object, 0), "output_padding", op)
        k_group = self.c_out // self.groups
        weight = self.weight("weight", (self.c_in, k_group, *self.kernel))
        per_group = weight.reshape(self.groups, self.c_in // self.groups, k_group * self.kernel[0] * self.kernel[1])
        self.gemm_weight = np.ascontiguousarray(per_group.transpose(0, 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        data = self.input(x)
        n_batch, _, height, width = data.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh = (height - 1) * sh - 2 * ph + dh * (kh - 1) + self.output_padding[0] + 1
        ow = (width - 1) * sw - 2 * pw + dw * (kw - 1) + self.output_padding[1] + 1
        groups_in = data.reshape(n_batch, self.groups, self.c_in // self.groups, height * width)
        cols = np.matmul(self.gemm_weight, groups_in).reshape(n_batch, self.c_out * kh * kw, height * width)
        out = np.zeros((n_batch, self.c_out, oh, ow), np.float32)
        col2im(cols, out, kh, kw, sh, sw, ph, pw, dh, dw, height, width)
        if self.bias is not None:
            out += self.bias[:, None, None]
        return Tensor(out, device=x.device)


IDENTITY, RELU, RELU6, SILU, HARDSWISH, SIGMOID, HARDSIGMOID = range(7)


@njit(parallel=True, cache=True)
def epilogue(planes, bias, activation, out):
    """out[n, k] = activation(planes[n, k] + bias[k]) for planes and out (N, K, L), float32."""
    n_batch, k_out, size = planes.shape
    one, zero, six = np.float32(1.0), np.float32(0.0), np.float32(6.0)
    for nk in prange(n_batch * k_out):
        n, k = nk // k_out, nk % k_out
        src, dst, b = planes[n, k], out[n, k], bias[k]
        if activation == IDENTITY:
            for i in range(size):
                dst[i] = src[i] + b
        elif activation == RELU:
            for i in range(size):
                dst[i] = max(src[i] + b, zero)
        elif activation == RELU6:
            for i in range(size):
                dst[i] = min(max(src[i] + b, zero), six)
        elif activation == SILU:
            for i in range(size):
                v = src[i] + b
                dst[i] = v / (one + exp_approx(-v))
        elif activation == HARDSWISH:
            for i in range(size):
                v = src[i] + b
                dst[i] = v * min(max(v / six + np.float32(0.5), zero), one)
        elif activation == SIGMOID:
            for i in range(size):
                dst[i] = one / (one + exp_approx(-(src[i] + b)))
        else:
            for i in range(size):
                dst[i] = min(max((src[i] + b) / six + np.float32(0.5), zero), one)


EPILOGUES = {ReLU: RELU, ReLU6: RELU6, SiLU: SILU, Hardswish: HARDSWISH, Sigmoid: SIGMOID, Hardsigmoid: HARDSIGMOID}
