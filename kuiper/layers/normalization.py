# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numba import njit, prange

from kuiper.layers.elementwise import function


def standardize(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    """(x − mean) / √(var + eps) over `axes` (biased variance, as every PyTorch norm uses)."""
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps))


def scale_shift(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, channel_axis: int) -> np.ndarray:
    """x·weight + bias, the per-channel vectors laid along `channel_axis` (−1: the last dims)."""
    if channel_axis == 1 and weight is not None:
        weight = weight.reshape(-1, *([1] * (x.ndim - 2)))
    if channel_axis == 1 and bias is not None:
        bias = bias.reshape(-1, *([1] * (x.ndim - 2)))
    x = x if weight is None else x * weight
    return x if bias is None else x + bias


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def layer_norm_rows(x, weight, bias, eps, out):
    """out[r] = (x[r] − mean) / √(var + eps) · weight + bias for each row r of x (R, C), float32;
    weight and bias (C,). Three passes over a row that stays in cache: sum, squared deviations, output."""
    rows, size = x.shape
    for r in prange(rows):
        total = 0.0  # float64 sums: a row of 768 values near 1e4 keeps its mean to float32 precision
        for i in range(size):
            total += x[r, i]
        mean = np.float32(total / size)
        squares = 0.0
        for i in range(size):
            squares += (x[r, i] - mean) * (x[r, i] - mean)
        scale = np.float32(1.0 / np.sqrt(squares / size + eps))
        for i in range(size):
            out[r, i] = (x[r, i] - mean) * scale * weight[i] + bias[i]


@function("nn.LayerNorm", "F.layer_norm")
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, elementwise_affine=True):
    """Standardise over the trailing len(normalized_shape) dimensions, then weight·x + bias."""
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    size = math.prod(input.shape[-count:])
    x = np.ascontiguousarray(input, dtype=np.float32).reshape(-1, size)  # (rows, normalised elements)
    weight = np.ones(size, np.float32) if weight is None else np.ascontiguousarray(weight, np.float32).reshape(-1)
    bias = np.zeros(size, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32).reshape(-1)
    out = np.empty_like(x)
    layer_norm_rows(x, weight, bias, np.float32(eps), out)
    return out.reshape(input.shape)


@function("nn.GroupNorm", "F.group_norm")
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, affine=True):
    """Standardise each sample over groups of num_groups consecutive channel blocks."""
    n, c = input.shape[:2]
    grouped = input.reshape(n, num_groups, -1)  # (N, G, C/G · spatial)
    out = standardize(grouped, (2,), eps).reshape(input.shape)
    return scale_shift(out, weight, bias, 1)


@function("nn.InstanceNorm1d", "nn.InstanceNorm2d", "F.instance_norm")
def instance_norm(input, weight=None, bias=None, running_mean=None, running_var=None, eps=1e-5, affine=False,
                  use_input_stats=True, track_running_stats=False):
    """Standardise each channel of each sample over its spatial dimensions, or by the running
    statistics where nn.InstanceNorm tracks them or F.instance_norm is told not to use the input's."""
    if running_mean is not None and (track_running_stats or not use_input_stats):
        shape = (-1, *([1] * (input.ndim - 2)))
        out = (input - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + np.float32(eps))
    else:
        out = standardize(input, tuple(range(2, input.ndim)), eps)
    return scale_shift(out, weight, bias, 1)


@function("F.batch_norm")
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: Literal[False] = False,
               momentum=0.1, eps=1e-5):
    """Inference batch norm with its statistics and weights as tensors: (x − mean) / √(var + eps)·w + b."""
    shape = (-1, *([1] * (input.ndim - 2)))
    out = (input - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + np.float32(eps))
    return scale_shift(out, weight, bias, 1)


@function("nn.RMSNorm", "F.rms_norm")
def rms_norm(input, normalized_shape, weight=None, eps=None, elementwise_affine=True):
    """x / √(mean(x²) + eps) over the trailing dims, times weight; eps None is float32's epsilon."""
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    eps = np.finfo(np.float32).eps if eps is None else eps
    out = input / np.sqrt((input ** 2).mean(axis=tuple(range(-count, 0)), keepdims=True) + np.float32(eps))
    return out if weight is None else out * weight


@function("nn.LocalResponseNorm", "F.local_response_norm")
def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """x / (k + alpha/size · Σ x² over `size` neighbouring channels)^beta (Krizhevsky et al., 2012)."""
    square = np.pad(input ** 2, [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (input.ndim - 2))
    window = np.cumsum(np.concatenate([np.zeros_like(square[:, :1]), square], axis=1), axis=1)
    total = window[:, size:] - window[:, :-size]  # (N, C, ...): the sum over each channel's window
    return input / (k + alpha / size * total) ** beta


@function("F.normalize")
def normalize(input, p=2.0, dim=1, eps=1e-12):
    """x / max(‖x‖_p, eps) along dim."""
    size = np.sum(np.abs(input) ** p, axis=dim, keepdims=True) ** (1 / p)
    return input / np.maximum(size, eps)
