# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 03 — The layer registry
#
# In lesson 02 a small table turned each operator into a function. A real engine knows dozens of
# operator types, added by many files, and lets you replace any of them. KuiperInfer does this
# with a **registry**: a map from the PNNX type string (`"nn.Conv2d"`) to a creator, filled by a
# registration line beside each layer. Building a graph then asks the registry for every
# operator. In this lesson you build that registry, the `Layer` base class that checks an
# operator's parameters and weights once, at build time, and the public `kuiper.load`.
#
# | exercise | what |
# |---|---|
# | 3.1 | `Layer.param`: a parameter of the expected type, or an error naming it |
# | 3.2 | `Layer.weight`: a loaded weight of the expected shape, or an error naming it |
# | 3.3 | `register`: a class decorator that files a layer under one or more type names |
# | 3.4 | `create_layer`: build the layer for an operator, or say what is missing |
# | 3.5 | your own ReLU, registered over the built-in one, used by a loaded model |

# %%
#| default_exp registry

# %%
import numpy as np

from kuiper.course import DATA, agreement, check, patch_to, raises
from kuiper.errors import KuiperError
from kuiper.pnnx import Attribute, Operator, load_pnnx
from kuiper.tensor import Tensor

# %% [markdown]
# ## Errors about layers
#
# Bad parameters or weights are found when a layer is **built**, before any data flows, and the
# message names the operator, its line and the expected vs actual value:

# %%
#| export errors
class LayerError(KuiperError, ValueError):
    """An operator that cannot become a layer: unknown type, or a missing or wrong parameter or weight."""


# %% [markdown]
# ## The `Layer` base class
#
# A layer is made once from its `Operator` and called many times on tensors. The base class keeps
# the operator (for error messages) and offers two checked accessors a layer's constructor uses,
# which you write next: `param` for a parameter of the expected type (and, given `minimum`, range:
# a stride of 0 must fail when the model loads, not halfway through the first forward pass),
# `weight` for a loaded weight of the expected shape.

# %%
#| export layer
import numpy as np

from kuiper.errors import LayerError
from kuiper.pnnx import Operator
from kuiper.tensor import Tensor

REQUIRED = object()


class Layer:
    """A runnable operator: built once from its PNNX operator (checking it), then called on tensors."""

    def __init__(self, op: Operator):
        self.op = op

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        return self.forward(*inputs)

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def fuse(self, after: "Layer") -> "Layer | None":
        """One layer doing this layer's work and then `after`'s on the result (a convolution
        absorbing its activation, lesson 04), or None where the two cannot merge: the default."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.op.where()})"


# %% [markdown]
# ## Exercise 3.1 — a checked parameter
#
# `self.param("kernel_size", tuple)` returns the operator's parameter `kernel_size` when it is of
# the expected kind (a type or a tuple of types, as `isinstance` takes them). A missing parameter
# returns `default` when one is given and is otherwise a `LayerError`; a parameter of another type
# is always a `LayerError`. Every message starts with `self.op.where()` and names the key; a wrong
# type also names the expected type and the value found. One trap: `bool` is a subclass of `int`
# in Python, so `isinstance(True, int)` holds: refuse a bool unless `bool` itself is asked for.

# %%
#| export layer
#| exercise: op.params[key] if it is of `kind` (a bool only when bool is asked for) and >= minimum, else `default` or LayerError
@patch_to(Layer)
def param(self, key: str, kind: type | tuple[type, ...] = object, default: object = REQUIRED,
          minimum: float | None = None) -> object:
    """Parameter `key`, checked to be of `kind` and, for a number, at least `minimum`;
    LayerError if it is missing, of another type or out of range (NaN included)."""
    ### BEGIN SOLUTION
    if key not in self.op.params:
        if default is REQUIRED:
            raise LayerError(f"{self.op.where()}: missing parameter {key!r}")
        return default
    value = self.op.params[key]
    wrong_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if not isinstance(value, kind) or wrong_bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise LayerError(f"{self.op.where()}: parameter {key!r} should be {names}, got {value!r}")
    if minimum is not None and isinstance(value, (int, float)) and not value >= minimum:
        raise LayerError(f"{self.op.where()}: parameter {key!r} should be at least {minimum}, got {value!r}")
    return value
    ### END SOLUTION


# %%
with check("Exercise 3.1"):
    op = Operator("test.Op", "op", ["0"], ["1"], line=3,
                  params={"k": 3, "flag": True, "size": (3, 3), "eps": 0.5, "mode": "zeros"})
    layer = Layer(op)
    for args, want in [(("k", int), 3), (("flag", bool), True), (("size", tuple), (3, 3)), (("eps", float), 0.5),
                       (("k", (int, float)), 3), (("mode",), "zeros"), (("absent", int, 7), 7), (("k", int, 7), 3),
                       (("absent", int, None), None)]:
        got = layer.param(*args)
        assert got == want and type(got) is type(want), f"param{args}: expected {want!r}, got {got!r}"
    for args, words in [(("absent", int), ["absent", "line 3"]), (("eps", int), ["eps", "int", "0.5", "line 3"]),
                        (("flag", int), ["flag", "int", "True"]), (("flag", (int, float)), ["flag", "True"]),
                        (("size", int, 1), ["size", "(3, 3)"])]:
        err = raises(LayerError, layer.param, *args)
        missing = [w for w in words if w not in str(err)]
        assert not missing, f"param{args}: expected the message to name {missing}, got: {err}"
    got = layer.param("k", int, minimum=3)
    assert got == 3, f"param('k', int, minimum=3) with k = 3: expected 3, got {got!r}"
    err = raises(LayerError, layer.param, "k", int, minimum=4)
    assert "at least 4" in str(err) and "3" in str(err), f"expected the message to say 'at least 4' and name 3, got: {err}"

# %% [markdown]
# ## Exercise 3.2 — a checked weight
#
# `self.weight("weight", (64, 3, 7, 7))` returns the loaded array of the operator's weight
# `weight`. A weight that is absent, or whose data was not loaded (`attr.data is None`), is a
# `LayerError`; so is one whose shape differs from `shape` (any sequence of ints; `None` accepts
# every shape): the message names the operator (`self.op.where()`), the key and both shapes.

# %%
#| export layer
#| exercise: op.attrs[key].data; LayerError when absent, not loaded, or not of `shape` (naming both shapes)
@patch_to(Layer)
def weight(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Weight `key` with its data loaded; LayerError if it is missing or not of `shape`."""
    ### BEGIN SOLUTION
    attr = self.op.attrs.get(key)
    if attr is None or attr.data is None:
        raise LayerError(f"{self.op.where()}: missing weight {key!r}")
    if shape is not None and attr.data.shape != tuple(shape):
        raise LayerError(f"{self.op.where()}: weight {key!r} should have shape {tuple(shape)}, "
                         f"got {attr.data.shape}")
    return attr.data
    ### END SOLUTION


# %%
with check("Exercise 3.2"):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    op = Operator("test.Op", "fc", ["0"], ["1"], line=5,
                  attrs={"weight": Attribute((2, 3), "float32", w), "bias": Attribute((2,), "float32")})
    layer = Layer(op)
    for shape in [(2, 3), [2, 3], None]:
        got = layer.weight("weight", shape)
        assert got is w, f"weight('weight', {shape}): expected the loaded (2, 3) array itself, got {got!r}"
    err = raises(LayerError, layer.weight, "weight", (3, 2))
    assert all(s in str(err) for s in ("(3, 2)", "(2, 3)", "line 5")), \
        f"expected the message to name both shapes and line 5, got: {err}"
    raises(LayerError, layer.weight, "weight", (6,))
    for key in ("bias", "running_mean"):
        err = raises(LayerError, layer.weight, key)
        assert key in str(err) and "line 5" in str(err), f"weight({key!r}): expected the message to name it and line 5, got: {err}"


# %% [markdown]
# ## Exercise 3.3 — registering layers
#
# `register("nn.ReLU", "F.relu")` is a class decorator: it files the class in `LAYERS` under every
# name it is given (PNNX spells the same operation differently depending on how the model was
# written: `nn.ReLU()` as a module, `F.relu(x)` as a function) and returns the class unchanged.
# Registering a name again replaces the earlier layer: that is how you override a built-in one.

# %%
#| export
import difflib
from collections.abc import Callable
from pathlib import Path

from kuiper.errors import LayerError
from kuiper.graph import RuntimeGraph, unpack_tuples
from kuiper.layer import Layer
from kuiper.pnnx import Operator, load_pnnx

LAYERS: dict[str, type[Layer]] = {}

# %%
#| export
#| exercise: return a class decorator that stores the class in LAYERS under each of `types`
def register(*types: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: build this layer for operators of each PNNX type in `types`."""
    ### BEGIN SOLUTION
    def add(cls: type[Layer]) -> type[Layer]:
        for kind in types:
            LAYERS[kind] = cls
        return cls

    return add
    ### END SOLUTION


# %%
with check("Exercise 3.3"):
    class Twice(Layer):
        def forward(self, x):
            return x * 2

    class Thrice(Layer):
        pass

    try:
        got = register("test.Twice", "test.Double")(Twice)
        assert got is Twice, f"expected register(...)(Twice) to return the class Twice, got {got!r}"
        for name in ("test.Twice", "test.Double"):
            assert LAYERS.get(name) is Twice, f"LAYERS[{name!r}]: expected Twice, got {LAYERS.get(name)!r}"
        register("test.Double")(Thrice)
        got = LAYERS["test.Double"], LAYERS["test.Twice"]
        assert got == (Thrice, Twice), f"after registering Thrice for test.Double: expected (Thrice, Twice), got {got}"
    finally:
        for name in ("test.Twice", "test.Double"):
            LAYERS.pop(name, None)

# %% [markdown]
# ## Exercise 3.4 — creating a layer
#
# `create_layer(op)` looks the operator's type up and builds the layer. An unknown type is the
# most common error a student meets ("my model uses `nn.GELU`"), so make it helpful: name the
# type, the operator with its line (`op.where()`), and up to three registered names that are
# close (`difflib.get_close_matches`), so that a typo such as `nn.Relu` answers *did you mean
# nn.ReLU?*

# %%
#| export
#| exercise: build LAYERS[op.type](op); LayerError naming the type, op.where() and close registered names
def create_layer(op: Operator) -> Layer:
    """The registered layer for `op`, built (and so checked) from its parameters and weights."""
    ### BEGIN SOLUTION
    if op.type not in LAYERS:
        close = difflib.get_close_matches(op.type, LAYERS, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise LayerError(f"no layer is registered for type {op.type!r} of {op.where()}{hint}")
    return LAYERS[op.type](op)
    ### END SOLUTION


# %%
with check("Exercise 3.4"):
    class TestReLU(Layer):
        pass

    LAYERS["test.ReLU"] = TestReLU
    try:
        op = Operator("test.ReLU", "act", ["0"], ["1"], line=4)
        got = create_layer(op)
        assert isinstance(got, TestReLU) and got.op is op, f"expected TestReLU built from {op.where()}, got {got!r}"
        err = raises(LayerError, create_layer, Operator("nn.GELU", "gelu", ["0"], ["1"], line=7))
        assert "nn.GELU" in str(err) and "line 7" in str(err), f"expected the message to name nn.GELU and line 7, got: {err}"
        err = raises(LayerError, create_layer, Operator("test.Relu", "act", ["0"], ["1"], line=4))
        assert "test.ReLU" in str(err), f"expected the message to suggest the close name test.ReLU, got: {err}"
        err = raises(LayerError, create_layer, Operator("zzz.Unheard", "u", ["0"], ["1"], line=2))
        assert "did you mean" not in str(err), f"no registered name is close to zzz.Unheard: expected no suggestion, got: {err}"
    finally:
        LAYERS.pop("test.ReLU", None)

# %% [markdown]
# `load` is the package's front door: read the files, build a layer per operator, order them.
# The built-in layers are registered when `import kuiper` imports `kuiper.layers`.

# %%
#| export
def load(param: str | Path) -> RuntimeGraph:
    """Load `model.pnnx.param` (with `model.pnnx.bin` beside it) as a graph ready to run."""
    return RuntimeGraph(unpack_tuples(load_pnnx(param)), create_layer)


# %% [markdown]
# From here on the lesson uses the package's registry, which the cells above became, so that
# every layer below registers where `kuiper.load` looks:

# %%
from kuiper.registry import LAYERS, create_layer, load, register

# %% [markdown]
# ## The first built-in layers
#
# Four layers are enough to run the tiny model of lesson 02; lesson 04 adds the rest. Each reads
# and checks its parameters in `__init__`, so that `forward` is only arithmetic.

# %%
#| export layers.activation
import numpy as np

from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("nn.ReLU", "F.relu", "torch.relu")
class ReLU(Layer):
    """max(x, 0), element by element."""

    def forward(self, x: Tensor) -> Tensor:
        return Tensor(np.maximum(x.numpy(), 0), device=x.device)


# %%
#| export layers.linear
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("nn.Linear")
class Linear(Layer):
    """y = x Wᵀ + b over the last dimension; W is (out_features, in_features)."""

    def __init__(self, op):
        super().__init__(op)
        n_in, n_out = self.param("in_features", int, minimum=1), self.param("out_features", int, minimum=1)
        self.weight_t = self.weight("weight", (n_out, n_in)).T
        self.bias = self.weight("bias", (n_out,)) if self.param("bias", bool) else None

    def forward(self, x: Tensor) -> Tensor:
        data = x.numpy()
        rows = data.reshape(-1, data.shape[-1])  # (..., in) -> (M, in): one GEMM, not one per leading index
        y = (rows @ self.weight_t).reshape(*data.shape[:-1], -1)  # (M, out) -> (..., out)
        return Tensor(y if self.bias is None else y + self.bias, device=x.device)


# %%
#| export layers.shape
import numpy as np

from kuiper.errors import LayerError
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("torch.flatten")
class Flatten(Layer):
    """Merge dimensions start_dim..end_dim into one."""

    def __init__(self, op):
        super().__init__(op)
        self.start, self.end = self.param("start_dim", int, 0), self.param("end_dim", int, -1)

    def forward(self, x: Tensor) -> Tensor:
        start, end = self.start % x.ndim, self.end % x.ndim
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1:])


@register("torch.cat")
class Concat(Layer):
    """Join the inputs along dimension `dim`."""

    def __init__(self, op):
        super().__init__(op)
        self.dim = self.param("dim", int)
        if not op.inputs:
            raise LayerError(f"{op.where()}: torch.cat needs at least one input")

    def forward(self, *xs: Tensor) -> Tensor:
        return Tensor(np.concatenate([x.numpy() for x in xs], axis=self.dim), device=xs[0].device)


# %% [markdown]
# `import kuiper` imports `kuiper/layers/`, whose `__init__.py` imports these modules and so runs
# their `@register` lines. Now the package loads the tiny model by itself and matches PyTorch:

# %%
graph = load(DATA / "tiny.pnnx.param")
got, want = graph(np.load(DATA / "tiny.input.npy")), np.load(DATA / "tiny.output.npy")
print("tiny model vs PyTorch:", agreement(got, want))

# %%
for op in graph.order:
    print(f"{op.type:14} {op.name:16} -> {graph.layers.get(op.name, '(graph input/output)')!r}")

# %% [markdown]
# Wrong weights are refused when the graph is built, not halfway through a forward pass:

# %%
bad = Operator("nn.Linear", "fc", ["0"], ["1"], params={"in_features": 48, "out_features": 16, "bias": True},
               attrs={"weight": Attribute((16, 32), "float32", np.zeros((16, 32), np.float32)),
                      "bias": Attribute((16,), "float32", np.zeros(16, np.float32))}, line=9)
try:
    create_layer(bad)
except LayerError as err:
    print("LayerError:", err)

# %% [markdown]
# ## Exercise 3.5 — override a built-in layer
#
# The registry is open: registering a type again replaces its layer for every graph built after.
# Fill in `MyReLU`, a layer that computes ReLU **and counts its calls** in `self.calls`: it is
# registered for `nn.ReLU`, so loading the tiny model again makes its `act` operator run your code. (Only
# `nn.ReLU` changes: the model's other ReLU is spelled `F.relu`.)

# %%
#| exercise: MyReLU, registered for nn.ReLU: start its call count at 0, and make forward count the call and compute max(x, 0)
@register("nn.ReLU")
class MyReLU(Layer):
    """ReLU that counts how often it runs."""

    def __init__(self, op):
        super().__init__(op)
        ### BEGIN SOLUTION
        self.calls = 0
        ### END SOLUTION

    def forward(self, x: Tensor) -> Tensor:
        ### BEGIN SOLUTION
        self.calls += 1
        return Tensor(np.maximum(x.numpy(), 0))
        ### END SOLUTION


# %%
with check("Exercise 3.5"):
    graph = load(DATA / "tiny.pnnx.param")
    layer = graph.layers["act"]
    mine = globals().get("MyReLU")  # the class this notebook defined last, not an older registration
    assert mine is not None and type(layer) is mine, f"the act operator: expected your MyReLU, got {layer!r}"
    got = graph(np.load(DATA / "tiny.input.npy"))
    graph(np.load(DATA / "tiny.input.npy"))
    assert layer.calls == 2, f"two forward passes: expected 2 calls, counted {layer.calls}"
    want = np.load(DATA / "tiny.output.npy")
    assert np.allclose(got, want, atol=1e-5), f"the model's output: expected PyTorch's, {agreement(got, want)}"
    x = Tensor([[-2.0, 0.0, 3.5]])
    got = layer(x).numpy().tolist()
    assert got == [[0.0, 0.0, 3.5]], f"MyReLU on [[-2, 0, 3.5]]: expected [[0, 0, 3.5]], got {got}"

# %% [markdown]
# Put the built-in layer back, so the rest of the course runs the package's own ReLU:

# %%
from kuiper.layers.activation import ReLU

register("nn.ReLU")(ReLU)
print(load(DATA / "tiny.pnnx.param").layers["act"])

# %% [markdown]
# ## What you built
#
# `kuiper/layer.py` is the base class, `kuiper/registry.py` maps PNNX types to layers and builds
# graphs, and `kuiper/layers/` holds the layers, each registered beside its definition. `kuiper.load(path)` returns a `RuntimeGraph`
# that you call on numpy arrays or tensors. Lesson 04 registers the rest of the operator set —
# convolution, pooling, batch norm, activations — and makes the convolution fast.
