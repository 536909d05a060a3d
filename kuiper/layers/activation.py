# Generated from solutions/03_registry.py, solutions/04_conv_pooling.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np
from numba import njit, prange

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
