"""nn.Linear by tiles with its epilogue (lesson 08): bias, activation, residual sum and the permute back
to channels-first fused into it give what the unfused operators give, on every tiling; attention's
stacked products absorb their scale, softmax and transpose; ConvNeXt and ViT through the fused plan
match PyTorch."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kuiper
from kuiper.errors import ShapeError
from kuiper.layers import transformer
from kuiper.layers.linear import Linear
from kuiper.pnnx import Attribute, Operator
from kuiper.registry import create_layer
from kuiper.tensor import Tensor

LESSON = 8  # kuiper grade runs this file on the student build of lesson 08

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"


def linear(n_in: int, n_out: int, bias: bool = True, seed: int = 0) -> Linear:
    g = np.random.default_rng(seed)
    attrs = {"weight": Attribute((n_out, n_in), "f32", g.standard_normal((n_out, n_in), dtype=np.float32))}
    if bias:
        attrs["bias"] = Attribute((n_out,), "f32", g.standard_normal(n_out, dtype=np.float32))
    return create_layer(Operator("nn.Linear", "fc", ["0"], ["1"], {"in_features": n_in, "out_features": n_out,
                                                                    "bias": bias}, attrs, line=1))


def layer(kind: str, **params) -> object:
    inputs = ["1", "9"] if kind in ("pnnx.Expression", "torch.matmul") else ["1"]
    return create_layer(Operator(kind, kind.lower(), inputs, ["2"], params, {}, line=2))


def reference(fc: Linear, x: np.ndarray) -> torch.Tensor:
    weight = torch.from_numpy(np.ascontiguousarray(fc.weight_t.T))
    return F.linear(torch.from_numpy(x), weight, None if fc.bias is None else torch.from_numpy(fc.bias))


@pytest.fixture(params=[512, 7], ids=["rows 512", "rows 7"])
def rows(request, monkeypatch):
    """The default tiles, and tiles of 7 rows (many tiles, some across no image boundary)."""
    monkeypatch.setattr(transformer, "ROWS", request.param)
    return request.param


@pytest.mark.parametrize("shape", [(5,), (3, 10), (2, 3, 9), (2, 4, 5, 3)])
def test_plain_linear_matches_pytorch_on_every_tiling(shape, rows):
    x = np.random.default_rng(1).standard_normal((*shape[:-1], 24), dtype=np.float32)
    for fc in (linear(24, 130), linear(24, 130, bias=False)):
        want = reference(fc, x).numpy()
        got = fc(Tensor(x)).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("kind, params, torch_fn", [
    ("nn.GELU", {}, F.gelu), ("nn.GELU", {"approximate": "tanh"}, lambda v: F.gelu(v, approximate="tanh")),
    ("nn.SiLU", {}, F.silu), ("nn.Sigmoid", {}, torch.sigmoid), ("nn.Tanh", {}, torch.tanh)])
def test_fused_activation_then_residual_match_pytorch(kind, params, torch_fn, rows):
    fc, x = linear(16, 200), np.random.default_rng(2).standard_normal((3, 11, 16), dtype=np.float32)
    shortcut = np.random.default_rng(3).standard_normal((3, 11, 200), dtype=np.float32)
    activated = fc.fuse(layer(kind, **params))
    assert activated is not None and fc.activation == transformer.NO_ACTIVATION, "the unfused layer must stay"
    want = torch_fn(reference(fc, x))
    assert np.abs(activated(Tensor(x)).numpy() - want.numpy()).max() <= 1e-5
    summed = activated.fuse(layer("pnnx.Expression", expr="add(@0,@1)"))
    got = summed(Tensor(x), Tensor(shortcut)).numpy()
    assert np.abs(got - (want + torch.from_numpy(shortcut)).numpy()).max() <= 1e-5


def test_permute_back_to_channels_first_and_residual_match_pytorch(rows):
    """ConvNeXt's Linear -> permute(0, 3, 1, 2) -> add: each tile written transposed into its image."""
    fc = linear(32, 70)
    x = np.random.default_rng(4).standard_normal((3, 5, 6, 32), dtype=np.float32)  # (N, H, W, C)
    shortcut = np.random.default_rng(5).standard_normal((3, 70, 5, 6), dtype=np.float32)
    fused = fc.fuse(layer("Tensor.permute", dims=(0, 3, 1, 2))).fuse(layer("pnnx.Expression", expr="add(@1,@0)"))
    got = fused(Tensor(x), Tensor(shortcut)).numpy()
    want = reference(fc, x).permute(0, 3, 1, 2) + torch.from_numpy(shortcut)
    assert got.shape == (3, 70, 5, 6) and got.flags.c_contiguous
    assert np.abs(got - want.numpy()).max() <= 1e-5


def test_fuse_refuses_what_the_epilogue_cannot_do():
    fc, gelu, add = linear(8, 8), layer("nn.GELU"), layer("pnnx.Expression", expr="add(@0,@1)")
    back = layer("Tensor.permute", dims=(0, 3, 1, 2))
    assert fc.fuse(layer("nn.ReLU")) is None
    assert fc.fuse(layer("pnnx.Expression", expr="mul(@0,@1)")) is None
    assert fc.fuse(layer("Tensor.permute", dims=(0, 2, 3, 1))) is None
    assert fc.fuse(gelu).fuse(gelu) is None, "a second activation"
    assert fc.fuse(add).fuse(gelu) is None, "an activation after the residual would be added before it"
    assert fc.fuse(add).fuse(back) is None and fc.fuse(add).fuse(add) is None
    assert fc.fuse(back).fuse(gelu) is None and fc.fuse(back).fuse(add) is not None


def test_shape_errors_name_the_layer():
    fc = linear(8, 4)
    with pytest.raises(ShapeError, match=r"fc.*\(\.\.\., 8\).*\(2, 7\)"):
        fc(Tensor(np.zeros((2, 7), np.float32)))
    summed = fc.fuse(layer("pnnx.Expression", expr="add(@0,@1)"))
    with pytest.raises(ShapeError, match=r"residual of shape \(2, 4\).*\(2, 5\)"):
        summed(Tensor(np.zeros((2, 8), np.float32)), Tensor(np.zeros((2, 5), np.float32)))
    with pytest.raises(ShapeError, match="expected a residual"):
        summed(Tensor(np.zeros((2, 8), np.float32)))
    back = fc.fuse(layer("Tensor.permute", dims=(0, 3, 1, 2)))
    with pytest.raises(ShapeError, match="4 dimensions"):
        back(Tensor(np.zeros((2, 3, 8), np.float32)))


@pytest.mark.parametrize("images, length, width, threads", [(1, 197, 768, 2), (8, 197, 576, 2), (2, 3136, 96, 4),
                                                            (3, 5, 10, 16), (1, 0, 8, 2)])
def test_tiles_cover_the_output_once_within_images(images, length, width, threads):
    covered = np.zeros((images * length, width), np.int64)
    for start, stop, left, right in transformer.tiles(images, length, width, threads):
        assert start // length == (stop - 1) // length, "a tile across two images"
        assert stop - start <= transformer.ROWS
        covered[start:stop, left:right] += 1
    assert (covered == 1).all()


def test_stacked_products_absorb_scale_softmax_and_transpose_bit_for_bit():
    """q·kᵀ -> mul(@0,0.125) -> softmax(-1) and p·v -> transpose(1, 2): the same float32 operations as
    lesson 05's layers one after the other; a broadcast batch takes numpy's product."""
    g = np.random.default_rng(7)
    q, k = g.standard_normal((2, 3, 9, 4), dtype=np.float32), g.standard_normal((2, 3, 4, 9), dtype=np.float32)
    matmul, scale = layer("torch.matmul"), layer("pnnx.Expression", expr="mul(@0,1.250000e-01)")
    soft, swap = layer("F.softmax", dim=-1), layer("torch.transpose", dim0=1, dim1=2)
    scores = matmul.fuse(scale).fuse(soft)
    want = soft(scale(matmul(Tensor(q), Tensor(k)))).numpy()
    assert np.array_equal(scores(Tensor(q), Tensor(k)).numpy(), want)
    moved = matmul.fuse(swap)
    got, want = moved(Tensor(q), Tensor(k)).numpy(), swap(matmul(Tensor(q), Tensor(k))).numpy()
    assert got.shape == (2, 9, 3, 9) and np.array_equal(got, want)
    broadcast = matmul.fuse(scale)(Tensor(q), Tensor(k[0, 0])).numpy()
    assert np.array_equal(broadcast, (q @ k[0, 0]) * np.float32(0.125))
    assert matmul.fuse(soft).fuse(scale) is None and scores.fuse(soft) is None
    assert matmul.fuse(layer("F.softmax", dim=1)) is None and matmul.fuse(scale).fuse(scale) is None


@pytest.mark.parametrize("name, fused", [("vit_tiny", 36 + 24),
                                         pytest.param("convnext_tiny", 36, marks=pytest.mark.slow)])
def test_transformer_models_fuse_their_linears_and_match_pytorch_and_the_unfused_plan(name, fused):
    """ViT: attention projection + add and both MLP Linears (GELU, add) of 12 blocks, and both products of
    each attention (scale, softmax; transpose); ConvNeXt: both Linears of 18 blocks (GELU; permute back +
    add). Batch 2, two images."""
    graph = kuiper.load(MODELS / f"{name}.pnnx.param")
    assert sum(isinstance(layer, (Linear, transformer.StackedProducts)) for _, layer in graph.plan) == fused
    x = np.random.default_rng(6).random((2, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        want = torch.jit.load(str(MODELS / f"{name}.torchscript.pt"))(torch.from_numpy(x)).numpy()
    got = graph(x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    gelu = next(op for op in graph.order if op.type == "nn.GELU")
    unfused = graph(x, keep=[gelu.inputs[0]])  # an operand the fused plan never makes: the unfused run
    assert np.array_equal(got, unfused), "the same float32 operations in the same order"
