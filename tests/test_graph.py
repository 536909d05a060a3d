"""RuntimeGraph: ordering, liveness, shape checks and an end-to-end run that matches PyTorch."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kuiper
from kuiper.errors import GraphError, ShapeError
from kuiper.graph import fused_plan, last_uses, RuntimeGraph, successors, topological_order
from kuiper.pnnx import Operator, load_pnnx

LESSON = 2  # kuiper grade runs this file on the student build of lesson 02

DATA = Path(__file__).resolve().parents[1] / "data"
TINY = DATA / "tiny.pnnx.param"


def is_topological(order):
    done = set()
    for op in order:
        if any(name not in done for name in op.inputs):
            return False
        done.update(op.outputs)
    return True


@settings(max_examples=50)
@given(st.permutations(range(9)))
def test_any_shuffle_of_a_graph_gets_a_valid_order(permutation):
    ops = load_pnnx(TINY).operators
    order = topological_order([ops[i] for i in permutation])
    assert is_topological(order) and sorted(op.name for op in order) == sorted(op.name for op in ops)


def test_file_order_is_kept_when_it_is_valid():
    ops = load_pnnx(TINY).operators
    assert topological_order(ops) == ops


def test_cycles_and_dangling_reads_are_graph_errors():
    with pytest.raises(GraphError, match=r"cycle: operators \['a', 'b'\]"):
        topological_order([Operator("t", "a", ["y"], ["x"]), Operator("t", "b", ["x"], ["y"]),
                           Operator("t", "c", [], ["z"])])
    with pytest.raises(GraphError, match="reads operand 'ghost', which no operator produces"):
        successors([Operator("t", "a", ["ghost"], ["x"], line=3)])


def test_every_operand_is_freed_once_after_its_last_reader():
    order = load_pnnx(TINY).operators
    frees = last_uses(order)
    position = {op.name: i for i, op in enumerate(order)}
    freed = [name for names in frees.values() for name in names]
    assert len(freed) == len(set(freed)) and "7" not in freed  # graph output stays
    for op_name, names in frees.items():
        for name in names:
            readers = [op.name for op in order if name in op.inputs]
            assert all(position[r] <= position[op_name] for r in readers)


def test_an_unread_operand_is_freed_by_its_producer():
    order = [Operator("pnnx.Input", "in", [], ["0"]), Operator("torch.split", "split", ["0"], ["1", "2"]),
             Operator("pnnx.Output", "out", ["1"], [])]
    assert last_uses(order) == {"in": [], "split": ["0", "2"], "out": []}


def test_tiny_model_matches_pytorch_at_batch_1_and_batch_8():
    graph = kuiper.load(TINY)
    x, want = np.load(DATA / "tiny.input.npy"), np.load(DATA / "tiny.output.npy")
    got = graph(x)
    assert isinstance(got, np.ndarray) and got.shape == (1, 10)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    batch = np.random.default_rng(0).random((8, 3, 4, 4), dtype=np.float32)
    together = graph(batch)
    one_by_one = np.concatenate([graph(batch[i:i + 1]) for i in range(8)])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)


def test_tensor_in_tensor_out_and_profile():
    graph = kuiper.load(TINY)
    out = graph.forward(kuiper.Tensor(np.load(DATA / "tiny.input.npy")))
    assert isinstance(out, kuiper.Tensor)
    assert [name for name, _, _ in graph.timings] == [op.name for op in graph.order[1:-1]]
    assert set(graph.time_by_type()) == {"torch.flatten", "nn.Linear", "nn.ReLU", "F.relu", "torch.cat"}


def test_peak_memory_is_below_the_sum_of_all_activations():
    graph = kuiper.load(TINY)
    graph(np.zeros((64, 3, 4, 4), np.float32))
    every = 64 * 4 * (48 + 48 + 16 * 4 + 32 + 10)  # input, flatten, 4 branch tensors, cat, head
    assert 0 < graph.peak_bytes < every


@pytest.mark.parametrize("x, message", [
    (np.zeros((1, 3, 5, 4), np.float32), r"pnnx\.Input 'pnnx_input_0' \(line 3\) input '0' should have shape "
                                         r"\(1, 3, 4, 4\) \(batch free\), got \(1, 3, 5, 4\)"),
    (np.zeros((3, 4, 4), np.float32), r"got \(3, 4, 4\)"),
])
def test_wrong_input_shape(x, message):
    with pytest.raises(ShapeError, match=message):
        kuiper.load(TINY)(x)


def test_wrong_number_of_inputs():
    with pytest.raises(ShapeError, match=r"tiny\.pnnx\.param takes 1 input\(s\), got 2"):
        kuiper.load(TINY)(np.zeros((1, 3, 4, 4)), np.zeros((1, 3, 4, 4)))


def test_a_layer_with_the_wrong_output_is_caught_where_it_happens():
    def make_layer(op):
        if op.type == "nn.Linear" and op.name == "right":
            return lambda x: kuiper.Tensor(np.zeros((x.shape[0], 15), np.float32))
        return kuiper.registry.create_layer(op)

    graph = RuntimeGraph(load_pnnx(TINY), make_layer)
    with pytest.raises(ShapeError, match=r"nn\.Linear 'right' \(line 7\) output '4' should have shape \(1, 16\)"):
        graph(np.load(DATA / "tiny.input.npy"))
    graph.layers["right"] = lambda x: (x, x)
    with pytest.raises(GraphError, match="returned 2 outputs, the graph expects 1"):
        graph(np.load(DATA / "tiny.input.npy"))


class Absorbing:
    """A fake layer that absorbs the readers named in `takes` (one after another), recording them."""

    def __init__(self, name, takes=(), absorbed=()):
        self.name, self.takes, self.absorbed = name, takes, absorbed

    def fuse(self, after):
        if after.name not in self.takes:
            return None
        return Absorbing(self.name, self.takes, self.absorbed + (after.name,))


def plan_of(lines, layers, shapes=None):
    """fused_plan of operators given as (type, name, inputs, outputs), every operand of shape (1, 4)."""
    ops = [Operator(kind, name, inputs, outputs) for kind, name, inputs, outputs in lines]
    names = {n for op in ops for n in op.inputs + op.outputs}
    return fused_plan(ops, {op.name: layers.get(op.name, Absorbing(op.name)) for op in ops},
                      {n: (1, 4) for n in names} | (shapes or {}))


RESIDUAL = [("pnnx.Input", "in", [], ["x"]),
            ("conv", "conv2", ["x"], ["a"]),
            ("conv", "down", ["x"], ["b"]),  # the shortcut, made after conv2 (as in ResNet's file)
            ("add", "sum", ["a", "b"], ["s"]),
            ("relu", "relu", ["s"], ["r"]),
            ("pnnx.Output", "out", ["r"], [])]


def test_a_chain_is_merged_and_runs_where_its_last_reader_ran():
    plan = plan_of(RESIDUAL, {"conv2": Absorbing("conv2", ("sum", "relu"))})
    assert [(op.name, op.inputs, op.outputs) for op, _ in plan] == [("down", ["x"], ["b"]),
                                                                    ("conv2", ["x", "b"], ["r"])]
    assert plan[1][1].absorbed == ("sum", "relu") and plan[0][1] is None


def test_an_intermediate_read_elsewhere_is_not_fused_away():
    fan_out = RESIDUAL[:5] + [("pnnx.Output", "out", ["r"], []), ("pnnx.Output", "out2", ["a"], [])]
    plan = plan_of(fan_out, {"conv2": Absorbing("conv2", ("sum", "relu"))})
    assert [op.name for op, layer in plan] == ["conv2", "down", "sum", "relu"]
    assert all(layer is None for _, layer in plan)


def test_a_reader_that_broadcasts_its_other_input_is_not_absorbed():
    plan = plan_of(RESIDUAL, {"conv2": Absorbing("conv2", ("sum", "relu"))}, {"b": (1, 1)})
    assert [op.name for op, _ in plan] == ["conv2", "down", "sum", "relu"]


def test_a_reader_is_absorbed_once():
    both = {"conv2": Absorbing("conv2", ("sum",)), "down": Absorbing("down", ("sum",))}
    plan = plan_of(RESIDUAL, both)
    assert [(op.name, op.outputs) for op, _ in plan] == [("down", ["b"]), ("conv2", ["s"]), ("relu", ["r"])]
