# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import inspect
import math
import typing
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
from numba import njit, prange

from kuiper.errors import LayerError
from kuiper.expression import BINARY, UNARY
from kuiper.layer import Layer
from kuiper.layers.activation import activate, exp_approx, GELU, GELU_TANH, MISH, SIGMOID, TANH
from kuiper.registry import register
from kuiper.tensor import Tensor


RENAMES = {"self": "input", "exponent": "other", "vec": "other", "mat2": "other", "query": "input"}
# settings that change nothing at inference, or that the weights already say (kdim: a weight's shape)
BENIGN = {"inplace", "num_parameters", "num_features", "num_channels", "track_running_stats", "momentum",
          "num_embeddings", "embedding_dim", "sparse", "scale_grad_by_freq", "bias", "kdim", "vdim", "add_bias_kv"}


def input_names(op, parameters: list[str]) -> list[str]:
    """The parameter each input of `op` fills: its PNNX name ($input=0, renamed where torch's differs),
    else the next of `parameters` not named (PNNX names only some inputs, e.g. `$attn_mask`)."""
    named = {operand: RENAMES.get(name, name) if name not in parameters else name
             for name, operand in op.input_names.items()}
    if len(named) < len(op.input_names):  # one operand under two names: x·x is $input=0 $other=0
        return [name if name in parameters else RENAMES.get(name, name) for name in op.input_names]
    free = iter(name for name in parameters if name not in named.values())
    return [named[operand] if operand in named else next(free, operand) for operand in op.inputs]


class Function(Layer):
    """Calls `fn(*arrays, **settings)`: tensors fill fn's parameters by PNNX input name ($input,
    $other, ...; in order where unnamed), the operator's parameters and weights fill the rest
    (a weight `out_proj.weight` fills the parameter `out_proj_weight`)."""

    fn: Callable = staticmethod(lambda input: input)

    def __init__(self, op):
        super().__init__(op)
        signature = inspect.signature(self.fn)
        hints = typing.get_type_hints(self.fn)
        names = input_names(op, list(signature.parameters))
        unknown = [name for name in names if name not in signature.parameters]
        if len(names) != len(op.inputs) or unknown or len(set(names)) < len(names):
            raise LayerError(f"{op.where()}: takes inputs {list(signature.parameters)}, got {names or op.inputs}")
        self.inputs = names
        self.settings = {}
        weights = {key.replace(".", "_"): key for key in op.attrs}
        for name, parameter in signature.parameters.items():
            if name in names:
                continue
            if name in op.params:
                self.settings[name] = self.checked(name, op.params[name], hints.get(name))
            elif name in weights:
                self.settings[name] = self.weight(weights[name])
            elif parameter.default is inspect.Parameter.empty:
                raise LayerError(f"{op.where()}: missing parameter {name!r}")
        for key, value in op.params.items():
            if key not in signature.parameters and key not in BENIGN:
                warnings.warn(f"{op.where()}: ignoring parameter {key}={value!r}, which kuiper does not use")

    def checked(self, name: str, value: object, hint: object) -> object:
        """`value`, or LayerError if `hint` is a Literal that does not allow it."""
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            supported = ", ".join(map(repr, typing.get_args(hint)))
            raise LayerError(f"{self.op.where()}: {name}={value!r} is not supported; supported: {supported}")
        return value

    def forward(self, *xs: Tensor) -> Tensor | tuple[Tensor, ...]:
        arrays = {name: x.numpy() for name, x in zip(self.inputs, xs)}
        try:
            result = self.fn(**arrays, **self.settings)
        except (IndexError, ValueError) as err:  # an index out of range, shapes that do not broadcast
            raise LayerError(f"{self.op.where()}: {err}") from None
        device = xs[0].device if xs else "cpu"
        if isinstance(result, tuple):
            return tuple(Tensor(np.asarray(r), device=device) for r in result)
        return Tensor(np.asarray(result), device=device)


def function(*types: str, name: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register a `Function` layer running the decorated numpy function for `types`."""
    def add(fn: Callable) -> Callable:
        cls = type(name or fn.__name__, (Function,), {"fn": staticmethod(fn), "__doc__": fn.__doc__})
        register(*types)(cls)
        return fn

    return add


def unary(fn: Callable) -> Callable:
    """fn as a function of PNNX's `input`."""
    return lambda input: fn(input)


def binary(fn: Callable) -> Callable:
    """fn as a function of PNNX's `input` and `other` (a tensor or a number)."""
    return lambda input, other: fn(input, other)


COMPARE = {"eq": np.equal, "ne": np.not_equal, "gt": np.greater, "ge": np.greater_equal, "lt": np.less,
           "le": np.less_equal, "logical_and": np.logical_and, "logical_or": np.logical_or,
           "logical_xor": np.logical_xor, "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or,
           "bitwise_xor": np.bitwise_xor, "bitwise_left_shift": np.left_shift, "bitwise_right_shift": np.right_shift}
NOT_OPERATORS = {"int", "size", "max", "min", "div", "and", "or", "xor", "lshift", "rshift"}
MORE_UNARY = {"logical_not": np.logical_not, "bitwise_not": np.invert, "positive": np.positive}

for _name, _fn in UNARY.items() | MORE_UNARY.items():
    if _name not in NOT_OPERATORS:
        function(f"torch.{_name}", f"Tensor.{_name}", f"aten::{_name}", name=_name)(unary(_fn))
for _name, _fn in BINARY.items() | COMPARE.items():
    if _name not in NOT_OPERATORS:
        function(f"torch.{_name}", f"Tensor.{_name}", name=_name)(binary(_fn))


@function("torch.div", "Tensor.div")
def div(input, other, rounding_mode: Literal[None, "trunc", "floor"] = None):
    """input / other, rounded toward zero or down if `rounding_mode` says so."""
    quotient = np.divide(input, other)
    return quotient if rounding_mode is None else np.trunc(quotient) if rounding_mode == "trunc" else np.floor(quotient)


@function("torch.clamp", "Tensor.clamp", "torch.clip", "Tensor.clip")
def clamp(input, min=None, max=None):
    """input limited to [min, max]; either bound may be absent (None)."""
    low = -np.inf if min is None else min
    high = np.inf if max is None else max
    return np.minimum(np.maximum(input, low), high).astype(input.dtype)


@function("torch.where")
def where(condition, input, other):
    """input where condition holds, other elsewhere (broadcast)."""
    return np.where(condition, input, other)


@function("Tensor.masked_fill", "torch.masked_fill")
def masked_fill(input, mask, value):
    """input with the elements where mask holds set to value."""
    return np.where(mask, np.asarray(value, dtype=input.dtype), input)


@function("nn.GELU", "F.gelu")
def gelu(input, approximate: Literal["none", "tanh"] = "none"):
    """x·Φ(x) with Φ the normal CDF: exact through erf, or its tanh approximation."""
    return activate(input, GELU_TANH if approximate == "tanh" else GELU)


@function("nn.ELU", "F.elu")
def elu(input, alpha=1.0):
    """x for x > 0, alpha·(eˣ − 1) below."""
    return np.where(input > 0, input, alpha * np.expm1(np.minimum(input, 0)))


@function("nn.CELU", "F.celu")
def celu(input, alpha=1.0):
    """max(0, x) + min(0, alpha·(e^(x/alpha) − 1))."""
    return np.maximum(input, 0) + np.minimum(0, alpha * np.expm1(np.minimum(input, 0) / alpha))


@function("nn.SELU", "F.selu")
def selu(input):
    """scale·elu(x, alpha) with the self-normalising constants of Klambauer et al. (2017)."""
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return scale * elu(input, alpha)


def softplus(input, beta=1.0, threshold=20.0):
    """log(1 + e^(beta·x)) / beta, and x itself where beta·x > threshold."""
    return np.where(input * beta > threshold, input, np.logaddexp(0, input * beta) / beta)


function("nn.Softplus", "F.softplus")(softplus)


@function("nn.Mish", "F.mish")
def mish(input):
    """x·tanh(softplus(x))."""
    return activate(input, MISH)


@function("nn.Softsign", "F.softsign")
def softsign(input):
    """x / (1 + |x|)."""
    return input / (1 + np.abs(input))


@function("nn.Tanh", "F.tanh")
def tanh(input):
    """The hyperbolic tangent."""
    return activate(input, TANH)


@function("nn.PReLU", "F.prelu")
def prelu(input, weight):
    """x for x ≥ 0, weight·x below; weight has one slope, or one per channel (dimension 1)."""
    slope = weight.reshape(-1, *([1] * (input.ndim - 2))) if weight.size > 1 else weight.reshape(())
    return np.where(input >= 0, input, slope * input)


@function("nn.RReLU", "F.rrelu")
def rrelu(input, lower=1 / 8, upper=1 / 3, training: Literal[False] = False):
    """Leaky ReLU with slope (lower + upper) / 2: RReLU at inference."""
    return np.where(input >= 0, input, input * np.float32((lower + upper) / 2))


@function("nn.Threshold", "F.threshold")
def threshold(input, threshold, value):
    """x where x > threshold, value elsewhere."""
    return np.where(input > threshold, input, np.float32(value))


@function("nn.Hardshrink", "F.hardshrink")
def hardshrink(input, lambd=0.5):
    """x where |x| > lambd, 0 elsewhere."""
    return np.where(np.abs(input) > lambd, input, 0).astype(input.dtype)


@function("nn.Softshrink", "F.softshrink")
def softshrink(input, lambd=0.5):
    """x − lambd above lambd, x + lambd below −lambd, 0 between."""
    return (np.sign(input) * np.maximum(np.abs(input) - lambd, 0)).astype(input.dtype)


@function("nn.Tanhshrink", "F.tanhshrink")
def tanhshrink(input):
    """x − tanh(x)."""
    return input - np.tanh(input)


@function("nn.LogSigmoid", "F.logsigmoid")
def logsigmoid(input):
    """log(1 / (1 + e^−x)) = −log(1 + e^−x), without overflow."""
    return -np.logaddexp(0, -input)


@function("nn.GLU", "F.glu")
def glu(input, dim=-1):
    """a·sigmoid(b), where a and b are the two halves of x along dim."""
    a, b = np.split(input, 2, axis=dim)
    return a * activate(b, SIGMOID)


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def softmax_rows(x, out, log):
    """Softmax (log False) or log-softmax (log True) of each row of x (R, C) into out (R, C), float32, C ≥ 1."""
    rows, size = x.shape
    for r in prange(rows):
        top = x[r, 0]
        for i in range(1, size):
            top = max(top, x[r, i])
        total = np.float32(0.0)
        for i in range(size):
            out[r, i] = exp_approx(x[r, i] - top)
            total += out[r, i]
        if log:
            shift = top + np.log(total)
            for i in range(size):
                out[r, i] = x[r, i] - shift
        else:
            scale = np.float32(1.0) / total
            for i in range(size):
                out[r, i] *= scale


def along_rows(input: np.ndarray, dim: int, log: bool) -> np.ndarray:
    """softmax_rows along dimension `dim` of input (any shape, float32 out of the same shape)."""
    x = np.moveaxis(np.asarray(input, dtype=np.float32), dim, -1)
    rows = np.ascontiguousarray(x).reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (R, C): C along dim
    out = np.empty_like(rows)
    if rows.size:
        softmax_rows(rows, out, log)
    return np.moveaxis(out.reshape(x.shape), -1, dim)


@function("nn.Softmax", "F.softmax", "torch.softmax")
def softmax(input, dim: int):
    """exp(x) / Σ exp(x) along dim, shifted by the maximum."""
    return along_rows(input, dim, log=False)


@function("nn.LogSoftmax", "F.log_softmax", "torch.log_softmax")
def log_softmax(input, dim: int):
    """x − log Σ exp(x) along dim, shifted by the maximum."""
    return along_rows(input, dim, log=True)


@function("nn.Softmin", "F.softmin")
def softmin(input, dim: int):
    """softmax(−x) along dim."""
    return softmax(-input, dim)


@function("nn.Softmax2d")
def softmax2d(input):
    """softmax over the channels (dimension −3) at every pixel."""
    return softmax(input, -3)
