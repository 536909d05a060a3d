# Generated from solutions/04_conv_pooling.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np

from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("nn.BatchNorm2d", "nn.BatchNorm1d")
class BatchNorm(Layer):
    """Inference batch norm over dimension 1, folded into a per-channel scale and shift."""

    def __init__(self, op):
        super().__init__(op)
        n = self.param("num_features", int, minimum=1)
        mean, var = self.weight("running_mean", (n,)), self.weight("running_var", (n,))
        scale = 1 / np.sqrt(var + np.float32(self.param("eps", float, 1e-5, minimum=0)))
        if self.param("affine", bool, True):
            scale = scale * self.weight("weight", (n,))
            shift = self.weight("bias", (n,)) - mean * scale
        else:
            shift = -mean * scale
        self.scale, self.shift = scale.astype(np.float32), shift.astype(np.float32)

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        view = (-1,) + (1,) * (data.ndim - 2)
        return Tensor(data * self.scale.reshape(view) + self.shift.reshape(view), device=x.device)
