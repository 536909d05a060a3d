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
# | 3.1 | `register`: a class decorator that files a layer under one or more type names |
# | 3.2 | `create_layer`: build the layer for an operator, or say what is missing |
# | 3.3 | your own ReLU, registered over the built-in one, used by a loaded model |

# %%
#| default_exp registry

# %%
import numpy as np

from kuiper.course import DATA, agreement, check
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
# the operator (for error messages) and offers two checked accessors a layer's constructor uses:
# `param` for a parameter of the expected type, `weight` for a loaded weight of the expected
# shape. `bool` is a subclass of `int` in Python, so a check for `int` has to refuse it by hand.

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.op.where()})"

    def param(self, key: str, kind: type | tuple[type, ...] = object, default: object = REQUIRED) -> object:
        """Parameter `key`, checked to be of `kind`; LayerError if it is missing or of another type."""
        if key not in self.op.params:
            if default is REQUIRED:
                raise LayerError(f"{self.op.where()}: missing parameter {key!r}")
            return default
        value = self.op.params[key]
        wrong_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        if not isinstance(value, kind) or wrong_bool:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise LayerError(f"{self.op.where()}: parameter {key!r} should be {names}, got {value!r}")
        return value

    def weight(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Weight `key` with its data loaded; LayerError if it is missing or not of `shape`."""
        attr = self.op.attrs.get(key)
        if attr is None or attr.data is None:
            raise LayerError(f"{self.op.where()}: missing weight {key!r}")
        if shape is not None and attr.data.shape != tuple(shape):
            raise LayerError(f"{self.op.where()}: weight {key!r} should have shape {tuple(shape)}, "
                             f"got {attr.data.shape}")
        return attr.data


# %% [markdown]
# ## Exercise 3.1 — registering layers
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
with check("Exercise 3.1"):
    @register("test.Twice", "test.Double")
    class Twice(Layer):
        def forward(self, x):
            return x * 2

    assert isinstance(Twice, type) and issubclass(Twice, Layer), "register must return the class itself"
    assert LAYERS["test.Twice"] is Twice and LAYERS["test.Double"] is Twice, "file it under every name"
    del LAYERS["test.Twice"], LAYERS["test.Double"]

# %% [markdown]
# ## Exercise 3.2 — creating a layer
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
with check("Exercise 3.2"):
    @register("test.ReLU")
    class TestReLU(Layer):
        pass

    op = Operator("test.ReLU", "act", ["0"], ["1"], line=4)
    assert isinstance(create_layer(op), TestReLU) and create_layer(op).op is op, "build LAYERS[op.type](op)"
    try:
        create_layer(Operator("nn.GELU", "gelu", ["0"], ["1"], line=7))
        raise AssertionError("an unknown type should raise LayerError")
    except LayerError as err:
        assert "nn.GELU" in str(err) and "line 7" in str(err), f"name the type and the line: {err}"
    try:
        create_layer(Operator("test.Relu", "act", ["0"], ["1"], line=4))
        raise AssertionError("an unknown type should raise LayerError")
    except LayerError as err:
        assert "test.ReLU" in str(err), f"suggest the close name test.ReLU: {err}"
    del LAYERS["test.ReLU"]

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
        n_in, n_out = self.param("in_features", int), self.param("out_features", int)
        self.weight_t = self.weight("weight", (n_out, n_in)).T
        self.bias = self.weight("bias", (n_out,)) if self.param("bias", bool) else None

    def forward(self, x: Tensor) -> Tensor:
        y = x.numpy() @ self.weight_t
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
# ## Exercise 3.3 — override a built-in layer
#
# The registry is open: registering a type again replaces its layer for every graph built after.
# Write `MyReLU`, a layer that computes ReLU **and counts its calls** in `self.calls`, register it
# for `nn.ReLU`, and load the tiny model again: its `act` operator now runs your code. (Only
# `nn.ReLU` changes: the model's other ReLU is spelled `F.relu`.)

# %%
#| exercise: a Layer subclass computing max(x, 0) that counts its forward calls, registered for nn.ReLU
### BEGIN SOLUTION
@register("nn.ReLU")
class MyReLU(Layer):
    """ReLU that counts how often it runs."""

    def __init__(self, op):
        super().__init__(op)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return Tensor(np.maximum(x.numpy(), 0))
### END SOLUTION


# %%
with check("Exercise 3.3"):
    graph = load(DATA / "tiny.pnnx.param")
    layer = graph.layers["act"]
    assert type(layer).__name__ == "MyReLU", f"the act operator runs {layer!r}, expected your MyReLU"
    got = graph(np.load(DATA / "tiny.input.npy"))
    graph(np.load(DATA / "tiny.input.npy"))
    assert layer.calls == 2, f"two forward passes should count 2 calls, counted {layer.calls}"
    assert np.allclose(got, np.load(DATA / "tiny.output.npy"), atol=1e-5), "the output should still match PyTorch"

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
