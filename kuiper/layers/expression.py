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
        return Tensor(np.asarray(result), device=inputs[0].device if inputs else "cpu")
