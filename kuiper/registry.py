# Generated from solutions/03_registry.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from kuiper.errors import LayerError
from kuiper.graph import RuntimeGraph, unpack_tuples
from kuiper.layer import Layer
from kuiper.pnnx import load_pnnx, Operator


LAYERS: dict[str, type[Layer]] = {}


def register(*types: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: build this layer for operators of each PNNX type in `types`."""
    def add(cls: type[Layer]) -> type[Layer]:
        for kind in types:
            LAYERS[kind] = cls
        return cls

    return add


def create_layer(op: Operator) -> Layer:
    """The registered layer for `op`, built (and so checked) from its parameters and weights."""
    if op.type not in LAYERS:
        close = difflib.get_close_matches(op.type, LAYERS, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise LayerError(f"no layer is registered for type {op.type!r} of {op.where()}{hint}")
    return LAYERS[op.type](op)


def load(param: str | Path) -> RuntimeGraph:
    """Load `model.pnnx.param` (with `model.pnnx.bin` beside it) as a graph ready to run."""
    return RuntimeGraph(unpack_tuples(load_pnnx(param)), create_layer)
