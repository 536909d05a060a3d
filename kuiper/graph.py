# Generated from solutions/02_graph.py, solutions/13_cuda.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import heapq
import importlib
import re
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import replace

from kuiper.errors import GraphError, KuiperError, ShapeError
from kuiper.pnnx import link_operands, Operator, PnnxGraph
from kuiper.tensor import Tensor


IO_TYPES = ("pnnx.Input", "pnnx.Output")


def successors(operators: list[Operator]) -> dict[str, list[str]]:
    """For each operator, the operators that read one of its outputs (once per read)."""
    producer = {name: op.name for op in operators for name in op.outputs}
    following: dict[str, list[str]] = {op.name: [] for op in operators}
    for op in operators:
        for name in op.inputs:
            if name not in producer:
                raise GraphError(f"{op.where()} reads operand {name!r}, which no operator produces")
            following[producer[name]].append(op.name)
    return following


def topological_order(operators: list[Operator]) -> list[Operator]:
    """The operators ordered so that each comes after every producer of its inputs."""
    following = successors(operators)
    waiting = {op.name: 0 for op in operators}
    for names in following.values():
        for name in names:
            waiting[name] += 1
    index = {op.name: i for i, op in enumerate(operators)}
    ready = [i for i, op in enumerate(operators) if waiting[op.name] == 0]
    order = []
    while ready:
        op = operators[heapq.heappop(ready)]
        order.append(op)
        for after in following[op.name]:
            waiting[after] -= 1
            if waiting[after] == 0:
                heapq.heappush(ready, index[after])
    if len(order) < len(operators):
        stuck = [op.name for op in operators if waiting[op.name] > 0]
        raise GraphError(f"the graph has a cycle: operators {stuck} wait on each other")
    return order


def last_uses(order: list[Operator]) -> dict[str, list[str]]:
    """For each operator, the operands to free once it has run: those it reads last, or makes unread."""
    keep = {name for op in order if op.type == "pnnx.Output" for name in op.inputs}
    last_reader = {name: op.name for op in order for name in op.outputs}
    for op in order:
        for name in op.inputs:
            last_reader[name] = op.name
    frees: dict[str, list[str]] = {op.name: [] for op in order}
    for name, reader in last_reader.items():
        if name not in keep:
            frees[reader].append(name)
    return frees


Layer = Callable[..., "Tensor | tuple[Tensor, ...]"]


def live_bytes(values: dict[str, Tensor]) -> int:
    """Bytes held by the live operands, counting memory shared by views once."""
    owners = {}
    for tensor in values.values():
        array = tensor.data  # numpy, or cupy on the GPU: counted where it lives, never copied to count it
        owner = array if array.base is None else array.base
        owners[id(owner)] = getattr(owner, "nbytes", array.nbytes)
    return sum(owners.values())


def run_layer(layer: Layer, op: Operator, inputs: list[Tensor]) -> object:
    """layer(*inputs); a plain Python or numpy error becomes a GraphError naming the operator, so that
    a parameter no constructor checked (an axis out of range) still says where it went wrong."""
    try:
        return layer(*inputs)
    except KuiperError:
        raise
    except (ValueError, IndexError, TypeError, ZeroDivisionError, ArithmeticError) as err:
        raise GraphError(f"{op.where()} failed on inputs of shape "
                         f"{[tuple(x.shape) for x in inputs]}: {type(err).__name__}: {err}") from err


def fused_plan(order: list[Operator], layers: dict[str, Layer],
               shapes: dict[str, tuple[int, ...] | None]) -> list[tuple[Operator, Layer | None]]:
    """The steps a forward pass runs: each operator (its layer None: the graph's current one), except
    that a layer whose single output only one operator reads may absorb that reader (`Layer.fuse`),
    and the merged layer the next reader, and so on. A merged step reads its first operator's inputs,
    then each absorbed reader's other inputs (each annotated in `shapes` like the operand it meets:
    no broadcasting), writes the last reader's outputs, and runs where that reader ran (its other
    inputs exist by then); the absorbed steps are dropped."""
    readers: dict[str, list[Operator]] = defaultdict(list)
    for op in order:
        for name in op.inputs:
            readers[name].append(op)
    position = {op.name: i for i, op in enumerate(order)}
    placed, absorbed = {}, set()
    for op in order:
        if op.type in IO_TYPES or op.name in absorbed:
            continue
        step, layer, last = op, None, op
        while len(step.outputs) == 1 and len(readers[step.outputs[0]]) == 1:
            after, fuse = readers[step.outputs[0]][0], getattr(layer or layers[op.name], "fuse", None)
            extra = [name for name in after.inputs if name != step.outputs[0]]
            shaped = all(shapes.get(name) is not None and shapes.get(name) == shapes.get(step.outputs[0])
                         for name in extra)
            free = after.type not in IO_TYPES and after.name not in absorbed
            merged = fuse(layers[after.name]) if fuse and shaped and free else None
            if merged is None:
                break
            step, layer, last = replace(step, inputs=step.inputs + extra, outputs=after.outputs), merged, after
            absorbed.add(after.name)
        placed[position[last.name]] = (step, layer)
    return [placed[i] for i in sorted(placed)]


def keep_fused(plan: list[tuple[Operator, Layer | None]], keep: Collection[str]) -> bool:
    """Whether the fused plan can run: it never makes the operands it fused away, so none may be kept."""
    return not keep or all(name in {out for op, _ in plan for out in op.outputs} for name in keep)


class RuntimeGraph:
    """A PNNX model ready to run: operators in topological order, each with its layer, and the plan
    that runs them (merged steps where a layer absorbs the next)."""

    def __init__(self, model: PnnxGraph, make_layer: Callable[[Operator], Layer]):
        self.model = model
        self.order = topological_order(model.operators)
        self.inputs = [op for op in model.operators if op.type == "pnnx.Input"]
        self.outputs = [op for op in model.operators if op.type == "pnnx.Output"]
        if not self.outputs:
            raise GraphError(f"{model.path.name} has no pnnx.Output operator: the graph returns nothing")
        self.layers = {op.name: make_layer(op) for op in self.order if op.type not in IO_TYPES}
        self.frees = last_uses(self.order)
        self.make_plan()
        self.peaks: dict[tuple, int] = {}  # input shapes already run (checked) -> their peak bytes
        self.timings: list[tuple[str, str, float]] = []
        self.peak_bytes = 0
        self.kept: dict[str, Tensor] = {}
        self.device = "cpu"  # where forward puts the inputs; lesson 13's `to` moves the layers and sets it

    def make_plan(self) -> None:
        """The fused plan of the current layers, and where each operand is last read (lesson 13's `to`
        makes it again after placing the layers on a device)."""
        shapes = {name: operand.shape for name, operand in self.model.operands.items()}
        self.plan = fused_plan(self.order, self.layers, shapes)
        self.plan_frees = last_uses(self.inputs + [op for op, _ in self.plan] + self.outputs)

    def check_shape(self, op: Operator, name: str, value: Tensor) -> None:
        """ShapeError unless `value` fits operand `name`'s annotation (dimension 0, the batch, is free)."""
        want = self.model.operands[name].shape
        if want is None:
            return
        fits = len(want) == value.ndim and all(w in (-1, v) for w, v in zip(want[1:], value.shape[1:]))
        if not fits:
            role = "input" if op.type == "pnnx.Input" else "output"
            raise ShapeError(f"{self.model.path.name}: {op.where()} {role} {name!r} should have shape "
                             f"{want} (batch free), got {value.shape}")

    def forward(self, *inputs: object, keep: Collection[str] = ()) -> object:
        """Run the graph on one batch per pnnx.Input; numpy in gives numpy out, Tensor gives Tensor.

        Operands named in `keep` are saved in `self.kept` (to look at intermediate results)."""
        if len(inputs) != len(self.inputs):
            raise ShapeError(f"{self.model.path.name} takes {len(self.inputs)} input(s), got {len(inputs)}")
        values = {op.outputs[0]: (x if isinstance(x, Tensor) else Tensor(x)).to(self.device)
                  for op, x in zip(self.inputs, inputs)}
        shapes = tuple(tuple(x.shape) for x in values.values())
        checked = shapes in self.peaks  # a repeat of checked input shapes skips the checks below
        steps, frees = (self.plan, self.plan_frees) if keep_fused(self.plan, keep) else (
            [(op, None) for op in self.order if op.type not in IO_TYPES], self.frees)
        for op in self.inputs if not checked else ():
            self.check_shape(op, op.outputs[0], values[op.outputs[0]])
        self.timings, self.peak_bytes, self.kept = [], self.peaks.get(shapes) or live_bytes(values), {}
        for op, layer in steps:
            start = time.perf_counter()
            result = run_layer(layer or self.layers[op.name], op, [values[name] for name in op.inputs])
            self.timings.append((op.name, op.type, time.perf_counter() - start))
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(op.outputs):
                raise GraphError(f"{op.where()} returned {len(results)} outputs, the graph expects {len(op.outputs)}")
            for name, value in zip(op.outputs, results):
                if not checked:
                    self.check_shape(op, name, value)
                values[name] = value
                if name in keep:
                    self.kept[name] = value
            if not checked:
                self.peak_bytes = max(self.peak_bytes, live_bytes(values))
            for name in frees[op.name]:
                del values[name]
        self.peaks[shapes] = self.peak_bytes
        outputs = [values[op.inputs[0]] for op in self.outputs]
        if not any(isinstance(x, Tensor) for x in inputs):
            outputs = [t.numpy() for t in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    __call__ = forward

    def time_by_type(self) -> dict[str, float]:
        """Seconds spent per operator type in the last forward, slowest first."""
        totals: dict[str, float] = defaultdict(float)
        for _, kind, seconds in self.timings:
            totals[kind] += seconds
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def to(self, device: str) -> RuntimeGraph:
        """This graph with every layer placed on `device` by kuiper.cuda.layers.place; forward still takes and
        gives numpy arrays (or tensors), and moves them. DeviceError when the device is not available."""
        placement = importlib.import_module("kuiper.cuda.layers")  # late: it imports the layers, which import us
        self.layers = {name: placement.place(layer, device) for name, layer in self.layers.items()}
        self.make_plan()  # the old plan holds the CPU layers it fused
        self.device = device
        return self


PACK = ("prim::TupleConstruct", "prim::ListConstruct")
UNPACK = ("prim::TupleUnpack", "prim::ListUnpack")


def list_inputs(op: Operator) -> list[str] | None:
    """The operands a pnnx.Expression like `[@0,@1]` lists (PNNX's way to write a list of tensors)."""
    items = op.params.get("expr") if op.type == "pnnx.Expression" else None
    if not isinstance(items, tuple) or not all(isinstance(i, str) and re.fullmatch(r"@\d+", i) for i in items):
        return None
    return [op.inputs[int(item[1:])] for item in items]


def unpack_tuples(model: PnnxGraph) -> PnnxGraph:
    """`model` without tuple and list operators: packs are spliced into their readers, unpacks
    alias the packed tensors (or, of an operator's single tuple output, become its outputs), and a
    pnnx.Output of a tuple becomes one pnnx.Output per tensor.
    GraphError if an unpack does not find as many tensors as it has outputs."""
    packed = {op.outputs[0]: op.inputs for op in model.operators if op.type in PACK}
    packed |= {op.outputs[0]: list_inputs(op) for op in model.operators if list_inputs(op) is not None
               and all(reader.type in PACK + UNPACK + IO_TYPES for reader in model.operators
                       if op.outputs[0] in reader.inputs)}
    alias: dict[str, str] = {}

    def spread(names: list[str]) -> list[str]:
        found = [alias.get(name, name) for name in names]
        return [m for name in found for m in (spread(packed[name]) if name in packed else [name])]

    operators = []
    for op in model.operators:
        if op.outputs and op.outputs[0] in packed:
            continue
        inputs = spread(op.inputs)
        producer = next((o for o in operators if o.outputs == inputs), None) if len(inputs) == 1 else None
        if op.type in UNPACK and producer is not None and len(op.outputs) > 1:
            operators[operators.index(producer)] = replace(producer, outputs=op.outputs)
        elif op.type in UNPACK:
            if len(inputs) != len(op.outputs):
                raise GraphError(f"{model.path.name}: {op.where()} unpacks {len(op.outputs)} values "
                                 f"from {op.inputs}, which hold {len(inputs)} tensors")
            alias.update(zip(op.outputs, inputs))
        elif op.type == "pnnx.Output" and len(inputs) > 1:
            operators += [replace(op, name=f"{op.name}.{i}", inputs=[name]) for i, name in enumerate(inputs)]
        else:
            operators.append(replace(op, inputs=inputs))
    operands = link_operands(operators, model.path)
    for name, operand in operands.items():
        operand.shape, operand.dtype = model.operands[name].shape, model.operands[name].dtype
    return PnnxGraph(model.path, operators, operands)
