# Generated from solutions/03_registry.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("nn.Linear")
class Linear(Layer):
    """y = x Wᵀ + b over the last dimension; W is (out_features, in_features)."""

    def __init__(self, op):
        super().__init__(op)
        n_in, n_out = self.param("in_features", int, minimum=1), self.param("out_features", int, minimum=1)
        self.weight_t = self.weight("weight", (n_out, n_in)).T
        self.bias = self.weight("bias", (n_out,)) if self.param("bias", bool) else None

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        rows = data.reshape(-1, data.shape[-1])  # (..., in) -> (M, in): one GEMM, not one per leading index
        y = (rows @ self.weight_t).reshape(*data.shape[:-1], -1)  # (M, out) -> (..., out)
        return Tensor(y if self.bias is None else y + self.bias, device=x.device)
