"""Every road of Conv2d.forward against torch.nn.functional.conv2d: Winograd F(2×2, 3×3) (lesson 06),
1×1 as a plain matrix multiply, im2col image by image and several images per matrix multiply, grouped;
at batch 1 and 8, odd sizes, with and without bias, with a fused activation; and Winograd on the zoo's
real weights. Tolerance: max abs error <= 1e-4 of the output's scale (fp32)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kuiper.layers.conv as conv_module
from kuiper.layers.activation import ReLU, SiLU
from kuiper.layers.conv import COLUMN_BYTES, Conv2d, images_per_gemm, scratch, winograd_pays, winograd_weights
from kuiper.pnnx import Attribute, Operator, load_pnnx
from kuiper.course import DATA
from kuiper.tensor import Tensor

LESSON = 6  # the Winograd transforms are Exercises 6.9 and 6.10

ACTIVATIONS = {None: lambda v: v, ReLU: F.relu, SiLU: F.silu}


def conv_op(c_in, c_out, kernel, stride=1, padding=0, dilation=1, groups=1, bias=True, weight=None, seed=0):
    """A PNNX nn.Conv2d operator with random (or the given) weights."""
    rng = np.random.default_rng(seed)
    if weight is None:
        weight = rng.standard_normal((c_out, c_in // groups, kernel, kernel), dtype=np.float32) * 0.2
    attrs = {"weight": Attribute(weight.shape, "float32", weight)}
    if bias:
        attrs["bias"] = Attribute((c_out,), "float32", rng.standard_normal(c_out, dtype=np.float32))
    params = dict(in_channels=c_in, out_channels=c_out, kernel_size=weight.shape[2:], stride=(stride, stride),
                  padding=(padding, padding), dilation=(dilation, dilation), groups=groups, bias=bias,
                  padding_mode="zeros")
    return Operator("nn.Conv2d", "conv", ["0"], ["1"], params=params, attrs=attrs, line=1)


def activation_layer(kind):
    return kind(Operator(kind.__name__, "act", ["1"], ["2"], {}, {}, line=1))


def torch_answer(op, x, activation=None):
    p, weight = op.params, torch.from_numpy(np.array(op.attrs["weight"].data))
    bias = torch.from_numpy(op.attrs["bias"].data) if "bias" in op.attrs else None
    return ACTIVATIONS[activation](F.conv2d(torch.from_numpy(x), weight, bias, p["stride"], p["padding"],
                                            p["dilation"], p["groups"])).numpy()


@pytest.fixture
def winograd_calls(monkeypatch):
    """Winograd taken whenever it fits (WINOGRAD_MIN_WORK 0), and a list that counts its calls."""
    calls, road = [], conv_module.winograd_conv
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_WORK", 0)
    monkeypatch.setattr(conv_module, "winograd_conv", lambda *args: calls.append(1) or road(*args))
    return calls


def assert_close(got, want, where):
    assert got.shape == want.shape, f"{where}: expected shape {want.shape}, got {got.shape}"
    error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert error <= 1e-4, f"{where}: expected F.conv2d's output, error / scale {error:.1e}"


# (c_in, c_out, kernel, stride, padding, dilation, groups), whether it takes the Winograd road
ROADS = {
    "winograd": ((16, 24, 3, 1, 1, 1, 1), True),
    "winograd, no padding": ((8, 8, 3, 1, 0, 1, 1), True),
    "winograd, padding 2": ((32, 16, 3, 1, 2, 1, 1), True),
    "3×3, too few channels for winograd": ((3, 8, 3, 1, 1, 1, 1), False),
    "3×3 dilated": ((8, 16, 3, 1, 2, 2, 1), False),
    "3×3 stride 2": ((16, 16, 3, 2, 1, 1, 1), False),
    "1×1": ((16, 32, 1, 1, 0, 1, 1), False),
    "1×1 stride 2": ((16, 32, 1, 2, 0, 1, 1), False),
    "1×1 grouped": ((16, 32, 1, 1, 0, 1, 4), False),
    "3×3 grouped": ((16, 32, 3, 1, 1, 1, 4), False),
    "7×7 stride 2": ((3, 16, 7, 2, 3, 1, 1), False),
}


@pytest.mark.parametrize("road", ROADS)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("size", [(9, 7), (30, 26), (1, 1)])
def test_every_road_matches_torch(road, batch, size, winograd_calls):
    (c_in, c_out, kernel, stride, padding, dilation, groups), winograd = ROADS[road]
    rng = np.random.default_rng(batch)
    for bias in (True, False):
        op = conv_op(c_in, c_out, kernel, stride, padding, dilation, groups, bias)
        conv = Conv2d(op)
        assert (conv.winograd is not None) == winograd, f"{road}: expected Winograd {winograd}"
        if min(size) + 2 * padding < dilation * (kernel - 1) + 1:
            continue
        x = rng.standard_normal((batch, c_in, *size), dtype=np.float32)
        calls = len(winograd_calls)
        assert_close(conv(Tensor(x)).numpy(), torch_answer(op, x), f"{road}, x {x.shape}, bias {bias}")
        assert len(winograd_calls) - calls == winograd, f"{road}: expected {int(winograd)} Winograd call(s)"
        for kind in (ReLU, SiLU):
            fused = conv.fuse(activation_layer(kind))
            assert_close(fused(Tensor(x)).numpy(), torch_answer(op, x, kind), f"{road} + {kind.__name__}, x {x.shape}")


def test_winograd_pays_only_for_big_products():
    u = np.zeros((16, 64, 64), np.float32)  # ResNet-18's first 3×3 layers
    assert winograd_pays(u, 56 * 56), "expected Winograd for one 56×56 image (0.77× im2col's time on one core)"
    assert winograd_pays(u, 8 * 56 * 56), "expected Winograd for a batch of 8"
    assert not winograd_pays(u, 16 * 16), "expected im2col for a 16×16 map: 2^18 multiply-adds per product"


def test_winograd_padding_wider_than_the_image(winograd_calls):
    op = conv_op(8, 4, 3, padding=3)
    x = np.random.default_rng(0).standard_normal((2, 8, 1, 2), dtype=np.float32)
    assert_close(Conv2d(op)(Tensor(x)).numpy(), torch_answer(op, x), "padding 3 around a 1×2 image")
    assert winograd_calls, "expected the Winograd road"


def test_winograd_weights_are_g_w_gt():
    w = np.random.default_rng(0).standard_normal((2, 3, 3, 3), dtype=np.float32)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    u = winograd_weights(w)
    assert u.shape == (16, 2, 3) and u.dtype == np.float32
    np.testing.assert_allclose(u[:, 1, 2].reshape(4, 4), g @ w[1, 2] @ g.T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model", ["resnet18", "yolov5n", "squeezenet1_1", "unet"])
def test_winograd_on_real_zoo_weights(model, winograd_calls):
    path = DATA / "models" / f"{model}.pnnx.param"
    if not path.exists():
        pytest.skip(f"{path} missing: run tools/zoo.py")
    rng, count = np.random.default_rng(0), 0
    for op in load_pnnx(path).operators:
        conv = Conv2d(op) if op.type == "nn.Conv2d" else None
        if conv is None or conv.winograd is None:
            continue
        for batch in (1, 8):
            x = rng.standard_normal((batch, op.params["in_channels"], 13, 11), dtype=np.float32)
            assert_close(conv(Tensor(x)).numpy(), torch_answer(op, x), f"{model} {op.name}, x {x.shape}")
        count += 1
    assert count >= 3, f"{model}: expected its 3×3 stride-1 convolutions on the Winograd road, got {count}"


def test_images_per_gemm():
    assert images_per_gemm(COLUMN_BYTES // 3) == 3
    assert images_per_gemm(COLUMN_BYTES // 2 + 1) == 1
    assert images_per_gemm(2 * COLUMN_BYTES) == 1  # never 0


def test_scratch_arrays_of_different_names_do_not_overlap():
    a, b = scratch((4, 5), "winograd input"), scratch((4, 5), "winograd product")
    assert not np.shares_memory(a, b), "expected separate memory for two names"
    assert np.shares_memory(scratch((2, 3), "winograd input"), a), "expected the same name to reuse its memory"


@pytest.mark.parametrize("kernel, groups", [(3, 1), (1, 1), (3, 2)])
def test_pixel_major_product_with_residual_over_several_steps_and_tiles(monkeypatch, kernel, groups):
    """The GEMM's pixel-major product (n·L, K), read back through a transposed view one EPILOGUE_TILE at a
    time, with SiLU then a residual added, when each matrix multiply takes one image of three and a row
    spans three tiles: the output of every image, channel and place is PyTorch's."""
    monkeypatch.setattr(conv_module, "COLUMN_BYTES", 1)  # one image per matrix multiply
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_WORK", 2**62)  # the im2col road for the 3×3
    op = conv_op(8, 6, kernel, padding=kernel // 2, groups=groups)
    conv = Conv2d(op).fuse(activation_layer(SiLU))
    conv = conv.fuse(SimpleNamespace(op=Operator("pnnx.Expression", "sum", ["2", "3"], ["4"], {"expr": "add(@0,@1)"},
                                                 {}, line=1)))
    assert conv.residual == conv_module.RESIDUAL_AFTER, "expected the sum fused after the SiLU"
    rng = np.random.default_rng(1)
    side = 2 * conv_module.EPILOGUE_TILE // 33 + 1  # 33 columns: a row of 33·side places spans three tiles
    x = rng.standard_normal((3, 8, side, 33), dtype=np.float32)
    shortcut = rng.standard_normal((3, 6, side, 33), dtype=np.float32)
    got = conv(Tensor(x), Tensor(shortcut)).numpy()
    assert_close(got, torch_answer(op, x, SiLU) + shortcut, f"{kernel}×{kernel}, groups {groups}, SiLU + residual")
