"""The flat depthwise kernel (lesson 06): exact against PyTorch for every window setting, the layer's
fused activations on it, and its speed against PyTorch on the zoo's depthwise shapes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kuiper.bench import same_run_ratio
from kuiper.layers.activation import Hardswish, ReLU, ReLU6, SiLU
from kuiper.layers.conv import Conv2d, depthwise_conv, depthwise_conv_flat
from kuiper.pnnx import Attribute, Operator
from kuiper.registry import create_layer
from kuiper.tensor import Tensor

LESSON = 6


def depthwise_op(channels, kernel, stride=1, padding=0, dilation=1, multiplier=1, bias=True, seed=0, **extra):
    """An nn.Conv2d operator with groups == channels and random weights."""
    g = np.random.default_rng(seed)
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = g.standard_normal((channels * multiplier, 1, *kernel), dtype=np.float32)
    attrs = {"weight": Attribute(weight.shape, "float32", weight)}
    if bias:
        attrs["bias"] = Attribute((channels * multiplier,), "float32", g.standard_normal(channels * multiplier,
                                                                                         dtype=np.float32))
    params = dict(in_channels=channels, out_channels=channels * multiplier, kernel_size=kernel, stride=pair(stride),
                  padding=pair(padding), dilation=pair(dilation), groups=channels, bias=bias, padding_mode="zeros")
    return Operator("nn.Conv2d", "dw", ["0"], ["1"], params=params | extra, attrs=attrs, line=3)


def pair(value):
    return value if isinstance(value, (tuple, str)) else (value, value)


def torch_conv(op, x):
    p = op.params
    bias = torch.from_numpy(op.attrs["bias"].data) if "bias" in op.attrs else None
    return F.conv2d(x, torch.from_numpy(op.attrs["weight"].data), bias, p["stride"], p["padding"], p["dilation"],
                    p["groups"])


def assert_close(got, want, where):
    assert got.shape == want.shape, f"{where}: expected shape {want.shape}, got {got.shape}"
    error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert error <= 1e-4, f"{where}: expected torch's output, differs by {error:.1e} of its scale"


@pytest.mark.parametrize("batch, channels, size, kernel, stride, padding, dilation, multiplier", [
    (2, 8, 9, 3, 1, 1, 1, 1), (1, 8, 10, 3, 2, 1, 1, 1), (3, 4, 15, 5, 1, 2, 1, 1), (2, 4, 16, 5, 2, 2, 1, 1),
    (2, 6, 14, 7, 1, 3, 1, 1), (1, 6, 13, 7, 2, 3, 1, 1), (2, 3, 12, 3, 1, 2, 2, 1), (1, 3, 17, 5, 2, 4, 2, 1),
    (2, 3, (11, 7), (3, 5), (2, 1), (0, 2), (1, 2), 1), (1, 2, 9, 3, 3, 0, 1, 1), (2, 2, 9, 3, 1, 1, 1, 3),
    (1, 4, 1, 3, 1, 1, 1, 1), (1, 2, 3, 1, 1, 0, 1, 1), (2, 3, 8, 3, 2, 0, 1, 1),
    (3, 2, 90, 3, 1, 1, 1, 1),  # several groups of images, the last one short
])
def test_flat_kernel_equals_torch(batch, channels, size, kernel, stride, padding, dilation, multiplier):
    h, w = size if isinstance(size, tuple) else (size, size)
    op = depthwise_op(channels, kernel, stride, padding, dilation, multiplier, bias=False)
    x = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(1))
    want = torch_conv(op, x).numpy()
    got = np.full(want.shape, np.nan, np.float32)
    p = op.params
    depthwise_conv_flat(x.numpy(), op.attrs["weight"].data, got, *p["stride"], *p["padding"], *p["dilation"])
    assert_close(got, want, f"kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation}, "
                            f"multiplier {multiplier}, input {tuple(x.shape)}")


def test_the_layer_runs_the_flat_kernel():
    """Lesson 06 swaps its kernel into Conv2d; lesson 04's stays the plain statement of the same sum."""
    assert Conv2d.depthwise_kernel is depthwise_conv_flat
    op = depthwise_op(5, 3, 2, 1)
    x = np.random.default_rng(2).standard_normal((2, 5, 11, 11), dtype=np.float32)
    plain = np.empty((2, 5, 6, 6), np.float32)
    depthwise_conv(x, op.attrs["weight"].data, plain, 2, 2, 1, 1, 1, 1)
    want = plain + op.attrs["bias"].data[:, None, None]
    assert_close(Conv2d(op)(Tensor(x)).numpy(), want, "Conv2d against lesson 04's kernel plus the bias")


ACTIVATIONS = [(ReLU, F.relu), (ReLU6, F.relu6), (SiLU, F.silu), (Hardswish, F.hardswish)]


@pytest.mark.parametrize("kind, reference", ACTIVATIONS, ids=[kind.__name__ for kind, _ in ACTIVATIONS])
@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (5, 2), (7, 1)])
def test_fused_activation_on_the_flat_kernel(kind, reference, kernel, stride):
    op = depthwise_op(6, kernel, stride, kernel // 2, seed=kernel)
    x = torch.randn(2, 6, 13, 13, generator=torch.Generator().manual_seed(3)) * 3
    activation = kind(Operator(kind.__name__, "act", ["1"], ["2"], {}, {}, line=4))
    fused = Conv2d(op).fuse(activation)
    assert fused is not None, f"expected Conv2d to take {kind.__name__} into its epilogue"
    assert_close(fused(Tensor(x.numpy())).numpy(), reference(torch_conv(op, x)).numpy(),
                 f"{kind.__name__} fused into a {kernel}x{kernel} stride-{stride} depthwise conv")


@pytest.mark.parametrize("padding, mode", [("same", "zeros"), (2, "reflect"), (1, "replicate"), (1, "circular")])
def test_padding_modes_around_the_flat_kernel(padding, mode):
    """Lesson 08's Convolution wrapper (every nn.Conv2d of a graph) pads first, then runs Conv2d."""
    op = depthwise_op(4, 5 if padding == "same" else 3, padding=padding, padding_mode=mode)
    x = torch.randn(2, 4, 9, 10, generator=torch.Generator().manual_seed(4))
    module = torch.nn.Conv2d(4, 4, op.params["kernel_size"], padding=padding, groups=4, padding_mode=mode)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(op.attrs["weight"].data))
        module.bias.copy_(torch.from_numpy(op.attrs["bias"].data))
        want = module(x).numpy()
    assert_close(create_layer(op)(Tensor(x.numpy())).numpy(), want, f"padding {padding!r}, mode {mode}")


# (channels, size, kernel, stride): ConvNeXt-Tiny's 7x7 (first and last stage), MobileNetV2's 3x3 (stride 1 and 2,
# large and small maps), MobileNetV3-Small's 5x5. Measured kuiper / torch under the load of seven sessions on two
# cores, batch 1 and 8: about 0.3-1 on the 56x56 maps, 1-3 on the 7x7 and 14x14 ones (where oneDNN's channel-blocked
# kernels waste nothing on padding); lesson 04's kernel was 2-90 on the same shapes.
ZOO_SHAPES = [(96, 56, 7, 1), (144, 56, 3, 2), (768, 7, 7, 1), (384, 14, 3, 1), (960, 7, 3, 1), (576, 7, 5, 1)]


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("channels, size, kernel, stride", ZOO_SHAPES)
def test_depthwise_within_5x_torch(channels, size, kernel, stride, batch):
    """Issue 17: no operator slower than 5x torch on the zoo's shapes."""
    layer = Conv2d(depthwise_op(channels, kernel, stride, kernel // 2))
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(5))
    data = Tensor(x.numpy())
    with torch.no_grad():
        ratio = same_run_ratio(lambda: layer(data), lambda: torch_conv(layer.op, x), repeat=15)
    assert ratio <= 5, (f"{channels}x{size}x{size}, {kernel}x{kernel} stride {stride}, batch {batch}: "
                        f"expected at most 5 x torch's time, got {ratio:.2f} x")
