# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from kuiper.layers.elementwise import function


NUMPY_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad_widths(pad: tuple[int, ...], ndim: int) -> list[tuple[int, int]]:
    """PyTorch's (last_lo, last_hi, prev_lo, prev_hi, ...) as numpy's [(lo, hi)] per dimension."""
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)][::-1]
    return [(0, 0)] * (ndim - len(pairs)) + pairs


@function("F.pad", "torch.nn.functional.pad")
def pad(input, pad, mode: Literal["constant", "reflect", "replicate", "circular"] = "constant", value=None):
    """input padded by `pad` (last dimension's pair first), with value, a mirror, the edge or a wrap."""
    pad = (pad,) * 2 if isinstance(pad, int) else tuple(pad)
    crop = [slice(-lo if lo < 0 else None, hi if hi < 0 else None) for lo, hi in pad_widths(pad, input.ndim)]
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in pad_widths(pad, input.ndim)]
    if mode == "constant":
        out = np.pad(input, widths, constant_values=0 if value is None else value)
    else:
        out = np.pad(input, widths, mode=NUMPY_MODES[mode])
    return out[tuple(crop)]


def padder(mode: str, dims: int) -> Callable:
    """nn.*PadNd as F.pad: `padding` is one int for every side or a tuple like F.pad's."""
    def fn(input, padding, value=0.0):
        sides = (padding,) * (2 * dims) if isinstance(padding, int) else padding
        return pad(input, sides, mode, value)
    return fn


for _dims in (1, 2, 3):
    function(f"nn.ZeroPad{_dims}d", f"nn.ConstantPad{_dims}d", name=f"ConstantPad{_dims}d")(padder("constant", _dims))
    function(f"nn.ReflectionPad{_dims}d", name=f"ReflectionPad{_dims}d")(padder("reflect", _dims))
    function(f"nn.ReplicationPad{_dims}d", name=f"ReplicationPad{_dims}d")(padder("replicate", _dims))
    function(f"nn.CircularPad{_dims}d", name=f"CircularPad{_dims}d")(padder("circular", _dims))
