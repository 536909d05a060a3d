"""GELU, tanh, Mish and LayerNorm: vectorised numba kernels (lesson 05) exact against torch over a wide
range of inputs, and within 5 x torch's time on the zoo's shapes (issue 17)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kuiper
from kuiper.bench import same_run_ratio
from kuiper.pnnx import Attribute, Operator
from kuiper.registry import create_layer

LESSON = 5

RNG = np.random.default_rng(0)
MAGNITUDES = np.logspace(1, 30, 2000, dtype=np.float32)
INPUTS = {
    "-10..10": np.linspace(-10, 10, 200_001, dtype=np.float32),
    "standard normal": RNG.standard_normal(100_000, dtype=np.float32),
    "large magnitudes": np.concatenate([MAGNITUDES, -MAGNITUDES, RNG.standard_normal(10_000, dtype=np.float32) * 1e4]),
    "tiny and signed zeros": np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1e-40, -1e-40]),
}
ACTIVATIONS = {
    "GELU": ("nn.GELU", {}, F.gelu),
    "GELU tanh": ("nn.GELU", {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    "Mish": ("nn.Mish", {}, F.mish),
    "Tanh": ("nn.Tanh", {}, torch.tanh),
    "Sigmoid": ("nn.Sigmoid", {}, torch.sigmoid),
    "SiLU": ("nn.SiLU", {}, F.silu),
    "Hardsigmoid": ("nn.Hardsigmoid", {}, F.hardsigmoid),
    "Softmax": ("nn.Softmax", {"dim": 1}, lambda x: F.softmax(x, 1)),
    "LogSoftmax": ("nn.LogSoftmax", {"dim": -1}, lambda x: F.log_softmax(x, -1)),
}


def make(kind: str, params: dict, weights: dict | None = None):
    attrs = {name: Attribute(value.shape, "float32", value) for name, value in (weights or {}).items()}
    return create_layer(Operator(kind, "op", ["0"], ["1"], params, attrs, line=1))


@pytest.mark.parametrize("values", INPUTS, ids=str)
@pytest.mark.parametrize("name", ACTIVATIONS, ids=str)
def test_activation_matches_torch_over_each_range(name, values):
    kind, params, reference = ACTIVATIONS[name]
    x = INPUTS[values].reshape(1, -1)
    got = make(kind, params)(kuiper.Tensor(x)).numpy()
    want = reference(torch.from_numpy(x)).numpy()
    assert got.dtype == np.float32 and got.shape == x.shape
    error = np.abs(got - want)
    worst = int(np.argmax(error))
    scale = max(np.abs(want).max(), 1e-30)
    assert error.max() <= 1e-4 * scale, (f"{name} on {values}: at x = {x.flat[worst]!r} expected {want.flat[worst]!r} "
                                         f"(torch), got {got.flat[worst]!r}")


@pytest.mark.parametrize("name", ACTIVATIONS, ids=str)
def test_activation_keeps_nan_and_infinity_as_torch(name):
    """NaN stays NaN (and a row with one gives NaNs, as in torch); ±inf give torch's values, except that
    GELU(inf) is inf, where torch's own vectorised GELU gives NaN."""
    kind, params, reference = ACTIVATIONS[name]
    x = np.float32([[1.0, np.nan, 2.0], [np.inf, -1.0, 0.5], [-np.inf, 3.0, -2.0]])
    got = make(kind, params)(kuiper.Tensor(x)).numpy()
    want = reference(torch.from_numpy(x)).numpy()
    if name == "GELU":
        want[1, 0] = np.inf
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=f"{name} of\n{x}")


@pytest.mark.parametrize("shape, normalized, offset", [
    ((8, 7, 7, 96), [96], 0.0),
    ((4, 197, 192), [192], 1e4),  # a large mean: the variance must not cancel away
    ((2, 6, 3, 4), [3, 4], 3.0),
])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(shape, normalized, offset, affine):
    x = RNG.standard_normal(shape, dtype=np.float32) * 2 + offset
    weights = {"weight": RNG.standard_normal(normalized, dtype=np.float32),
               "bias": RNG.standard_normal(normalized, dtype=np.float32)} if affine else {}
    layer = make("nn.LayerNorm", {"normalized_shape": normalized, "eps": 1e-6, "elementwise_affine": affine}, weights)
    view = x.transpose(1, 0, *range(2, x.ndim)).copy().transpose(1, 0, *range(2, x.ndim))  # same values, strided
    # torch in float64: in float32 torch itself is 3e-3 off at the large mean, where kuiper's float64 sums are not
    reference = [torch.from_numpy(w).double() for w in weights.values()]
    want = F.layer_norm(torch.from_numpy(x).double(), normalized, *reference, eps=1e-6).float()
    for data in (x, view):
        got = layer(kuiper.Tensor(data)).numpy()
        error = np.abs(got - want.numpy()).max()
        assert error <= 1e-4 * np.abs(want.numpy()).max(), f"LayerNorm{normalized} of {shape}: differs by {error:.2e}"


ZOO_SHAPES = [  # inputs of these operators in the zoo at batch 8 (kuiper bench ops)
    ("GELU", (8, 56, 56, 384)), ("GELU", (8, 197, 768)), ("GELU tanh", (8, 197, 768)),  # convnext_tiny, vit_tiny
    ("Mish", (8, 197, 768)), ("Tanh", (8, 197, 768)),
    ("SiLU", (8, 32, 160, 160)), ("Sigmoid", (8, 32, 160, 160)),  # yolov5n
    ("Hardsigmoid", (8, 96, 28, 28)),  # mobilenet_v3_small's gates are (8, C, 1, 1): see the next test
    ("LogSoftmax", (8, 3, 197, 197)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", ZOO_SHAPES, ids=str)
def test_activation_within_5x_torch(name, shape):
    kind, params, reference = ACTIVATIONS[name]
    layer, x = make(kind, params), RNG.standard_normal(shape, dtype=np.float32)
    data, tx = kuiper.Tensor(x), torch.from_numpy(x)
    ratio = same_run_ratio(lambda: layer(data), lambda: reference(tx))
    assert ratio <= 5, f"{name} on {shape}: expected at most 5 x torch's time, got {ratio:.2f} x"


@pytest.mark.slow
def test_mobilenet_gate_within_5x_torch():
    """MobileNetV3's Hardsigmoid gates are (8, C, 1, 1): a few hundred values, so the time is the call itself
    (one thread, no temporaries), not the arithmetic."""
    layer, x = make("nn.Hardsigmoid", {}), RNG.standard_normal((8, 96, 1, 1), dtype=np.float32)
    data, tx = kuiper.Tensor(x), torch.from_numpy(x)
    ratio = same_run_ratio(lambda: layer(data), lambda: F.hardsigmoid(tx))
    assert ratio <= 5, f"Hardsigmoid on {x.shape}: expected at most 5 x torch's time, got {ratio:.2f} x"


@pytest.mark.slow
def test_vit_attention_softmax_within_5x_torch():
    layer, x = make("F.softmax", {"dim": -1}), RNG.standard_normal((8, 3, 197, 197), dtype=np.float32)
    data, tx = kuiper.Tensor(x), torch.from_numpy(x)
    ratio = same_run_ratio(lambda: layer(data), lambda: F.softmax(tx, -1))
    assert ratio <= 5, f"F.softmax on {x.shape}: expected at most 5 x torch's time, got {ratio:.2f} x"


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(8, 56, 56, 96), (8, 197, 192)], ids=str)
def test_layer_norm_within_5x_torch(shape):
    size = shape[-1]
    weight, bias = RNG.standard_normal(size, dtype=np.float32), RNG.standard_normal(size, dtype=np.float32)
    layer = make("nn.LayerNorm", {"normalized_shape": [size], "eps": 1e-6}, {"weight": weight, "bias": bias})
    x = RNG.standard_normal(shape, dtype=np.float32)
    data, tx, tw, tb = kuiper.Tensor(x), torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias)
    ratio = same_run_ratio(lambda: layer(data), lambda: F.layer_norm(tx, [size], tw, tb, 1e-6))
    assert ratio <= 5, f"LayerNorm on {shape}: expected at most 5 x torch's time, got {ratio:.2f} x"


@pytest.mark.parametrize("name", ["Sigmoid", "SiLU"])
def test_an_activation_of_a_permuted_view_keeps_its_layout(name):
    """YOLOv5's Detect head applies sigmoid to (N, 3, H, W, 85), a permuted view of a convolution's
    (N, 255, H, W): activate reads it in memory order, so the result is laid out as the input (strides
    in the same order, no transposing copy first) and equals the activation of a contiguous copy."""
    kind, params, reference = ACTIVATIONS[name]
    head = RNG.standard_normal((2, 255, 4, 5), dtype=np.float32).reshape(2, 3, 85, 4, 5).transpose(0, 1, 3, 4, 2)
    got = create_layer(Operator(kind, "act", ["x"], ["y"], params))(kuiper.Tensor(head)).numpy()
    assert np.argsort(got.strides).tolist() == np.argsort(head.strides).tolist(), \
        f"expected the input's memory order (strides {head.strides}), got strides {got.strides}"
    want = reference(torch.from_numpy(np.ascontiguousarray(head))).numpy()
    assert np.abs(got - want).max() <= 1e-6, f"expected {name} within 1e-6 of torch, got {np.abs(got - want).max()}"
