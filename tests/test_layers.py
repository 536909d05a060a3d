"""Every registered operator against torch.nn.functional on the same inputs, over random shapes and
parameters (hypothesis). Tolerance: max abs error <= 1e-4 of the output's scale (fp32)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kuiper.errors import LayerError, ShapeError
from kuiper.layers.conv import out_size
from kuiper.pnnx import Attribute, Operator
from kuiper.registry import LAYERS, create_layer
from kuiper.tensor import Tensor

LESSON = 4  # kuiper grade runs this file on the student build of lesson 04

SETTINGS = settings(max_examples=40, deadline=None)


def make(kind: str, params: dict | None = None, weights: dict | None = None, n_in: int = 1, line: int = 3):
    """The registered layer for an operator of `kind`, as a PNNX file would describe it."""
    attrs = {k: Attribute(v.shape, "float32", v) for k, v in (weights or {}).items()}
    op = Operator(kind, "op", [str(i) for i in range(n_in)], ["out"], params or {}, attrs, line=line)
    return create_layer(op)


def close(got: np.ndarray, want: torch.Tensor) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape, f"shape {got.shape}, torch gives {want.shape}"
    finite = np.abs(want[np.isfinite(want)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)  # equal infinities count as equal


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    if depthwise:
        groups = c_in
        c_out = c_in * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    batch = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    return batch, c_in, c_out, groups, kernel, stride, padding, dilation, size, bias


@SETTINGS
@given(conv_cases())
def test_conv2d(case):
    batch, c_in, c_out, groups, kernel, stride, padding, dilation, size, bias = case
    assume(all(out_size(n, k, s, p, d) >= 1 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation)))
    x, w, b = random((batch, c_in, *size)), random((c_out, c_in // groups, *kernel), 1), random(c_out, 2)
    params = dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=stride, padding=padding,
                  dilation=dilation, groups=groups, bias=bias, padding_mode="zeros")
    layer = make("nn.Conv2d", params, dict(weight=w, bias=b) if bias else dict(weight=w))
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b) if bias else None,
                    stride, padding, dilation, groups)
    close(layer(Tensor(x)).numpy(), want)


@SETTINGS
@given(st.integers(1, 3), st.sampled_from([1, 2]), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3),
       st.integers(0, 1), st.integers(0, 1), st.integers(1, 2), st.integers(1, 7))
def test_conv_transpose2d(batch, groups, per_group, kernel, stride, padding, output_padding, dilation, size):
    assume(output_padding < max(stride, dilation))
    c_in, c_out = groups * per_group, groups * 2
    assume((size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1 >= 1)
    x, w, b = random((batch, c_in, size, size + 1)), random((c_in, c_out // groups, kernel, kernel), 1), random(c_out, 2)
    want = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding,
                              output_padding, groups, dilation)
    params = dict(in_channels=c_in, out_channels=c_out, kernel_size=(kernel, kernel), stride=(stride, stride),
                  padding=(padding, padding), output_padding=(output_padding, output_padding),
                  dilation=(dilation, dilation), groups=groups, bias=True)
    close(make("nn.ConvTranspose2d", params, dict(weight=w, bias=b))(Tensor(x)).numpy(), want)


@SETTINGS
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2),
       st.integers(1, 2), st.booleans(), st.integers(1, 11), st.integers(1, 11))
def test_max_pool2d(batch, channels, kernel, stride, padding, dilation, ceil_mode, height, width):
    assume(padding <= kernel // 2 and dilation * (kernel - 1) + 1 <= min(height, width) + 2 * padding)
    x = random((batch, channels, height, width))
    params = dict(kernel_size=(kernel, kernel), stride=(stride, stride), padding=(padding, padding),
                  dilation=(dilation, dilation), ceil_mode=ceil_mode, return_indices=False)
    want = F.max_pool2d(torch.from_numpy(x), kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    close(make("nn.MaxPool2d", params)(Tensor(x)).numpy(), want)


@SETTINGS
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.booleans(), st.booleans(),
       st.integers(1, 11), st.integers(1, 11))
def test_avg_pool2d(batch, kernel, stride, padding, ceil_mode, count_include_pad, height, width):
    assume(padding <= kernel // 2 and kernel <= min(height, width) + 2 * padding)
    x = random((batch, 3, height, width))
    params = dict(kernel_size=(kernel, kernel), stride=(stride, stride), padding=(padding, padding),
                  ceil_mode=ceil_mode, count_include_pad=count_include_pad, divisor_override=None)
    want = F.avg_pool2d(torch.from_numpy(x), kernel, stride, padding, ceil_mode, count_include_pad)
    close(make("nn.AvgPool2d", params)(Tensor(x)).numpy(), want)


@SETTINGS
@given(st.integers(1, 13), st.integers(1, 13), st.integers(1, 6), st.one_of(st.none(), st.integers(1, 6)))
def test_adaptive_avg_pool2d(height, width, out_h, out_w):
    x = random((2, 3, height, width))
    layer = make("F.adaptive_avg_pool2d", dict(output_size=(out_h, out_w)))
    close(layer(Tensor(x)).numpy(), F.adaptive_avg_pool2d(torch.from_numpy(x), (out_h, out_w)))


@pytest.mark.parametrize("kind, params, reference", [
    ("nn.ReLU", {}, F.relu), ("F.relu", {}, F.relu), ("nn.ReLU6", {}, F.relu6), ("nn.Sigmoid", {}, torch.sigmoid),
    ("F.sigmoid", {}, torch.sigmoid), ("nn.SiLU", {}, F.silu), ("nn.Hardsigmoid", {}, F.hardsigmoid),
    ("nn.Hardswish", {}, F.hardswish), ("nn.Hardtanh", dict(min_val=-2.0, max_val=3.0), lambda t: F.hardtanh(t, -2, 3)),
    ("nn.LeakyReLU", dict(negative_slope=0.2), lambda t: F.leaky_relu(t, 0.2)),
    ("nn.Softmax", dict(dim=1), lambda t: F.softmax(t, 1)), ("F.softmax", dict(dim=-1), lambda t: F.softmax(t, -1)),
])
def test_activations(kind, params, reference):
    x = random((2, 5, 7, 3)) * 20  # large values too: sigmoid must not overflow
    with np.errstate(over="raise", invalid="raise"):
        got = make(kind, params)(Tensor(x)).numpy()
    close(got, reference(torch.from_numpy(x)))


def test_batch_norm():
    n = 6
    mean, var, gamma, beta = random(n), np.abs(random(n, 1)) + 0.1, random(n, 2), random(n, 3)
    x = random((2, n, 4, 5), 4)
    layer = make("nn.BatchNorm2d", dict(num_features=n, eps=1e-3, affine=True),
                 dict(running_mean=mean, running_var=var, weight=gamma, bias=beta))
    want = F.batch_norm(torch.from_numpy(x), *map(torch.from_numpy, (mean, var, gamma, beta)), eps=1e-3)
    close(layer(Tensor(x)).numpy(), want)


@SETTINGS
@given(st.sampled_from(["nearest", "bilinear"]), st.booleans(), st.integers(1, 9), st.integers(1, 9),
       st.one_of(st.tuples(st.integers(1, 20), st.integers(1, 20)),
                 st.tuples(st.sampled_from([0.5, 1.5, 2.0, 3.0]), st.sampled_from([0.5, 2.0, 2.5]))))
def test_upsample(mode, align_corners, height, width, target):
    x = random((1, 2, height, width))
    align = align_corners if mode == "bilinear" else None
    if isinstance(target[0], int):
        params, kwargs = dict(mode=mode, size=target, align_corners=align), dict(size=target)
    else:
        assume(all(int(n * s) >= 1 for n, s in zip((height, width), target)))
        params, kwargs = dict(mode=mode, scale_factor=target, align_corners=align), dict(scale_factor=target)
    want = F.interpolate(torch.from_numpy(x), mode=mode, align_corners=align, **kwargs)
    close(make("nn.Upsample", params)(Tensor(x)).numpy(), want)


def test_linear_and_flatten():
    x, w, b = random((4, 3, 2, 5)), random((7, 30), 1), random(7, 2)
    flat = make("torch.flatten", dict(start_dim=1, end_dim=-1))(Tensor(x))
    close(flat.numpy(), torch.flatten(torch.from_numpy(x), 1))
    layer = make("nn.Linear", dict(in_features=30, out_features=7, bias=True), dict(weight=w, bias=b))
    close(layer(flat).numpy(), F.linear(torch.from_numpy(flat.numpy()), torch.from_numpy(w), torch.from_numpy(b)))


def test_shape_operators():
    x = random((2, 3, 4, 6))
    t = torch.from_numpy(x)
    close(make("Tensor.permute", dict(dims=(0, 3, 1, 2)))(Tensor(x)).numpy(), t.permute(0, 3, 1, 2))
    close(make("torch.transpose", dict(dim0=1, dim1=3))(Tensor(x)).numpy(), t.transpose(1, 3))
    close(make("Tensor.reshape", dict(shape=(2, 12, 6)))(Tensor(x)).numpy(), t.reshape(2, 12, 6))
    close(make("Tensor.view", dict(shape=(1, 3, 24)))(Tensor(x)).numpy(), t.reshape(2, 3, 24))  # batch kept free
    close(make("Tensor.slice", dict(dim=3, start=1, end=5, step=2))(Tensor(x)).numpy(), t[..., 1:5:2])
    close(make("torch.squeeze", dict(dim=0))(Tensor(x[:1])).numpy(), t[:1].squeeze(0))
    close(make("torch.unsqueeze", dict(dim=2))(Tensor(x)).numpy(), t.unsqueeze(2))
    parts = make("torch.split", dict(dim=3, split_size_or_sections=(2, 1, 3)))(Tensor(x))
    for got, want in zip(parts, torch.split(t, (2, 1, 3), dim=3)):
        close(got.numpy(), want)
    parts = make("torch.chunk", dict(chunks=4, dim=3))(Tensor(x))
    assert [p.shape[3] for p in parts] == [w.shape[3] for w in torch.chunk(t, 4, dim=3)]
    both = make("torch.cat", dict(dim=1), n_in=2)(Tensor(x), Tensor(x))
    close(both.numpy(), torch.cat([t, t], 1))
    close(make("torch.stack", dict(dim=0), n_in=2)(Tensor(x), Tensor(x)).numpy(), torch.stack([t, t]))
    grid = random((1, 1, 4, 4, 2))
    assert make("pnnx.Attribute", {}, dict(data=grid), n_in=0)().numpy() is grid


@pytest.mark.parametrize("kind, params, weights, message", [
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=(3, 3), groups=1, bias=False,
                       padding_mode="mirror"), dict(weight=np.zeros((4, 3, 3, 3), np.float32)),
     "padding_mode 'mirror' is not supported"),
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=(3, 3), groups=2, bias=False),
     dict(weight=np.zeros((4, 1, 3, 3), np.float32)), "groups=2 must divide in_channels=3"),
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=(3, 3), bias=False),
     dict(weight=np.zeros((4, 3, 5, 5), np.float32)), r"weight 'weight' should have shape \(4, 3, 3, 3\), got \(4, 3, 5, 5\)"),
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size="big"), {}, "kernel_size should be an int or a pair"),
    ("nn.Upsample", dict(mode="area", scale_factor=2.0), {}, "mode 'area' is not supported"),
    ("nn.Upsample", dict(mode="bilinear", scale_factor=2.0, antialias=True), {}, "antialias=True is not supported"),
    ("nn.Softmax", {}, {}, "missing parameter 'dim'"),
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=(3, 3), stride=(0, 1), bias=False),
     dict(weight=np.zeros((4, 3, 3, 3), np.float32)), r"stride should be at least 1, got \(0, 1\)"),
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=(0, 0), bias=False),
     dict(weight=np.zeros((4, 3, 0, 0), np.float32)), r"kernel_size should be at least 1"),
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, groups=0, bias=False),
     dict(weight=np.zeros((4, 3, 3, 3), np.float32)), r"parameter 'groups' should be at least 1, got 0"),
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, dilation=0, bias=False),
     dict(weight=np.zeros((4, 3, 3, 3), np.float32)), r"dilation should be at least 1, got 0"),
    ("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, padding=(-1, 0), bias=False),
     dict(weight=np.zeros((4, 3, 3, 3), np.float32)), r"padding should be .*at least 0, got \(-1, 0\)"),
    ("nn.MaxPool2d", dict(kernel_size=(2, 2), stride=(0, 0)), {}, r"stride should be at least 1"),
    ("nn.AvgPool2d", dict(kernel_size=0), {}, r"kernel_size should be at least 1"),
    ("nn.AdaptiveAvgPool2d", dict(output_size=(-1, 3)), {}, r"output_size should be an int >= 1"),
    ("torch.chunk", dict(chunks=0, dim=1), {}, r"parameter 'chunks' should be at least 1, got 0"),
    ("torch.split", dict(split_size_or_sections=0, dim=1), {}, r"'split_size_or_sections' should be at least 1"),
    ("Tensor.slice", dict(dim=1, start=0, end=4, step=0), {}, r"every step of a sliced dimension should be an int >= 1"),
    ("nn.Upsample", dict(mode="nearest", scale_factor=0.0), {}, r"scale_factor should be a number in \(0, 1024\)"),
    ("nn.Upsample", dict(mode="nearest", size=(0, 4)), {}, r"size should be an int >= 1"),
    ("nn.BatchNorm2d", dict(num_features=0), {}, r"'num_features' should be at least 1"),
    ("nn.Linear", dict(in_features=float("nan"), out_features=3, bias=False), {}, r"'in_features' should be int"),
])
def test_bad_parameters_name_the_layer(kind, params, weights, message):
    with pytest.raises(LayerError, match=message) as caught:
        make(kind, params, weights, line=17)
    assert "(line 17)" in str(caught.value)


def test_an_axis_out_of_range_is_a_graph_error_naming_the_operator(tmp_path):
    from pathlib import Path

    import kuiper
    from kuiper.errors import GraphError

    tiny = Path(__file__).resolve().parents[1] / "data" / "tiny.pnnx.param"
    param = tmp_path / "axis.pnnx.param"
    param.write_text(tiny.read_text().replace("torch.cat_0              2 1 3 5 6 dim=1", "torch.cat_0              2 1 3 5 6 dim=5"))
    (tmp_path / "axis.pnnx.bin").symlink_to(tiny.with_suffix(".bin"))
    graph = kuiper.load(param)
    with pytest.raises(GraphError, match=r"torch\.cat 'torch\.cat_0' \(line 9\) failed on inputs of shape "
                                         r"\[\(1, 16\), \(1, 16\)\]: AxisError"):
        graph(np.zeros((1, 3, 4, 4), np.float32))


def test_wrong_input_channels_is_a_shape_error():
    layer = make("nn.Conv2d", dict(in_channels=3, out_channels=4, kernel_size=(1, 1), bias=False),
                 dict(weight=np.zeros((4, 3, 1, 1), np.float32)))
    with pytest.raises(ShapeError, match=r"nn\.Conv2d 'op' \(line 3\): expected input \(N, 3, H, W\), got \(1, 5, 2, 2\)"):
        layer(Tensor(np.zeros((1, 5, 2, 2), np.float32)))


def test_every_zoo_operator_type_is_registered():
    from kuiper.pnnx import read_param
    from pathlib import Path
    models = sorted((Path(__file__).resolve().parents[1] / "data" / "models").glob("*.pnnx.param"))
    assert len(models) >= 6, "run `make models` first"
    types = {op.type for path in models for op in read_param(path).operators} - {"pnnx.Input", "pnnx.Output"}
    assert types <= set(LAYERS), f"unregistered: {sorted(types - set(LAYERS))}"
