# Generated from solutions/03_registry.py, solutions/04_conv_pooling.py, solutions/06_resnet.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("nn.ReLU", "F.relu", "torch.relu")
class ReLU(Layer):
    """max(x, 0), element by element."""

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.maximum(x.numpy(), 0), device=x.device)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x), computed through tanh so that it never overflows."""
    return 0.5 * (np.tanh(0.5 * x) + 1)


class Elementwise(Layer):
    """A layer that applies `fn` to every element: subclasses set `fn` (a function of a numpy array)."""

    @staticmethod
    def fn(x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(self.fn(x.numpy()), device=x.device)


@njit(parallel=True, cache=True)
def relu6_kernel(x, out):
    """out = min(max(x, 0), 6), element by element."""
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for i in prange(flat_in.size):
        flat_out[i] = min(max(flat_in[i], np.float32(0.0)), np.float32(6.0))


@njit(parallel=True, cache=True)
def silu_kernel(x, out):
    """out = x · sigmoid(x) = x / (1 + e^-x), element by element."""
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for i in prange(flat_in.size):
        v = flat_in[i]
        flat_out[i] = v / (np.float32(1.0) + np.exp(-v))


@njit(parallel=True, cache=True)
def hardswish_kernel(x, out):
    """out = x · clip(x / 6 + 1/2, 0, 1), element by element."""
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    for i in prange(flat_in.size):
        v = flat_in[i]
        flat_out[i] = v * min(max(v / np.float32(6.0) + np.float32(0.5), np.float32(0.0)), np.float32(1.0))


def elementwise(kernel):
    """A layer's `fn` running the numba `kernel(x, out)` into a new float32 array."""

    def fn(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        kernel(x, out)
        return out

    return staticmethod(fn)


@register("nn.ReLU6", "F.relu6")
class ReLU6(Elementwise):
    """min(max(x, 0), 6)."""

    fn = elementwise(relu6_kernel)


@register("nn.Sigmoid", "F.sigmoid", "torch.sigmoid")
class Sigmoid(Elementwise):
    """1 / (1 + e^-x)."""

    fn = staticmethod(sigmoid)


@register("nn.SiLU", "F.silu")
class SiLU(Elementwise):
    """x · sigmoid(x), YOLOv5's activation."""

    fn = elementwise(silu_kernel)


@register("nn.Hardsigmoid", "F.hardsigmoid")
class Hardsigmoid(Elementwise):
    """clip(x / 6 + 1/2, 0, 1)."""

    fn = staticmethod(lambda x: np.clip(x / 6 + 0.5, 0, 1))


@register("nn.Hardswish", "F.hardswish")
class Hardswish(Elementwise):
    """x · hardsigmoid(x), MobileNetV3's activation."""

    fn = elementwise(hardswish_kernel)


@register("nn.Hardtanh", "F.hardtanh")
class Hardtanh(Layer):
    """clip(x, min_val, max_val)."""

    def __init__(self, op):
        super().__init__(op)
        self.low = self.param("min_val", (int, float), -1.0)
        self.high = self.param("max_val", (int, float), 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.clip(x.numpy(), self.low, self.high), device=x.device)


@register("nn.LeakyReLU", "F.leaky_relu")
class LeakyReLU(Layer):
    """x for x ≥ 0, negative_slope · x below."""

    def __init__(self, op):
        super().__init__(op)
        self.slope = self.param("negative_slope", (int, float), 0.01)

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        return Tensor(np.where(data >= 0, data, data * np.float32(self.slope)), device=x.device)


@register("nn.Softmax", "F.softmax", "torch.softmax")
class Softmax(Layer):
    """exp(x) / sum(exp(x)) along `dim`, shifted by the maximum so that exp never overflows."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int)

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        shifted = np.exp(data - data.max(axis=self.dim, keepdims=True))
        return Tensor(shifted / shifted.sum(axis=self.dim, keepdims=True), device=x.device)


@intrinsic
def bits_as_float32(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 `bits` (an LLVM bitcast: free at run time)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


# Cephes expf.c: log2(e), ln 2 split in two, and p(r) from its highest power down.
LOG2E, LN2_HI, LN2_LO = np.float32(1.44269504088896341), np.float32(0.693359375), np.float32(-2.12194440e-4)
EXP_POLY = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                          1.6666665459e-1, 5.0000001201e-1))


@njit(cache=True)
def exp_approx(x):
    """e^x for a float32 x, within 1 ulp (Cephes expf); vectorises in a numba loop, unlike np.exp."""
    if x != x:
        return x
    x = min(max(x, np.float32(-104.0)), np.float32(89.0))
    k = np.floor(x * LOG2E + np.float32(0.5))
    r = x - k * LN2_HI - k * LN2_LO
    p = EXP_POLY[0]
    for c in EXP_POLY[1:]:
        p = p * r + c
    half, rest = np.int32(k) >> 1, np.int32(k) - (np.int32(k) >> 1)
    return (p * r * r + r + np.float32(1.0)) * bits_as_float32((half + 127) << 23) * bits_as_float32((rest + 127) << 23)
