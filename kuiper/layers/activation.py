# Generated from solutions/03_registry.py, solutions/04_conv_pooling.py, solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
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


@njit(cache=True, error_model="numpy")
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


# Eigen's erf and tanh: x·p(x²)/q(x²) on [-clamp, clamp], p and q from the highest power down.
ERF_CLAMP, TANH_CLAMP = np.float32(4.0), np.float32(7.90531110763549805)
ERF_P = tuple(np.float32(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                                       -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                                       -1.60960333262415e-02))
ERF_Q = tuple(np.float32(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                                       -7.37332916720468e-03, -1.42647390514189e-02))
TANH_P = tuple(np.float32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                        5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                        4.89352455891786e-03))
TANH_Q = tuple(np.float32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                        4.89352518554385e-03))


@njit(cache=True, error_model="numpy")
def odd_rational(x, clamp, p_coeffs, q_coeffs):
    """x·p(x²)/q(x²) for a float32 x clamped to [-clamp, clamp]; p and q by Horner's rule. NaN stays NaN."""
    x = min(max(x, -clamp), clamp)
    x2 = x * x
    p, q = p_coeffs[0], q_coeffs[0]
    for c in p_coeffs[1:]:
        p = p * x2 + c
    for c in q_coeffs[1:]:
        q = q * x2 + c
    return x * p / q


@njit(cache=True, error_model="numpy")
def erf_approx(x):
    """erf(x) for a float32 x, within 5e-7 (Eigen's rational approximation); vectorises, unlike math.erf."""
    return odd_rational(x, ERF_CLAMP, ERF_P, ERF_Q)


@njit(cache=True, error_model="numpy")
def tanh_approx(x):
    """tanh(x) for a float32 x, within 5e-7 (Eigen's rational approximation); vectorises, unlike np.tanh."""
    return odd_rational(x, TANH_CLAMP, TANH_P, TANH_Q)


GELU, GELU_TANH, TANH, MISH, SIGMOID, SILU, HARDSIGMOID = range(7)
SQRT_HALF, SQRT_2_OVER_PI, GELU_CUBIC = np.float32(0.5 ** 0.5), np.float32((2 / np.pi) ** 0.5), np.float32(0.044715)
PARALLEL_SIZE = 1 << 16  # elements: below this, one thread is done before a pool of them has started
CHUNK = 1 << 14  # elements per parallel task


@njit(cache=True, error_model="numpy")
def activate_range(x, out, start, stop, code):
    """out[i] = activation `code` of x[i] for start ≤ i < stop, x and out flat float32; one inner loop
    per code, so that each is straight arithmetic that vectorises."""
    one, half, two = np.float32(1.0), np.float32(0.5), np.float32(2.0)
    x, out = x[start:stop], out[start:stop]  # indices from 0: numba then needs no check for negative ones
    if code == GELU:
        for i in range(x.size):
            out[i] = half * x[i] * (one + erf_approx(x[i] * SQRT_HALF))
    elif code == GELU_TANH:
        for i in range(x.size):
            v = x[i]
            out[i] = half * v * (one + tanh_approx(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v)))
    elif code == TANH:
        for i in range(x.size):
            out[i] = tanh_approx(x[i])
    elif code == SIGMOID:
        for i in range(x.size):
            out[i] = one / (one + exp_approx(-x[i]))
    elif code == SILU:
        for i in range(x.size):
            out[i] = x[i] / (one + exp_approx(-x[i]))
    elif code == HARDSIGMOID:
        for i in range(x.size):
            out[i] = min(max(x[i] / np.float32(6.0) + half, np.float32(0.0)), one)
    else:  # Mish: x·tanh(log(1 + eˣ)) = x·n / (n + 2) with n = eˣ(eˣ + 2); x itself above 20, as softplus
        for i in range(x.size):
            e = exp_approx(min(x[i], np.float32(20.0)))
            n = e * (e + two)
            out[i] = x[i] * (n / (n + two))


@njit(parallel=True, cache=True)
def activate_parallel(x, out, code):
    """activate_range over all of flat x, in chunks of CHUNK elements spread over the threads."""
    for chunk in prange((x.size + CHUNK - 1) // CHUNK):
        activate_range(x, out, chunk * CHUNK, min((chunk + 1) * CHUNK, x.size), code)


def activate(x: np.ndarray, code: int) -> np.ndarray:
    """Activation `code` (GELU, GELU_TANH, TANH, MISH, SIGMOID, SILU, HARDSIGMOID) of every element of x,
    as a new float32 array of x's shape laid out in memory as x is (a permuted view, YOLO's detection
    head, is read in place, not copied first): one pass, on one thread below PARALLEL_SIZE elements."""
    x = np.asarray(x, dtype=np.float32)
    if not x.flags.c_contiguous:  # its axes in memory order, then back: no copy of a permuted dense array
        axes = np.argsort(np.negative(x.strides), kind="stable")
        return activate(np.require(x.transpose(axes), requirements="C"), code).transpose(np.argsort(axes))
    out = np.empty_like(x)
    if x.size < PARALLEL_SIZE:
        activate_range(x.reshape(-1), out.reshape(-1), 0, x.size, code)
    else:
        activate_parallel(x.reshape(-1), out.reshape(-1), code)
    return out


@register("nn.Sigmoid", "F.sigmoid", "torch.sigmoid")
class Sigmoid(Elementwise):
    """1 / (1 + e^-x)."""

    fn = staticmethod(lambda x: activate(x, SIGMOID))


@register("nn.SiLU", "F.silu")
class SiLU(Elementwise):
    """x · sigmoid(x), YOLOv5's activation."""

    fn = staticmethod(lambda x: activate(x, SILU))


@register("nn.Hardsigmoid", "F.hardsigmoid")
class Hardsigmoid(Elementwise):
    """clip(x / 6 + 1/2, 0, 1), MobileNetV3's gate."""

    fn = staticmethod(lambda x: activate(x, HARDSIGMOID))
