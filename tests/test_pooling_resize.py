"""Lesson 04's pooling and resampling settings as PyTorch users write them: small torch
modules exported with the pinned pnnx, loaded with kuiper.load and compared with torch (fp32 within
1e-4 of the output scale, indices equal), plus the errors for settings kuiper does not support."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kuiper
from kuiper.bench import same_run_ratio
from kuiper.errors import LayerError, UnsupportedError
from tests.test_operators import check_model, make, seeded

LESSON = 4


class Resize(nn.Module):
    """Every mode of F.interpolate for 1-D, 2-D and 3-D inputs, by size and by scale factor."""

    def __init__(self):
        super().__init__()
        self.up = nn.Upsample(scale_factor=1.7, mode="bicubic", recompute_scale_factor=True)
        self.nearest = nn.UpsamplingNearest2d(scale_factor=2)
        self.bilinear = nn.UpsamplingBilinear2d(size=(11, 12))

    def forward(self, seq, x, vol):
        out = [self.up(x), self.nearest(x), self.bilinear(x)]
        # pnnx leaves nearest-exact with recompute_scale_factor=True as an aten:: operator: not exportable
        for mode in ("nearest", "nearest-exact", "linear"):
            out += [F.interpolate(seq, size=17, mode=mode), F.interpolate(seq, scale_factor=0.6, mode=mode)]
            if mode != "nearest-exact":
                out.append(F.interpolate(seq, scale_factor=2.5, mode=mode, recompute_scale_factor=True))
        out += [F.interpolate(seq, size=23, mode="linear", align_corners=True),
                F.interpolate(seq, scale_factor=3, mode="linear", align_corners=True)]
        for mode in ("nearest", "nearest-exact", "bilinear", "bicubic"):
            out += [F.interpolate(x, size=(13, 5), mode=mode), F.interpolate(x, scale_factor=(2, 3), mode=mode),
                    F.interpolate(x, scale_factor=2.976744, mode=mode)]
            if mode != "nearest-exact":
                out.append(F.interpolate(x, scale_factor=(0.5, 1.3), mode=mode, recompute_scale_factor=True))
        for mode in ("bilinear", "bicubic"):
            out += [F.interpolate(x, size=(16, 3), mode=mode, align_corners=True),
                    F.interpolate(x, scale_factor=(0.8, 1.1), mode=mode, align_corners=True,
                                  recompute_scale_factor=True)]
        out += [F.interpolate(vol, scale_factor=(2, 1.5, 0.5), mode="trilinear"),
                F.interpolate(vol, size=(3, 7, 4), mode="trilinear", align_corners=True),
                F.interpolate(vol, size=(5, 2, 6), mode="nearest"), F.upsample_nearest(x, scale_factor=2),
                F.upsample_bilinear(x, size=(7, 9))]
        return tuple(out)


def test_interpolate_every_mode(tmp_path):
    inputs = (seeded(1, 3, 10), seeded(2, 3, 6, 7, seed=1), seeded(1, 2, 4, 5, 3, seed=2))
    with torch.no_grad():
        count = len(Resize()(*inputs))
    check_model(Resize(), inputs, tmp_path, [f"output {i}" for i in range(count)])


class Shuffles(nn.Module):
    def __init__(self):
        super().__init__()
        self.shuffle, self.unshuffle, self.channels = nn.PixelShuffle(2), nn.PixelUnshuffle(3), nn.ChannelShuffle(3)

    def forward(self, x):
        return (self.shuffle(x), F.pixel_shuffle(x, 3), self.unshuffle(x), F.pixel_unshuffle(x, 1),
                self.channels(x), F.channel_shuffle(x, 2))


def test_shuffles(tmp_path):
    names = ["PixelShuffle", "F.pixel_shuffle 3", "PixelUnshuffle", "F.pixel_unshuffle 1", "ChannelShuffle",
             "F.channel_shuffle"]
    check_model(Shuffles(), (seeded(2, 36, 6, 9),), tmp_path, names)


class Unbatched(nn.Module):
    """Lesson 04's pools on one sample without its batch axis."""

    def __init__(self):
        super().__init__()
        self.adaptive = nn.AdaptiveAvgPool2d((3, 2))

    def forward(self, x):
        return F.max_pool2d(x[0], 3, 1, 1), F.avg_pool2d(x[0], 2), self.adaptive(x[0]), F.max_pool2d(x, 2)


def test_pools_take_inputs_without_a_batch_axis(tmp_path):
    check_model(Unbatched(), (seeded(2, 3, 11, 13),), tmp_path, ["unbatched max2d", "unbatched avg2d",
                                                                 "unbatched adaptive avg", "batched max2d"])


@pytest.mark.parametrize("kind, params, setting", [
    ("nn.Upsample", {"mode": "area", "size": (4, 4)}, "mode 'area'"),
    ("F.interpolate", {"mode": "bilinear", "size": (4, 4), "antialias": True}, "antialias=True"),
])
def test_unsupported_setting_is_named(kind, params, setting):
    with pytest.raises(UnsupportedError) as err:
        make(kind, params)
    message = str(err.value)
    assert isinstance(err.value, LayerError) and kind in message and "line 7" in message, message
    assert setting in message and "supported:" in message, message


def test_a_resize_of_the_wrong_rank_is_a_shape_error():
    up = make("nn.Upsample", {"size": (4, 4), "mode": "nearest"})
    with pytest.raises(kuiper.errors.ShapeError, match="2 sizes or scales .* 1 spatial axes"):
        up(kuiper.Tensor(np.zeros((1, 2, 5), np.float32)))


@pytest.mark.slow
@pytest.mark.parametrize("kind, params, shape, reference", [
    ("nn.Upsample", {"mode": "bilinear", "scale_factor": (2.0, 2.0), "align_corners": False}, (1, 128, 40, 40),
     lambda x: F.interpolate(x, scale_factor=2.0, mode="bilinear")),
    ("nn.Upsample", {"mode": "bicubic", "size": (96, 96), "align_corners": False}, (1, 64, 48, 48),
     lambda x: F.interpolate(x, size=(96, 96), mode="bicubic")),
    ("nn.PixelShuffle", {"upscale_factor": 2}, (1, 256, 40, 40), lambda x: F.pixel_shuffle(x, 2)),
])
def test_new_operators_within_5x_torch(kind, params, shape, reference):
    layer = make(kind, params)
    x = seeded(*shape)
    data = kuiper.Tensor(x.numpy())
    ratio = same_run_ratio(lambda: layer(data), lambda: reference(x))
    assert ratio <= 5, f"{kind}: expected at most 5 x torch's time, got {ratio:.2f} x"


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil", [
    (5, 1, 2, 1, False), (3, 2, 0, 1, True), (3, 2, 1, 2, False), ((2, 3), (1, 2), 1, 1, True), (2, 2, 0, 1, False),
    ((3, 1), (3, 1), (1, 0), (2, 1), True)])
def test_separable_max_pool_is_bit_identical_to_torch(kernel, stride, padding, dilation, ceil):
    """The max down each window's rows, then along them (lesson 04), picks PyTorch's values bit for bit,
    at any stride, padding (which never wins over negative inputs), dilation and ceil_mode."""
    layer = make("nn.MaxPool2d", {"kernel_size": kernel, "stride": stride, "padding": padding,
                                  "dilation": dilation, "ceil_mode": ceil})
    x = seeded(2, 3, 11, 9) - 3
    got = layer(kuiper.Tensor(x.numpy())).numpy()
    want = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil).numpy()
    assert got.shape == want.shape and np.array_equal(got.view(np.int32), want.view(np.int32)), \
        f"expected PyTorch's max pool {want.shape}, got {got.shape} with max difference {np.abs(got - want).max()}"


@pytest.mark.parametrize("params, reference", [
    ({"mode": "nearest", "scale_factor": (2.0, 2.0)}, {"scale_factor": 2.0}),
    ({"mode": "nearest", "scale_factor": (1.7, 2.3)}, {"scale_factor": (1.7, 2.3)}),
    ({"mode": "nearest-exact", "size": (9, 4)}, {"size": (9, 4), "mode": "nearest-exact"})])
def test_nearest_resize_in_one_pass_copies_values_bit_for_bit(params, reference):
    """nearest_2d copies each value (YOLO's 2x Upsample): -0.0 stays -0.0, where a weighted sum of one tap
    (0 + 1·x) made it +0.0."""
    x = seeded(2, 3, 5, 7)
    x[:, :, 0] = -0.0
    got = make("nn.Upsample", params)(kuiper.Tensor(x.numpy())).numpy()
    want = F.interpolate(x, **({"mode": "nearest"} | reference)).numpy()
    assert got.shape == want.shape and np.array_equal(got.view(np.int32), want.view(np.int32)), \
        f"expected F.interpolate's values bit for bit, got {np.sum(got.view(np.int32) != want.view(np.int32))} different"
