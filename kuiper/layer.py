# Generated from solutions/03_registry.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import numpy as np

from kuiper.errors import LayerError
from kuiper.pnnx import Operator
from kuiper.tensor import Tensor


REQUIRED = object()


class Layer:
    """A runnable operator: built once from its PNNX operator (checking it), then called on tensors."""

    def __init__(self, op: Operator):
        self.op = op

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        return self.forward(*inputs)

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def fuse(self, after: "Layer") -> "Layer | None":
        """One layer doing this layer's work and then `after`'s on the result (a convolution
        absorbing its activation, lesson 04), or None where the two cannot merge: the default."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.op.where()})"

    def param(self, key: str, kind: type | tuple[type, ...] = object, default: object = REQUIRED,
              minimum: float | None = None) -> object:
        """Parameter `key`, checked to be of `kind` and, for a number, at least `minimum`;
        LayerError if it is missing, of another type or out of range (NaN included)."""
        if key not in self.op.params:
            if default is REQUIRED:
                raise LayerError(f"{self.op.where()}: missing parameter {key!r}")
            return default
        value = self.op.params[key]
        wrong_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        if not isinstance(value, kind) or wrong_bool:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise LayerError(f"{self.op.where()}: parameter {key!r} should be {names}, got {value!r}")
        if minimum is not None and isinstance(value, (int, float)) and not value >= minimum:
            raise LayerError(f"{self.op.where()}: parameter {key!r} should be at least {minimum}, got {value!r}")
        return value

    def weight(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Weight `key` with its data loaded; LayerError if it is missing or not of `shape`."""
        attr = self.op.attrs.get(key)
        if attr is None or attr.data is None:
            raise LayerError(f"{self.op.where()}: missing weight {key!r}")
        if shape is not None and attr.data.shape != tuple(shape):
            raise LayerError(f"{self.op.where()}: weight {key!r} should have shape {tuple(shape)}, "
                             f"got {attr.data.shape}")
        return attr.data
