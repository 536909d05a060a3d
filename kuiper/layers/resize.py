# Generated from solutions/04_conv_pooling.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math

import numpy as np

from kuiper.errors import LayerError, ShapeError
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


def source_coords(size_in: int, size_out: int, scale: float | None, align_corners: bool) -> np.ndarray:
    """Source coordinate (float) of each output position along one axis."""
    out = np.arange(size_out, dtype=np.float64)
    if align_corners:
        return out * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    step = 1 / scale if scale else size_in / size_out
    return np.maximum((out + 0.5) * step - 0.5, 0.0)


def resize_axis(x: np.ndarray, axis: int, size_out: int, scale: float | None, mode: str,
                align_corners: bool) -> np.ndarray:
    """Resize one axis of x by nearest or linear interpolation."""
    size_in = x.shape[axis]
    if mode == "nearest":
        step = 1 / scale if scale else size_in / size_out
        index = np.minimum(np.floor(np.arange(size_out) * step).astype(np.int64), size_in - 1)
        return np.take(x, index, axis=axis)
    src = source_coords(size_in, size_out, scale, align_corners)
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    shape = [1] * x.ndim
    shape[axis] = size_out
    weight = (src - low).astype(np.float32).reshape(shape)
    return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight


MAX_SCALE = 1024  # a larger factor is a damaged file, not a model


@register("nn.Upsample", "F.interpolate", "F.upsample", "F.upsample_nearest", "F.upsample_bilinear")
class Upsample(Layer):
    """Resize the last two dimensions: nearest, or bilinear with either align_corners."""

    def __init__(self, op):
        super().__init__(op)
        self.mode = self.param("mode", str, "nearest")
        if op.type == "F.upsample_bilinear":
            self.mode = "bilinear"
        if self.mode not in ("nearest", "bilinear"):
            raise LayerError(f"{op.where()}: mode {self.mode!r} is not supported (nearest, bilinear)")
        self.align_corners = bool(self.param("align_corners", (bool, type(None)), False))
        size = self.param("size", (int, tuple, type(None)), None)
        scale = self.param("scale_factor", (int, float, tuple, type(None)), None)
        self.size = (size, size) if isinstance(size, int) else size
        self.scale = (scale, scale) if isinstance(scale, (int, float)) else scale
        if self.size is None and self.scale is None:
            raise LayerError(f"{op.where()}: needs size or scale_factor")
        if self.size is not None and not (len(self.size) == 2 and all(type(s) is int and s >= 1 for s in self.size)):
            raise LayerError(f"{op.where()}: size should be an int >= 1 or a pair of them, got {size!r}")
        if self.size is None and not (len(self.scale) == 2 and all(
                type(s) in (int, float) and 0 < s < MAX_SCALE for s in self.scale)):
            raise LayerError(f"{op.where()}: scale_factor should be a number in (0, {MAX_SCALE}) or a pair, "
                             f"got {scale!r}")

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        if data.ndim != 4:
            raise ShapeError(f"{self.op.where()}: expected input (N, C, H, W), got {data.shape}")
        if self.size is not None:
            size, scales = self.size, (None, None)
        else:
            size = tuple(math.floor(d * s) for d, s in zip(data.shape[2:], self.scale))
            scales = tuple(float(s) for s in self.scale)
        if min(size) < 1:
            raise ShapeError(f"{self.op.where()}: scale_factor {self.scale} makes {data.shape} empty: {size}")
        for axis, (n, s) in enumerate(zip(size, scales), start=2):
            data = resize_axis(data, axis, n, s, self.mode, self.align_corners)
        return Tensor(np.ascontiguousarray(data, dtype=np.float32), device=x.device)
