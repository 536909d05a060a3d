# Generated from solutions/04_conv_pooling.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError, ShapeError, UnsupportedError
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


def source_coords(size_in: int, size_out: int, scale: float | None, align_corners: bool,
                  cubic: bool = False) -> np.ndarray:
    """Source coordinate (float64, (size_out,)) of each output position along one axis
    (PyTorch's area_pixel_compute_source_index); `scale` is the scale_factor or None."""
    out = np.arange(size_out, dtype=np.float64)
    if align_corners:
        return out * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    step = 1 / scale if scale else size_in / size_out
    src = (out + 0.5) * step - 0.5
    return src if cubic else np.maximum(src, 0.0)


def resample_table(size_in: int, size_out: int, scale: float | None, mode: str,
                   align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """index (size_out, taps) int64 and weight (size_out, taps) float32 resampling one axis in
    `mode` ('nearest', 'nearest-exact', 'linear' or 'cubic'), as PyTorch's upsample kernels."""
    if mode in ("nearest", "nearest-exact"):
        step = np.float32(1 / scale) if scale else np.float32(size_in) / np.float32(size_out)
        shift = 0.5 if mode == "nearest-exact" else 0.0
        src = (np.arange(size_out, dtype=np.float32) + np.float32(shift)) * step
        index = np.minimum(np.floor(src).astype(np.int64), size_in - 1)[:, None]
        return index, np.ones(index.shape, np.float32)
    src = source_coords(size_in, size_out, scale, align_corners, cubic=mode == "cubic")
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    frac = np.clip(src - low, 0.0, 1.0)
    if mode == "linear":
        taps, weight = np.arange(2), np.stack([1 - frac, frac], axis=1)
    else:
        taps, weight = np.arange(-1, 3), cubic_weights(frac)
    return np.clip(low[:, None] + taps, 0, size_in - 1), weight.astype(np.float32)


def cubic_weights(frac: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Weights (O, 4) float64 of the taps floor(src)-1 .. floor(src)+2 for fractions frac (O,)
    (Keys 1981, "Cubic convolution interpolation for digital image processing"; PyTorch's a)."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(frac + 1), near(frac), near(1 - frac), far(2 - frac)], axis=-1)


@njit(parallel=True, cache=True)
def resample(x, index, weight, out):
    """out[a, o, b] = Σ_t weight[o, t] · x[a, index[o, t], b] for x (A, in, B), out (A, out, B) float32."""
    outer, size_out, inner = out.shape
    for a in prange(outer):
        for o in range(size_out):
            for b in range(inner):
                total = np.float32(0.0)
                for t in range(index.shape[1]):
                    total += weight[o, t] * x[a, index[o, t], b]
                out[a, o, b] = total


def resample_axis(x: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x (float32, any shape) with `axis` resampled by the table (index, weight) of resample_table."""
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    out = np.empty((*x.shape[:axis], len(index), *x.shape[axis + 1:]), np.float32)
    resample(np.ascontiguousarray(x, dtype=np.float32).reshape(outer, x.shape[axis], inner), index, weight,
             out.reshape(outer, len(index), inner))  # (A, in, B) -> (A, out, B)
    return out


MODES = {"nearest": "nearest", "nearest-exact": "nearest-exact", "linear": "linear", "bilinear": "linear",
         "trilinear": "linear", "bicubic": "cubic"}


def resize_axis(x: np.ndarray, axis: int, size_out: int, scale: float | None, mode: str,
                align_corners: bool) -> np.ndarray:
    """x (float32) with `axis` resized to size_out in `mode`, a key of MODES, as F.interpolate does
    it; `scale` is the scale_factor that made size_out, or None."""
    return resample_axis(x, axis, *resample_table(x.shape[axis], size_out, scale, MODES[mode], align_corners))


@njit(parallel=True, cache=True)
def nearest_2d(x, rows, cols, out):
    """out[a, i, j] = x[a, rows[i], cols[j]] for x (A, H, W), out (A, OH, OW) float32: a nearest resize of
    both axes in one pass, where resize_axis twice would write and read an (A, OH, W) in between."""
    outer, oh, ow = out.shape
    for ai in prange(outer * oh):
        a, i = ai // oh, ai % oh
        for j in range(ow):
            out[a, i, j] = x[a, rows[i], cols[j]]


MAX_SCALE = 1024  # a larger factor is a damaged file, not a model
FIXED = {"nn.UpsamplingNearest2d": ("nearest", False), "F.upsample_nearest": ("nearest", False),
         "nn.UpsamplingBilinear2d": ("bilinear", True), "F.upsample_bilinear": ("bilinear", True)}


@register("nn.Upsample", "F.interpolate", "F.upsample", *FIXED)
class Upsample(Layer):
    """Resize the spatial axes (1 to 3) of (N, C, ...): any mode of MODES, by size or scale_factor."""

    def __init__(self, op):
        super().__init__(op)
        mode, corners = FIXED.get(op.type, ("nearest", False))
        self.mode = mode if op.type in FIXED else self.param("mode", str, mode)
        if self.mode not in MODES:
            raise UnsupportedError(f"{op.where()}: mode {self.mode!r} is not supported (supported: {', '.join(MODES)})")
        if self.param("antialias", bool, False):
            raise UnsupportedError(f"{op.where()}: antialias=True is not supported (supported: False)")
        self.align_corners = corners if op.type in FIXED else bool(self.param("align_corners", (bool, type(None)), False))
        self.recompute = bool(self.param("recompute_scale_factor", (bool, type(None)), False))
        size = self.param("size", (int, tuple, type(None)), None)
        scale = self.param("scale_factor", (int, float, tuple, type(None)), None)
        self.size = (size,) if isinstance(size, int) else size
        self.scale = (scale,) if isinstance(scale, (int, float)) else scale
        if self.size is None and self.scale is None:
            raise LayerError(f"{op.where()}: needs size or scale_factor")
        if self.size is not None and not (1 <= len(self.size) <= 3 and all(type(s) is int and s >= 1 for s in self.size)):
            raise LayerError(f"{op.where()}: size should be an int >= 1 or up to 3 of them, got {size!r}")
        if self.size is None and not (1 <= len(self.scale) <= 3 and all(
                type(s) in (int, float) and 0 < s < MAX_SCALE for s in self.scale)):
            raise LayerError(f"{op.where()}: scale_factor should be a number in (0, {MAX_SCALE}) or up to 3, "
                             f"got {scale!r}")

    def targets(self, shape: tuple[int, ...]) -> list[tuple[int, float | None]]:
        """(output size, scale factor or None) of each spatial axis of an input of `shape`."""
        spatial = shape[2:]
        given = self.size if self.size is not None else self.scale
        if len(given) not in (1, len(spatial)):
            raise ShapeError(f"{self.op.where()}: {len(given)} sizes or scales for an input {shape} "
                             f"with {len(spatial)} spatial axes")
        given = given * len(spatial) if len(given) == 1 else given
        if self.size is not None:
            return [(n, None) for n in given]
        sizes = [math.floor(d * float(s)) for d, s in zip(spatial, given)]
        if min(sizes) < 1:
            raise ShapeError(f"{self.op.where()}: scale_factor {self.scale} makes {shape} empty: {sizes}")
        return [(n, None if self.recompute else float(s)) for n, s in zip(sizes, given)]

    def forward(self, x: Tensor) -> Tensor:
        data = np.asarray(x.numpy(), dtype=np.float32)
        if not 3 <= data.ndim <= 5:
            raise ShapeError(f"{self.op.where()}: expected input (N, C, ...) with 1 to 3 spatial axes, got {data.shape}")
        if data.ndim == 4 and MODES[self.mode].startswith("nearest"):  # both axes in one pass
            (rows, _), (cols, _) = (resample_table(d, n, scale, MODES[self.mode], self.align_corners)
                                    for d, (n, scale) in zip(data.shape[2:], self.targets(data.shape)))
            out = np.empty((*data.shape[:2], len(rows), len(cols)), np.float32)
            nearest_2d(np.ascontiguousarray(data).reshape(-1, *data.shape[2:]), rows[:, 0], cols[:, 0],
                       out.reshape(-1, *out.shape[2:]))  # (N, C, H, W) -> (N·C, H, W)
            return Tensor(out, device=x.device)
        for axis, (n, scale) in enumerate(self.targets(data.shape), start=2):
            data = resize_axis(data, axis, n, scale, self.mode, self.align_corners)
        return Tensor(data, device=x.device)
