"""Every model of the zoo (tools/zoo.py) parses, orders, runs, and matches PyTorch's saved output; the
architectures added later match the traced PyTorch model at batch 8 too."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kuiper
from kuiper.errors import ShapeError
from kuiper.graph import last_uses, topological_order
from kuiper.layers.conv import NO_RESIDUAL, SUMS
from kuiper.pnnx import Attribute, load_pnnx, Operator
from kuiper.registry import create_layer
from kuiper.tensor import Tensor

LESSON = 6  # kuiper grade runs this file on the student build of lesson 06

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
SLOW = pytest.mark.slow
ZOO = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "unet", "yolov5n", "yolov5s", "yolov5n_shapes", "unet_shapes",
       "shufflenet_v2", "squeezenet1_1", "vit_tiny", "yolov8n", pytest.param("convnext_tiny", marks=SLOW)]
# Architectures added after the first zoo, checked at batch 8 too (the batch kept free through every reshape);
# yolov8n's batch 8 is in test_detect.py
BATCH_8 = ["shufflenet_v2", "squeezenet1_1", pytest.param("vit_tiny", marks=SLOW),
           pytest.param("convnext_tiny", marks=SLOW)]


@pytest.fixture(params=ZOO)
def model(request) -> Path:
    path = MODELS / f"{request.param}.pnnx.param"
    assert path.exists(), f"{path} is missing: run `make models`"
    return path


def test_parses_and_orders(model):
    graph = load_pnnx(model)
    order = topological_order(graph.operators)
    assert order == graph.operators, "PNNX writes files in an order that runs"
    assert all(op.attrs[key].data is not None for op in graph.operators for key in op.attrs)
    assert sum(len(names) for names in last_uses(order).values()) == len(graph.operands) - 1  # all but the output


def test_matches_pytorch(model):
    graph = kuiper.load(model)
    x = np.load(model.with_name(model.name.replace(".pnnx.param", ".input.npy")))
    want = np.load(model.with_name(model.name.replace(".pnnx.param", ".output.npy")))
    got = graph(x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert 0 < graph.peak_bytes


@pytest.mark.parametrize("name", BATCH_8)
def test_matches_pytorch_at_batch_8(name):
    x = np.random.default_rng(8).random((8, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        want = torch.jit.load(str(MODELS / f"{name}.torchscript.pt"))(torch.from_numpy(x)).numpy()
    got = kuiper.load(MODELS / f"{name}.pnnx.param")(x)
    assert got.shape == want.shape == (8, 1000)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(want[1:] - want[0]).max() > 1e-3 * np.abs(want).max(), "the 8 images must give 8 different outputs"


@pytest.mark.parametrize("name, kind", [("vit_tiny", "nn.Linear"), ("vit_tiny", "nn.LayerNorm"), ("vit_tiny", "nn.GELU"),
                                        ("vit_tiny", "F.softmax"), ("yolov5n", "F.sigmoid"),
                                        ("shufflenet_v2", "nn.ChannelShuffle")])
def test_bench_times_the_same_computation_in_torch(name, kind):
    """`kuiper bench ops` compares each layer with a torch twin: the twin must compute what the layer does."""
    from kuiper.bench import torch_twin
    from kuiper.registry import create_layer
    from kuiper.tensor import Tensor

    graph = load_pnnx(MODELS / f"{name}.pnnx.param")
    op = next(op for op in graph.operators if op.type == kind)
    x = np.random.default_rng(0).standard_normal((2, *graph.operands[op.inputs[0]].shape[1:]), dtype=np.float32)
    got = create_layer(op)(Tensor(x)).numpy()
    with torch.no_grad():
        want = torch_twin(op, torch)(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_the_plan_drops_only_operands_that_one_operator_reads(model):
    """A fused step never makes the operands between its operators: each must have had no other reader
    (a tensor also read elsewhere must still be made), and not be an output of the model."""
    graph = kuiper.load(model)
    made = {name for op, _ in graph.plan for name in op.outputs} | {op.outputs[0] for op in graph.inputs}
    dropped = set(graph.model.operands) - made
    assert all(len(graph.model.operands[name].consumers) == 1 for name in dropped), sorted(dropped)
    assert not dropped & {op.inputs[0] for op in graph.outputs}


@pytest.mark.parametrize("name, residuals", [("resnet18", 8), ("mobilenet_v2", 10), ("yolov5n", 7)])
def test_residual_sums_run_in_the_convolution_epilogue_and_match_pytorch(name, residuals):
    """Every add(@0,@1) of a convolution's output and a shortcut of its shape is absorbed by that
    convolution (lesson 06), at batch 2 with two different images (the residual rows follow the batch)."""
    graph = kuiper.load(MODELS / f"{name}.pnnx.param")
    fused = [layer.conv for _, layer in graph.plan if layer is not None and layer.conv.residual != NO_RESIDUAL]
    assert len(fused) == residuals
    assert not [op for op, _ in graph.plan if op.type == "pnnx.Expression" and op.params["expr"] in SUMS]
    x = np.random.default_rng(2).random((2, 3, *graph.model.operands[graph.inputs[0].outputs[0]].shape[2:]),
                                        dtype=np.float32)
    with torch.no_grad():
        want = torch.jit.load(str(MODELS / f"{name}.torchscript.pt"))(torch.from_numpy(x))
    want = (want[0] if isinstance(want, tuple) else want).numpy()
    got = graph(x)
    got = got[0] if isinstance(got, tuple) else got
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def conv_layer(kind, c_in, c_out, kernel, **params):
    """A registered convolution layer (nn.Conv1d / nn.Conv2d) with random weights."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((c_out, c_in, *kernel), dtype=np.float32)
    bias = rng.standard_normal(c_out, dtype=np.float32)
    op = Operator(kind, "conv", ["0"], ["1"], dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel,
                  bias=True, **params), {"weight": Attribute(weight.shape, "float32", weight),
                                         "bias": Attribute(bias.shape, "float32", bias)}, line=4)
    return create_layer(op), torch.from_numpy(weight), torch.from_numpy(bias)


SUM = Operator("pnnx.Expression", "sum", ["1", "9"], ["2"], {"expr": "add(@1,@0)"}, line=5)
RELU = Operator("nn.ReLU", "relu", ["2"], ["3"], line=6)


@pytest.mark.parametrize("kind, kernel, shape", [
    ("nn.Conv2d", (3, 3), (3, 4, 9, 9)),     # im2col + GEMM, the batch in one product
    ("nn.Conv2d", (1, 1), (1, 4, 6, 6)),     # a 1x1 GEMM in place
    ("nn.Conv2d", (3, 3), (4, 9, 9)),        # unbatched
    ("nn.Conv1d", (5,), (2, 4, 11)),         # lifted to 2-D: the residual gains a height of 1
])
def test_a_convolution_with_its_residual_sum_and_relu_matches_pytorch(kind, kernel, shape):
    conv, weight, bias = conv_layer(kind, 4, 6, kernel, padding=kernel[0] // 2)
    fused = conv.fuse(create_layer(SUM)).fuse(create_layer(RELU))
    x = np.random.default_rng(2).standard_normal(shape, dtype=np.float32)
    shortcut = np.random.default_rng(3).standard_normal((*shape[:-3], 6, *shape[-2:]) if kind == "nn.Conv2d"
                                                        else (shape[0], 6, shape[2]), dtype=np.float32)
    run = F.conv2d if kind == "nn.Conv2d" else F.conv1d
    want = torch.relu(run(torch.from_numpy(x), weight, bias, padding=kernel[0] // 2) + torch.from_numpy(shortcut))
    got = fused(Tensor(x), Tensor(shortcut)).numpy()
    assert got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() <= 1e-5 * want.abs().max().item()


def test_a_residual_of_another_shape_or_a_missing_one_names_the_layer():
    conv, _, _ = conv_layer("nn.Conv2d", 4, 6, (3, 3), padding=1)
    fused, x = conv.fuse(create_layer(SUM)), Tensor(np.ones((2, 4, 5, 5), np.float32))
    with pytest.raises(ShapeError, match=r"nn.Conv2d 'conv' \(line 4\): expected a residual input of the output's "
                                         r"shape \(2, 6, 5, 5\), got \(1, 6, 5, 5\)"):
        fused(x, Tensor(np.ones((1, 6, 5, 5), np.float32)))  # a batch of 1 is not broadcast
    with pytest.raises(ShapeError, match=r"nn.Conv2d 'conv' \(line 4\): expected a residual input, got none"):
        fused(x)
    with pytest.raises(ShapeError, match=r"expected no residual input, got \(2, 6, 5, 5\)"):
        conv(x, Tensor(np.ones((2, 6, 5, 5), np.float32)))
