# Generated from solutions/03_registry.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np

from kuiper.errors import LayerError
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("torch.flatten")
class Flatten(Layer):
    """Merge dimensions start_dim..end_dim into one."""

    def __init__(self, op):
        super().__init__(op)
        self.start, self.end = self.param("start_dim", int, 0), self.param("end_dim", int, -1)

    def forward(self, x: Tensor) -> Tensor:
        start, end = self.start % x.ndim, self.end % x.ndim
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1:])


@register("torch.cat")
class Concat(Layer):
    """Join the inputs along dimension `dim`."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int)
        if not op.inputs:
            raise LayerError(f"{op.where()}: torch.cat needs at least one input")

    def forward(self, *xs: Tensor) -> Tensor:
        return Tensor(np.concatenate([x.numpy() for x in xs], axis=self.dim), device=xs[0].device)
