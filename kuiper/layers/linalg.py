# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np

from kuiper.layers.elementwise import function


@function("torch.matmul", "Tensor.matmul", "torch.mm", "Tensor.mm", "torch.bmm", "Tensor.bmm", "torch.mv",
          "Tensor.mv")
def matmul(input, other):
    """The matrix product, batch dimensions broadcast (a vector operand is a row or a column)."""
    return np.matmul(input, other)


@function("F.linear")
def linear(input, weight, bias=None):
    """input @ weightᵀ + bias, with the weight a tensor of the graph (nn.Linear holds its own)."""
    out = np.matmul(input, weight.T)
    return out if bias is None else out + bias


@function("torch.addmm", "Tensor.addmm")
def addmm(input, mat1, mat2, beta=1, alpha=1):
    """beta·input + alpha·(mat1 @ mat2)."""
    return beta * input + alpha * np.matmul(mat1, mat2)
