# Generated from solutions/04_conv_pooling.py, solutions/06_resnet.py, solutions/08_segmentation.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import copy
import functools
import math
import os
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError, UnsupportedError
from kuiper.layer import Layer
from kuiper.layers.activation import exp_approx, Hardsigmoid, Hardswish, ReLU, ReLU6, Sigmoid, SiLU
from kuiper.pnnx import Attribute, Operator
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


COLUMN_BYTES = 8 * 2**20  # the most work memory (columns, products) one matrix multiply may use


def images_per_gemm(image_bytes: int) -> int:
    """Images per matrix multiply when each needs `image_bytes`: as many as COLUMN_BYTES holds, >= 1."""
    return max(1, COLUMN_BYTES // image_bytes)


_scratch = threading.local()


def scratch(shape: tuple[int, ...], name: str = "columns") -> np.ndarray:
    """A float32 work array of `shape`: the same memory on every call from one thread with one `name`
    (grown when too small), another per thread and name: parallel graphs never share it."""
    size = math.prod(shape)
    buffers = _scratch.__dict__.setdefault("buffers", {})
    if name not in buffers or buffers[name].size < size:
        buffers[name] = np.empty(size, np.float32)
    return buffers[name][:size].reshape(shape)


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


os.environ.setdefault("GOMP_SPINCOUNT", "10000")


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

    depthwise_kernel = staticmethod(depthwise_conv)  # lesson 06 swaps in a faster one (same arguments)

    def __init__(self, op):
        super().__init__(op)
        self.padding = conv_padding(self.param("padding", object, 0), self.kernel, self.dilation, op)
        if self.param("padding_mode", str, "zeros") != "zeros":
            raise LayerError(f"{op.where()}: padding_mode {op.params['padding_mode']!r} is not supported, "
                             f"only 'zeros'")
        self.weight_ = self.weight("weight", (self.c_out, self.c_in // self.groups, *self.kernel))
        order = (0, 2, 3, 1) if self.groups == 1 else (0, 1, 2, 3)  # (i, j, c) as im2col_pixels's columns
        self.gemm_weight = np.ascontiguousarray(  # (g, K/g, C/g·kh·kw)
            self.weight_.transpose(order).reshape(self.groups, self.c_out // self.groups, -1))
        self.depthwise = self.groups == self.c_in and self.groups > 1
        self.winograd = winograd_weights(self.weight_) if winograd_fits(self) else None  # lesson 06
        self.shift = np.zeros(self.c_out, np.float32) if self.bias is None else self.bias
        self.activation = IDENTITY  # the activation fused into the epilogue (lesson 06, "Fusing")
        self.residual = NO_RESIDUAL  # where the epilogue adds a fused residual input (lesson 06)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        data = self.input(x)
        n_batch, _, height, width = data.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        oh, ow = out_size(height, kh, sh, ph, dh), out_size(width, kw, sw, pw, dw)
        shortcut = residual_rows(self, residual, (n_batch, self.c_out, oh, ow))  # a fused residual (lesson 06)
        if self.depthwise:
            planes = np.empty((n_batch, self.c_out, oh * ow), np.float32)
            self.depthwise_kernel(data, self.weight_, planes.reshape(n_batch, self.c_out, oh, ow), sh, sw, ph, pw, dh, dw)
        elif self.winograd is not None and winograd_pays(self.winograd, n_batch * oh * ow):
            planes = np.empty((n_batch, self.c_out, oh * ow), np.float32)
            winograd_conv(data, self.winograd, ph, pw, planes.reshape(n_batch, self.c_out, oh, ow))
        else:
            return Tensor(self.gemm(data, oh, ow, shortcut).reshape(n_batch, self.c_out, oh, ow), device=x.device)
        epilogue(planes, self.shift, self.activation, planes, shortcut, self.residual)  # + bias, activation, residual
        return Tensor(planes.reshape(n_batch, self.c_out, oh, ow), device=x.device)

    def gemm(self, data: np.ndarray, oh: int, ow: int, shortcut: np.ndarray) -> np.ndarray:
        """Output (N, K, OH·OW) of data (N, C, H, W): columns, GEMM per group and epilogue per few images,
        which adds `shortcut` (N, K, OH·OW) as `self.residual` says (NO_ROWS when it has none)."""
        n_batch, size, k_group = len(data), oh * ow, self.c_out // self.groups
        out = np.empty((n_batch, self.c_out, size), np.float32)
        step = images_per_gemm(4 * (self.c_out + self.gemm_weight.shape[2] * self.groups) * size)
        weight_t = self.gemm_weight.transpose(0, 2, 1)  # (g, C/g·kh·kw, K/g)
        for start in range(0, n_batch, step):
            images = data[start:start + step]
            product, row = scratch((len(images) * size, self.c_out), "product"), 0  # pixel-major (n·L, K)
            for cols in conv_columns(self, images, oh, ow):  # lesson 06  # (g, m, C/g·kh·kw) @ (g, C/g·kh·kw, K/g) into (m, g, K/g)
                m = cols.shape[1]
                np.matmul(cols, weight_t, out=product[row:row + m].reshape(m, self.groups, k_group).transpose(1, 0, 2))
                row += m
            planes = product.reshape(len(images), size, self.c_out).transpose(0, 2, 1)  # (n, K, L), a view
            epilogue(planes, self.shift, self.activation, out[start:start + step], shortcut[start:start + step],
                     self.residual)
        return out

    def fuse(self, after: Layer) -> Conv2d | None:
        """This convolution with `after` in its epilogue (`absorb`), or None."""
        return absorb(self, after)


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


def unbatched(forward: Callable) -> Callable:
    """Decorator of a forward method of a layer with `self.dims` spatial axes: an input without its
    batch axis, (C, *spatial), runs as a batch of one and every output loses the batch axis again
    (as PyTorch allows)."""
    @functools.wraps(forward)
    def run(self, x: Tensor, *rest: Tensor) -> Tensor | tuple[Tensor, ...]:
        if x.ndim != self.dims + 1:
            return forward(self, x, *rest)
        result = forward(self, Tensor(x.numpy()[None], device=x.device), *rest)  # (C, ...) -> (1, C, ...)
        outputs = tuple(Tensor(r.numpy()[0], device=x.device)
                        for r in (result if isinstance(result, tuple) else (result,)))
        return outputs if isinstance(result, tuple) else outputs[0]
    return run


IDENTITY, RELU, RELU6, SILU, HARDSWISH, SIGMOID, HARDSIGMOID = range(7)
NO_RESIDUAL, RESIDUAL_BEFORE, RESIDUAL_AFTER = range(3)  # where the epilogue adds a residual input
NO_ROWS = np.zeros((0, 0, 0), np.float32)  # the residual rows of a convolution that has none
EPILOGUE_TILE = 512  # places of an output row per task: a pixel-major product's tile stays in the cache


@njit(parallel=True, cache=True)
def epilogue(planes, bias, activation, out, residual, mode):
    """out[n, k] = activation(planes[n, k] + bias[k]) for planes and out (N, K, L), float32; with
    `mode` RESIDUAL_BEFORE activation(planes + bias + residual), with RESIDUAL_AFTER
    activation(planes + bias) + residual, for residual (N, K, L) float32 (NO_RESIDUAL: not read)."""
    n_batch, k_out, length = planes.shape
    tiles = -(-length // EPILOGUE_TILE)
    one, zero, six = np.float32(1.0), np.float32(0.0), np.float32(6.0)
    for task in prange(n_batch * tiles * k_out):
        n, k, lo = task // (tiles * k_out), task % k_out, task // k_out % tiles * EPILOGUE_TILE
        src, dst, b = planes[n, k, lo:lo + EPILOGUE_TILE], out[n, k, lo:lo + EPILOGUE_TILE], bias[k]
        size = len(src)
        v = np.empty(size, np.float32)  # the sums, contiguous and apart from out: the loops below vectorise
        if mode == RESIDUAL_BEFORE:
            rows = residual[n, k, lo:lo + EPILOGUE_TILE]
            for i in range(size):
                v[i] = src[i] + b + rows[i]
        else:
            for i in range(size):
                v[i] = src[i] + b
        if activation == IDENTITY:
            dst[:] = v
        elif activation == RELU:
            for i in range(size):
                dst[i] = max(v[i], zero)
        elif activation == RELU6:
            for i in range(size):
                dst[i] = min(max(v[i], zero), six)
        elif activation == SILU:
            for i in range(size):
                dst[i] = v[i] / (one + exp_approx(-v[i]))
        elif activation == HARDSWISH:
            for i in range(size):
                dst[i] = v[i] * min(max(v[i] / six + np.float32(0.5), zero), one)
        elif activation == SIGMOID:
            for i in range(size):
                dst[i] = one / (one + exp_approx(-v[i]))
        else:
            for i in range(size):
                dst[i] = min(max(v[i] / six + np.float32(0.5), zero), one)
        if mode == RESIDUAL_AFTER:
            rows = residual[n, k, lo:lo + EPILOGUE_TILE]
            for i in range(size):
                dst[i] += rows[i]


EPILOGUES = {ReLU: RELU, ReLU6: RELU6, SiLU: SILU, Hardswish: HARDSWISH, Sigmoid: SIGMOID, Hardsigmoid: HARDSIGMOID}
SUMS = ("add(@0,@1)", "add(@1,@0)")  # the pnnx.Expression of a residual addition


def residual_rows(layer: Layer, residual: Tensor | None, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The residual input of `layer`, a convolution whose output has `shape` (N, K, OH, OW), as the
    epilogue's rows: float32 (N, K, OH·OW), or NO_ROWS when it has none. ShapeError naming the layer
    when the layer's residual mode and the input disagree, or the input does not match the output
    (an unbatched (K, OH, OW) matches N = 1)."""
    if (residual is None) != (layer.residual == NO_RESIDUAL):
        raise ShapeError(f"{layer.op.where()}: expected {'a' if residual is None else 'no'} residual input, "
                         f"got {'none' if residual is None else residual.shape}")
    if residual is None:
        return NO_ROWS
    data = np.ascontiguousarray(residual.numpy(), dtype=np.float32)
    if data.shape[-3:] != shape[1:] or data.size != math.prod(shape):
        raise ShapeError(f"{layer.op.where()}: expected a residual input of the output's shape {shape}, "
                         f"got {data.shape}")
    return data.reshape(shape[0], shape[1], -1)  # (N, K, OH, OW) -> (N, K, OH·OW)


def absorb(conv: Conv2d, after: Layer) -> Conv2d | None:
    """`conv` with `after` in its epilogue, if the epilogue can do it (a copy: the unfused layer stays
    as it was), else None."""
    fused = copy.copy(conv)
    if type(after) in EPILOGUES and conv.activation == IDENTITY:
        fused.activation = EPILOGUES[type(after)]
    elif after.op.type == "pnnx.Expression" and after.op.params.get("expr") in SUMS and conv.residual == NO_RESIDUAL:
        fused.residual = RESIDUAL_BEFORE if conv.activation == IDENTITY else RESIDUAL_AFTER
    else:
        return None
    return fused


VECTOR = 32           # the flat loops run in whole blocks of this many floats
TASK_FLOATS = 16384   # about what one task's images may fill of a phase plane (64 KiB)
BLOCK = 2048          # floats of the accumulator that stay in the L1 cache while every tap adds to them


@njit(cache=True)
def phase_span(size: int, pad: int, stride: int, out: int, reach: int) -> int:
    """Rows (or columns) of one image in a phase plane: room for every phase's share of the padded
    input, and for the reads of the last of `out` outputs, which go `reach` places further, to end in
    zeros before the next row's (or image's) first input."""
    span = 0
    for phase in range(stride):
        first = max(0, -((phase - pad) // stride))         # the first place that holds an input
        end = (size + pad - phase + stride - 1) // stride  # one past the last
        span = max(span, end, out + reach - first)
    return span


@njit(cache=True)
def fill_phases(x, first, count, c, phases, plane, image, cols, sh, sw, ph, pw):
    """Copy channel c of the images first .. first+count-1 of x (N, C, H, W) into the phase planes:
    padded pixel (py, px) of image n goes to plane (py % sh, px % sw), flat place
    n·image + (py // sh)·cols + px // sw. The other places are left as they are (zeros)."""
    height, width = x.shape[2], x.shape[3]
    for n in range(count):
        for iy in range(height):
            a, r = (iy + ph) % sh, (iy + ph) // sh
            src, base = x[first + n, c, iy], a * sw * plane + n * image + r * cols
            if sw == 2:  # even and odd columns apart in one loop, which LLVM vectorises
                even = phases[base + pw % 2 * plane + pw // 2:]  # input column 0 is in phase pw % 2
                odd = phases[base + (1 - pw % 2) * plane + (pw + 1) // 2:]
                for q in range(width // 2):
                    even[q], odd[q] = src[2 * q], src[2 * q + 1]
                if width % 2:
                    even[width // 2] = src[width - 1]
                continue
            for b in range(sw):
                ix0 = (b - pw) % sw  # the first input column in phase b
                dst = phases[base + b * plane + (ix0 + pw) // sw:]
                if sw == 1:  # a contiguous copy, vectorised
                    for q in range(width - ix0):
                        dst[q] = src[ix0 + q]
                else:
                    for q in range((width - ix0 + sw - 1) // sw):
                        dst[q] = src[ix0 + q * sw]


@njit(cache=True, fastmath=True)
def add_taps(acc, phases, weights, offsets):
    """acc[f] = Σ_t weights[t] · phases[offsets[t] + f] for every f of acc (float32, 1-D): a block of
    acc at a time, four taps per pass over it, then the last taps one by one."""
    taps = weights.size
    for f0 in range(0, acc.size, BLOCK):
        block = acc[f0:f0 + BLOCK]
        block[:] = 0.0
        for t in range(0, taps - 3, 4):
            w0, w1, w2, w3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
            s0, s1 = phases[offsets[t] + f0:], phases[offsets[t + 1] + f0:]
            s2, s3 = phases[offsets[t + 2] + f0:], phases[offsets[t + 3] + f0:]
            for f in range(block.size):
                block[f] += w0 * s0[f] + w1 * s1[f] + w2 * s2[f] + w3 * s3[f]
        for t in range(taps - taps % 4, taps):
            w0, s0 = weights[t], phases[offsets[t] + f0:]
            for f in range(block.size):
                block[f] += w0 * s0[f]


@njit(parallel=True, cache=True)
def depthwise_conv_flat(x, w, out, sh, sw, ph, pw, dh, dw):
    """out[n, k] = w[k] ⋆ x[n, k // m], as `depthwise_conv` (lesson 04) computes it, for x (N, C, H, W),
    w (K, 1, kh, kw), out (N, K, OH, OW), all float32 and C-contiguous: every image of a group laid
    flat in zero-padded phase planes, so that each tap is one long vectorised loop (see above)."""
    n_batch, channels, height, width = x.shape
    _, k_out, oh, ow = out.shape
    kh, kw = w.shape[2], w.shape[3]
    if n_batch == 0 or oh <= 0 or ow <= 0:
        return
    reach_r, reach_c = (kh - 1) * dh // sh, (kw - 1) * dw // sw  # the window's reach in a phase plane
    rows, cols = phase_span(height, ph, sh, oh, reach_r), phase_span(width, pw, sw, ow, reach_c)
    image = rows * cols
    group = max(1, min(n_batch, TASK_FLOATS // image))
    groups = -(-n_batch // group)
    plane = (group - 1) * image + max(image, (oh - 1 + reach_r) * cols + ow + reach_c) + VECTOR
    weights = w.reshape(k_out, kh * kw)
    offsets = np.empty(kh * kw, np.int64)
    for i in range(kh):
        for j in range(kw):
            offsets[i * kw + j] = ((i * dh % sh) * sw + j * dw % sw) * plane + (i * dh // sh) * cols + j * dw // sw
    for task in prange(k_out * groups):
        k, first = task // groups, task % groups * group
        count = min(group, n_batch - first)
        phases = np.zeros(sh * sw * plane, np.float32)
        fill_phases(x, first, count, k * channels // k_out, phases, plane, image, cols, sh, sw, ph, pw)
        acc = np.empty(-(-((count - 1) * image + (oh - 1) * cols + ow) // VECTOR) * VECTOR, np.float32)
        add_taps(acc, phases, weights[k], offsets)
        for n in range(count):
            for y in range(oh):
                row, f = out[first + n, k, y], n * image + y * cols
                for x_ in range(ow):
                    row[x_] = acc[f + x_]


Conv2d.depthwise_kernel = staticmethod(depthwise_conv_flat)


@njit(parallel=True, cache=True)
def channels_last(x, out):
    """out (N, H, W, C) = x (N, C, H, W) transposed, float32: a task per image row, written in order."""
    n_batch, channels, height, width = x.shape
    for task in prange(n_batch * height):
        n, h = task // height, task % height
        src, dst = x[n, :, h], out[n, h]
        for w in range(width):
            for c in range(channels):
                dst[w, c] = src[c, w]


@njit(parallel=True, cache=True)
def im2col_pixels(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Unfold channels-last images x (N, H, W, C) into cols (N, oh*ow, kh*kw*C): a row per output
    pixel, its window tap by tap (i, j), the C channels of a tap side by side; zeros outside the
    image. A window row inside the image (dilation 1) is one run of kw*C floats of x."""
    n_batch, height, width, channels = x.shape
    flat = x.reshape(n_batch, height, width * channels)
    run = kw * channels
    for task in prange(n_batch * oh):
        n, y = task // oh, task % oh
        for x_ in range(ow):
            row, ix0 = cols[n, y * ow + x_], x_ * sw - pw
            inside = dw == 1 and ix0 >= 0 and ix0 + kw <= width
            for i in range(kh):
                iy, f = y * sh - ph + i * dh, i * run
                if iy < 0 or iy >= height:
                    row[f:f + run] = 0.0
                elif inside:
                    row[f:f + run] = flat[n, iy, ix0 * channels:ix0 * channels + run]
                else:
                    for j in range(kw):
                        ix, t = ix0 + j * dw, f + j * channels
                        if 0 <= ix < width:
                            row[t:t + channels] = flat[n, iy, ix * channels:(ix + 1) * channels]
                        else:
                            row[t:t + channels] = 0.0



def conv_columns(conv, images: np.ndarray, oh: int, ow: int) -> list[np.ndarray]:
    """Pixel-major columns of images (n, C, H, W) for the Conv2d `conv`: float32 arrays (g, m, C/g·kh·kw) whose m rows
    are the next m output pixels, in the order of `conv.gemm_weight`'s columns."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel, conv.stride, conv.padding, conv.dilation
    n, size, rows = len(images), oh * ow, conv.c_in * kh * kw
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):  # 1×1: each image (C, L) is its own columns
        return [image.reshape(conv.groups, -1, size).transpose(0, 2, 1) for image in images]
    if conv.groups == 1:
        pixels = scratch((n, *images.shape[2:], conv.c_in), "channels last")
        channels_last(images, pixels)
        cols = scratch((n, size, rows))
        im2col_pixels(pixels, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
        return [cols.reshape(1, n * size, rows)]
    cols = scratch((rows, n, size))
    im2col_images(images, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    return [cols.reshape(conv.groups, -1, n * size).transpose(0, 2, 1)]  # (g, n·L, C/g·kh·kw)


WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # F(2×2, 3×3), Lavin & Gray
WINOGRAD_MIN_CHANNELS = 8  # below it, one im2col matrix multiply beats 16 thin ones (measured: a 3-channel stem)
WINOGRAD_MIN_WORK = 2**20  # multiply-adds per product below which 16 BLAS calls cost more than they save


def winograd_fits(conv) -> bool:
    """Whether the Conv2d `conv` takes the Winograd road: 3×3, stride 1, dilation 1, one group and at
    least WINOGRAD_MIN_CHANNELS input channels (any zero padding)."""
    return ((conv.kernel, conv.stride, conv.dilation, conv.groups) == ((3, 3), (1, 1), (1, 1), 1)
            and conv.c_in >= WINOGRAD_MIN_CHANNELS)


def winograd_pays(u: np.ndarray, outputs: int) -> bool:
    """Whether Winograd beats im2col for weights u (16, K, C) and `outputs` output pixels (N·OH·OW):
    each of its 16 matrix multiplies, about K·C·outputs/4 multiply-adds, must reach WINOGRAD_MIN_WORK."""
    return u.shape[1] * u.shape[2] * outputs // 4 >= WINOGRAD_MIN_WORK


def winograd_weights(weight: np.ndarray) -> np.ndarray:
    """U (16, K, C) float32, U[4i + j, k, c] = (G w[k, c] Gᵀ)[i, j], of 3×3 weights (K, C, 3, 3);
    computed in float64, once at load."""
    u = np.einsum("ai,kcij,bj->abkc", WINOGRAD_G, weight.astype(np.float64), WINOGRAD_G)  # (4, 4, K, C)
    return np.ascontiguousarray(u.reshape(16, *weight.shape[:2]), dtype=np.float32)


@njit(parallel=True, cache=True)
def winograd_input(x, v, ph, pw, th, tw):
    """v[4i + j, c, t] = (Bᵀ d B)[i, j] for the 4×4 patch d of x[n, c] at (2ty - ph, 2tx - pw), zero
    outside the image, tile t = (n·th + ty)·tw + tx: x (N, C, H, W) and v (16, C, N·th·tw) float32."""
    n_batch, channels, height, width = x.shape
    span = 2 * tw + 2  # the input columns a row of tiles reads, from -pw on
    lo, hi = min(span, pw), min(span, width + pw)  # those inside the image
    for task in prange(n_batch * channels * th):
        n, c, ty = task // (channels * th), task // th % channels, task % th
        d = np.zeros((4, span), np.float32)
        for i in range(4):
            iy = 2 * ty - ph + i
            if 0 <= iy < height and lo < hi:
                d[i, lo:hi] = x[n, c, iy, lo - pw:hi - pw]
        r = np.empty((4, span), np.float32)  # Bᵀ d
        for j in range(span):
            r[0, j], r[1, j], r[2, j], r[3, j] = d[0, j] - d[2, j], d[1, j] + d[2, j], d[2, j] - d[1, j], d[1, j] - d[3, j]
        t0 = (n * th + ty) * tw
        for i in range(4):  # (Bᵀ d) B, tile by tile
            v0, v1, v2, v3 = v[4 * i, c, t0:], v[4 * i + 1, c, t0:], v[4 * i + 2, c, t0:], v[4 * i + 3, c, t0:]
            for tx in range(tw):
                a, b, e, f = r[i, 2 * tx], r[i, 2 * tx + 1], r[i, 2 * tx + 2], r[i, 2 * tx + 3]
                v0[tx], v1[tx], v2[tx], v3[tx] = a - e, b + e, e - b, b - f


@njit(parallel=True, cache=True)
def winograd_output(m, out, th, tw):
    """out[n, k, 2ty + i, 2tx + j] = (Aᵀ M A)[i, j], M[p, q] = m[4p + q, k, t], tile t = (n·th + ty)·tw + tx:
    m (16, K, N·th·tw) and out (N, K, OH, OW) float32, OH <= 2·th and OW <= 2·tw."""
    n_batch, k_out, oh, ow = out.shape
    for task in prange(n_batch * k_out * th):
        n, k, ty = task // (k_out * th), task // th % k_out, task % th
        t0 = (n * th + ty) * tw
        s = np.empty((2, 4, tw), np.float32)  # Aᵀ M of each tile of the row: s[i, q, tx]
        for q in range(4):
            m0, m1, m2, m3 = m[q, k, t0:], m[4 + q, k, t0:], m[8 + q, k, t0:], m[12 + q, k, t0:]
            for tx in range(tw):
                s[0, q, tx] = m0[tx] + m1[tx] + m2[tx]
                s[1, q, tx] = m1[tx] - m2[tx] - m3[tx]
        for i in range(min(2, oh - 2 * ty)):
            row = out[n, k, 2 * ty + i]
            for tx in range(ow // 2):
                row[2 * tx] = s[i, 0, tx] + s[i, 1, tx] + s[i, 2, tx]
                row[2 * tx + 1] = s[i, 1, tx] - s[i, 2, tx] - s[i, 3, tx]
            if ow % 2:
                row[ow - 1] = s[i, 0, tw - 1] + s[i, 1, tw - 1] + s[i, 2, tw - 1]


def winograd_conv(x: np.ndarray, u: np.ndarray, ph: int, pw: int, out: np.ndarray) -> None:
    """out (N, K, OH, OW) float32 = the 3×3, stride-1 convolution, without bias, of x (N, C, H, W)
    float32 zero-padded by (ph, pw), whose Winograd weights are u (16, K, C) (`winograd_weights`):
    for each `images_per_gemm` images, the input transform, 16 matrix multiplies, the output transform."""
    n_batch, channels = x.shape[:2]
    k_out, oh, ow = out.shape[1:]
    th, tw = -(-oh // 2), -(-ow // 2)  # 2×2 output tiles down and across
    step = images_per_gemm(4 * 16 * (channels + k_out) * th * tw)
    for start in range(0, n_batch, step):
        images = x[start:start + step]
        tiles = len(images) * th * tw
        v = scratch((16, channels, tiles), "winograd input")
        winograd_input(images, v, ph, pw, th, tw)
        m = np.matmul(u, v, out=scratch((16, k_out, tiles), "winograd product"))  # 16 × (K, C) @ (C, tiles)
        winograd_output(m, out[start:start + step], th, tw)


PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
LEADING = {"kernel_size": 1, "stride": 1, "dilation": 1, "padding": 0, "output_padding": 0, "output_size": 1}


def lift_1d(op: Operator) -> Operator:
    """A 1-D window operator as its 2-D form over a (1, L) image: each window parameter (3, or
    (3,)) gets a leading 1 (0 for paddings), a weight (K, C, k) becomes (K, C, 1, k)."""
    params = dict(op.params)
    for key, lead in LEADING.items():
        value = params.get(key)
        if type(value) is int or (isinstance(value, tuple) and len(value) == 1):
            params[key] = (lead, value if type(value) is int else value[0])
    attrs = dict(op.attrs)
    if "weight" in attrs and attrs["weight"].data is not None and attrs["weight"].data.ndim == 3:
        data = attrs["weight"].data[:, :, None]  # (K, C, k) -> (K, C, 1, k)
        attrs["weight"] = replace(attrs["weight"], shape=data.shape, data=data)
    return replace(op, params=params, attrs=attrs)


def conv_sides(padding: object, dims: int, kernel: tuple[int, int], dilation: tuple[int, int],
               op: Operator) -> list[tuple[int, int]]:
    """(before, after) padding of both axes of the lifted 2-D window of a `dims`-D convolution:
    'valid', 'same' (d(k-1) in all, the odd one after, as PyTorch's _convolution_same), one int
    per axis, or F.pad's (left, right[, top, bottom]). LayerError otherwise."""
    if padding == "valid":
        return [(0, 0), (0, 0)]
    if padding == "same":
        return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
    values = (padding,) * dims if type(padding) is int else padding
    if not (isinstance(values, tuple) and len(values) in (dims, 2 * dims)
            and all(type(v) is int and v >= 0 for v in values)):
        raise LayerError(f"{op.where()}: padding should be 'same', 'valid' or {dims} ints (or {2 * dims} in F.pad's "
                         f"order), each at least 0, got {padding!r}")
    if len(values) == dims:
        return [(0, 0)] * (2 - dims) + [(p, p) for p in values]
    return [(0, 0)] * (2 - dims) + [values[i:i + 2] for i in range(0, len(values), 2)][::-1]  # last axis first


def conv_operator(op: Operator, kind: str, params: dict, weight: np.ndarray, bias: np.ndarray | None) -> Operator:
    """An operator of type `kind` named after `op` that holds `weight` and `bias` as its weights."""
    attrs = {"weight": Attribute(weight.shape, "float32", weight)}
    if bias is not None:
        attrs["bias"] = Attribute(bias.shape, "float32", bias)
    return replace(op, type=kind, params=params | {"bias": bias is not None}, attrs=attrs)


def spatial_input(op: Operator, x: Tensor, dims: int) -> np.ndarray:
    """x as float32 (N, C, H, W): a 1-D input (N, C, L) gains H = 1; ShapeError otherwise."""
    data = np.asarray(x.numpy(), dtype=np.float32)
    if data.ndim != dims + 2:
        raise ShapeError(f"{op.where()}: expected input (N, C, {'L' if dims == 1 else 'H, W'}), got {data.shape}")
    return data[:, :, None] if dims == 1 else data  # (N, C, L) -> (N, C, 1, L)


@register("nn.Conv1d", "nn.Conv2d")
class Convolution(Layer):
    """nn.Conv1d / nn.Conv2d with every padding_mode and 'same' padding: pad, then Conv2d."""

    def __init__(self, op):
        super().__init__(op)
        self.dims = 1 if op.type.endswith("1d") else 2
        lifted = lift_1d(op) if self.dims == 1 else op
        mode = self.param("padding_mode", str, "zeros")
        if mode not in PADDING_MODES:
            raise UnsupportedError(f"{op.where()}: padding_mode {mode!r} is not supported "
                                   f"(supported: {', '.join(PADDING_MODES)})")
        kernel = pair(lifted.params.get("kernel_size"), "kernel_size", op, minimum=1)
        dilation = pair(lifted.params.get("dilation", 1), "dilation", op, minimum=1)
        self.sides = conv_sides(op.params.get("padding", 0), self.dims, kernel, dilation, op)
        self.np_mode = PADDING_MODES[mode]
        symmetric = mode == "zeros" and all(lo == hi for lo, hi in self.sides)
        padding = tuple(lo for lo, _ in self.sides) if symmetric else (0, 0)
        self.pad_first = not symmetric
        self.conv = Conv2d(replace(lifted, type="nn.Conv2d", params=lifted.params | {
            "padding": padding, "padding_mode": "zeros"}))

    def fuse(self, after: Layer) -> "Convolution | None":
        """A copy whose convolution has `after` (an activation, a residual sum) in its epilogue (lesson 06),
        if it takes it."""
        conv = self.conv.fuse(after)
        if conv is None:
            return None
        fused = copy.copy(self)
        fused.conv = conv
        return fused

    @unbatched
    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        data = spatial_input(self.op, x, self.dims)
        if self.pad_first:
            data = np.pad(data, [(0, 0), (0, 0), *self.sides], mode=self.np_mode)
        if residual is not None and self.dims == 1:
            residual = Tensor(residual.numpy()[..., None, :], device=x.device)  # (N, K, L) -> (N, K, 1, L)
        out = self.conv(Tensor(data, device=x.device), residual).numpy()
        return Tensor(out[:, :, 0] if self.dims == 1 else out, device=x.device)


@register("nn.ConvTranspose1d")
class ConvTranspose(Layer):
    """nn.ConvTranspose1d as ConvTranspose2d over a (1, L) image."""

    def __init__(self, op):
        super().__init__(op)
        self.conv = ConvTranspose2d(replace(lift_1d(op), type="nn.ConvTranspose2d"))

    dims = 1

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(Tensor(spatial_input(self.op, x, 1), device=x.device)).numpy()
        return Tensor(out[:, :, 0], device=x.device)


@register("F.conv1d", "F.conv2d", "F.conv_transpose1d", "F.conv_transpose2d")
class FunctionalConv(Layer):
    """F.conv1d/2d and F.conv_transpose1d/2d: the weight (and bias) are inputs, a Convolution or
    ConvTranspose is built from them, and kept while the same weight tensor comes back."""

    def __init__(self, op):
        super().__init__(op)
        self.transposed = "transpose" in op.type
        self.dims = 1 if op.type.endswith("1d") else 2
        self.built: tuple[object, object, Layer] | None = None

    def layer(self, weight: np.ndarray, bias: np.ndarray | None) -> Layer:
        """The layer for this weight (K, C/g, *window) or, transposed, (C, K/g, *window)."""
        if self.built is not None and self.built[0] is weight and self.built[1] is bias:
            return self.built[2]
        if weight.ndim != self.dims + 2:
            raise ShapeError(f"{self.op.where()}: expected a weight of {self.dims + 2} dimensions, got {weight.shape}")
        groups = self.param("groups", int, 1, minimum=1)
        channels = (weight.shape[0], weight.shape[1] * groups)
        c_in, c_out = channels if self.transposed else channels[::-1]
        params = self.op.params | {"in_channels": c_in, "out_channels": c_out, "kernel_size": weight.shape[2:]}
        kind = f"nn.Conv{'Transpose' if self.transposed else ''}{self.dims}d"
        op = conv_operator(self.op, kind, params, np.asarray(weight, np.float32),
                           None if bias is None else np.asarray(bias, np.float32))
        built = ConvTranspose(op) if self.transposed and self.dims == 1 else (
            ConvTranspose2d(op) if self.transposed else Convolution(op))
        self.built = (weight, bias, built)
        return built

    @unbatched
    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.layer(weight.numpy(), None if bias is None else bias.numpy())(x)


def unfold(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int]) -> np.ndarray:
    """F.unfold: x (N, C, H, W) float32 -> columns (N, C·kh·kw, L), L windows in row-major order."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = out_size(x.shape[2], kh, sh, ph, dh), out_size(x.shape[3], kw, sw, pw, dw)
    if min(oh, ow) < 1:
        raise ShapeError(f"a {kh}×{kw} window (dilation {dilation}) does not fit in {x.shape} padded by {padding}")
    cols = np.empty((x.shape[1] * kh * kw, x.shape[0], oh * ow), np.float32)  # (C·kh·kw, N, L)
    im2col_images(np.ascontiguousarray(x), cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    return np.ascontiguousarray(cols.transpose(1, 0, 2))  # (N, C·kh·kw, L)


def fold(cols: np.ndarray, size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
         padding: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """F.fold: columns (N, C·kh·kw, L) float32 -> (N, C, *size), overlapping windows added."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    bh, bw = out_size(size[0], kh, sh, ph, dh), out_size(size[1], kw, sw, pw, dw)
    if cols.ndim != 3 or cols.shape[1] % (kh * kw) or cols.shape[2] != bh * bw:
        raise ShapeError(f"expected columns (N, C·{kh * kw}, {bh * bw}) for an output {size}, got {cols.shape}")
    out = np.zeros((cols.shape[0], cols.shape[1] // (kh * kw), *size), np.float32)
    col2im(cols, out, kh, kw, sh, sw, ph, pw, dh, dw, bh, bw)
    return out


@register("nn.Unfold", "F.unfold")
class Unfold(Layer):
    """(N, C, H, W) -> (N, C·kh·kw, L): every sliding block as a column (im2col)."""

    dims = 2

    def __init__(self, op):
        super().__init__(op)
        self.window = window_params(self)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        if data.ndim != 4:
            raise ShapeError(f"{self.op.where()}: expected input (N, C, H, W), got {data.shape}")
        try:
            return Tensor(unfold(data, *self.window), device=x.device)
        except ShapeError as err:
            raise ShapeError(f"{self.op.where()}: {err}") from None


@register("nn.Fold", "F.fold")
class Fold(Layer):
    """(N, C·kh·kw, L) -> (N, C, H, W): blocks added back into an image of output_size (col2im)."""

    dims = 1  # an unbatched input is (C·kh·kw, L)

    def __init__(self, op):
        super().__init__(op)
        self.window = window_params(self)
        self.size = pair(self.param("output_size"), "output_size", op, minimum=1)

    @unbatched
    def forward(self, x: Tensor) -> Tensor:
        try:
            return Tensor(fold(np.ascontiguousarray(x.numpy(), dtype=np.float32), self.size, *self.window),
                          device=x.device)
        except ShapeError as err:
            raise ShapeError(f"{self.op.where()}: {err}") from None


def window_params(layer: Layer) -> tuple[tuple[int, int], ...]:
    """kernel_size, stride, padding and dilation of Fold / Unfold as pairs."""
    return (pair(layer.param("kernel_size"), "kernel_size", layer.op, minimum=1),
            pair(layer.param("stride", object, 1), "stride", layer.op, minimum=1),
            pair(layer.param("padding", object, 0), "padding", layer.op),
            pair(layer.param("dilation", object, 1), "dilation", layer.op, minimum=1))
