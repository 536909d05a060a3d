"""Operators as PyTorch users write them: tiny torch modules exported with the pinned pnnx (as
tools/zoo.py exports the zoo), loaded with kuiper.load and run against torch on the same inputs.
fp32 outputs agree to 1e-4 of their scale; integer and bool outputs are equal. Each module returns
many outputs as a tuple, so every test also runs prim::TupleConstruct and several model outputs."""

import warnings
from pathlib import Path

import numpy as np
import pnnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kuiper
from kuiper.errors import LayerError
from kuiper.pnnx import Operator
from kuiper.registry import create_layer
from tools.zoo import quiet


def export(model: nn.Module, inputs: tuple[torch.Tensor, ...], folder: Path) -> Path:
    """`model` exported by pnnx into `folder`; the path of its .pnnx.param."""
    pt, param = folder / "model.pt", folder / "model.pnnx.param"
    try:
        with quiet():
            pnnx.export(model.eval(), str(pt), inputs)
    except (SyntaxError, TypeError):  # pnnx's own python re-check of its output (aten::log2, GroupNorm
        assert param.exists(), "pnnx failed before writing the .param"  # without affine) fails after the .param
    return param


def agree(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape, f"{what}: shape {got.shape}, torch gives {want.shape}"
    if want.dtype.kind != "f":
        assert got.dtype.kind == want.dtype.kind, f"{what}: dtype {got.dtype}, torch gives {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    finite = np.abs(want[np.isfinite(want)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=what)


def check_model(model: nn.Module, inputs: tuple[torch.Tensor, ...], folder: Path, names: list[str]) -> None:
    """Export, load, run: every output of kuiper equal to torch's, named in failures by `names`."""
    with torch.no_grad():
        want = model.eval()(*inputs)
    graph = kuiper.load(export(model, inputs, folder))
    got = graph(*(x.numpy() for x in inputs))
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want) == len(names), f"{len(got)} outputs, torch gives {len(want)}, named {len(names)}"
    for g, w, name in zip(got, want, names):
        agree(np.asarray(g), w, name)


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


UNARY = ("abs neg exp expm1 log log1p log2 log10 sqrt rsqrt sin cos tan asin acos atan sinh cosh tanh "
         "asinh acosh atanh floor ceil round trunc sign reciprocal square erf sigmoid").split()
POSITIVE = {"log", "log1p", "log2", "log10", "sqrt", "rsqrt"}
UNIT = {"asin", "acos", "atanh"}


class Unary(nn.Module):
    def forward(self, x):
        out = []
        for name in UNARY:
            arg = x.abs() + 0.5 if name in POSITIVE else x.tanh() * 0.9 if name in UNIT else x
            arg = x.abs() + 1.5 if name == "acosh" else arg
            out.append(getattr(torch, name)(arg))
        return tuple(out + [torch.exp(x).sinh() + torch.log1p(x.abs()).cosh()])


def test_unary_math(tmp_path):
    check_model(Unary(), (seeded(1, 3, 4, 8) * 2,), tmp_path, UNARY + ["fused"])


BINARY = "add sub mul div pow atan2 maximum minimum logaddexp fmod remainder eq ne gt ge lt le".split()


class Binary(nn.Module):
    def forward(self, x, y):
        out = [getattr(torch, name)(x.abs() + 0.5 if name == "pow" else x, y) for name in BINARY]
        positive, mask = x > 0, y < 0.3
        out += [torch.logical_and(positive, mask), torch.logical_or(positive, mask),
                torch.logical_xor(positive, mask), torch.logical_not(positive),
                torch.gt(x, 0.25), torch.eq(x.argmax(-1), 2), torch.clamp(x, -0.5, 0.5), torch.clamp(x, min=0.1),
                x.clamp(max=0.2), torch.clip(x, -1, 1), torch.where(positive, x, y), torch.where(mask, x, 0.0),
                x.masked_fill(mask, 2.0), torch.bitwise_and(positive, mask), torch.bitwise_xor(x.argmax(1), 3),
                torch.bitwise_not(x.argmin(1)), torch.bitwise_left_shift(x.argmax(-1), 2), torch.pow(x, 2), torch.maximum(x, y.mean(-1, keepdim=True))]
        return tuple(out)


def test_binary_comparison_logic(tmp_path):
    names = BINARY + ["and", "or", "xor", "not", "gt scalar", "eq int", "clamp", "clamp min", "clamp max", "clip",
                      "where", "where scalar", "masked_fill", "bitwise_and",
                      "bitwise_xor", "bitwise_not", "left_shift", "pow 2", "maximum broadcast"]
    check_model(Binary(), (seeded(1, 3, 4, 8) * 2, seeded(1, 3, 4, 8, seed=1)), tmp_path, names)


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.modules_ = nn.ModuleList([
            nn.GELU(), nn.GELU(approximate="tanh"), nn.ELU(0.5), nn.CELU(1.5), nn.SELU(), nn.Mish(),
            nn.Softplus(2.0, 5.0), nn.Softsign(), nn.Tanh(), nn.PReLU(), nn.PReLU(3), nn.RReLU(0.1, 0.3),
            nn.Threshold(0.1, 20.0), nn.Hardshrink(0.3), nn.Softshrink(0.7), nn.Tanhshrink(), nn.LogSigmoid(),
            nn.LogSoftmax(1), nn.Softmin(-1), nn.Softmax2d(), nn.GLU(-1), nn.LeakyReLU(0.2)])
        with torch.no_grad():
            self.modules_[10].weight.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x):
        out = [m(x) for m in self.modules_]
        out += [F.gelu(x), F.gelu(x, approximate="tanh"), F.elu(x, 0.3), F.celu(x, 0.8), F.selu(x), F.mish(x),
                F.softplus(x, 1.0, 20.0), F.softsign(x), F.tanh(x), F.prelu(x, torch.tensor([0.1, 0.2, 0.3])),
                F.rrelu(x, 0.2, 0.4, training=False), F.threshold(x, -0.2, -5.0), F.hardshrink(x, 1.0),
                F.softshrink(x, 0.2), F.tanhshrink(x), F.logsigmoid(x), F.log_softmax(x, -1), F.softmin(x, 2),
                F.glu(x, 3)]
        return tuple(out)


def test_activations(tmp_path):
    names = [f"nn.{type(m).__name__} {i}" for i, m in enumerate(Activations().modules_)]
    names += [f"F {i}" for i in range(19)]
    check_model(Activations(), (seeded(1, 3, 4, 8) * 3,), tmp_path, names)


class Reductions(nn.Module):
    def forward(self, x):
        max_values, max_indices = x.max(dim=1)
        min_values, min_indices = torch.min(x, dim=-1, keepdim=True)
        top_values, top_indices = torch.topk(x, 3, dim=-1)
        low_values, low_indices = torch.topk(x, 2, dim=1, largest=False)
        return (torch.sum(x, dim=(1, 2), keepdim=True), x.sum(-1), torch.mean(x, dim=[1, 3]), x.mean(),
                max_values, max_indices, min_values, min_indices, torch.amax(x, dim=(2, 3)), torch.amin(x, 1, True),
                torch.prod(x, 2), torch.std(x, dim=1), torch.std(x, dim=(2, 3), unbiased=False, keepdim=True),
                torch.var(x, dim=-1, correction=0), torch.norm(x, dim=1), torch.norm(x, p=1, dim=(2, 3)),
                torch.logsumexp(x, 2), torch.logsumexp(x, (1, 3), keepdim=True), torch.argmax(x, dim=-1),
                torch.argmin(x, dim=1, keepdim=True), torch.cumsum(x, 3), torch.cumprod(x, 1), top_values,
                top_indices, low_values, low_indices, x.max(), torch.argmax(x))


def test_reductions(tmp_path):
    names = ["sum dims keep", "sum -1", "mean list", "mean all", "max values", "max indices", "min values",
             "min indices", "amax", "amin", "prod", "std", "std biased", "var correction", "norm", "norm p1",
             "logsumexp", "logsumexp keep", "argmax", "argmin keep", "cumsum", "cumprod", "topk values",
             "topk indices", "topk smallest", "topk smallest indices", "max all", "argmax all"]
    check_model(Reductions(), (seeded(1, 3, 4, 8),), tmp_path, names)


class NormPad(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norms = nn.ModuleList([nn.LayerNorm(8), nn.LayerNorm([6, 8], elementwise_affine=False),
                                    nn.GroupNorm(2, 4), nn.GroupNorm(4, 4, affine=False), nn.InstanceNorm2d(4),
                                    nn.InstanceNorm2d(4, affine=True), nn.RMSNorm(8), nn.RMSNorm([6, 8], eps=1e-3),
                                    nn.LocalResponseNorm(3), nn.LocalResponseNorm(2, 1e-2, 0.5, 2.0),
                                    nn.InstanceNorm2d(4, track_running_stats=True)])
        self.norms[-1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        self.norms[-1].running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 1.5]))
        self.register_buffer("mean", torch.tensor([0.5, 0.1, -0.3, 0.2]))
        self.register_buffer("var", torch.tensor([1.5, 0.3, 0.7, 2.0]))
        self.register_buffer("mean2", torch.tensor([0.2, -0.1, 0.4, 0.0]))  # F.instance_norm updates mean, var
        self.register_buffer("var2", torch.tensor([0.9, 1.3, 0.6, 1.1]))
        self.w, self.b = nn.Parameter(torch.tensor([0.5, 2.0, -1.0, 1.0])), nn.Parameter(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        for norm in self.norms:
            for p in norm.parameters():
                nn.init.normal_(p)
        self.pads = nn.ModuleList([nn.ZeroPad2d((1, 2, 0, 3)), nn.ConstantPad2d(2, -1.5), nn.ReflectionPad2d(2),
                                   nn.ReplicationPad2d((3, 0, 1, 2)), nn.ZeroPad2d(1)])

    def forward(self, x):
        out = [m(x) for m in self.norms] + [F.normalize(x), F.normalize(x, p=1.0, dim=-1)]
        out += [m(x) for m in self.pads]
        out += [F.pad(x, (1, 2)), F.pad(x, (1, 1, 2, 0), value=3.0), F.pad(x, (2, 1, 1, 2), mode="reflect"),
                F.pad(x, (0, 3, 2, 1), mode="replicate"), F.pad(x, (1, 2, 2, 1), mode="circular"),
                F.layer_norm(x, (8,)), F.group_norm(x, 2), F.instance_norm(x, self.mean, self.var),
                F.batch_norm(x, self.mean2, self.var2, self.w, self.b, eps=1e-3), F.batch_norm(x, self.mean2, self.var2)]
        return tuple(out)


def test_normalization_padding(tmp_path):
    names = [type(m).__name__ + str(i) for i, m in enumerate(NormPad().norms)] + ["normalize", "normalize p1"]
    names += [type(m).__name__ + str(i) for i, m in enumerate(NormPad().pads)]
    names += ["pad", "pad value", "pad reflect", "pad replicate", "pad circular", "F.layer_norm", "F.group_norm",
              "F.instance_norm with running stats", "F.batch_norm", "F.batch_norm no affine"]
    check_model(NormPad(), (seeded(1, 4, 6, 8),), tmp_path, names)


class Shapes(nn.Module):
    def forward(self, x, m):
        a, b, c = torch.unbind(x, 1)
        order = torch.argsort(x, dim=-1)
        return (torch.matmul(x, m), torch.matmul(x[0], m[0]), torch.bmm(x[0], m[0]), torch.mm(x[0, 0], m[0, 0]),
                torch.mv(x[0, 0], m[0, 0, :, 0]), torch.addmm(m[0, 0, 0], x[0, 0], m[0, 0], beta=0.5, alpha=2.0),
                x.expand(2, 3, 4, 8), x[:, :1].expand(-1, 3, -1, -1), x.repeat(1, 2, 1, 3), torch.tile(x, (2, 1)),
                torch.flip(x, [1, 3]), torch.roll(x, 2, 3), torch.roll(x, (1, -1), (1, 2)), x[0, 0].t(),
                a, b, c, torch.narrow(x, 3, 2, 4), torch.index_select(x, 3, torch.tensor([0, 5, 2])),
                torch.gather(x, 3, order), x.select(1, 2), x[:, 1:3, 2], x[0, :, 1:], order,
                F.linear(x, m[0, 0].t(), m[0, 0, 0]), F.linear(x, m[0, 0].t()), F.pixel_shuffle(x.reshape(1, 12, 2, 4), 2),
                F.pixel_unshuffle(x, 2), nn.ChannelShuffle(3)(m.reshape(1, 6, 4, 5)))


def test_linalg_shape_indexing(tmp_path):
    names = ["matmul 4d", "matmul 3d", "bmm", "mm", "mv", "addmm", "expand", "expand -1", "repeat", "tile", "flip",
             "roll", "roll dims", "t", "unbind 0", "unbind 1", "unbind 2", "narrow", "index_select", "gather",
             "select", "slice and select", "select and slice", "argsort", "F.linear", "F.linear no bias",
             "pixel_shuffle", "pixel_unshuffle", "channel_shuffle"]
    check_model(Shapes(), (seeded(1, 3, 4, 8), seeded(1, 3, 8, 5, seed=1)), tmp_path, names)


class Creation(nn.Module):
    def forward(self, x, y):
        return (torch.full(x.size(), 1.5), torch.ones(y.size(), dtype=torch.long), torch.zeros_like(x),
                torch.ones_like(x), torch.full_like(x, -2.0), x.new_full((2, 3), 1.5), x.new_zeros((3,)),
                x.new_ones((1, 2), dtype=torch.long), torch.arange(5), torch.arange(1.0, 3.0, 0.5),
                x.type_as(x.argmax(-1)), x.reshape_as(y), x.unflatten(3, (2, 4)), y[:, :1].expand_as(y),
                x.clone() + 1, x.to(torch.int32), x.clone().fill_(2.0))


def test_creation_and_conversion(tmp_path):
    names = ["full size", "ones long", "zeros_like", "ones_like", "full_like", "new_full", "new_zeros", "new_ones long",
             "arange", "arange float", "type_as", "reshape_as", "unflatten", "expand_as", "clone", "to int32", "fill"]
    check_model(Creation(), (seeded(1, 3, 4, 8) * 3, seeded(1, 12, 8, seed=1)), tmp_path, names)


class Nested(nn.Module):
    def forward(self, x):
        pair = (x.relu(), (x > 0).long())
        return pair, [x.sum(-1), x.argmax(1)], x > 0.5


def test_nested_tuples_ints_and_bools(tmp_path):
    x = seeded(1, 3, 4, 8)
    with torch.no_grad():
        (relu, ints), (total, index), mask = Nested()(x)
    got = kuiper.load(export(Nested(), (x,), tmp_path))(x.numpy())
    assert len(got) == 5, f"5 tensors inside the nested tuples, got {len(got)}"
    for g, w, what in zip(got, (relu, ints, total, index, mask), ("relu", "long", "sum", "argmax", "mask")):
        agree(g, w, what)


def make(kind: str, params: dict, n_in: int = 1, input_names: dict | None = None):
    op = Operator(kind, "op", [str(i) for i in range(n_in)], ["out"], params, {}, input_names or {}, line=7)
    return create_layer(op)


@pytest.mark.parametrize("kind, params, setting", [
    ("nn.GELU", {"approximate": "sigmoid"}, "approximate='sigmoid'"),
    ("F.pad", {"pad": (1, 1), "mode": "mirror"}, "mode='mirror'"),
    ("torch.div", {"rounding_mode": "up"}, "rounding_mode='up'"),
    ("F.scaled_dot_product_attention", {"dropout_p": 0.1}, "dropout_p=0.1"),
    ("F.embedding", {"max_norm": 1.0}, "max_norm=1.0"),
    ("torch.scatter", {"dim": 0, "reduce": "add"}, "reduce='add'"),
])
def test_unsupported_setting_names_operator_and_choices(kind, params, setting):
    inputs = {"torch.div": 2, "F.embedding": 2, "F.scaled_dot_product_attention": 3, "torch.scatter": 3}
    with pytest.raises(LayerError) as err:
        make(kind, params, n_in=inputs.get(kind, 1))
    message = str(err.value)
    assert kind in message and "line 7" in message and setting in message and "supported:" in message, message


def test_missing_setting_and_wrong_inputs_are_errors():
    with pytest.raises(LayerError, match="missing parameter 'dim'"):
        make("nn.LogSoftmax", {})
    with pytest.raises(LayerError, match="takes inputs"):
        make("torch.abs", {}, input_names={"weight": "0"})


def test_unknown_parameter_warns_and_still_runs():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = make("nn.ELU", {"alpha": 0.5, "colour": "blue"})
    assert any("colour='blue'" in str(w.message) and "nn.ELU" in str(w.message) for w in caught), caught
    x = np.array([-1.0, 2.0], dtype=np.float32)
    np.testing.assert_allclose(layer(kuiper.Tensor(x)).numpy(), F.elu(torch.from_numpy(x), 0.5).numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", [None, "trunc", "floor"])
def test_div_rounding_modes(mode):
    # pnnx 2.x exports torch.div(..., rounding_mode=...) as plain div/floor_divide, so the layer
    # is checked directly, as an operator that writes the mode would reach it.
    x, y = torch.tensor([7.0, -7.0, 5.5, -0.5]), torch.tensor([2.0, 2.0, -2.0, 3.0])
    layer = make("torch.div", {} if mode is None else {"rounding_mode": mode}, n_in=2,
                 input_names={"input": "0", "other": "1"})
    got = layer(kuiper.Tensor(x.numpy()), kuiper.Tensor(y.numpy())).numpy()
    np.testing.assert_allclose(got, torch.div(x, y, rounding_mode=mode).numpy(), atol=1e-6)


def test_unpack_of_too_few_tensors_is_a_graph_error():
    from kuiper.errors import GraphError
    from kuiper.graph import unpack_tuples
    from kuiper.pnnx import Operand, PnnxGraph
    ops = [Operator("pnnx.Input", "in", [], ["x"], line=3),
           Operator("prim::TupleConstruct", "pack", ["x", "x"], ["t"], line=4),
           Operator("prim::TupleUnpack", "unpack", ["t"], ["a", "b", "c"], line=5),
           Operator("pnnx.Output", "out", ["a"], [], line=6)]
    graph = PnnxGraph(Path("bad.pnnx.param"), ops, {n: Operand(n) for n in "xtabc"})
    with pytest.raises(GraphError, match=r"prim::TupleUnpack 'unpack' \(line 5\) unpacks 3 values .* hold 2 tensors"):
        unpack_tuples(graph)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attention = nn.MultiheadAttention(16, 4)
        self.cross = nn.MultiheadAttention(16, 2, kdim=6, vdim=5, batch_first=True, add_bias_kv=True, add_zero_attn=True)
        self.no_bias = nn.MultiheadAttention(16, 8, bias=False)

    def forward(self, q, k, v, keep, bias, x, y, z, mask):
        return (F.scaled_dot_product_attention(q, k, v),
                F.scaled_dot_product_attention(q, k, v, is_causal=True),
                F.scaled_dot_product_attention(q, k, v, attn_mask=keep > -0.5),
                F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3),
                F.scaled_dot_product_attention(q, k[:, :2], v[:, :2], enable_gqa=True),
                *self.self_attention(x, x, x),
                self.self_attention(x, x, x, attn_mask=mask, need_weights=False)[0],
                *self.cross(x.transpose(0, 1), y, z),
                *self.no_bias(x, x, x, attn_mask=mask * 2))  # pnnx swaps the inputs of a bool attn_mask here


def test_attention(tmp_path):
    # F.scaled_dot_product_attention: masks (bool: True may look; float: added), causal with 5
    # queries over 7 keys, scale, grouped key heads; nn.MultiheadAttention: self-attention with and
    # without weights, float masks, kdim/vdim, bias_k/bias_v, add_zero_attn, batch_first, no bias
    q, k, v = seeded(2, 4, 5, 8), seeded(2, 4, 7, 8, seed=1), seeded(2, 4, 7, 3, seed=2)
    keep = seeded(5, 7, seed=3)  # a bool mask made inside (pnnx's export takes float inputs only)
    keep[:, 0] = 1.0  # every query may look at one key at least
    bias, mask = seeded(4, 5, 7, seed=4), seeded(6, 6, seed=7)
    x, y, z = seeded(6, 2, 16, seed=5), seeded(2, 9, 6, seed=6), seeded(2, 9, 5, seed=8)
    names = ["sdpa", "causal", "bool mask", "float mask, scale", "gqa", "mha", "mha weights", "mha float mask",
             "cross", "cross weights", "no bias", "no bias weights"]
    check_model(Attention(), (q, k, v, keep, bias, x, y, z, mask), tmp_path, names)


class Indexing(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)

    def forward(self, x, ids, table, index, src):
        y = x.clone()
        y[1:3, ::2] = src[:2, :3]
        y[0] = 7.0
        return (self.embed(ids), F.embedding(ids, table), x[:, [3, 0]], x[[True, False, True, False]],
                x.index_put((index[0], index[1]), src[0], accumulate=True),
                torch.scatter(x, 1, index[:, :2], src), torch.scatter_add(x, 0, index, src),
                torch.slice_scatter(x, src[:, :2], dim=1, start=1, end=5, step=2),
                torch.select_scatter(x, src[0, :4], 1, 2), y,
                torch.masked_select(x, x > 3), torch.repeat_interleave(x[:3], torch.tensor([1, 0, 2]), dim=0), torch.repeat_interleave(x, 2),
                torch.diag(x[0], 1), torch.diag(x, -1), torch.cross(x[:3, :3], src[:3, :3], dim=0),
                *torch.tensor_split(x, 3, dim=1), *torch.tensor_split(x, (1, 3), dim=0),
                torch.einsum("ij,kj->ik", x, src), torch.einsum("ii", x[:, :4]), torch.einsum("ij->j", x),
                F.pairwise_distance(x, src, p=1.0), F.pairwise_distance(x, src, keepdim=True, eps=1e-3),
                torch.lgamma(x.abs() + 0.5), torch.topk(x, 2, dim=1, sorted=False).values.sort(dim=1).values,
                (ids << 2) | (ids >> 1))


def test_embedding_indexing_scatter(tmp_path):
    x = seeded(4, 5) * 3
    ids = torch.tensor([[1, 0, 9], [3, 3, 5]])
    table, src = seeded(10, 3, seed=1), seeded(4, 5, seed=2)
    index = torch.tensor([[3, 0, 1, 3, 2], [3, 3, 0, 1, 0], [2, 2, 1, 0, 0], [0, 1, 2, 3, 3]])
    names = ["nn.Embedding", "F.embedding", "x[:, [3, 0]]", "x[bools]", "index_put accumulate", "scatter",
             "scatter_add", "slice_scatter", "select_scatter", "slice assignment", "masked_select",
             "repeat_interleave by a tensor", "repeat_interleave flat", "diag of a vector", "diag of a matrix", "cross",
             "tensor_split 3 sections (a)", "(b)", "(c)", "tensor_split indices (a)", "(b)", "(c)",
             "einsum ij,kj->ik", "einsum trace", "einsum ij->j", "pairwise p=1", "pairwise keepdim eps",
             "lgamma", "topk sorted=False", "lshift, rshift, or"]
    check_model(Indexing(), (x, ids, table, index, src), tmp_path, names)


class GraphIndex(nn.Module):
    def forward(self, x, i, j):
        y = x.clone()
        y[:, i] = 0.5  # index_put with None for the first dimension
        return x[:, i], x[i, :, j], x[:, :, j], y


def test_indices_computed_by_the_graph(tmp_path):
    # pnnx writes them as Tensor.index of expr=[None,@0]: None is `:`, and no one array holds the list
    x = seeded(4, 5, 6)
    i, j = torch.tensor([3, 0, 3]), torch.tensor([[1], [5]])
    check_model(GraphIndex(), (x, i, j), tmp_path, ["x[:, i]", "x[i, :, j]", "x[:, :, j]", "y[:, i] = 0.5"])


def test_index_out_of_range_is_a_layer_error(tmp_path):
    graph = kuiper.load(export(nn.Embedding(10, 4), (torch.tensor([[1, 2]]),), tmp_path))
    with pytest.raises(LayerError, match=r"nn.Embedding .*\(line \d+\).*out of bounds"):
        graph(np.array([[1, 12]], dtype=np.int64))


def test_einsum_with_inputs_that_do_not_fit_is_a_layer_error():
    layer = make("torch.einsum", {"equation": "ij,jk->ik"}, n_in=2)
    with pytest.raises(LayerError, match=r"torch.einsum 'op' \(line 7\): 'ij,jk->ik'"):
        layer(kuiper.Tensor(np.ones((2, 3), np.float32)), kuiper.Tensor(np.ones((4, 2), np.float32)))


def test_gelu_tanh_is_the_tanh_formula():
    # pnnx fuses the hand-written tanh formula into an exact F.gelu (upstream test_F_gelu), so that
    # test differs from torch by the approximation itself; the layer's own tanh form is exact.
    x = torch.linspace(-6, 6, 1001)
    got = make("nn.GELU", {"approximate": "tanh"})(kuiper.Tensor(x.numpy())).numpy()
    np.testing.assert_allclose(got, F.gelu(x, approximate="tanh").numpy(), rtol=0, atol=2e-6)


def test_inputs_that_do_not_broadcast_are_a_layer_error():
    layer = make("torch.where", {}, n_in=3, input_names={"condition": "0", "input": "1", "other": "2"})
    with pytest.raises(LayerError, match=r"torch.where 'op' \(line 7\): .*broadcast"):
        layer(*(kuiper.Tensor(np.ones(shape, np.float32)) for shape in [(2, 3), (4,), (2, 3)]))


@pytest.mark.parametrize("shape", [(12, 4, 6), (1, 12, 4, 6), (2, 3, 12, 4, 6)], ids=["3d", "4d", "5d"])
def test_pixel_shuffle_takes_any_leading_axes(shape):
    """pnnx's own PixelShuffle tests feed 5-D inputs; torch shuffles the last three axes whatever leads them."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    shuffled = make("nn.PixelShuffle", {"upscale_factor": 2})(kuiper.Tensor(x)).numpy()
    assert np.array_equal(shuffled, F.pixel_shuffle(torch.from_numpy(x), 2).numpy())
    unshuffled = make("nn.PixelUnshuffle", {"downscale_factor": 2})(kuiper.Tensor(shuffled)).numpy()
    assert np.array_equal(unshuffled, x)


def test_stacked_products_match_torch_on_one_blas_thread(monkeypatch):
    # a stack of small products woke OpenBLAS's threads once per matrix: one thread is 5-600x faster under load
    from kuiper.layers import linalg

    threads, real = [], np.matmul

    def spy(a, b):
        threads.append([lib["num_threads"] for lib in linalg.BLAS.info() if lib["user_api"] == "blas"])
        return real(a, b)

    layer = make("torch.matmul", {}, n_in=2)
    default = [lib["num_threads"] for lib in linalg.BLAS.info() if lib["user_api"] == "blas"]
    rng = np.random.default_rng(4)
    for a_shape, b_shape in [((2, 3, 5, 4), (2, 3, 4, 6)), ((2, 3, 5, 4), (4, 6)), ((5, 4), (3, 4, 2)), ((3, 5, 4), (4,)),
                             ((2, 1, 5, 4), (3, 4, 6)), ((5, 4), (4, 6))]:
        a, b = rng.standard_normal(a_shape, dtype=np.float32), rng.standard_normal(b_shape, dtype=np.float32)
        monkeypatch.setattr(linalg.np, "matmul", spy)
        got = layer(kuiper.Tensor(a), kuiper.Tensor(b)).numpy()
        monkeypatch.undo()
        agree(got, torch.matmul(torch.from_numpy(a), torch.from_numpy(b)), f"matmul {a_shape} @ {b_shape}")
        stacked = max(len(a_shape), len(b_shape)) >= 3
        want = [1] * len(default) if stacked else default
        assert threads[-1] == want, f"{a_shape} @ {b_shape}: expected BLAS threads {want}, got {threads[-1]}"


def test_unbind_gives_views_equal_to_torch():
    x = np.random.default_rng(5).standard_normal((2, 3, 4), dtype=np.float32)
    got = make("torch.unbind", {"dim": 1}, n_in=1)(kuiper.Tensor(x))
    want = torch.unbind(torch.from_numpy(x), dim=1)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        agree(g.numpy(), w, "unbind dim=1")
        assert np.shares_memory(g.numpy(), x), "unbind copied a slice"
