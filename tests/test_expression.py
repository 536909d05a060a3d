"""The expression lexer, parser and evaluator, and the pnnx.Expression layer against torch."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kuiper.errors import ExpressionError, LayerError
from kuiper.expression import Call, Input, ListOf, Number, evaluate, parse, to_rpn, tokenize
from kuiper.layers.expression import Expression
from kuiper.pnnx import Operator
from kuiper.tensor import Tensor

LESSON = 5  # kuiper grade runs this file on the student build of lesson 05


def run(text: str, *inputs: np.ndarray):
    return evaluate(to_rpn(parse(text)), list(inputs))


def test_yolo_box_decoding_matches_torch():
    xy, grid = np.random.default_rng(0).random((1, 3, 4, 4, 2), np.float32), np.random.default_rng(1).random(
        (1, 1, 4, 4, 2), np.float32)
    got = run("mul(add(mul(@0,2),@1),8)", xy, grid)
    want = (torch.from_numpy(xy) * 2 + torch.from_numpy(grid)) * 8
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    got = run("mul(pow(mul(@0,2),2),@1)", xy, grid)
    np.testing.assert_allclose(got, ((torch.from_numpy(xy) * 2) ** 2 * torch.from_numpy(grid)).numpy(), rtol=1e-6)


@pytest.mark.parametrize("name, torch_fn", [
    ("neg", torch.neg), ("abs", torch.abs), ("exp", torch.exp), ("floor", torch.floor), ("ceil", torch.ceil),
    ("round", torch.round), ("sin", torch.sin), ("tanh", torch.tanh), ("square", torch.square),
])
def test_unary_functions_match_torch(name, torch_fn):
    x = np.random.default_rng(2).standard_normal((3, 5), dtype=np.float32) * 3
    np.testing.assert_allclose(run(f"{name}(@0)", x), torch_fn(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
    positive = np.abs(x) + 0.1
    for name2, fn in [("sqrt", torch.sqrt), ("rsqrt", torch.rsqrt), ("log", torch.log)]:
        np.testing.assert_allclose(run(f"{name2}(@0)", positive), fn(torch.from_numpy(positive)).numpy(), rtol=1e-5)


@pytest.mark.parametrize("name, torch_fn", [
    ("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("div", torch.div), ("max", torch.maximum),
    ("min", torch.minimum), ("pow", torch.pow), ("floor_divide", torch.floor_divide),
    ("remainder", torch.remainder), ("atan2", torch.atan2),
])
def test_binary_functions_broadcast_like_torch(name, torch_fn):
    a = np.random.default_rng(3).standard_normal((2, 3, 4), dtype=np.float32) * 4
    b = np.abs(np.random.default_rng(4).standard_normal((3, 1), dtype=np.float32)) + 0.5
    with np.errstate(invalid="ignore"):  # pow of a negative base to a fractional power is nan, as in torch
        got = run(f"{name}(@0,@1)", a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, torch_fn(torch.from_numpy(a), torch.from_numpy(b)).numpy(), rtol=1e-5, atol=1e-5)


def test_constants_lists_and_shapes():
    x = np.zeros((2, 7, 5), np.float32)
    assert run("[size(@0,1),-1]", x) == [7, -1]
    assert run("int(div(size(@0,2),2))", x) == 2
    assert parse("[@0,1.000000e-05]") == ListOf((Input(0), Number(1e-05)))
    assert run("rsub(@0,1)", np.float32(3)) == -2


def test_python_constants_are_numbers():
    # pnnx writes x[:, i] with i computed in the graph as Tensor.index of expr=[None,@0]
    assert parse("[None,@0,True,False]") == ListOf((Number(None), Input(0), Number(True), Number(False)))
    i = np.array([2, 0])
    got = run("[None,@0]", i)
    assert got[0] is None and np.array_equal(got[1], i)


def test_a_list_no_array_holds_passes_as_items():
    op = Operator("pnnx.Expression", "pnnx_expr_0", ["0", "1"], ["2"], params={"expr": ("None", "@0", "@1")}, line=5)
    rows, cols = np.array([1, 3]), np.array([[0], [2]])
    out = Expression(op)(Tensor(rows), Tensor(cols))
    assert out.numpy()[0] is None and out.shape == (3,)
    assert [a.tolist() for a in out.numpy()[1:]] == [[1, 3], [[0], [2]]]
    same = Expression(Operator("pnnx.Expression", "e", ["0", "1"], ["2"], params={"expr": ("@0", "@1")}, line=6))
    assert same(Tensor(rows), Tensor(rows)).numpy().tolist() == [[1, 3], [1, 3]]  # one array: stacked as before


@settings(max_examples=60)
@given(st.recursive(st.sampled_from(["@0", "@1", "2", "-1.500000e+00"]),
                    lambda inner: st.tuples(st.sampled_from(["add", "sub", "mul", "max"]), inner, inner).map(
                        lambda t: f"{t[0]}({t[1]},{t[2]})"), max_leaves=12))
def test_random_expressions_match_python(text):
    a, b = np.float32(1.25), np.float32(-0.5)
    python = text.replace("@0", "a").replace("@1", "b").replace("max(", "maximum(")
    want = eval(python, {"add": np.add, "sub": np.subtract, "mul": np.multiply, "maximum": np.maximum, "a": a, "b": b})
    assert np.isclose(run(text, a, b), want, rtol=1e-5)
    assert [type(node) for node in to_rpn(parse(text))][-1] in (Call, Input, Number)


@pytest.mark.parametrize("text, message", [
    ("add(@0,#1)", "column 7: unexpected '#'"), ("add(@0)", "column 0: add takes 2 argument"),
    ("foo(@0)", "column 0: unknown function 'foo'"), ("add(@0,@1", "column 9: expected \\), found the end"),
    ("add(@0,@1))", "column 10: unexpected '\\)' after the expression"), ("", "column 0: expected an expression"),
    ("[@0,]", "column 4: unexpected"),
])
def test_errors_give_the_column(text, message):
    with pytest.raises(ExpressionError, match=message):
        parse(text)


def test_tokens_carry_columns():
    assert [(t.kind, t.column) for t in tokenize(" @12 ,-3")] == [("input", 1), ("punct", 5), ("number", 6)]


def test_layer_checks_its_expression_when_built():
    op = Operator("pnnx.Expression", "e", ["0"], ["1"], params={"expr": "add(@0,@1)"}, line=8)
    with pytest.raises(LayerError, match=r"pnnx\.Expression 'e' \(line 8\): the expression reads @1 but the "
                                         r"operator has 1 input"):
        Expression(op)
    op.params["expr"] = "add(@0,"
    with pytest.raises(LayerError, match=r"\(line 8\): column 7"):
        Expression(op)
    op.params["expr"] = ("size(@0,1)", -1)  # the list form [size(@0,1),-1], as parse_value returns it
    assert Expression(op)(Tensor(np.zeros((3, 2), np.float32))).numpy().tolist() == [2, -1]
