# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from kuiper.layers.elementwise import function


def axes(dim: int | tuple | None) -> int | tuple | None:
    """PNNX's dim (an int, a tuple of ints, or None for all) as a numpy axis."""
    return tuple(dim) if isinstance(dim, (tuple, list)) else dim


@function("torch.sum", "Tensor.sum", name="sum")
def sum_over(input, dim=None, keepdim=False):
    """Σ over dim."""
    return np.sum(input, axis=axes(dim), keepdims=keepdim)


@function("torch.mean", "Tensor.mean")
def mean(input, dim=None, keepdim=False):
    """Arithmetic mean over dim."""
    return np.mean(input, axis=axes(dim), keepdims=keepdim)


@function("torch.prod", "Tensor.prod")
def prod(input, dim=None, keepdim=False):
    """Π over dim."""
    return np.prod(input, axis=axes(dim), keepdims=keepdim)


@function("torch.amax", "Tensor.amax")
def amax(input, dim=None, keepdim=False):
    """The largest value over dim."""
    return np.max(input, axis=axes(dim), keepdims=keepdim)


@function("torch.amin", "Tensor.amin")
def amin(input, dim=None, keepdim=False):
    """The smallest value over dim."""
    return np.min(input, axis=axes(dim), keepdims=keepdim)


def extreme(pick: Callable, arg: Callable) -> Callable:
    """torch.max/min: the value over everything, or (values, indices) along one dim."""
    def fn(input, dim=None, keepdim=False):
        if dim is None:
            return pick(input)
        index = np.expand_dims(arg(input, axis=dim), dim)
        values = np.take_along_axis(input, index, axis=dim)
        return (values, index) if keepdim else (values.squeeze(dim), index.squeeze(dim))
    return fn


function("torch.max", "Tensor.max", name="max")(extreme(np.max, np.argmax))
function("torch.min", "Tensor.min", name="min")(extreme(np.min, np.argmin))


@function("torch.argmax", "Tensor.argmax")
def argmax(input, dim=None, keepdim=False):
    """The index of the first largest value over dim (of the flattened tensor without one; keepdim
    then keeps every dimension with size 1, as torch does)."""
    return np.argmax(input, axis=dim, keepdims=keepdim)


@function("torch.argmin", "Tensor.argmin")
def argmin(input, dim=None, keepdim=False):
    """The index of the first smallest value over dim (of the flattened tensor without one; keepdim
    then keeps every dimension with size 1, as torch does)."""
    return np.argmin(input, axis=dim, keepdims=keepdim)


def spread(stat: Callable) -> Callable:
    """torch.var/std: Bessel's correction from `correction`, or 1/0 from `unbiased`."""
    def fn(input, dim=None, unbiased=True, keepdim=False, correction=None):
        ddof = int(unbiased) if correction is None else correction
        return stat(input, axis=axes(dim), ddof=ddof, keepdims=keepdim)
    return fn


function("torch.var", "Tensor.var", name="var")(spread(np.var))
function("torch.std", "Tensor.std", name="std")(spread(np.std))


@function("torch.norm", "Tensor.norm", "torch.linalg.vector_norm")
def norm(input, p=2, dim=None, keepdim=False):
    """(Σ |x|^p)^(1/p) over dim; p='fro' is 2, p=inf the largest |x|."""
    size = np.abs(input)
    p = 2 if p == "fro" else float(p) if isinstance(p, str) and p.lstrip("-") == "inf" else p
    if p == float("inf"):
        return np.max(size, axis=axes(dim), keepdims=keepdim)
    return np.sum(size ** p, axis=axes(dim), keepdims=keepdim) ** (1 / p)


@function("F.pairwise_distance", "torch.pairwise_distance")
def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """‖x1 − x2 + eps‖_p over the last dimension (PyTorch adds eps to the difference)."""
    return norm(x1 - x2 + np.float32(eps), p, -1, keepdim)


@function("torch.logsumexp", "Tensor.logsumexp")
def logsumexp(input, dim, keepdim=False):
    """log Σ exp(x) over dim, shifted by the maximum."""
    top = np.max(input, axis=axes(dim), keepdims=True)
    out = np.log(np.sum(np.exp(input - top), axis=axes(dim), keepdims=True)) + top
    return out if keepdim else np.squeeze(out, axis=axes(dim))


@function("torch.cumsum", "Tensor.cumsum")
def cumsum(input, dim):
    """Running sums along dim."""
    return np.cumsum(input, axis=dim)


@function("torch.cumprod", "Tensor.cumprod")
def cumprod(input, dim):
    """Running products along dim."""
    return np.cumprod(input, axis=dim)


@function("torch.topk", "Tensor.topk")
def topk(input, k, dim=-1, largest=True, sorted=True):
    """The k largest (or smallest) values along dim, and their indices: sorted, also for sorted=False
    (whose order torch leaves unspecified)."""
    order = np.argsort(-input if largest else input, axis=dim, kind="stable")
    index = np.take(order, np.arange(k), axis=dim)
    return np.take_along_axis(input, index, axis=dim), index
