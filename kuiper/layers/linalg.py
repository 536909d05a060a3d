# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np
from threadpoolctl import ThreadpoolController

from kuiper.errors import LayerError
from kuiper.layer import Layer
from kuiper.layers.elementwise import function
from kuiper.registry import register
from kuiper.tensor import Tensor


BLAS = ThreadpoolController()  # numpy's BLAS library, whose thread count a stack of products limits


@function("torch.matmul", "Tensor.matmul", "torch.mm", "Tensor.mm", "torch.bmm", "Tensor.bmm", "torch.mv",
          "Tensor.mv")
def matmul(input, other):
    """The matrix product, batch dimensions broadcast (a vector operand is a row or a column); a stack
    of products (an operand of 3 or more dimensions) runs on one BLAS thread."""
    if max(np.ndim(input), np.ndim(other)) < 3:
        return np.matmul(input, other)
    with BLAS.limit(limits=1, user_api="blas"):
        return np.matmul(input, other)


@function("F.linear")
def linear(input, weight, bias=None):
    """input @ weightᵀ + bias, with the weight a tensor of the graph (nn.Linear holds its own)."""
    out = np.matmul(input, weight.T)
    return out if bias is None else out + bias


@register("torch.einsum")
class Einsum(Layer):
    """np.einsum of the inputs by the operator's `equation` (e.g. ij,jk->ik), as torch.einsum."""

    def __init__(self, op):
        super().__init__(op)
        self.equation = self.param("equation", str)

    def forward(self, *xs: Tensor) -> Tensor:
        try:
            out = np.einsum(self.equation, *(x.numpy() for x in xs))
        except ValueError as err:
            raise LayerError(f"{self.op.where()}: {self.equation!r}: {err}") from None
        return Tensor(np.asarray(out), device=xs[0].device)


@function("torch.addmm", "Tensor.addmm")
def addmm(input, mat1, mat2, beta=1, alpha=1):
    """beta·input + alpha·(mat1 @ mat2)."""
    return beta * input + alpha * np.matmul(mat1, mat2)
