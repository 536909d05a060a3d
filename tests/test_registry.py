"""The layer registry: registration, aliases, overrides, and errors that name the operator."""

from pathlib import Path

import numpy as np
import pytest

import kuiper
from kuiper.errors import LayerError
from kuiper.layer import Layer
from kuiper.layers.activation import ReLU
from kuiper.pnnx import Attribute, Operator
from kuiper.registry import LAYERS, create_layer, register

LESSON = 3  # kuiper grade runs this file on the student build of lesson 03

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.pnnx.param"


def linear(weight_shape=(4, 3), **params):
    params = {"in_features": 3, "out_features": 4, "bias": True} | params
    attrs = {"weight": Attribute(weight_shape, "float32", np.ones(weight_shape, np.float32)),
             "bias": Attribute((4,), "float32", np.arange(4, dtype=np.float32))}
    return Operator("nn.Linear", "fc", ["0"], ["1"], params=params, attrs=attrs, line=12)


def test_aliases_share_a_layer():
    assert LAYERS["nn.ReLU"] is LAYERS["F.relu"] is LAYERS["torch.relu"] is ReLU


def test_unknown_type_names_type_operator_and_close_names():
    with pytest.raises(LayerError, match=r"no layer is registered for type 'nn\.Relu' of nn\.Relu 'act' "
                                         r"\(line 4\); did you mean nn\.ReLU"):
        create_layer(Operator("nn.Relu", "act", ["0"], ["1"], line=4))
    with pytest.raises(LayerError, match=r"type 'custom\.Thing' of custom\.Thing 'x' \(line 2\)$"):
        create_layer(Operator("custom.Thing", "x", [], [], line=2))


def test_layers_check_parameters_and_weights_when_built():
    layer = create_layer(linear())
    out = layer(kuiper.Tensor(np.ones((2, 3), np.float32)))
    assert out.numpy().tolist() == [[3, 4, 5, 6], [3, 4, 5, 6]]
    with pytest.raises(LayerError, match=r"nn\.Linear 'fc' \(line 12\): weight 'weight' should have shape "
                                         r"\(4, 3\), got \(4, 5\)"):
        create_layer(linear(weight_shape=(4, 5)))
    with pytest.raises(LayerError, match=r"parameter 'in_features' should be int, got True"):
        create_layer(linear(in_features=True))
    op = linear()
    del op.params["out_features"]
    with pytest.raises(LayerError, match="missing parameter 'out_features'"):
        create_layer(op)
    op = linear()
    op.attrs["bias"].data = None
    with pytest.raises(LayerError, match="missing weight 'bias'"):
        create_layer(op)


def test_a_registered_layer_overrides_the_built_in_one():
    class Negative(Layer):
        def forward(self, x):
            return kuiper.Tensor(np.minimum(x.numpy(), 0))

    try:
        register("nn.ReLU")(Negative)
        graph = kuiper.load(TINY)
        assert isinstance(graph.layers["act"], Negative) and isinstance(graph.layers["F.relu_2"], ReLU)
        changed = graph(np.load(TINY.with_name("tiny.input.npy")))
    finally:
        register("nn.ReLU")(ReLU)
    assert not np.allclose(changed, np.load(TINY.with_name("tiny.output.npy")))
    assert isinstance(kuiper.load(TINY).layers["act"], ReLU)
