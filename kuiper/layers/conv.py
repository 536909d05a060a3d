# Generated from solutions/04_conv_pooling.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math
import os
import threading

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError
from kuiper.layer import Layer
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
def im2col_image(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Unfold one image x (C, H, W) into cols (C*kh*kw, oh*ow); a row per (c, i, j) tap of the window."""
    channels, height, width = x.shape
    for row in prange(channels * kh * kw):
        c, i, j = row // (kh * kw), row // kw % kh, row % kw
        shift = j * dw - pw  # output column x_ reads input column x_ * sw + shift
        x_lo = min(ow, max(0, -(shift // sw)))
        x_hi = max(x_lo, min(ow, (width - 1 - shift) // sw + 1))
        for y in range(oh):
            iy = y * sh - ph + i * dh
            line = cols[row, y * ow:(y + 1) * ow]
            if iy < 0 or iy >= height:
                line[:] = 0.0
                continue
            line[:x_lo] = 0.0
            if sw == 1:
                line[x_lo:x_hi] = x[c, iy, x_lo + shift:x_hi + shift]
            else:
                for x_ in range(x_lo, x_hi):
                    line[x_] = x[c, iy, x_ * sw + shift]
            line[x_hi:] = 0.0


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


SMALL_MAP = 100  # below this many output pixels, one GEMM for the whole batch beats one per image


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

    def forward(self, x: Tensor) -> Tensor:
        data = self.input(x)
        n_batch, _, height, width = data.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh, ow = out_size(height, kh, sh, ph, dh), out_size(width, kw, sw, pw, dw)
        if self.depthwise:
            out = np.empty((n_batch, self.c_out, oh, ow), np.float32)
            depthwise_conv(data, self.weight_, out, sh, sw, ph, pw, dh, dw)
        elif (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
            cols = data.reshape(n_batch, self.groups, -1, height * width)
            out = np.matmul(self.gemm_weight, cols).reshape(n_batch, self.c_out, oh, ow)
        elif self.groups == 1 and oh * ow < SMALL_MAP:
            cols = scratch((self.c_in * kh * kw, n_batch, oh * ow))
            for n in range(n_batch):
                im2col_image(data[n], cols[:, n], kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
            out = self.gemm_weight[0] @ cols.reshape(self.c_in * kh * kw, n_batch * oh * ow)
            out = np.ascontiguousarray(out.reshape(self.c_out, n_batch, oh, ow).transpose(1, 0, 2, 3))
        else:
            out = np.empty((n_batch, self.groups, self.c_out // self.groups, oh * ow), np.float32)
            cols = scratch((self.c_in * kh * kw, oh * ow))
            for n in range(n_batch):
                im2col_image(data[n], cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
                np.matmul(self.gemm_weight, cols.reshape(self.groups, -1, oh * ow), out=out[n])
            out = out.reshape(n_batch, self.c_out, oh, ow)
        if self.bias is not None:
            out += self.bias[:, None, None]
        return Tensor(out, device=x.device)


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
