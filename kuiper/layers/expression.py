# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np

from kuiper.errors import ExpressionError, LayerError
from kuiper.expression import evaluate, Input, parse_pnnx, to_rpn
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("pnnx.Expression")
class Expression(Layer):
    """Element-wise arithmetic that PNNX fused into one formula, e.g. add(@0,mul(@1,2))."""

    def __init__(self, op):
        super().__init__(op)
        text = self.param("expr", (str, tuple, bool, int, float))
        if isinstance(text, (bool, int, float)):  # a constant: PNNX writes expr=False, expr=-1
            text = str(int(text))
        if isinstance(text, tuple):
            text = "[" + ",".join(map(str, text)) + "]"
        try:
            self.program = to_rpn(parse_pnnx(text))
        except ExpressionError as err:
            raise LayerError(f"{op.where()}: {err}") from None
        used = max((node.index for node in self.program if isinstance(node, Input)), default=-1)
        if used >= len(op.inputs):
            raise LayerError(f"{op.where()}: the expression reads @{used} but the operator has "
                             f"{len(op.inputs)} input(s)")

    def forward(self, *inputs: Tensor) -> Tensor:
        result = evaluate(self.program, [x.numpy() for x in inputs])
        device = inputs[0].device if inputs else "cpu"
        if isinstance(result, list) and (any(item is None for item in result)
                                         or len({np.shape(item) for item in result}) > 1):
            return Items(result, device)  # no array holds [None, i] or indices of different shapes
        return Tensor(np.asarray(result), device=device)


class Items(Tensor):
    """A list operand that no array can hold, e.g. the indices [None, i] of x[:, i] (None for `:`):
    numpy() gives the list itself; as a tensor it is a (len,) int64 placeholder."""

    def __init__(self, items: list, device: str = "cpu"):
        super().__init__(np.zeros(len(items), np.int64), device=device)
        self.items = items

    def numpy(self) -> list:
        return self.items

    def to(self, device: str) -> Tensor:
        """The list with each array on `device`."""
        return Items([item if item is None or np.isscalar(item) else Tensor(item, device=self.device).to(device).data
                      for item in self.items], device)
