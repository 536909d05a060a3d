# Generated from solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from kuiper.cuda.cnn import activation, conv2d, pool2d, resize_nearest
from kuiper.cuda.device import device_module, to_device
from kuiper.errors import DeviceError, ShapeError
from kuiper.expression import evaluate
from kuiper.layer import Layer
from kuiper.layers.activation import Hardsigmoid, Hardswish, ReLU, ReLU6, Sigmoid, SiLU
from kuiper.layers.conv import Conv2d, Convolution
from kuiper.layers.expression import Expression
from kuiper.layers.linear import Linear
from kuiper.layers.pooling import AdaptiveAvgPool2d, MaxPool2d
from kuiper.layers.resize import resample_table, Upsample
from kuiper.layers.shape import (
    batch_shape,
    Concat,
    Constant,
    Flatten,
    Identity,
    Permute,
    Reshape,
    Split,
)
from kuiper.tensor import Tensor


log = logging.getLogger("kuiper.cuda")


class Kernel(NamedTuple):
    """How device 'cuda' runs a layer class: run(layer, *input arrays, *weights) -> array or tuple of arrays,
    the layer attributes holding weights (dotted names reach inside; copied to the GPU once), and which layers
    of the class it can run."""

    run: Callable[..., object]
    weights: tuple[str, ...] = ()
    fits: Callable[[Layer], bool] = lambda layer: True


def upsample(layer: Upsample, x):
    """Nearest resizing of x (N, C, H, W) as `layer` says; the source pixels from lesson 04's resample_table."""
    size = layer.size or tuple(math.floor(d * s) for d, s in zip(x.shape[2:], layer.scale))
    if min(size) < 1:
        raise ShapeError(f"{layer.op.where()}: scale_factor {layer.scale} makes {x.shape} empty: {size}")
    scales = (None, None) if layer.size else tuple(float(s) for s in layer.scale)
    rows, cols = (to_device(resample_table(n, m, s, "nearest", False)[0][:, 0], "cuda")  # (m,) int64 sources
                  for n, m, s in zip(x.shape[2:], size, scales))
    return resize_nearest(x, rows, cols)


def split(layer: Split, x) -> tuple:
    """x cut along layer.dim where the host layer cuts: it splits an empty array of the same length
    along that axis (no data, no copy), and the sizes of its pieces are the cuts."""
    proxy = np.empty([n if axis == layer.dim % x.ndim else 0 for axis, n in enumerate(x.shape)], np.float32)
    sizes = [piece.shape[layer.dim] for piece in layer(Tensor(proxy))]
    return tuple(device_module().split(x, [int(c) for c in np.cumsum(sizes)[:-1]], axis=layer.dim))


ACTIVATION_NAMES = {ReLU: "relu", ReLU6: "relu6", Sigmoid: "sigmoid", SiLU: "silu", Hardswish: "hardswish",
                    Hardsigmoid: "hardsigmoid"}
KERNELS: dict[type[Layer], Kernel] = {
    Conv2d: Kernel(lambda layer, x, w, b: conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups),
                   ("weight_", "bias")),
    Convolution: Kernel(lambda layer, x, w, b: conv2d(x, w, b, layer.conv.stride, layer.conv.padding,
                                                       layer.conv.dilation, layer.conv.groups),
                        ("conv.weight_", "conv.bias"), fits=lambda layer: layer.dims == 2 and not layer.pad_first),
    **{cls: Kernel(lambda layer, x: activation(x, ACTIVATION_NAMES[type(layer)])) for cls in ACTIVATION_NAMES},
    MaxPool2d: Kernel(lambda layer, x: pool2d(x, "max", layer.kernel, layer.stride, layer.padding, layer.dilation,
                                              layer.ceil_mode)),
    AdaptiveAvgPool2d: Kernel(lambda layer, x: x.mean(axis=(2, 3), keepdims=True),
                              fits=lambda layer: layer.size == (1, 1)),
    Linear: Kernel(lambda layer, x, w_t, b: x @ w_t if b is None else x @ w_t + b, ("weight_t", "bias")),
    Upsample: Kernel(upsample, fits=lambda layer: layer.mode == "nearest"),
    Concat: Kernel(lambda layer, *xs: device_module().concatenate(xs, axis=layer.dim)),
    Flatten: Kernel(lambda layer, x: x.reshape(*x.shape[:layer.start % x.ndim], -1, *x.shape[layer.end % x.ndim + 1:])),
    Reshape: Kernel(lambda layer, x: x.reshape(batch_shape(layer.shape, x))),
    Permute: Kernel(lambda layer, x: x.transpose(layer.dims)),
    Split: Kernel(split),
    Identity: Kernel(lambda layer, x: x),
    Expression: Kernel(lambda layer, *xs: device_module().asarray(evaluate(layer.program, list(xs)))),
    Constant: Kernel(lambda layer, value: value, ("value",)),
}


def on_device(out: object) -> Tensor | tuple[Tensor, ...]:
    """An array, or a tuple of them, as tensors on device 'cuda'."""
    return tuple(Tensor(o, device="cuda") for o in out) if isinstance(out, tuple) else Tensor(out, device="cuda")


class DeviceLayer:
    """A host layer run on device 'cuda' by its Kernel, with the layer's weights copied to the GPU once."""

    def __init__(self, layer: Layer, kernel: Kernel):
        self.layer, self.kernel = layer, kernel
        found = [attrgetter(name)(layer) for name in kernel.weights]
        self.weights = [None if w is None else to_device(np.asarray(w), "cuda") for w in found]

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        return on_device(self.kernel.run(self.layer, *(x.data for x in inputs), *self.weights))


class HostFallback:
    """A layer with no GPU kernel, run on the host: inputs copied from the GPU, outputs copied back."""

    def __init__(self, layer: Layer):
        self.layer = layer
        log.warning("%s has no GPU kernel: it runs on the CPU, copying its inputs from the GPU and its outputs "
                    "back", layer.op.where())

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = self.layer(*(x.to("cpu") for x in inputs))
        return tuple(o.to("cuda") for o in out) if isinstance(out, tuple) else out.to("cuda")


def place(layer: object, device: str) -> object:
    """`layer` (a host layer, or one placed before) ready for `device`: the host layer for 'cpu'; for
    'cuda' a DeviceLayer, or a HostFallback when no kernel fits. DeviceError when 'cuda' is not available."""
    host = layer.layer if isinstance(layer, (DeviceLayer, HostFallback)) else layer
    if device == "cpu":
        return host
    if device != "cuda":
        raise DeviceError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    device_module()
    kernel = KERNELS.get(type(host))
    return DeviceLayer(host, kernel) if kernel is not None and kernel.fits(host) else HostFallback(host)
