"""Lesson 08's window operators of segmentation networks as PyTorch users write them: convolution
padding modes, 1-D and functional convolutions, max pooling with indices, adaptive max, power-average
and 1-D pooling, Fold and Unfold, affine_grid and grid_sample. Small torch modules exported with the pinned pnnx, loaded with
kuiper.load and compared with torch (fp32 within 1e-4 of the output scale, indices equal), plus
their errors."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kuiper
from kuiper.bench import same_run_ratio
from kuiper.errors import LayerError, UnsupportedError
from kuiper.layers.grid import grid_sample
from kuiper.pnnx import Operator
from kuiper.registry import create_layer
from kuiper.tensor import Tensor
from tests.test_layers import make as make_at_line
from tests.test_operators import check_model, make, seeded

LESSON = 8


class Pooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.max_indices = nn.MaxPool2d(3, 2, 1, dilation=(1, 2), return_indices=True, ceil_mode=True)
        self.max_1d = nn.MaxPool1d(4, 3, 2, return_indices=True, ceil_mode=True)
        self.avg_1d = nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.adaptive_max = nn.AdaptiveMaxPool2d((4, None), return_indices=True)
        self.adaptive_max_1d = nn.AdaptiveMaxPool1d(5)
        self.adaptive_avg_1d = nn.AdaptiveAvgPool1d(4)
        self.lp = nn.LPPool2d(2, (3, 2), stride=(2, 1), ceil_mode=True)
        self.lp_1d = nn.LPPool1d(3, 3)

    def forward(self, x):
        seq = x[:, :, 0]  # (N, C, W)
        positive = x.abs() + 0.1
        return (*self.max_indices(x), *F.max_pool2d(x, (2, 3), (1, 2), (1, 1), return_indices=True),
                *self.max_1d(seq), self.avg_1d(seq), F.max_pool1d(seq, 2),
                *self.adaptive_max(x), F.adaptive_max_pool2d(x, (3, 5)), self.adaptive_max_1d(seq),
                self.adaptive_avg_1d(seq), F.adaptive_avg_pool2d(x, (None, 3)), F.adaptive_avg_pool1d(seq, 6),
                self.lp(positive), F.lp_pool2d(x, 1, 2), F.lp_pool2d(positive, 1.5, (2, 3), ceil_mode=True),
                self.lp_1d(x[:, :, 1]), F.lp_pool1d(positive[:, :, 2], 2.0, 2, 1),
                F.max_pool1d(seq[0], 3, 2, 1, return_indices=True)[1])


POOLING = ("max2d indices ceil dilation", "max2d indices ceil dilation (indices)", "F.max_pool2d indices",
           "F.max_pool2d (indices)", "max1d indices ceil", "max1d (indices)", "avg1d ceil exclude pad",
           "F.max_pool1d", "adaptive max (4, None)", "adaptive max (indices)", "F.adaptive_max_pool2d",
           "adaptive max 1d", "adaptive avg 1d", "F.adaptive_avg_pool2d (None, 3)", "F.adaptive_avg_pool1d",
           "LPPool2d p=2 ceil", "F.lp_pool2d p=1", "F.lp_pool2d p=1.5 ceil", "LPPool1d p=3",
           "F.lp_pool1d p=2 stride 1", "unbatched max1d indices")


def test_pooling(tmp_path):
    check_model(Pooling(), (seeded(2, 3, 11, 13),), tmp_path, list(POOLING))


class FoldUnfold(nn.Module):
    def __init__(self):
        super().__init__()
        self.unfold = nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=2)
        self.fold = nn.Fold((7, 8), (2, 3), dilation=(2, 1), padding=(1, 0), stride=(1, 2))

    def forward(self, x, cols):
        return (self.unfold(x), F.unfold(x[0], 3, padding=1), self.fold(cols),
                F.fold(cols[0], (7, 8), (2, 3), dilation=(2, 1), padding=(1, 0), stride=(1, 2)))


def test_fold_unfold(tmp_path):
    names = ["Unfold", "F.unfold unbatched", "Fold", "F.fold unbatched"]
    check_model(FoldUnfold(), (seeded(2, 36, 6, 9), seeded(2, 6 * 6, 21, seed=1)), tmp_path, names)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv_padding_modes(tmp_path, padding_mode):
    torch.manual_seed(0)
    convs = nn.ModuleList([
        nn.Conv2d(4, 6, 3, padding=2, padding_mode=padding_mode),
        nn.Conv2d(4, 8, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, padding_mode=padding_mode),
        nn.Conv2d(4, 4, (2, 4), padding="same", dilation=(2, 1), groups=4, padding_mode=padding_mode),
        nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, padding_mode=padding_mode),
        # pnnx writes padding=() for a 1-D uneven 'same' with a padding_mode: only zeros can say it
        nn.Conv1d(4, 8, 4 if padding_mode == "zeros" else 3, padding="same", groups=2, padding_mode=padding_mode),
        nn.Conv2d(4, 6, 3, padding="valid", padding_mode=padding_mode)])

    class Convs(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = convs

        def forward(self, x):
            seq = x[:, :, 1]
            return tuple(c(seq if isinstance(c, nn.Conv1d) else x) for c in self.convs) + (self.convs[0](x[0]),)

    names = ["3x3 pad 2", "grouped dilated strided", "same, even window, depthwise", "1-D dilated strided",
             "1-D same, grouped", "valid", "unbatched"]
    check_model(Convs(), (seeded(2, 4, 7, 9),), tmp_path, names)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(6, 2, 3, 3, generator=generator))
        self.b = nn.Parameter(torch.randn(6, generator=generator))

    def forward(self, x, w, b, w1, wt, lw, lb):
        seq = x[:, :, 0]
        return (F.conv2d(x, w, b, stride=2, padding=1), F.conv2d(x, w[:, :2], None, padding="same", dilation=(2, 1), groups=2),
                F.conv2d(x, self.w * 2, self.b, padding=(0, 1), groups=2), F.conv1d(seq, w1, None, 2, 1),
                F.conv1d(seq, w1, b[:5], padding="same", dilation=2), F.conv_transpose2d(x, wt, b[:4], 2, 1, 1),
                F.conv_transpose2d(x, wt[:, :2], None, stride=(1, 2), groups=2, dilation=2),
                F.conv_transpose1d(seq, wt[:, :, 0], b[:4], stride=3, padding=1), F.linear(x, lw, lb),
                F.linear(seq, lw), F.conv2d(x[0], w, b))


def test_functional_conv_and_linear_take_weights_as_inputs(tmp_path):
    inputs = (seeded(2, 4, 7, 9), seeded(6, 4, 3, 3, seed=1), seeded(6, seed=2), seeded(5, 4, 3, seed=3),
              seeded(4, 4, 3, 2, seed=4), seeded(5, 9, seed=5), seeded(5, seed=6))
    names = ["F.conv2d", "F.conv2d same grouped", "F.conv2d constant weights", "F.conv1d", "F.conv1d same",
             "F.conv_transpose2d", "F.conv_transpose2d grouped dilated", "F.conv_transpose1d", "F.linear",
             "F.linear no bias", "F.conv2d unbatched"]
    check_model(Functional(), inputs, tmp_path, names)


def test_an_unsupported_padding_mode_is_named():
    with pytest.raises(UnsupportedError) as err:
        make("nn.Conv2d", {"padding_mode": "mirror", "in_channels": 2, "out_channels": 2, "kernel_size": (3, 3),
                           "bias": False})
    message = str(err.value)
    assert isinstance(err.value, LayerError) and "nn.Conv2d" in message and "line 7" in message, message
    assert "padding_mode 'mirror'" in message and "supported: zeros, reflect" in message, message


def test_fold_of_the_wrong_number_of_columns_is_a_shape_error():
    fold = make("nn.Fold", {"output_size": (5, 5), "kernel_size": (2, 2)})
    with pytest.raises(kuiper.errors.ShapeError, match=r"nn.Fold .*expected columns \(N, C·4, 16\)"):
        fold(kuiper.Tensor(np.zeros((1, 8, 15), np.float32)))


@pytest.mark.parametrize("kind, params, weights, message", [
    ("nn.AdaptiveMaxPool2d", dict(output_size=(2, 3, 4)), {}, r"output_size should be an int >= 1 or a pair"),
    ("nn.LPPool2d", dict(norm_type=0.0, kernel_size=2), {}, r"'norm_type' should be at least"),
    ("nn.Conv1d", dict(in_channels=3, out_channels=4, kernel_size=(3,), padding=(1, 2, 3), bias=False),
     dict(weight=np.zeros((4, 3, 3), np.float32)), r"padding should be 'same', 'valid' or 1 ints \(or 2 in F.pad's order\)"),
    ("nn.Fold", dict(kernel_size=(2, 2)), {}, r"missing parameter 'output_size'"),
])
def test_bad_parameters_name_the_layer(kind, params, weights, message):
    with pytest.raises(LayerError, match=message) as caught:
        make_at_line(kind, params, weights, line=17)
    assert "(line 17)" in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("kind, params, shape, reference", [
    ("nn.AdaptiveMaxPool2d", {"output_size": (7, 7), "return_indices": True}, (8, 256, 14, 14),
     lambda x: F.adaptive_max_pool2d(x, 7, return_indices=True)),
    ("nn.MaxPool2d", {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "return_indices": True},
     (8, 64, 56, 56), lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True)),
])
def test_pooling_with_indices_within_5x_torch(kind, params, shape, reference):
    layer = make(kind, params)
    x = seeded(*shape)
    data = kuiper.Tensor(x.numpy())
    ratio = same_run_ratio(lambda: layer(data), lambda: reference(x))
    assert ratio <= 5, f"{kind}: expected at most 5 x torch's time, got {ratio:.2f} x"


@pytest.mark.parametrize("name, fused", [("resnet18", 17), ("mobilenet_v2", 45), ("yolov5n", 57)])
def test_the_padding_wrapper_keeps_every_conv_activation_fused(name, fused):
    """nn.Conv2d is built as lesson 08's Convolution wrapper: it must still hand the activation after it to
    its Conv2d's epilogue (lesson 06), or every model silently loses the fusion."""
    model = Path(__file__).resolve().parents[1] / "data" / "models" / f"{name}.pnnx.param"
    graph = kuiper.load(model)
    assert sum(layer is not None for _, layer in graph.plan) == fused
    x, want = np.load(model.with_name(f"{name}.input.npy")), np.load(model.with_name(f"{name}.output.npy"))
    got = graph(x)
    got = got[0] if isinstance(got, tuple) else got
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


class Sampler(nn.Module):
    """affine_grid then grid_sample in one setting, 2-D or 3-D."""

    def __init__(self, size, mode, padding_mode, align_corners):
        super().__init__()
        self.size, self.settings = size, dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    def forward(self, x, theta, grid):
        made = F.affine_grid(theta, self.size, align_corners=self.settings["align_corners"])
        return made, F.grid_sample(x, made, **self.settings), F.grid_sample(x, grid, **self.settings)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_affine_grid_and_grid_sample_match_torch(tmp_path, mode, padding_mode, align_corners):
    rng = torch.Generator().manual_seed(17)
    x = torch.randn(2, 3, 9, 13, generator=rng)
    theta = torch.tensor([[[0.9, -0.5, 0.2], [0.5, 0.9, -0.1]], [[1.6, 0.3, 0.0], [-0.2, 1.4, 0.3]]])
    grid = torch.rand(2, 7, 5, 2, generator=rng) * 6 - 3  # far outside the image: several reflections
    check_model(Sampler((2, 3, 6, 8), mode, padding_mode, align_corners), (x, theta, grid), tmp_path,
                ["affine_grid", "grid_sample of the affine grid", "grid_sample of a random grid"])


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_3d_affine_grid_and_grid_sample_match_torch(tmp_path, mode, padding_mode, align_corners):
    rng = torch.Generator().manual_seed(18)
    x = torch.randn(1, 2, 4, 5, 6, generator=rng)
    theta = torch.randn(1, 3, 4, generator=rng)
    grid = torch.rand(1, 3, 4, 5, 3, generator=rng) * 4 - 2
    check_model(Sampler((1, 2, 3, 4, 5), mode, padding_mode, align_corners), (x, theta, grid), tmp_path,
                ["affine_grid 3-D", "grid_sample of the affine grid", "grid_sample of a random grid"])


def test_grid_sample_of_sizes_one_and_nan():
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)  # one row: reflection of a single pixel
    grid = np.array([[[[-4.2, 0.7], [0.3, np.nan], [2.6, -1.0]]]], np.float32)  # NaN: 0 or NaN as in torch
    for mode, padding, align in itertools.product(["bilinear", "nearest", "bicubic"], ["zeros", "border", "reflection"],
                                                  [False, True]):
        want = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode, padding, align).numpy()
        got = grid_sample(x, grid, mode, padding, align)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{mode} {padding} align_corners={align}")


def test_nearest_ties_of_a_2x_downsampling_pick_torchs_pixel():
    # the identity's grid at half the size lands on x.5 exactly: float32 rounding, as torch's, decides
    x = np.random.default_rng(3).standard_normal((1, 2, 12, 16), dtype=np.float32)
    for padding in ["zeros", "border", "reflection"]:
        grid = F.affine_grid(torch.tensor([[[1.0, 0, 0], [0, 1, 0]]]), (1, 2, 6, 8), align_corners=False)
        want = F.grid_sample(torch.from_numpy(x), grid, "nearest", padding, align_corners=False).numpy()
        np.testing.assert_array_equal(grid_sample(x, grid.numpy(), "nearest", padding, False), want, err_msg=padding)


@pytest.mark.parametrize("x_shape, grid_shape, mode, message", [
    ((1, 2, 4, 4), (1, 3, 3, 3), "bilinear", r"grid \(1, 3, 3, 3\)"),
    ((2, 2, 4, 4), (1, 3, 3, 2), "bilinear", r"input \(2, 2, 4, 4\) and grid \(1, 3, 3, 2\)"),
    ((1, 2, 3, 4, 4), (1, 2, 3, 3, 3), "bicubic", "bicubic.*4-D"),
])
def test_grid_sample_shapes_that_do_not_fit_name_the_layer(x_shape, grid_shape, mode, message):
    layer = create_layer(Operator("F.grid_sample", "sample", ["0", "1"], ["2"], {"mode": mode}, line=9))
    with pytest.raises(LayerError, match=rf"F.grid_sample 'sample' \(line 9\).*{message}"):
        layer(Tensor(np.zeros(x_shape, np.float32)), Tensor(np.zeros(grid_shape, np.float32)))


def test_grid_sample_settings_and_affine_sizes_are_checked():
    with pytest.raises(LayerError, match="padding_mode='wrap' is not supported; supported: 'zeros', 'border'"):
        create_layer(Operator("F.grid_sample", "s", ["0", "1"], ["2"], {"padding_mode": "wrap"}, line=3))
    for size, message in [((1, 3, 40000, 40000), "exceeds"), ((1, 3, 4), "got theta")]:
        layer = create_layer(Operator("F.affine_grid", "a", ["0"], ["1"], {"size": size}, line=4))
        with pytest.raises(LayerError, match=rf"F.affine_grid 'a' \(line 4\).*{message}"):
            layer(Tensor(np.zeros((1, 2, 3), np.float32)))
