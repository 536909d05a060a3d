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
# # Lesson 05 — The expression layer
#
# When PyTorch code does arithmetic on tensors — a residual `x + y`, YOLO's `(xy * 2 + grid) *
# stride` — PNNX fuses the whole formula into one `pnnx.Expression` operator and writes it as
# text:
#
# ```
# pnnx.Expression  pnnx_expr_0  2 1 10 11 12 expr=add(@0,mul(@1,2.000000e+00))
# ```
#
# `@0` and `@1` are the operator's inputs. To run it, an engine does what every compiler does:
# **lex** the text into tokens, **parse** the tokens into a tree, and **evaluate** the tree.
# KuiperInfer evaluates in reverse-Polish order with a stack; so will we.
#
# | exercise | what |
# |---|---|
# | 5.1 | the tokenizer: text → tokens, with the column of each |
# | 5.2 | the recursive-descent parser: tokens → syntax tree |
# | 5.3 | `parse`: one expression that uses the whole text |
# | 5.4 | reverse-Polish order: the tree flattened for a stack machine |
# | 5.5 | the stack machine that evaluates it over tensors |
# | 5.6 | softmax and log-softmax in one numba pass per row, with the vectorised $e^x$ |
# | 5.7 | reductions: PyTorch's `dim` and `keepdim`, max/min with indices, var/std, norm, topk |
# | 5.8 | normalisations from one `standardize` kernel |
# | 5.9 | padding in PyTorch's four modes |
# | 5.10 | advanced indexing and its writes: index_put, scatter, slice_scatter |
# | 5.11 | scaled dot-product attention: masks, causal, grouped key heads |

# %%
#| default_exp expression

# %%
import matplotlib.pyplot as plt
import numpy as np

from kuiper.course import agreement, check, patch_to, raises
from kuiper.errors import KuiperError
from kuiper.layers.activation import Elementwise  # lesson 04's element-wise layer, for the activations below

# %% [markdown]
# ## The grammar
#
# Everything PNNX writes fits four rules (`|` separates alternatives, quoted text is literal):
#
# ```
# expr  := input | number | constant | name "(" args ")" | "[" args "]"
# args  := expr ("," expr)*
# input := "@" digits                      e.g. @0
# number:= ["-"] digits ["." digits] [("e"|"E") ["+"|"-"] digits]   e.g. 2, -1, 2.000000e+00
# constant:= "None" | "True" | "False"
# ```
#
# A `name` is a function from the table below; the bracketed list form (`[@0,@1]`) builds a list,
# which PNNX uses for shapes and for indices (`x[:, i]` with `i` computed in the graph is
# `Tensor.index` of `[None,@0]`: None stands for `:`). Errors in the text are `ExpressionError`s that give the column.

# %%
#| export errors
class ExpressionError(KuiperError, ValueError):
    """A pnnx.Expression string that does not lex or parse; the message gives the column."""


# %%
#| export
import math
import re
from dataclasses import dataclass

import numpy as np
from numba import vectorize

from kuiper.errors import ExpressionError


def _rsqrt(x):
    return 1 / np.sqrt(x)


@vectorize(["float32(float32)", "float64(float64)"], cache=True)
def erf(x):
    """The error function 2/√π ∫₀ˣ e^(-t²) dt, element by element (numpy has none; math.erf does)."""
    return math.erf(x)


@vectorize(["float32(float32)", "float64(float64)"], cache=True)
def lgamma(x):
    """log |Γ(x)|, element by element (numpy has none; math.lgamma does)."""
    return math.lgamma(x)


def _int(x):
    """Truncate toward zero to an integer, as Python's int() does."""
    return np.trunc(x).astype(np.int64) if isinstance(x, np.ndarray) else int(x)


UNARY = {"neg": np.negative, "abs": np.abs, "sqrt": np.sqrt, "rsqrt": _rsqrt, "exp": np.exp, "log": np.log,
         "log10": np.log10, "floor": np.floor, "ceil": np.ceil, "round": np.round, "trunc": np.trunc,
         "sign": np.sign, "square": np.square, "reciprocal": np.reciprocal, "sin": np.sin, "cos": np.cos,
         "tan": np.tan, "tanh": np.tanh, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
         "sinh": np.sinh, "cosh": np.cosh, "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
         "expm1": np.expm1, "log1p": np.log1p, "log2": np.log2, "erf": erf, "lgamma": lgamma, "int": _int}
BINARY = {"add": np.add, "sub": np.subtract, "rsub": lambda a, b: np.subtract(b, a), "mul": np.multiply,
          "div": np.divide, "pow": np.power, "max": np.maximum, "min": np.minimum, "maximum": np.maximum,
          "minimum": np.minimum, "floor_divide": np.floor_divide, "remainder": np.remainder, "fmod": np.fmod,
          "atan2": np.arctan2, "logaddexp": np.logaddexp, "and": np.bitwise_and, "or": np.bitwise_or,
          "xor": np.bitwise_xor, "lshift": np.left_shift, "rshift": np.right_shift,
          "size": lambda x, dim: np.shape(x)[int(dim)]}
FUNCTIONS = {name: (fn, 1) for name, fn in UNARY.items()} | {name: (fn, 2) for name, fn in BINARY.items()}
CONSTANTS = {"None": None, "True": True, "False": False}  # Python's constants, as PNNX writes them

# %% [markdown]
# ## Exercise 5.1 — the tokenizer
#
# A token is a kind, its text and the column where it starts (0-based). `TOKEN` is one regular
# expression with a named group per kind; at each position, skip spaces, match `TOKEN` there, and
# emit a `Token` for the group that matched (`match.lastgroup`). Where nothing matches, raise
# `ExpressionError(f"column {column}: unexpected {char!r} in {text!r}")`.

# %%
#| export
@dataclass(frozen=True)
class Token:
    """One lexical unit of an expression: its kind, its text, and the column where it starts."""

    kind: str
    text: str
    column: int


TOKEN = re.compile(r"(?P<input>@\d+)|(?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
                   r"|(?P<name>[A-Za-z_]\w*)|(?P<punct>[(),\[\]])")

# %%
#| export
#| exercise: scan `text` left to right with TOKEN, skipping spaces; ExpressionError with the column otherwise
def tokenize(text: str) -> list[Token]:
    """The tokens of an expression string, each with its column."""
    ### BEGIN SOLUTION
    tokens, column = [], 0
    while column < len(text):
        if text[column].isspace():
            column += 1
            continue
        match = TOKEN.match(text, column)
        if match is None:
            raise ExpressionError(f"column {column}: unexpected {text[column]!r} in {text!r}")
        tokens.append(Token(match.lastgroup, match.group(), column))
        column = match.end()
    return tokens
    ### END SOLUTION


# %%
with check("Exercise 5.1"):
    got = [(t.kind, t.text, t.column) for t in tokenize("add(@0, mul(@1,-2.5e+00))")]
    want = [("name", "add", 0), ("punct", "(", 3), ("input", "@0", 4), ("punct", ",", 6), ("name", "mul", 8),
            ("punct", "(", 11), ("input", "@1", 12), ("punct", ",", 14), ("number", "-2.5e+00", 15),
            ("punct", ")", 23), ("punct", ")", 24)]
    assert got == want, f"expected {want},\ngot      {got}"
    got = [(t.kind, t.text, t.column) for t in tokenize("  [ -1 ,size(@12,0)]")]
    want = [("punct", "[", 2), ("number", "-1", 4), ("punct", ",", 7), ("name", "size", 8), ("punct", "(", 12),
            ("input", "@12", 13), ("punct", ",", 16), ("number", "0", 17), ("punct", ")", 18), ("punct", "]", 19)]
    assert got == want, f"expected {want},\ngot      {got}"
    assert tokenize("   ") == [], f"only spaces: expected no tokens, got {tokenize('   ')}"
    for bad, column in [("add(@0,#1)", 7), ("@0 + @1", 3), ("$", 0)]:
        err = raises(ExpressionError, tokenize, bad)
        assert f"column {column}" in str(err), f"{bad!r}: expected the message to say column {column}, got: {err}"

# %% [markdown]
# ## The syntax tree
#
# Four kinds of node, one per grammar alternative. They are frozen dataclasses: a tree is a
# value, printed readably and compared with `==`.

# %%
#| export
@dataclass(frozen=True)
class Input:
    """`@index`: the operator's input number `index`."""

    index: int


@dataclass(frozen=True)
class Number:
    """A constant: a number, or one of CONSTANTS (None, True, False)."""

    value: int | float | bool | None


@dataclass(frozen=True)
class Call:
    """`name(args...)`: a function of the values of its arguments."""

    name: str
    args: tuple


@dataclass(frozen=True)
class ListOf:
    """`[items...]`: a list of values (PNNX uses it for shapes)."""

    items: tuple


# %% [markdown]
# ## Exercise 5.2 — the parser
#
# A **recursive-descent** parser has one function per grammar rule, and a rule that mentions
# `expr` calls the `expr` function: the recursion in the grammar becomes recursion in the code.
# `Parser` keeps the tokens and a position; `peek` looks at the current token, `take(kind, text)`
# consumes it if it is what the grammar expects and raises an `ExpressionError` with its column
# otherwise, and `parse` (the next exercise) runs `expr` once over the whole text. Write `expr`: look at the current token and build an `Input`, a `Number`, a `Call`
# (check the name is in `FUNCTIONS` and has the right number of arguments) or a `ListOf`.
# The names in `CONSTANTS` (`None`, `True`, `False`) are constants too: a `Number` of their value.

# %%
#| export
class Parser:
    """Recursive descent over the tokens of one expression."""

    def __init__(self, text: str):
        self.text, self.tokens, self.pos = text, tokenize(text), 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def fail(self, message: str) -> ExpressionError:
        token = self.peek()
        column = token.column if token else len(self.text)
        return ExpressionError(f"column {column}: {message} in {self.text!r}")

    def take(self, kind: str, text: str | None = None) -> Token:
        """Consume the current token if it has this kind (and text); ExpressionError otherwise."""
        token = self.peek()
        if token is None or token.kind != kind or (text is not None and token.text != text):
            found = "the end" if token is None else repr(token.text)
            raise self.fail(f"expected {text or kind}, found {found}")
        self.pos += 1
        return token

    def args(self, close: str) -> tuple:
        """expr ("," expr)* up to the closing bracket, which it consumes."""
        items = [self.expr()]
        while self.peek() is not None and self.peek().text == ",":
            self.take("punct", ",")
            items.append(self.expr())
        self.take("punct", close)
        return tuple(items)


# %%
#| export
#| exercise: parse one expr at self.pos: Input, Number (also None/True/False), Call (known name, right arity) or ListOf
@patch_to(Parser)
def expr(self) -> Input | Number | Call | ListOf:
    """expr := input | number | constant | name "(" args ")" | "[" args "]" """
    token = self.peek()
    ### BEGIN SOLUTION
    if token is None:
        raise self.fail("expected an expression, found the end")
    if token.kind == "input":
        self.take("input")
        return Input(int(token.text[1:]))
    if token.kind == "number":
        self.take("number")
        is_int = re.fullmatch(r"-?\d+", token.text)
        return Number(int(token.text) if is_int else float(token.text))
    if token.text in CONSTANTS:
        self.take("name")
        return Number(CONSTANTS[token.text])
    if token.kind == "name":
        if token.text not in FUNCTIONS:
            raise self.fail(f"unknown function {token.text!r}")
        self.take("name")
        self.take("punct", "(")
        args = self.args(")")
        arity = FUNCTIONS[token.text][1]
        if len(args) != arity:
            raise ExpressionError(f"column {token.column}: {token.text} takes {arity} argument(s), "
                                  f"got {len(args)} in {self.text!r}")
        return Call(token.text, args)
    if token.text == "[":
        self.take("punct", "[")
        return ListOf(self.args("]"))
    raise self.fail(f"unexpected {token.text!r}")
    ### END SOLUTION


# %%
with check("Exercise 5.2"):
    for text, want in [("add(@0,mul(@1,2.000000e+00))", Call("add", (Input(0), Call("mul", (Input(1), Number(2.0)))))),
                       ("[@0,-1]", ListOf((Input(0), Number(-1)))), ("sqrt(@12)", Call("sqrt", (Input(12),))),
                       ("[size(@0,2),[1,2.5]]", ListOf((Call("size", (Input(0), Number(2))),
                                                         ListOf((Number(1), Number(2.5)))))),
                       ("[None,@0,True]", ListOf((Number(None), Input(0), Number(True))))]:
        got = Parser(text).expr()
        assert repr(got) == repr(want), f"{text!r}: expected {want}, got {got}"  # repr tells 2 from 2.0
    for bad, column in [("add(@0)", 0), ("foo(@0)", 0), ("add(@0,@1", 9), ("sqrt(@0,@1)", 0), ("[@0,)", 4), (")", 0)]:
        err = raises(ExpressionError, Parser(bad).expr)
        assert f"column {column}:" in str(err), f"{bad!r}: expected the error at column {column}, got: {err}"

# %% [markdown]
# ## Exercise 5.3 — the whole text
#
# `parse(text)` is the parser's front door: parse one `expr` from the start, and then the text
# must be used up. A token left over (`add(@0,@1))`) is an `ExpressionError` at its column,
# which `Parser.fail` builds for you.

# %%
#| export
#| exercise: Parser(text).expr(), then ExpressionError (via parser.fail) if a token is left over
def parse(text: str) -> Input | Number | Call | ListOf:
    """The syntax tree of a whole expression string; ExpressionError (with the column) if it is malformed."""
    ### BEGIN SOLUTION
    parser = Parser(text)
    tree = parser.expr()
    if parser.peek() is not None:
        raise parser.fail(f"unexpected {parser.peek().text!r} after the expression")
    return tree
    ### END SOLUTION


# %%
with check("Exercise 5.3"):
    for text, want in [("add(@0,@1)", Call("add", (Input(0), Input(1)))), ("[@0,-1]", ListOf((Input(0), Number(-1))))]:
        got = parse(text)
        assert got == want, f"parse({text!r}): expected {want}, got {got}"
    for bad, column in [("add(@0,@1))", 10), ("@0 @1", 3), ("", 0), ("[1,2] 3", 6)]:
        err = raises(ExpressionError, parse, bad)
        assert f"column {column}:" in str(err), f"parse({bad!r}): expected the error at column {column}, got: {err}"

# %% [markdown]
# (`@patch_to(Parser)` adds `expr` to the class defined above; in `kuiper/expression.py` it sits
# inside `class Parser`.)

# %% [markdown]
# ## A picture of the tree
#
# Leaves are inputs and constants; each call sits above its arguments:

# %%
def label(node) -> str:
    """How a node reads in pictures and in reverse-Polish lists."""
    if isinstance(node, Input):
        return f"@{node.index}"
    if isinstance(node, Number):
        return f"{node.value:g}"
    return node.name if isinstance(node, Call) else f"list/{len(node.items)}"


def draw_tree(node, ax, x=0.0, y=0.0, width=4.0) -> None:
    """Draw `node` at (x, y) and its children spread below it over `width`."""
    children = node.args if isinstance(node, Call) else node.items if isinstance(node, ListOf) else ()
    for i, child in enumerate(children):
        cx = x - width / 2 + width * (i + 0.5) / len(children)
        ax.plot([x, cx], [y, y - 1], color="gray", zorder=1)
        draw_tree(child, ax, cx, y - 1, width / len(children))
    leaf = not children
    ax.text(x, y, label(node), ha="center", va="center", fontsize=11, zorder=2,
            bbox=dict(boxstyle="round", fc="lightsteelblue" if leaf else "tab:orange"))


expression = "mul(add(@0,sqrt(@1)),sub(@2,3))"
fig, ax = plt.subplots(figsize=(6, 3))
draw_tree(parse(expression), ax)
ax.set_title(expression)
ax.axis("off")
plt.show()

# %% [markdown]
# ## Exercise 5.4 — reverse-Polish order
#
# Reading the tree **children first, then the node** (post-order) gives reverse-Polish notation:
# `@0 @1 sqrt add @2 3 sub mul`. It needs no brackets, and a machine can run it left to right
# with a stack. Write `to_rpn`: the list of nodes in post-order (each `Call` and `ListOf` after its
# arguments).

# %%
#| export
#| exercise: the nodes of `tree` in post-order: arguments first, then the call (or list) itself
def to_rpn(tree: Input | Number | Call | ListOf) -> list:
    """The tree's nodes in reverse-Polish (post-) order, ready for a stack machine."""
    ### BEGIN SOLUTION
    children = tree.args if isinstance(tree, Call) else tree.items if isinstance(tree, ListOf) else ()
    return [node for child in children for node in to_rpn(child)] + [tree]
    ### END SOLUTION


# %%
with check("Exercise 5.4"):
    tree = Call("mul", (Call("add", (Input(0), Call("sqrt", (Input(1),)))), Call("sub", (Input(2), Number(3)))))
    got = " ".join(label(node) for node in to_rpn(tree))
    assert got == "@0 @1 sqrt add @2 3 sub mul", f"expected '@0 @1 sqrt add @2 3 sub mul', got {got!r}"
    got = [label(n) for n in to_rpn(ListOf((Input(1), ListOf((Number(2), Number(5))), Number(4))))]
    assert got == ["@1", "2", "5", "list/2", "4", "list/3"], f"expected ['@1', '2', '5', 'list/2', '4', 'list/3'], got {got}"
    got = to_rpn(Input(0))
    assert got == [Input(0)], f"a single input: expected [Input(index=0)], got {got}"

# %% [markdown]
# ## Exercise 5.5 — the stack machine
#
# Run the program: an `Input` pushes that input array, a `Number` pushes its value, a `Call` pops
# as many values as it takes arguments (the last popped is the first argument), applies its
# function from `FUNCTIONS` and pushes the result, and a `ListOf` pops its items and pushes them
# as a list. At the end exactly one value is left: the result. numpy broadcasts, so `add` of a
# `(8, 64, 56, 56)` and a `(64, 1, 1)` input just works.

# %%
#| export
#| exercise: evaluate the reverse-Polish `program` with a stack; return the one value left
def evaluate(program: list, inputs: list) -> object:
    """Run a reverse-Polish program over the input arrays; returns an array, number or list."""
    ### BEGIN SOLUTION
    stack = []
    for node in program:
        if isinstance(node, Input):
            stack.append(inputs[node.index])
        elif isinstance(node, Number):
            stack.append(node.value)
        else:
            count = len(node.args) if isinstance(node, Call) else len(node.items)
            args = stack[len(stack) - count:]
            del stack[len(stack) - count:]
            stack.append(FUNCTIONS[node.name][0](*args) if isinstance(node, Call) else args)
    return stack.pop()
    ### END SOLUTION


# %%
with check("Exercise 5.5"):
    # the programs written out by hand, so that this check runs only your stack machine
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.0, 4.0, 9.0], np.float32)
    x0, x1, three = Input(0), Input(1), Number(3)
    root, plus, minus = Call("sqrt", (x1,)), Call("add", (x0, Call("sqrt", (x1,)))), Call("sub", (x0, three))
    got = evaluate([x0, x1, root, plus, x0, three, minus, Call("mul", (plus, minus))], [a, b])
    want = (a + np.sqrt(b)) * (a - 3)
    assert isinstance(got, np.ndarray) and np.allclose(got, want), f"mul(add(@0,sqrt(@1)),sub(@0,3)): expected\n{want}\ngot\n{got}"
    assert got.dtype == np.float32, f"expected float32, got {got.dtype}"
    size = Call("size", (x0, Number(1)))
    got = evaluate([x0, Number(1), size, Number(-1), ListOf((size, Number(-1)))], [a])
    assert got == [3, -1], f"[size(@0,1),-1]: expected [3, -1], got {got!r}"
    for text, program, want in [("rsub(@0,1)", [x0, Number(1), Call("rsub", (x0, Number(1)))], 1 - a),
                                ("sub(@1,@0)", [x1, x0, Call("sub", (x1, x0))], b - a),
                                ("div(@0,@1)", [x0, x1, Call("div", (x0, x1))], a / b), ("@1", [x1], b)]:
        got = evaluate(program, [a, b])
        assert np.allclose(got, want), f"{text}: expected\n{want}\ngot\n{got}"

# %% [markdown]
# Watching the stack makes the order visible:

# %%
stack = []
for node in to_rpn(parse("mul(add(@0,sqrt(@1)),sub(@2,3))")):
    if isinstance(node, Input):
        stack.append(f"x{node.index}")
    elif isinstance(node, Number):
        stack.append(label(node))
    else:
        count = len(node.args)
        stack[-count:] = [f"{node.name}({', '.join(stack[-count:])})"]
    print(f"{label(node):5} -> {stack}")

# %% [markdown]
# ## When PNNX forgets the brackets
#
# PNNX's expression writer knows only some function names. For the others it writes the name and
# its argument without brackets: `expm1(@0)` comes out as `expm1,@0`, and
# `add(expm1(@0),log1p(abs(@0)))` as `add(expm1,@0),log1p,abs(@0)`. The brackets are then wrong,
# but the names and inputs are still in prefix order, and every function has a known number of
# arguments, so the tree is still fixed by them alone: that is *Polish notation*, which needs no
# brackets. When the strict parser fails, we read the tokens that way.

# %%
#| export
def parse_polish(text: str) -> Input | Number | Call:
    """The tree of `text` read as Polish (prefix) notation, brackets and commas ignored; for the
    bracket-less function calls that PNNX writes. ExpressionError if the tokens do not form one tree."""
    tokens = [token for token in tokenize(text) if token.kind != "punct"]
    position = 0

    def node() -> Input | Number | Call:
        nonlocal position
        if position == len(tokens):
            raise ExpressionError(f"column {len(text)}: expected an argument, found the end in {text!r}")
        token = tokens[position]
        position += 1
        if token.kind == "input":
            return Input(int(token.text[1:]))
        if token.kind == "number":
            return Number(int(token.text) if re.fullmatch(r"-?\d+", token.text) else float(token.text))
        if token.text in CONSTANTS:
            return Number(CONSTANTS[token.text])
        if token.text not in FUNCTIONS:
            raise ExpressionError(f"column {token.column}: unknown function {token.text!r} in {text!r}")
        return Call(token.text, tuple(node() for _ in range(FUNCTIONS[token.text][1])))

    tree = node()
    if position != len(tokens):
        raise ExpressionError(f"column {tokens[position].column}: unexpected {tokens[position].text!r} in {text!r}")
    return tree


def parse_pnnx(text: str) -> Input | Number | Call | ListOf:
    """`parse(text)`, or, where that fails and the text has no list, `parse_polish(text)`;
    the strict parser's ExpressionError if neither reads it."""
    try:
        return parse(text)
    except ExpressionError:
        if "[" in text:
            raise
        try:
            return parse_polish(text)
        except ExpressionError:
            pass
        raise


# %%
print(parse_pnnx("add(expm1,@0),log1p,abs(@0)"))
with check("bracket-less PNNX expressions"):
    tree = parse_pnnx("add(expm1,@0),log1p,abs(@0)")
    want = Call("add", (Call("expm1", (Input(0),)), Call("log1p", (Call("abs", (Input(0),)),))))
    assert tree == want, f"expected {want}, got {tree}"
    assert parse_pnnx("mul(@0,2)") == parse("mul(@0,2)"), "well-formed text should parse as before"

# %% [markdown]
# ## The layer
#
# `pnnx.Expression` parses and flattens its expression **once**, when the graph is built (a
# malformed one is a `LayerError` naming the operator), and runs the program on every forward.
# PNNX's list form arrives from `parse_value` as a tuple of items, which we join back into text.

# %%
#| export layers.expression
import numpy as np

from kuiper.errors import ExpressionError, LayerError
from kuiper.expression import Input, evaluate, parse_pnnx, to_rpn
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("pnnx.Expression")
class Expression(Layer):
    """Element-wise arithmetic that PNNX fused into one formula, e.g. add(@0,mul(@1,2))."""

    def __init__(self, op):
        super().__init__(op)
        text = self.param("expr", (str, tuple, bool, int, float))
        if isinstance(text, (bool, int, float)):  # a constant: PNNX writes expr=False, expr=-1
            text = str(int(text))
        if isinstance(text, tuple):
            text = "[" + ",".join(map(str, text)) + "]"
        try:
            self.program = to_rpn(parse_pnnx(text))
        except ExpressionError as err:
            raise LayerError(f"{op.where()}: {err}") from None
        used = max((node.index for node in self.program if isinstance(node, Input)), default=-1)
        if used >= len(op.inputs):
            raise LayerError(f"{op.where()}: the expression reads @{used} but the operator has "
                             f"{len(op.inputs)} input(s)")

    def forward(self, *inputs: Tensor) -> Tensor:
        result = evaluate(self.program, [x.numpy() for x in inputs])
        device = inputs[0].device if inputs else "cpu"
        if isinstance(result, list) and (any(item is None for item in result)
                                         or len({np.shape(item) for item in result}) > 1):
            return Items(result, device)  # no array holds [None, i] or indices of different shapes
        return Tensor(np.asarray(result), device=device)


class Items(Tensor):
    """A list operand that no array can hold, e.g. the indices [None, i] of x[:, i] (None for `:`):
    numpy() gives the list itself; as a tensor it is a (len,) int64 placeholder."""

    def __init__(self, items: list, device: str = "cpu"):
        super().__init__(np.zeros(len(items), np.int64), device=device)
        self.items = items

    def numpy(self) -> list:
        return self.items

    def to(self, device: str) -> Tensor:
        """The list with each array on `device`."""
        return Items([item if item is None or np.isscalar(item) else Tensor(item, device=self.device).to(device).data
                      for item in self.items], device)


# %%
import torch

from kuiper.layers.expression import Expression
from kuiper.pnnx import Operator

op = Operator("pnnx.Expression", "pnnx_expr_0", ["0", "1"], ["2"],
              params={"expr": "add(@0,mul(@1,2.000000e+00))"}, line=12)
x = np.random.default_rng(0).standard_normal((8, 64, 7, 7), dtype=np.float32)
bias = np.random.default_rng(1).standard_normal((64, 1, 1), dtype=np.float32)
got = Expression(op)(Tensor(x), Tensor(bias)).numpy()
want = torch.add(torch.from_numpy(x), torch.from_numpy(bias) * 2).numpy()
print("vs torch:", agreement(got, want), "| dtype:", got.dtype)

# %%
from kuiper.errors import LayerError

try:
    Expression(Operator("pnnx.Expression", "pnnx_expr_3", ["0"], ["1"], params={"expr": "add(@0,@1"}, line=40))
except LayerError as err:
    print("LayerError:", err)

# %% [markdown]
# ## Operator families as tables
#
# `pnnx.Expression` covers the arithmetic PNNX could fuse, but many element-wise operators reach
# the `.param` file as operators of their own: `torch.gt`, `torch.clamp`, `F.gelu`, `nn.PReLU`,
# `torch.where`, ... Each is a numpy function of some tensors and some settings, so one layer
# class serves them all: `Function` calls `fn`, filling its parameters **by name** — tensors
# from the operator's inputs (PNNX names them, `$input=0 $other=1`), settings from its
# parameters (`dim=1 keepdim=True`), weights from the `.bin` (`@weight`). The signature of `fn`
# is the specification: a missing setting is an error naming it, a setting annotated
# `Literal[...]` is checked against what is supported, and a setting `fn` does not know is a
# warning (PNNX writes constructor arguments such as `inplace` that change nothing at inference).
#
# The element-wise functions reuse the expression's own `UNARY` and `BINARY` tables: one table
# says what `abs` means, whether it arrives as `abs(@0)` inside an expression or as `torch.abs`.

# %%
#| export layers.elementwise
import inspect
import math
import typing
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np

from kuiper.errors import LayerError
from kuiper.expression import BINARY, UNARY
from kuiper.layer import Layer
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


# %% [markdown]
# ## Vectorised $e^x$, erf and tanh
#
# GELU, tanh, Mish and softmax spend their time in $e^x$, erf and tanh, and there is a catch:
# numba compiles `np.exp`, `math.erf` or `np.tanh` in a loop to one call of the C library's scalar
# function per element (LLVM can only vectorise such calls with Intel's SVML vector math library,
# which pip's llvmlite does not ship), so the loop runs one element at a time. A function made only
# of multiplies, adds, divides and integer operations vectorises like the rest of the loop.
#
# For $e^x$, the classic recipe, from the Cephes library's `expf` (S. L. Moshier, *Methods and
# Programs for Mathematical Functions*, 1989; the same one herumi/fmath and KuiperInfer use):
#
# 1. **range reduction**: $x = k \ln 2 + r$ with $k = \lfloor x \log_2 e + \tfrac12 \rfloor$, so
#    $|r| \le \tfrac12 \ln 2$; $\ln 2$ is split into a short `LN2_HI` (exact in float32, so
#    $k \cdot$ `LN2_HI` is exact) and the rest `LN2_LO`, and $r$ = x − k·`LN2_HI` − k·`LN2_LO`;
# 2. **polynomial**: on that small range $e^r \approx 1 + r + r^2 p(r)$, $p$ a degree-5
#    polynomial (`EXP_POLY`, highest power first, evaluated by Horner's rule);
# 3. **scale**: $e^x = 2^k e^r$, and $2^k$ is the float32 whose exponent bits are $k + 127$:
#    `bits_as_float32((k + 127) << 23)`. Results below the smallest normal float32 ($k < -126$)
#    need an exponent below the range, so multiply by $2^{\lfloor k/2 \rfloor}$ and
#    $2^{k - \lfloor k/2 \rfloor}$ instead: each fits, and the product rounds to the subnormal.
#
# Clamping $x$ to $[-104, 89]$ first keeps $k$ in range; below, $e^x$ underflows to 0 and above it
# overflows to `inf` by itself. NaN must stay NaN.
#
# erf and tanh are odd and flat beyond a few units, so a *rational* function does: $x \cdot
# p(x^2) / q(x^2)$ on $[-c, c]$, with $x$ clamped to that range first (beyond it, erf and tanh are
# ±1 to float32 precision). The coefficients are Eigen's (`Eigen/src/Core/MathFunctionsImpl.h`, the
# `generic_fast_erf_float` and `generic_fast_tanh_float` that TensorFlow and XLA use), highest power
# first. Loops that call them need `error_model="numpy"`: by default numba checks every float
# division for a zero divisor to raise Python's `ZeroDivisionError`, and that branch alone stops the
# loop from vectorising.
#
# `activate` then runs one activation, picked by a small integer code, over a whole array in one
# pass: one inner loop per code (the `if` outside the loop, so that each loop vectorises), on one
# thread for small arrays, where starting the thread pool costs more than the work. An input that is
# a permuted view (YOLOv5's detection head takes the sigmoid of a convolution's output seen as
# (N, 3, H, W, 85)) is read in memory order and its result laid out the same way: no transposing
# copy first. Lesson 04's `Elementwise` layers for the sigmoid, SiLU and the hard sigmoid are built
# on it here.

# %%
#| export layers.activation
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def bits_as_float32(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 `bits` (an LLVM bitcast: free at run time)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


# Cephes expf.c: log2(e), ln 2 split in two, and p(r) from its highest power down.
LOG2E, LN2_HI, LN2_LO = np.float32(1.44269504088896341), np.float32(0.693359375), np.float32(-2.12194440e-4)
EXP_POLY = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                          1.6666665459e-1, 5.0000001201e-1))


@njit(cache=True, error_model="numpy")
def exp_approx(x):
    """e^x for a float32 x, within 1 ulp (Cephes expf); vectorises in a numba loop, unlike np.exp."""
    if x != x:
        return x
    x = min(max(x, np.float32(-104.0)), np.float32(89.0))
    k = np.floor(x * LOG2E + np.float32(0.5))
    r = x - k * LN2_HI - k * LN2_LO
    p = EXP_POLY[0]
    for c in EXP_POLY[1:]:
        p = p * r + c
    half, rest = np.int32(k) >> 1, np.int32(k) - (np.int32(k) >> 1)
    return (p * r * r + r + np.float32(1.0)) * bits_as_float32((half + 127) << 23) * bits_as_float32((rest + 127) << 23)


# Eigen's erf and tanh: x·p(x²)/q(x²) on [-clamp, clamp], p and q from the highest power down.
ERF_CLAMP, TANH_CLAMP = np.float32(4.0), np.float32(7.90531110763549805)
ERF_P = tuple(np.float32(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                                       -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                                       -1.60960333262415e-02))
ERF_Q = tuple(np.float32(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                                       -7.37332916720468e-03, -1.42647390514189e-02))
TANH_P = tuple(np.float32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                        5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                        4.89352455891786e-03))
TANH_Q = tuple(np.float32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                        4.89352518554385e-03))


@njit(cache=True, error_model="numpy")
def odd_rational(x, clamp, p_coeffs, q_coeffs):
    """x·p(x²)/q(x²) for a float32 x clamped to [-clamp, clamp]; p and q by Horner's rule. NaN stays NaN."""
    x = min(max(x, -clamp), clamp)
    x2 = x * x
    p, q = p_coeffs[0], q_coeffs[0]
    for c in p_coeffs[1:]:
        p = p * x2 + c
    for c in q_coeffs[1:]:
        q = q * x2 + c
    return x * p / q


@njit(cache=True, error_model="numpy")
def erf_approx(x):
    """erf(x) for a float32 x, within 5e-7 (Eigen's rational approximation); vectorises, unlike math.erf."""
    return odd_rational(x, ERF_CLAMP, ERF_P, ERF_Q)


@njit(cache=True, error_model="numpy")
def tanh_approx(x):
    """tanh(x) for a float32 x, within 5e-7 (Eigen's rational approximation); vectorises, unlike np.tanh."""
    return odd_rational(x, TANH_CLAMP, TANH_P, TANH_Q)


GELU, GELU_TANH, TANH, MISH, SIGMOID, SILU, HARDSIGMOID = range(7)
SQRT_HALF, SQRT_2_OVER_PI, GELU_CUBIC = np.float32(0.5 ** 0.5), np.float32((2 / np.pi) ** 0.5), np.float32(0.044715)
PARALLEL_SIZE = 1 << 16  # elements: below this, one thread is done before a pool of them has started
CHUNK = 1 << 14  # elements per parallel task


@njit(cache=True, error_model="numpy")
def activate_range(x, out, start, stop, code):
    """out[i] = activation `code` of x[i] for start ≤ i < stop, x and out flat float32; one inner loop
    per code, so that each is straight arithmetic that vectorises."""
    one, half, two = np.float32(1.0), np.float32(0.5), np.float32(2.0)
    x, out = x[start:stop], out[start:stop]  # indices from 0: numba then needs no check for negative ones
    if code == GELU:
        for i in range(x.size):
            out[i] = half * x[i] * (one + erf_approx(x[i] * SQRT_HALF))
    elif code == GELU_TANH:
        for i in range(x.size):
            v = x[i]
            out[i] = half * v * (one + tanh_approx(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v)))
    elif code == TANH:
        for i in range(x.size):
            out[i] = tanh_approx(x[i])
    elif code == SIGMOID:
        for i in range(x.size):
            out[i] = one / (one + exp_approx(-x[i]))
    elif code == SILU:
        for i in range(x.size):
            out[i] = x[i] / (one + exp_approx(-x[i]))
    elif code == HARDSIGMOID:
        for i in range(x.size):
            out[i] = min(max(x[i] / np.float32(6.0) + half, np.float32(0.0)), one)
    else:  # Mish: x·tanh(log(1 + eˣ)) = x·n / (n + 2) with n = eˣ(eˣ + 2); x itself above 20, as softplus
        for i in range(x.size):
            e = exp_approx(min(x[i], np.float32(20.0)))
            n = e * (e + two)
            out[i] = x[i] * (n / (n + two))


@njit(parallel=True, cache=True)
def activate_parallel(x, out, code):
    """activate_range over all of flat x, in chunks of CHUNK elements spread over the threads."""
    for chunk in prange((x.size + CHUNK - 1) // CHUNK):
        activate_range(x, out, chunk * CHUNK, min((chunk + 1) * CHUNK, x.size), code)


def activate(x: np.ndarray, code: int) -> np.ndarray:
    """Activation `code` (GELU, GELU_TANH, TANH, MISH, SIGMOID, SILU, HARDSIGMOID) of every element of x,
    as a new float32 array of x's shape laid out in memory as x is (a permuted view, YOLO's detection
    head, is read in place, not copied first): one pass, on one thread below PARALLEL_SIZE elements."""
    x = np.asarray(x, dtype=np.float32)
    if not x.flags.c_contiguous:  # its axes in memory order, then back: no copy of a permuted dense array
        axes = np.argsort(np.negative(x.strides), kind="stable")
        return activate(np.require(x.transpose(axes), requirements="C"), code).transpose(np.argsort(axes))
    out = np.empty_like(x)
    if x.size < PARALLEL_SIZE:
        activate_range(x.reshape(-1), out.reshape(-1), 0, x.size, code)
    else:
        activate_parallel(x.reshape(-1), out.reshape(-1), code)
    return out


@register("nn.Sigmoid", "F.sigmoid", "torch.sigmoid")
class Sigmoid(Elementwise):
    """1 / (1 + e^-x)."""

    fn = staticmethod(lambda x: activate(x, SIGMOID))


@register("nn.SiLU", "F.silu")
class SiLU(Elementwise):
    """x · sigmoid(x), YOLOv5's activation."""

    fn = staticmethod(lambda x: activate(x, SILU))


@register("nn.Hardsigmoid", "F.hardsigmoid")
class Hardsigmoid(Elementwise):
    """clip(x / 6 + 1/2, 0, 1), MobileNetV3's gate."""

    fn = staticmethod(lambda x: activate(x, HARDSIGMOID))


# %%
@njit(parallel=True)
def approximate_all(x, out):
    for i in prange(x.size):
        out[0, i], out[1, i], out[2, i] = exp_approx(x[i]), erf_approx(x[i]), tanh_approx(x[i])


# exp_approx against e^x in double precision, over the whole float32 range
bits = np.arange(0, 2**32, 4099, dtype=np.uint32)  # a million float32s spread over every exponent
edges = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.72, 88.73, -87.3, -103.2, -103.3, -104.5])
x = np.concatenate([bits.view(np.float32), np.linspace(-105, 90, 100_000, dtype=np.float32), edges])
got = np.empty((3, x.size), np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    approximate_all(x, got)
    exact = np.exp(x.astype(np.float64))
    nearest = exact.astype(np.float32)
normal = np.isfinite(nearest) & (nearest >= np.finfo(np.float32).tiny)
ulps = np.abs(got[0][normal] - exact[normal]) / np.spacing(nearest[normal])
worst = int(np.argmax(ulps))
assert ulps[worst] <= 1.0, (f"at x = {x[normal][worst]!r}: expected {nearest[normal][worst]!r}, "
                            f"got {got[0][normal][worst]!r} ({ulps[worst]:.1f} ulp off)")
special = {np.nan: (np.nan, np.nan, np.nan), np.inf: (np.inf, 1, 1), -np.inf: (0, -1, -1), 0.0: (1, 0, 0),
           89.0: (np.inf, 1, 1), -104.5: (0, -1, -1), -100.0: (np.float32(np.exp(-100.0)), -1, -1)}
one = np.empty((3, len(special)), np.float32)
approximate_all(np.float32(list(special)), one)
assert np.allclose(one.T, list(special.values()), rtol=1e-6, atol=2e-45, equal_nan=True), \
    f"exp, erf, tanh of {list(special)}: expected\n{np.float32(list(special.values()))}\ngot\n{one.T}"
print(f"exp_approx: at most {ulps.max():.2f} ulp where e^x is a normal float32, over {normal.sum():,} values")
for row, (name, exact_fn) in enumerate([("erf", erf), ("tanh", np.tanh)]):
    finite = np.isfinite(x)
    error = np.abs(got[row + 1][finite] - exact_fn(x[finite].astype(np.float64))).max()
    assert error <= 5e-7, f"{name}_approx: expected within 5e-7 of {name}, got {error:.1e} off"
    print(f"{name}_approx: at most {error:.1e} from {name} over the same values")

# %% [markdown]
# The activations are the same pattern with settings. Each function below is registered under its
# `nn.` module name and its `F.` function name, and its parameter names are PyTorch's, so
# `nn.Softplus beta=2 threshold=10` and `F.softplus` both land here. Formulas follow the PyTorch
# documentation of each module; GELU, tanh and Mish run `activate`, one vectorised pass.

# %%
#| export layers.elementwise
from kuiper.layers.activation import activate, GELU, GELU_TANH, MISH, SIGMOID, TANH


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


# %% [markdown]
# ## Exercise 5.6 — softmax in one pass per row
#
# Softmax normalises exponentials along one dimension: $e^{x_i - m} / \sum_j e^{x_j - m}$, with
# $m$ the row's maximum so that no $e^x$ overflows; log-softmax is $x_i - m - \log \sum_j
# e^{x_j - m}$. numpy needs five passes and three temporary arrays for it. Write `softmax_rows`:
# for each row of `x` (in parallel over the rows), find the maximum, then store each
# `exp_approx(x − m)` in `out` while summing them, then either scale `out` by 1/sum or, when `log`
# is true, overwrite it with x − m − log(sum). A row that holds a NaN gives NaNs, as in PyTorch.

# %%
#| export layers.elementwise
#| exercise: softmax_rows: per row (prange) the maximum, out = exp_approx(x − max) and its sum, then out / sum, or x − max − log(sum) when log
import math

from numba import njit, prange

from kuiper.layers.activation import exp_approx


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def softmax_rows(x, out, log):
    """Softmax (log False) or log-softmax (log True) of each row of x (R, C) into out (R, C), float32, C ≥ 1."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


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


# %%
scores = np.random.default_rng(3).standard_normal((2, 3, 5), dtype=np.float32) * 4
scores[0, 1, 2] = 90.0  # e^90 overflows float32: the maximum must be subtracted first

with check("Exercise 5.6"):
    for dim, log in [(-1, False), (1, False), (-1, True), (1, True)]:
        name = f"{'log_softmax' if log else 'softmax'}(dim={dim})"
        got = along_rows(scores, dim, log)
        want = (torch.log_softmax if log else torch.softmax)(torch.from_numpy(scores), dim).numpy()
        assert got.shape == want.shape, f"{name} of {scores.shape}: expected shape {want.shape}, got {got.shape}"
        assert np.allclose(got, want, atol=1e-5), f"{name}: expected\n{want[0].round(4)}\ngot\n{got[0].round(4)}"
    got = along_rows(np.float32([[1.0, np.nan, 2.0]]), -1, False)
    assert np.isnan(got).all(), f"softmax of [1, nan, 2]: expected [nan, nan, nan] as PyTorch gives, got {got[0]}"

# %% [markdown]
# One line of a `.param` file becomes a layer with no code of its own: the settings are read by
# name, and a setting outside what the function supports is refused when the graph is built.

# %%
from kuiper.registry import LAYERS, create_layer

gelu_op = Operator("nn.GELU", "gelu", ["0"], ["1"], params={"approximate": "tanh"}, line=9)
x = np.random.default_rng(0).standard_normal((2, 3, 5), dtype=np.float32)
got = create_layer(gelu_op)(Tensor(x)).numpy()
want = torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()
print("nn.GELU(tanh) vs torch:", agreement(got, want))
try:
    create_layer(Operator("nn.GELU", "gelu", ["0"], ["1"], params={"approximate": "sigmoid"}, line=9))
except LayerError as err:
    print("LayerError:", err)
with check("table-driven layers"):
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), "nn.GELU(tanh) should match torch"
    assert "torch.sinh" in LAYERS and "F.logsigmoid" in LAYERS, "the tables should register torch.* and F.* names"

# %% [markdown]
# ## Reductions
#
# A reduction folds dimensions away. numpy does the loop; the table's job is to read PyTorch's
# settings: `dim` is an int, a tuple or absent (all dimensions), `keepdim` keeps the folded
# dimensions with size 1, and `max`/`min` with a `dim` return values *and* indices (two outputs
# in the graph).
#
# ## Exercise 5.7 — reductions
#
# Write the bodies below with numpy. `axes` turns PNNX's `dim` (an int, a list or absent) into a
# numpy `axis`; every reduction honours `keepdim`. `extreme` builds `torch.max`/`torch.min`: one
# value over everything without `dim`, else the values *and* indices along `dim` (from `arg`, e.g.
# `np.argmax`). `spread` builds `torch.var`/`torch.std`: the divisor is n − correction, where an
# absent `correction` is 1 if `unbiased` else 0. `norm` takes p = 'fro' (2) and inf; `logsumexp`
# subtracts the maximum first; `topk` returns the k largest (or smallest) values in order, with
# their indices.

# %%
#| export layers.reduction
#| exercise: the reductions: PyTorch's dim (int, tuple, None) and keepdim; max/min along a dim give (values, indices); var/std's correction; norm; logsumexp; topk
from collections.abc import Callable
from typing import Literal

import numpy as np

from kuiper.layers.elementwise import function


def axes(dim: int | tuple | None) -> int | tuple | None:
    """PNNX's dim (an int, a tuple of ints, or None for all) as a numpy axis."""
    ### BEGIN SOLUTION
    return tuple(dim) if isinstance(dim, (tuple, list)) else dim
    ### END SOLUTION


@function("torch.sum", "Tensor.sum", name="sum")
def sum_over(input, dim=None, keepdim=False):
    """Σ over dim."""
    ### BEGIN SOLUTION
    return np.sum(input, axis=axes(dim), keepdims=keepdim)
    ### END SOLUTION


@function("torch.mean", "Tensor.mean")
def mean(input, dim=None, keepdim=False):
    """Arithmetic mean over dim."""
    ### BEGIN SOLUTION
    return np.mean(input, axis=axes(dim), keepdims=keepdim)
    ### END SOLUTION


@function("torch.prod", "Tensor.prod")
def prod(input, dim=None, keepdim=False):
    """Π over dim."""
    ### BEGIN SOLUTION
    return np.prod(input, axis=axes(dim), keepdims=keepdim)
    ### END SOLUTION


@function("torch.amax", "Tensor.amax")
def amax(input, dim=None, keepdim=False):
    """The largest value over dim."""
    ### BEGIN SOLUTION
    return np.max(input, axis=axes(dim), keepdims=keepdim)
    ### END SOLUTION


@function("torch.amin", "Tensor.amin")
def amin(input, dim=None, keepdim=False):
    """The smallest value over dim."""
    ### BEGIN SOLUTION
    return np.min(input, axis=axes(dim), keepdims=keepdim)
    ### END SOLUTION


def extreme(pick: Callable, arg: Callable) -> Callable:
    """torch.max/min: the value over everything, or (values, indices) along one dim."""
    def fn(input, dim=None, keepdim=False):
        ### BEGIN SOLUTION
        if dim is None:
            return pick(input)
        index = np.expand_dims(arg(input, axis=dim), dim)
        values = np.take_along_axis(input, index, axis=dim)
        return (values, index) if keepdim else (values.squeeze(dim), index.squeeze(dim))
        ### END SOLUTION
    return fn


function("torch.max", "Tensor.max", name="max")(extreme(np.max, np.argmax))
function("torch.min", "Tensor.min", name="min")(extreme(np.min, np.argmin))


@function("torch.argmax", "Tensor.argmax")
def argmax(input, dim=None, keepdim=False):
    """The index of the first largest value over dim (of the flattened tensor without one; keepdim
    then keeps every dimension with size 1, as torch does)."""
    ### BEGIN SOLUTION
    return np.argmax(input, axis=dim, keepdims=keepdim)
    ### END SOLUTION


@function("torch.argmin", "Tensor.argmin")
def argmin(input, dim=None, keepdim=False):
    """The index of the first smallest value over dim (of the flattened tensor without one; keepdim
    then keeps every dimension with size 1, as torch does)."""
    ### BEGIN SOLUTION
    return np.argmin(input, axis=dim, keepdims=keepdim)
    ### END SOLUTION


def spread(stat: Callable) -> Callable:
    """torch.var/std: Bessel's correction from `correction`, or 1/0 from `unbiased`."""
    def fn(input, dim=None, unbiased=True, keepdim=False, correction=None):
        ### BEGIN SOLUTION
        ddof = int(unbiased) if correction is None else correction
        return stat(input, axis=axes(dim), ddof=ddof, keepdims=keepdim)
        ### END SOLUTION
    return fn


function("torch.var", "Tensor.var", name="var")(spread(np.var))
function("torch.std", "Tensor.std", name="std")(spread(np.std))


@function("torch.norm", "Tensor.norm", "torch.linalg.vector_norm")
def norm(input, p=2, dim=None, keepdim=False):
    """(Σ |x|^p)^(1/p) over dim; p='fro' is 2, p=inf the largest |x|."""
    ### BEGIN SOLUTION
    size = np.abs(input)
    p = 2 if p == "fro" else float(p) if isinstance(p, str) and p.lstrip("-") == "inf" else p
    if p == float("inf"):
        return np.max(size, axis=axes(dim), keepdims=keepdim)
    return np.sum(size ** p, axis=axes(dim), keepdims=keepdim) ** (1 / p)
    ### END SOLUTION


@function("F.pairwise_distance", "torch.pairwise_distance")
def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """‖x1 − x2 + eps‖_p over the last dimension (PyTorch adds eps to the difference)."""
    return norm(x1 - x2 + np.float32(eps), p, -1, keepdim)


@function("torch.logsumexp", "Tensor.logsumexp")
def logsumexp(input, dim, keepdim=False):
    """log Σ exp(x) over dim, shifted by the maximum."""
    ### BEGIN SOLUTION
    top = np.max(input, axis=axes(dim), keepdims=True)
    out = np.log(np.sum(np.exp(input - top), axis=axes(dim), keepdims=True)) + top
    return out if keepdim else np.squeeze(out, axis=axes(dim))
    ### END SOLUTION


@function("torch.cumsum", "Tensor.cumsum")
def cumsum(input, dim):
    """Running sums along dim."""
    ### BEGIN SOLUTION
    return np.cumsum(input, axis=dim)
    ### END SOLUTION


@function("torch.cumprod", "Tensor.cumprod")
def cumprod(input, dim):
    """Running products along dim."""
    ### BEGIN SOLUTION
    return np.cumprod(input, axis=dim)
    ### END SOLUTION


@function("torch.topk", "Tensor.topk")
def topk(input, k, dim=-1, largest=True, sorted=True):
    """The k largest (or smallest) values along dim, and their indices: sorted, also for sorted=False
    (whose order torch leaves unspecified)."""
    ### BEGIN SOLUTION
    order = np.argsort(-input if largest else input, axis=dim, kind="stable")
    index = np.take(order, np.arange(k), axis=dim)
    return np.take_along_axis(input, index, axis=dim), index
    ### END SOLUTION


# %%
T = torch.from_numpy
r = np.random.default_rng(5).standard_normal((2, 3, 4), dtype=np.float32)


def same(got: np.ndarray, want, what: str) -> None:
    """Assert `got` equals torch's `want` in shape and (to 1e-5 of its scale) in value."""
    want = want.numpy() if hasattr(want, "numpy") else np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: expected shape {want.shape}, got {got.shape}"
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5), f"{what}: expected\n{np.round(want, 4)}\ngot\n{np.round(got, 4)}"


with check("Exercise 5.7"):
    assert axes([0, 2]) == (0, 2) and axes(1) == 1 and axes(None) is None, \
        f"expected axes([0, 2]), axes(1), axes(None) = (0, 2), 1, None, got {axes([0, 2])}, {axes(1)}, {axes(None)}"
    same(sum_over(r, dim=[0, 2], keepdim=True), T(r).sum(dim=(0, 2), keepdim=True), "sum(dim=[0, 2], keepdim=True)")
    same(mean(r, dim=-1), T(r).mean(dim=-1), "mean(dim=-1)")
    same(prod(r, dim=1), T(r).prod(dim=1), "prod(dim=1)")
    same(amax(r, dim=[1, 2]), T(r).amax(dim=(1, 2)), "amax(dim=[1, 2])")
    same(amin(r), T(r).amin(), "amin()")
    for keepdim in (False, True):
        values, indices = extreme(np.max, np.argmax)(r, dim=1, keepdim=keepdim)
        want = T(r).max(dim=1, keepdim=keepdim)
        same(values, want.values, f"max(dim=1, keepdim={keepdim}) values")
        same(indices, want.indices, f"max(dim=1, keepdim={keepdim}) indices")
    same(extreme(np.min, np.argmin)(r), T(r).min(), "min() over everything")
    same(argmax(r, dim=2, keepdim=True), T(r).argmax(dim=2, keepdim=True), "argmax(dim=2, keepdim=True)")
    same(argmin(r, keepdim=True), T(r).argmin(keepdim=True), "argmin(keepdim=True) without dim")
    same(spread(np.var)(r, dim=1), T(r).var(dim=1), "var(dim=1), unbiased")
    same(spread(np.var)(r, dim=1, unbiased=False), T(r).var(dim=1, unbiased=False), "var(dim=1, unbiased=False)")
    same(spread(np.std)(r, dim=[0, 2], correction=0, keepdim=True), T(r).std(dim=(0, 2), correction=0, keepdim=True),
         "std(dim=[0, 2], correction=0, keepdim=True)")
    same(norm(r, p=3, dim=1), T(r).norm(p=3, dim=1), "norm(p=3, dim=1)")
    same(norm(r, p="inf", dim=2, keepdim=True), torch.linalg.vector_norm(T(r), ord=float("inf"), dim=2, keepdim=True),
         "norm(p='inf', dim=2, keepdim=True)")
    same(norm(r, p="fro"), T(r).norm(p="fro"), "norm(p='fro')")
    big = r * 100
    same(logsumexp(big, dim=1), T(big).logsumexp(dim=1), "logsumexp of values up to ±300, dim=1")
    same(logsumexp(r, dim=[0, 2], keepdim=True), T(r).logsumexp(dim=(0, 2), keepdim=True), "logsumexp(dim=[0, 2], keepdim=True)")
    same(cumsum(r, dim=2), T(r).cumsum(dim=2), "cumsum(dim=2)")
    same(cumprod(r, dim=0), T(r).cumprod(dim=0), "cumprod(dim=0)")
    for largest in (True, False):
        values, indices = topk(r, 2, dim=1, largest=largest)
        want = T(r).topk(2, dim=1, largest=largest)
        same(values, want.values, f"topk(2, dim=1, largest={largest}) values")
        same(indices, want.indices, f"topk(2, dim=1, largest={largest}) indices")

# %% [markdown]
# ## Normalisation, padding, matrix products, indexing
#
# The same `function` decorator covers the remaining families. Normalisations subtract a mean and
# divide by a deviation over some dimensions (LayerNorm: the last ones; GroupNorm: groups of
# channels; InstanceNorm: each channel of each sample), then scale and shift by learnt weights.
#
# ## Exercise 5.8 — normalisations
#
# `standardize` is the one kernel: (x − mean) / √(var + eps) over `axes`, with the biased variance.
# `scale_shift` multiplies by `weight` and adds `bias`, laid along the channel axis 1 or along the
# last dimensions (−1). Then each normalisation only chooses the axes: LayerNorm the trailing
# `len(normalized_shape)` dimensions; GroupNorm the channels of each of `num_groups` groups
# together with the spatial dimensions; InstanceNorm each channel's spatial dimensions (or the
# running statistics when told to use them); BatchNorm always the running statistics; RMSNorm
# divides by √(mean(x²) + eps) without subtracting the mean (eps None: float32's epsilon).

# %%
#| export layers.normalization
#| exercise: standardize over axes (biased variance, eps inside the root), scale_shift per channel, LayerNorm as one numba pass per row, and GroupNorm, InstanceNorm, BatchNorm, RMSNorm
import math
from typing import Literal

import numpy as np
from numba import njit, prange

from kuiper.layers.elementwise import function


def standardize(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    """(x − mean) / √(var + eps) over `axes` (biased variance, as every PyTorch norm uses)."""
    ### BEGIN SOLUTION
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps))
    ### END SOLUTION


def scale_shift(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, channel_axis: int) -> np.ndarray:
    """x·weight + bias, the per-channel vectors laid along `channel_axis` (−1: the last dims)."""
    ### BEGIN SOLUTION
    if channel_axis == 1 and weight is not None:
        weight = weight.reshape(-1, *([1] * (x.ndim - 2)))
    if channel_axis == 1 and bias is not None:
        bias = bias.reshape(-1, *([1] * (x.ndim - 2)))
    x = x if weight is None else x * weight
    return x if bias is None else x + bias
    ### END SOLUTION


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def layer_norm_rows(x, weight, bias, eps, out):
    """out[r] = (x[r] − mean) / √(var + eps) · weight + bias for each row r of x (R, C), float32;
    weight and bias (C,). Three passes over a row that stays in cache: sum, squared deviations, output."""
    ### BEGIN SOLUTION
    rows, size = x.shape
    for r in prange(rows):
        total = 0.0  # float64 sums: a row of 768 values near 1e4 keeps its mean to float32 precision
        for i in range(size):
            total += x[r, i]
        mean = np.float32(total / size)
        squares = 0.0
        for i in range(size):
            squares += (x[r, i] - mean) * (x[r, i] - mean)
        scale = np.float32(1.0 / np.sqrt(squares / size + eps))
        for i in range(size):
            out[r, i] = (x[r, i] - mean) * scale * weight[i] + bias[i]
    ### END SOLUTION


@function("nn.LayerNorm", "F.layer_norm")
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, elementwise_affine=True):
    """Standardise over the trailing len(normalized_shape) dimensions, then weight·x + bias."""
    ### BEGIN SOLUTION
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    size = math.prod(input.shape[-count:])
    x = np.ascontiguousarray(input, dtype=np.float32).reshape(-1, size)  # (rows, normalised elements)
    weight = np.ones(size, np.float32) if weight is None else np.ascontiguousarray(weight, np.float32).reshape(-1)
    bias = np.zeros(size, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32).reshape(-1)
    out = np.empty_like(x)
    layer_norm_rows(x, weight, bias, np.float32(eps), out)
    return out.reshape(input.shape)
    ### END SOLUTION


@function("nn.GroupNorm", "F.group_norm")
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, affine=True):
    """Standardise each sample over groups of num_groups consecutive channel blocks."""
    ### BEGIN SOLUTION
    n, c = input.shape[:2]
    grouped = input.reshape(n, num_groups, -1)  # (N, G, C/G · spatial)
    out = standardize(grouped, (2,), eps).reshape(input.shape)
    return scale_shift(out, weight, bias, 1)
    ### END SOLUTION


@function("nn.InstanceNorm1d", "nn.InstanceNorm2d", "F.instance_norm")
def instance_norm(input, weight=None, bias=None, running_mean=None, running_var=None, eps=1e-5, affine=False,
                  use_input_stats=True, track_running_stats=False):
    """Standardise each channel of each sample over its spatial dimensions, or by the running
    statistics where nn.InstanceNorm tracks them or F.instance_norm is told not to use the input's."""
    ### BEGIN SOLUTION
    if running_mean is not None and (track_running_stats or not use_input_stats):
        shape = (-1, *([1] * (input.ndim - 2)))
        out = (input - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + np.float32(eps))
    else:
        out = standardize(input, tuple(range(2, input.ndim)), eps)
    return scale_shift(out, weight, bias, 1)
    ### END SOLUTION


@function("F.batch_norm")
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: Literal[False] = False,
               momentum=0.1, eps=1e-5):
    """Inference batch norm with its statistics and weights as tensors: (x − mean) / √(var + eps)·w + b."""
    ### BEGIN SOLUTION
    shape = (-1, *([1] * (input.ndim - 2)))
    out = (input - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + np.float32(eps))
    return scale_shift(out, weight, bias, 1)
    ### END SOLUTION


@function("nn.RMSNorm", "F.rms_norm")
def rms_norm(input, normalized_shape, weight=None, eps=None, elementwise_affine=True):
    """x / √(mean(x²) + eps) over the trailing dims, times weight; eps None is float32's epsilon."""
    ### BEGIN SOLUTION
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    eps = np.finfo(np.float32).eps if eps is None else eps
    out = input / np.sqrt((input ** 2).mean(axis=tuple(range(-count, 0)), keepdims=True) + np.float32(eps))
    return out if weight is None else out * weight
    ### END SOLUTION


# %%
F = torch.nn.functional
images = np.random.default_rng(7).standard_normal((2, 6, 3, 4), dtype=np.float32) * 3 + 1
w6, b6 = (np.random.default_rng(8).standard_normal((2, 6), dtype=np.float32))
w4, b4 = (np.random.default_rng(9).standard_normal((2, 4), dtype=np.float32))
stats = np.abs(w6) + 0.5

with check("Exercise 5.8"):
    same(standardize(images, (1, 3), 0.5), (T(images) - T(images).mean(dim=(1, 3), keepdim=True))
         / torch.sqrt(T(images).var(dim=(1, 3), unbiased=False, keepdim=True) + 0.5), "standardize over (1, 3), eps=0.5")
    same(scale_shift(images, w6, b6, 1), T(images) * T(w6)[:, None, None] + T(b6)[:, None, None], "scale_shift along axis 1")
    same(scale_shift(images, w4, None, -1), T(images) * T(w4), "scale_shift along the last axis, no bias")
    same(layer_norm(images, [4], w4, b4, eps=0.5), F.layer_norm(T(images), [4], T(w4), T(b4), eps=0.5), "layer_norm([4], eps=0.5)")
    same(layer_norm(images, [3, 4]), F.layer_norm(T(images), [3, 4]), "layer_norm([3, 4]) without weights")
    same(group_norm(images, 3, w6, b6), F.group_norm(T(images), 3, T(w6), T(b6)), "group_norm(3 groups of 2 channels)")
    same(group_norm(images, 2, eps=0.5), F.group_norm(T(images), 2, eps=0.5), "group_norm(2 groups, eps=0.5)")
    same(instance_norm(images, w6, b6, affine=True), F.instance_norm(T(images), weight=T(w6), bias=T(b6)),
         "instance_norm with the input's statistics")
    same(instance_norm(images, None, None, b6, stats, use_input_stats=False),
         F.instance_norm(T(images), T(b6), T(stats), use_input_stats=False), "instance_norm(use_input_stats=False)")
    same(batch_norm(images, b6, stats, w6, None, eps=0.1), F.batch_norm(T(images), T(b6), T(stats), T(w6), None, eps=0.1),
         "batch_norm(eps=0.1)")
    same(rms_norm(images, [4], w4, eps=0.5), F.rms_norm(T(images), [4], T(w4), eps=0.5), "rms_norm([4], eps=0.5)")
    same(rms_norm(images, [3, 4]), F.rms_norm(T(images), [3, 4]), "rms_norm([3, 4]), eps None")

# %% [markdown]
# Two more normalisations that are not a `standardize`: LocalResponseNorm divides by a sum of squares
# over neighbouring channels (a running sum along the channels), and F.normalize by a p-norm.

# %%
#| export layers.normalization
@function("nn.LocalResponseNorm", "F.local_response_norm")
def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """x / (k + alpha/size · Σ x² over `size` neighbouring channels)^beta (Krizhevsky et al., 2012)."""
    square = np.pad(input ** 2, [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (input.ndim - 2))
    window = np.cumsum(np.concatenate([np.zeros_like(square[:, :1]), square], axis=1), axis=1)
    total = window[:, size:] - window[:, :-size]  # (N, C, ...): the sum over each channel's window
    return input / (k + alpha / size * total) ** beta


@function("F.normalize")
def normalize(input, p=2.0, dim=1, eps=1e-12):
    """x / max(‖x‖_p, eps) along dim."""
    size = np.sum(np.abs(input) ** p, axis=dim, keepdims=True) ** (1 / p)
    return input / np.maximum(size, eps)


# %% [markdown]
# Padding: PyTorch lists the pads of the *last* dimension first, `(left, right, top, bottom)`;
# numpy's `np.pad` wants one pair per dimension from the first, and calls replicate `edge` and
# circular `wrap`.
#
# ## Exercise 5.9 — padding
#
# `pad_widths` turns PyTorch's `(last_lo, last_hi, prev_lo, prev_hi, ...)` into numpy's list of
# `(lo, hi)` pairs, one per dimension from the first (missing leading ones are `(0, 0)`). `pad`
# pads with `np.pad` in the numpy mode named by `NUMPY_MODES` (`value`, default 0, for constant);
# a negative pad crops instead. `padder` builds `nn.ReflectionPad2d(padding)` and friends: one int
# for every side, or a tuple as F.pad takes it.

# %%
#| export layers.padding
#| exercise: PyTorch's pad tuple (last dimension first) as numpy widths; F.pad in four modes, negative pads crop; nn.*PadNd's padding
from collections.abc import Callable
from typing import Literal

import numpy as np

from kuiper.layers.elementwise import function

NUMPY_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad_widths(pad: tuple[int, ...], ndim: int) -> list[tuple[int, int]]:
    """PyTorch's (last_lo, last_hi, prev_lo, prev_hi, ...) as numpy's [(lo, hi)] per dimension."""
    ### BEGIN SOLUTION
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)][::-1]
    return [(0, 0)] * (ndim - len(pairs)) + pairs
    ### END SOLUTION


@function("F.pad", "torch.nn.functional.pad")
def pad(input, pad, mode: Literal["constant", "reflect", "replicate", "circular"] = "constant", value=None):
    """input padded by `pad` (last dimension's pair first), with value, a mirror, the edge or a wrap."""
    ### BEGIN SOLUTION
    pad = (pad,) * 2 if isinstance(pad, int) else tuple(pad)
    crop = [slice(-lo if lo < 0 else None, hi if hi < 0 else None) for lo, hi in pad_widths(pad, input.ndim)]
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in pad_widths(pad, input.ndim)]
    if mode == "constant":
        out = np.pad(input, widths, constant_values=0 if value is None else value)
    else:
        out = np.pad(input, widths, mode=NUMPY_MODES[mode])
    return out[tuple(crop)]
    ### END SOLUTION


def padder(mode: str, dims: int) -> Callable:
    """nn.*PadNd as F.pad: `padding` is one int for every side or a tuple like F.pad's."""
    def fn(input, padding, value=0.0):
        ### BEGIN SOLUTION
        sides = (padding,) * (2 * dims) if isinstance(padding, int) else padding
        return pad(input, sides, mode, value)
        ### END SOLUTION
    return fn


# %%
grid = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)

with check("Exercise 5.9"):
    got = pad_widths((1, 2, 3, 4), 4)
    assert got == [(0, 0), (0, 0), (3, 4), (1, 2)], f"pad_widths((1, 2, 3, 4), 4): expected [(0, 0), (0, 0), (3, 4), (1, 2)], got {got}"
    for mode in ("constant", "reflect", "replicate", "circular"):
        same(pad(grid, (1, 2, 3, 0), mode), F.pad(T(grid), (1, 2, 3, 0), mode), f"pad (1, 2, 3, 0) in mode {mode}")
    same(pad(grid, (2, 1), value=-7.0), F.pad(T(grid), (2, 1), value=-7.0), "constant pad with value=-7")
    same(pad(grid, (-1, 2, 1, -2)), F.pad(T(grid), (-1, 2, 1, -2)), "negative pads (-1, 2, 1, -2) crop")
    same(padder("reflect", 2)(grid, 2), torch.nn.ReflectionPad2d(2)(T(grid)), "nn.ReflectionPad2d(2)")
    same(padder("constant", 1)(grid, (0, 3), 1.5), torch.nn.ConstantPad1d((0, 3), 1.5)(T(grid)), "nn.ConstantPad1d((0, 3), 1.5)")

# %%
#| export layers.padding
for _dims in (1, 2, 3):
    function(f"nn.ZeroPad{_dims}d", f"nn.ConstantPad{_dims}d", name=f"ConstantPad{_dims}d")(padder("constant", _dims))
    function(f"nn.ReflectionPad{_dims}d", name=f"ReflectionPad{_dims}d")(padder("reflect", _dims))
    function(f"nn.ReplicationPad{_dims}d", name=f"ReplicationPad{_dims}d")(padder("replicate", _dims))
    function(f"nn.CircularPad{_dims}d", name=f"CircularPad{_dims}d")(padder("circular", _dims))


# %% [markdown]
# Matrix products are numpy's `matmul`, which broadcasts batch dimensions exactly as
# `torch.matmul` does. A stack of products (attention's q·kᵀ per head) is one BLAS call per matrix:
# we run those on one BLAS thread, since waking OpenBLAS's threads for each small product costs more
# than they bring (measured on two busy cores: 10 to 600× torch's time, one thread under 1×); `addmm` is beta·input + alpha·(mat1 @ mat2); `torch.einsum` takes any
# number of inputs and its equation, which `np.einsum` reads the same way.

# %%
#| export layers.linalg
import numpy as np
from threadpoolctl import ThreadpoolController

from kuiper.errors import LayerError
from kuiper.layer import Layer
from kuiper.layers.elementwise import function
from kuiper.registry import register
from kuiper.tensor import Tensor

BLAS = ThreadpoolController()  # numpy's BLAS library, whose thread count a stack of products limits


@function("torch.matmul", "Tensor.matmul", "torch.mm", "Tensor.mm", "torch.bmm", "Tensor.bmm", "torch.mv",
          "Tensor.mv")
def matmul(input, other):
    """The matrix product, batch dimensions broadcast (a vector operand is a row or a column); a stack
    of products (an operand of 3 or more dimensions) runs on one BLAS thread."""
    if max(np.ndim(input), np.ndim(other)) < 3:
        return np.matmul(input, other)
    with BLAS.limit(limits=1, user_api="blas"):
        return np.matmul(input, other)


@function("F.linear")
def linear(input, weight, bias=None):
    """input @ weightᵀ + bias, with the weight a tensor of the graph (nn.Linear holds its own)."""
    out = np.matmul(input, weight.T)
    return out if bias is None else out + bias


@register("torch.einsum")
class Einsum(Layer):
    """np.einsum of the inputs by the operator's `equation` (e.g. ij,jk->ik), as torch.einsum."""

    def __init__(self, op):
        super().__init__(op)
        self.equation = self.param("equation", str)

    def forward(self, *xs: Tensor) -> Tensor:
        try:
            out = np.einsum(self.equation, *(x.numpy() for x in xs))
        except ValueError as err:
            raise LayerError(f"{self.op.where()}: {self.equation!r}: {err}") from None
        return Tensor(np.asarray(out), device=xs[0].device)


@function("torch.addmm", "Tensor.addmm")
def addmm(input, mat1, mat2, beta=1, alpha=1):
    """beta·input + alpha·(mat1 @ mat2)."""
    return beta * input + alpha * np.matmul(mat1, mat2)


# %% [markdown]
# Shape and indexing operators move or pick elements without arithmetic.

# %%
#| export layers.indexing
from typing import Literal

import numpy as np

from kuiper.layers.elementwise import function


@function("Tensor.expand")
def expand(input, sizes):
    """input broadcast to `sizes` (−1 keeps a dimension)."""
    sizes = tuple(sizes)
    lead = len(sizes) - input.ndim
    shape = tuple(input.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return np.broadcast_to(input, shape)


@function("Tensor.repeat", name="repeat")
def repeat(input, sizes):
    """input tiled `sizes` times along each dimension (extra leading dimensions allowed)."""
    return np.tile(input, sizes)


@function("torch.tile", "Tensor.tile")
def tile(input, dims):
    """input tiled `dims` times; a shorter dims tiles the trailing dimensions."""
    return np.tile(input, dims)


@function("torch.flip", "Tensor.flip")
def flip(input, dims):
    """input reversed along dims."""
    return np.flip(input, axis=tuple(dims) if isinstance(dims, tuple) else dims)


@function("torch.roll", "Tensor.roll")
def roll(input, shifts, dims=None):
    """input rotated by shifts along dims (of the flattened tensor without dims)."""
    return np.roll(input, shifts, axis=dims)


@function("torch.t", "Tensor.t")
def t(input):
    """The transpose of a matrix (a vector is returned as it is)."""
    return input.T


@function("torch.unbind", "Tensor.unbind")
def unbind(input, dim=0):
    """The slices of input along dim, as a tuple of views (no copies, as torch.unbind)."""
    return tuple(np.moveaxis(input, dim, 0))


@function("torch.narrow", "Tensor.narrow")
def narrow(input, dim, start, length):
    """length elements from start along dim."""
    return np.take(input, np.arange(start, start + length) % input.shape[dim], axis=dim)


@function("torch.index_select", "Tensor.index_select")
def index_select(input, dim, index):
    """The elements at `index` (a vector of int64) along dim."""
    return np.take(input, index.astype(np.int64), axis=dim)


@function("torch.gather", "Tensor.gather")
def gather(input, dim, index):
    """out[i][j][k] = input[i][index[i][j][k]][k] for dim 1, and likewise for other dims."""
    return np.take_along_axis(input, index.astype(np.int64), axis=dim)


@function("nn.PixelShuffle", "F.pixel_shuffle", "torch.pixel_shuffle")
def pixel_shuffle(input, upscale_factor):
    """(..., C·r², H, W) -> (..., C, H·r, W·r): each group of r² channels becomes an r × r block."""
    *lead, c, h, w = input.shape
    r, k = upscale_factor, len(lead)
    blocks = input.reshape(*lead, c // (r * r), r, r, h, w)  # (..., C, r, r, H, W)
    order = (*range(k), k, k + 3, k + 1, k + 4, k + 2)  # (..., C, H, r, W, r)
    return blocks.transpose(order).reshape(*lead, c // (r * r), h * r, w * r)


@function("nn.PixelUnshuffle", "F.pixel_unshuffle", "torch.pixel_unshuffle")
def pixel_unshuffle(input, downscale_factor):
    """(..., C, H·r, W·r) -> (..., C·r², H, W), the inverse of pixel_shuffle."""
    *lead, c, h, w = input.shape
    r, k = downscale_factor, len(lead)
    blocks = input.reshape(*lead, c, h // r, r, w // r, r)  # (..., C, H, r, W, r)
    order = (*range(k), k, k + 2, k + 4, k + 1, k + 3)  # (..., C, r, r, H, W)
    return blocks.transpose(order).reshape(*lead, c * r * r, h // r, w // r)


@function("nn.ChannelShuffle", "F.channel_shuffle", "torch.channel_shuffle", "aten::channel_shuffle")
def channel_shuffle(input, groups):
    """Channels (g, C/g) reordered as (C/g, g), ShuffleNet's mixing of groups (a setting or a 0-d tensor)."""
    n, c, groups = *input.shape[:2], int(groups)
    grouped = input.reshape(n, groups, c // groups, *input.shape[2:])  # (N, g, C/g, ...)
    return grouped.swapaxes(1, 2).reshape(input.shape)


TORCH_DTYPES = {"torch.float": "float32", "torch.float32": "float32", "torch.half": "float16",
                "torch.float16": "float16", "torch.long": "int64", "torch.int64": "int64", "torch.int": "int32",
                "torch.int32": "int32", "torch.int8": "int8", "torch.uint8": "uint8", "torch.bool": "bool"}


@function("Tensor.to", "Tensor.type")
def to(input, dtype: Literal[tuple(TORCH_DTYPES)], copy=False):
    """input converted to a torch dtype kuiper has (floats of 64 bits run as float32)."""
    return input.astype(TORCH_DTYPES[dtype])


@function("torch.argsort", "Tensor.argsort", "aten::argsort")
def argsort(input, dim=-1, descending=False):
    """The indices that sort input along dim (stable, as torch's sort on distinct values)."""
    order = np.argsort(-input if bool(descending) else input, axis=int(dim), kind="stable")
    return order.astype(np.int64)


@function("torch.sort", "Tensor.sort", "aten::sort")
def sort(input, dim=-1, descending=False):
    """input sorted along dim (stable) and the indices that sort it; dim may be a 0-d tensor (aten::sort)."""
    order = argsort(input, int(dim), descending)
    return np.take_along_axis(input, order, axis=int(dim)), order


@function("Tensor.select", "torch.select")
def select(input, dim, index):
    """The slice at index along dim, that dimension removed."""
    return np.take(input, index, axis=dim)


@function("nn.Embedding", "F.embedding")
def embedding(input, weight, padding_idx=None, max_norm: Literal[None] = None):
    """The rows of weight (num_embeddings, dim) picked by the integer tensor input: (...) -> (..., dim)."""
    return np.take(weight, input.astype(np.int64), axis=0, mode="raise")


@function("torch.masked_select", "Tensor.masked_select")
def masked_select(input, mask):
    """The elements of input where mask holds (both broadcast), as a vector in row-major order."""
    values, mask = np.broadcast_arrays(input, mask)
    return values[mask.astype(bool)]


@function("torch.repeat_interleave", "Tensor.repeat_interleave")
def repeat_interleave(input, repeats, dim=None, output_size=None):
    """Each element (each slice along dim; of the flattened tensor without dim) repeated `repeats`
    times, an int or one count per element."""
    return np.repeat(input.ravel() if dim is None else input, repeats, axis=dim)


@function("torch.diag", "Tensor.diag")
def diag(input, diagonal=0):
    """A vector as a square matrix with it on a diagonal, or a matrix's diagonal as a vector
    (`diagonal` > 0 above the main one)."""
    return np.diag(input, k=diagonal)


@function("torch.cross", "Tensor.cross", "torch.linalg.cross")
def cross(input, other, dim=None):
    """The cross product of 3-vectors along dim (None: the first dimension of size 3, as torch.cross)."""
    dim = input.shape.index(3) if dim is None else dim
    return np.cross(input, other, axis=dim)


# %% [markdown]
# Creation operators make a tensor from a shape and a value; the shape may be a setting or a
# tensor computed in the graph (PNNX writes `x.size()` as an expression that lists the sizes).
# The `_like`, `new_` and `_as` forms take the shape, and for `_like` the dtype, from a tensor.

# %%
#| export layers.creation
import numpy as np

from kuiper.layers.elementwise import function
from kuiper.layers.indexing import TORCH_DTYPES


def dtype_of(dtype: str | None, default: np.dtype | str = "float32") -> str:
    """PNNX's torch dtype name (torch.long, ...) as a numpy dtype name; `default` for None."""
    return np.dtype(default).name if dtype is None else TORCH_DTYPES[dtype]


def shape_of(size) -> tuple[int, ...]:
    """A size setting (int or tuple) or a size tensor as a tuple of ints."""
    return (size,) if isinstance(size, int) else tuple(int(v) for v in np.ravel(size))


@function("torch.full")
def full(size, fill_value, dtype=None):
    """A tensor of `size` filled with fill_value (float32 unless dtype says otherwise)."""
    return np.full(shape_of(size), fill_value, dtype_of(dtype))


@function("torch.ones")
def ones(size, dtype=None):
    """A tensor of `size` filled with 1."""
    return np.ones(shape_of(size), dtype_of(dtype))


@function("torch.zeros", "torch.empty")
def zeros(size, dtype=None):
    """A tensor of `size` filled with 0 (also for torch.empty, whose contents are unspecified)."""
    return np.zeros(shape_of(size), dtype_of(dtype))


@function("torch.full_like")
def full_like(input, fill_value, dtype=None):
    """A tensor shaped like input filled with fill_value (input's dtype unless dtype says otherwise)."""
    return np.full(input.shape, fill_value, dtype_of(dtype, input.dtype))


@function("torch.ones_like")
def ones_like(input, dtype=None):
    """A tensor shaped like input filled with 1."""
    return np.ones(input.shape, dtype_of(dtype, input.dtype))


@function("torch.zeros_like", "torch.empty_like")
def zeros_like(input, dtype=None):
    """A tensor shaped like input filled with 0."""
    return np.zeros(input.shape, dtype_of(dtype, input.dtype))


@function("Tensor.new_full")
def new_full(input, size, fill_value, dtype=None):
    """A tensor of `size` filled with fill_value, of input's dtype unless dtype says otherwise."""
    return np.full(shape_of(size), fill_value, dtype_of(dtype, input.dtype))


@function("Tensor.new_ones")
def new_ones(input, size, dtype=None):
    """A tensor of `size` filled with 1, of input's dtype unless dtype says otherwise."""
    return np.ones(shape_of(size), dtype_of(dtype, input.dtype))


@function("Tensor.new_zeros", "Tensor.new_empty")
def new_zeros(input, size, dtype=None):
    """A tensor of `size` filled with 0, of input's dtype unless dtype says otherwise."""
    return np.zeros(shape_of(size), dtype_of(dtype, input.dtype))


@function("Tensor.fill", "Tensor.fill_")
def fill(input, value):
    """A tensor like input with every element set to value."""
    return np.full_like(input, value)


@function("torch.arange")
def arange(start=0, end=None, step=1, dtype=None):
    """start, start + step, ... below end; int64 when start, end and step are integers, as torch."""
    start, end = (0, start) if end is None else (start, end)
    values = [v.item() if isinstance(v, np.ndarray) else v for v in (start, end, step)]
    integral = all(isinstance(v, (int, np.integer)) for v in values)
    return np.arange(*values, dtype=dtype_of(dtype, "int64" if integral else "float32"))


@function("Tensor.type_as")
def type_as(input, other):
    """input converted to other's dtype."""
    return input.astype(other.dtype)


@function("Tensor.expand_as")
def expand_as(input, other):
    """input broadcast to other's shape."""
    return np.broadcast_to(input, other.shape)


@function("Tensor.reshape_as", "Tensor.view_as")
def reshape_as(input, other):
    """input's elements in other's shape."""
    return input.reshape(other.shape)


@function("Tensor.unflatten", "torch.unflatten")
def unflatten(input, dim, sizes):
    """Dimension dim split into `sizes` (one may be −1)."""
    dim = dim % input.ndim
    return input.reshape(*input.shape[:dim], *sizes, *input.shape[dim + 1:])


@function("torch.clone", "Tensor.detach", "torch.detach")
def clone(input, memory_format=None):
    """A copy of input."""
    return input.copy()


# %% [markdown]
# ## Exercise 5.10 — writing through an index
#
# `x[expr]` in PyTorch is advanced indexing; PNNX writes it as `Tensor.index expr=[None,[1,0]]`,
# one entry per leading dimension (None for `:`), and numpy's indexing follows the same rules.
# Its writes come as copies: `index_put` sets (or, with `accumulate`, adds) `values` at
# `input[indices]` — repeated indices must add up, which `np.add.at` does and `+=` does not;
# `scatter` writes `src[i][j]` at the position whose `dim` coordinate is `index[i][j]` and whose
# other coordinates are `(i, j)` themselves (`coordinates` builds that key), `scatter_add` adds
# there; `slice_scatter` and `select_scatter` write `src` over a slice or one index along `dim`
# (`assign`). Every one returns a new array: the graph's input must stay as it was.

# %%
#| export layers.indexing
#| exercise: input[expr] with None as `:`; index_put that adds repeated indices up; scatter's coordinates, scatter and scatter_add; assign src over a slice or index along dim, on a copy
from kuiper.layers.shape import Slice
from kuiper.registry import register
from kuiper.tensor import Tensor


@function("Tensor.index", "aten::index")
def index(input, expr):
    """input[expr]: one entry per leading dimension, None for all of it (`:`), else ints or bools (a
    list or a tensor); numpy's advanced indexing follows torch's rules."""
    ### BEGIN SOLUTION
    return input[tuple(slice(None) if item is None else np.asarray(item) for item in expr)]
    ### END SOLUTION


@function("Tensor.index_put", "torch.index_put", "Tensor.index_put_")
def index_put(input, indices, values, accumulate=False):
    """A copy of input with input[indices] = values, or += values (repeated indices adding up)."""
    ### BEGIN SOLUTION
    out = input.copy()
    key = tuple(slice(None) if item is None else np.asarray(item) for item in indices)
    if accumulate:
        np.add.at(out, key, values)
    else:
        out[key] = values
    return out
    ### END SOLUTION


def coordinates(index: np.ndarray, dim: int) -> tuple[np.ndarray, ...]:
    """scatter's key: each element of index at its own coordinates, but at index's value along dim."""
    ### BEGIN SOLUTION
    key = list(np.indices(index.shape, sparse=True))
    key[dim] = index.astype(np.int64)
    return tuple(key)
    ### END SOLUTION


@function("torch.scatter", "Tensor.scatter", "aten::scatter")
def scatter(input, dim, index, src=None, value=None, reduce: Literal[None] = None):
    """A copy of input with out[index[i][j]][j] = src[i][j] for dim 0 (likewise for other dims),
    or `value` wherever index points; dim may be a 0-d tensor (aten::scatter)."""
    ### BEGIN SOLUTION
    out = input.copy()
    out[coordinates(index, int(dim))] = value if src is None else src[tuple(slice(0, n) for n in index.shape)]
    return out
    ### END SOLUTION


@function("torch.scatter_add", "Tensor.scatter_add", "aten::scatter_add")
def scatter_add(input, dim, index, src):
    """A copy of input with src[i][j] added at out[index[i][j]][j] for dim 0; repeated indices add up."""
    ### BEGIN SOLUTION
    out = input.copy()
    np.add.at(out, coordinates(index, int(dim)), src[tuple(slice(0, n) for n in index.shape)])
    return out
    ### END SOLUTION


def assign(input: np.ndarray, dim: int, where: slice | int, src: np.ndarray) -> np.ndarray:
    """A copy of input with its part at `where` (a slice or an index) along dim replaced by src."""
    ### BEGIN SOLUTION
    out = input.copy()
    key = [slice(None)] * input.ndim
    key[dim] = where
    out[tuple(key)] = src
    return out
    ### END SOLUTION


@function("torch.slice_scatter", "Tensor.slice_scatter")
def slice_scatter(input, src, dim=0, start=None, end=None, step=1):
    """A copy of input with input[start:end:step] along dim replaced by src."""
    return assign(input, dim, slice(start, end, step), src)


@function("torch.select_scatter", "Tensor.select_scatter", "aten::select_scatter")
def select_scatter(input, src, dim, index):
    """A copy of input with the slice at index along dim replaced by src (dim, index: ints or 0-d tensors)."""
    return assign(input, int(dim), int(index), src)


@register("Tensor.slice_copy")
class SliceCopy(Slice):
    """`x[2:10, 3] = y` as PNNX writes it: a copy of x with the part Tensor.slice would read replaced by y."""

    def forward(self, x: Tensor, src: Tensor) -> Tensor:
        positions = np.arange(x.numpy().size).reshape(x.shape)  # each element's place in x.ravel()
        picked = super().forward(Tensor(positions)).numpy()  # the places the slice reads
        out = x.numpy().copy()
        out.reshape(-1)[picked] = np.broadcast_to(src.numpy(), picked.shape)
        return Tensor(out, device=x.device)


# %%
grid = np.arange(4 * 5, dtype=np.float32).reshape(4, 5)
rows, cols = np.array([2, 0, 2]), np.array([1, 4, 1])

with check("Exercise 5.10"):
    same(index(grid, (None, (3, 0))), T(grid)[:, [3, 0]], "index(grid, [None, [3, 0]]) = grid[:, [3, 0]]")
    same(index(grid, ((True, False, True, False), (1, 4))), T(grid)[[True, False, True, False], [1, 4]],
         "index with a bool list then an int list")
    want = T(grid).index_put((T(rows), T(cols)), T(np.float32([10, 20, 30])), accumulate=True)
    same(index_put(grid, [rows, cols], np.float32([10, 20, 30]), accumulate=True), want,
         "index_put(accumulate=True): grid[2, 1] is indexed twice and gets 10 + 30")
    same(index_put(grid, [rows[:2], cols[:2]], 7.0), T(grid).index_put((T(rows[:2]), T(cols[:2])), torch.tensor(7.0)),
         "index_put of the value 7")
    where = np.array([[3, 0, 1, 3, 2], [3, 3, 0, 1, 0]])
    source = np.arange(10, 20, dtype=np.float32).reshape(2, 5)
    for dim in (0, 1):
        same(scatter(grid, dim, where[:, :4], source), T(grid).scatter(dim, T(where[:, :4]), T(source)),
             f"scatter along dim {dim} with a (2, 4) index")
    same(scatter_add(grid, 0, where, source), T(grid).scatter_add(0, T(where), T(source)),
         "scatter_add along dim 0: row 3 of column 0 gets two values")
    patch = -np.arange(8, dtype=np.float32).reshape(4, 2)
    same(slice_scatter(grid, patch, 1, 1, 5, 2), T(grid).slice_scatter(T(patch), 1, 1, 5, 2),
         "slice_scatter(dim=1, start=1, end=5, step=2)")
    same(select_scatter(grid, source[0, :4], 1, -1), T(grid).select_scatter(T(source[0, :4]), 1, -1),
         "select_scatter(dim=1, index=-1)")
    assert grid[0, 0] == 0 and grid[3, 4] == 19, f"expected the input unchanged, got {grid}"

# %% [markdown]
# ## Attention
#
# A transformer mixes positions with **scaled dot-product attention** (Vaswani et al., 2017):
# each query row takes a weighted average of the value rows, weighted by
# softmax(q·kᵀ / √E + mask) over the keys. The mask adds −∞ where a query may not look: a causal
# model lets position i see keys 0..i only; a bool mask marks what may be seen (in
# `F.scaled_dot_product_attention`, True = may look; in `nn.MultiheadAttention`, True = masked).
#
# `nn.MultiheadAttention` projects query, key and value (one `in_proj_weight`, or three when key
# and value have other sizes), splits the heads, attends, merges and projects out; its optional
# `bias_k`/`bias_v` and `add_zero_attn` append one more key. With a second output it also returns
# the attention weights averaged over the heads. The layer is the same `Function` as before; it follows the
# exercise's functions in the same cell.
#
# ## Exercise 5.11 — scaled dot-product attention
#
# `additive_mask` turns a mask into the numbers to add: a float mask as it is, a bool mask 0 or
# −∞ (`allowed` says which bool value may be seen), no mask 0. `causal_mask(L, S)` is 0 on and
# below the diagonal and −∞ above it. `attention_weights` is softmax(q·kᵀ·scale + mask) over the
# last axis, scale 1/√E by default. `scaled_dot_product_attention` combines them, and with
# `enable_gqa` repeats each key/value head for its group of query heads (grouped-query attention:
# H query heads share H/G key heads, query head h reading key head h // (H/G)).
# `split_heads` and `merge_heads` reshape (N, L, H·D) ↔ (N, H, L, D) for the multi-head layer.

# %%
#| export layers.attention
#| exercise: bool/float masks as additive ones, the causal mask, softmax(q·kᵀ·scale + mask), F.scaled_dot_product_attention with grouped key heads, and the head split/merge
from typing import Literal

import numpy as np

from kuiper.errors import ShapeError
from kuiper.layers.elementwise import Function, function, softmax
from kuiper.layers.linalg import linear, matmul
from kuiper.registry import register


def additive_mask(mask: np.ndarray | None, allowed: bool) -> np.ndarray:
    """mask as numbers to add to attention scores: a float mask as it is; a bool mask 0 where it
    equals `allowed` and −inf elsewhere; no mask 0."""
    ### BEGIN SOLUTION
    if mask is None:
        return np.float32(0)
    if mask.dtype == np.bool_:
        return np.where(mask == allowed, np.float32(0), np.float32(-np.inf))
    return mask
    ### END SOLUTION


def causal_mask(length: int, keys: int) -> np.ndarray:
    """(length, keys) float32: 0 where key j ≤ query i, −inf above the diagonal."""
    ### BEGIN SOLUTION
    return np.triu(np.full((length, keys), -np.inf, np.float32), 1)
    ### END SOLUTION


def attention_weights(query: np.ndarray, key: np.ndarray, mask: np.ndarray, scale: float | None = None) -> np.ndarray:
    """softmax(q·kᵀ·scale + mask) over the keys: (..., L, E) and (..., S, E) -> (..., L, S), scale 1/√E by default."""
    ### BEGIN SOLUTION
    scale = 1 / np.sqrt(query.shape[-1]) if scale is None else scale
    scores = matmul(query, np.swapaxes(key, -1, -2)) * np.float32(scale)
    return softmax(scores + mask, -1)
    ### END SOLUTION


@function("F.scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: Literal[0.0, 0] = 0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """softmax(q·kᵀ·scale + mask)·v: (..., H, L, E), (..., G, S, E), (..., G, S, Ev) -> (..., H, L, Ev);
    a bool attn_mask is True where a query may look; is_causal adds the causal mask; enable_gqa lets
    G divide H (PyTorch's F.scaled_dot_product_attention)."""
    ### BEGIN SOLUTION
    mask = additive_mask(attn_mask, allowed=True)
    if is_causal:
        mask = mask + causal_mask(query.shape[-2], key.shape[-2])
    if enable_gqa and key.ndim > 2 and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = np.repeat(key, groups, axis=-3), np.repeat(value, groups, axis=-3)
    return matmul(attention_weights(query, key, mask, scale), value)
    ### END SOLUTION


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(N, L, H·D) -> (N, H, L, D)."""
    ### BEGIN SOLUTION
    n, length, _ = x.shape
    return x.reshape(n, length, heads, -1).transpose(0, 2, 1, 3)
    ### END SOLUTION


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(N, H, L, D) -> (N, L, H·D), the inverse of split_heads."""
    ### BEGIN SOLUTION
    n, heads, length, depth = x.shape
    return x.transpose(0, 2, 1, 3).reshape(n, length, heads * depth)
    ### END SOLUTION


def multihead_attention(input, key=None, value=None, attn_mask=None, key_padding_mask=None, *, num_heads,
                        out_proj_weight, out_proj_bias=None, in_proj_weight=None, in_proj_bias=None,
                        q_proj_weight=None, k_proj_weight=None, v_proj_weight=None, bias_k=None, bias_v=None,
                        add_zero_attn=False, batch_first=False):
    """nn.MultiheadAttention at inference: the query `input`, key and value (L, N, E) ((N, L, E) if
    batch_first), key = query and value = key where absent; returns the output and the weights averaged
    over heads (N, L, S). Bool masks are True where masked; attn_mask is (L, S) or (N·H, L, S),
    key_padding_mask (N, S)."""
    query = input
    key = query if key is None else key
    value = key if value is None else value
    if query.ndim != 3:
        raise ShapeError(f"nn.MultiheadAttention: expected a batched query (L, N, E), got shape {query.shape}")
    if not batch_first:
        query, key, value = (np.swapaxes(x, 0, 1) for x in (query, key, value))  # (N, L, E)
    if in_proj_weight is not None:
        q_proj_weight, k_proj_weight, v_proj_weight = np.split(in_proj_weight, 3)
    q_bias, k_bias, v_bias = (None,) * 3 if in_proj_bias is None else np.split(in_proj_bias, 3)
    q, k, v = linear(query, q_proj_weight, q_bias), linear(key, k_proj_weight, k_bias), linear(value, v_proj_weight, v_bias)
    n = q.shape[0]
    mask = additive_mask(attn_mask, allowed=False)
    mask = mask.reshape(n, num_heads, *mask.shape[1:]) if np.ndim(mask) == 3 else mask  # (N, H, L, S)
    if key_padding_mask is not None:
        mask = mask + additive_mask(key_padding_mask, allowed=False)[:, None, None, :]
    extra = [np.broadcast_to(b.reshape(1, 1, -1), (n, 1, b.size)) for b in (bias_k, bias_v) if b is not None]
    if extra:
        k, v = np.concatenate([k, extra[0]], 1), np.concatenate([v, extra[1]], 1)
    q, k, v = (split_heads(x, num_heads) for x in (q, k, v))  # (N, H, L, D)
    if add_zero_attn:
        k, v = (np.concatenate([x, np.zeros_like(x[:, :, :1])], 2) for x in (k, v))
    added = len(extra) // 2 + bool(add_zero_attn)  # keys appended after the masks were made
    if added and np.ndim(mask):
        mask = np.pad(mask, [(0, 0)] * (np.ndim(mask) - 1) + [(0, added)])
    weights = attention_weights(q, k, mask)  # (N, H, L, S)
    out = linear(merge_heads(matmul(weights, v)), out_proj_weight, out_proj_bias)
    return (out if batch_first else np.swapaxes(out, 0, 1)), weights.mean(axis=1)


@register("nn.MultiheadAttention")
class MultiheadAttention(Function):
    """nn.MultiheadAttention: one output, or the output and the head-averaged attention weights."""

    fn = staticmethod(multihead_attention)

    def forward(self, *xs):
        out, weights = super().forward(*xs)
        return (out, weights) if len(self.op.outputs) == 2 else out


# %%
rng = np.random.default_rng(11)
q, k, v = (rng.standard_normal(shape, dtype=np.float32) for shape in [(2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 3)])
k4, v4 = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
keep = rng.random((5, 7)) > 0.3
keep[:, 0] = True  # every query may see at least one key
bias = rng.standard_normal((4, 5, 7), dtype=np.float32)

with check("Exercise 5.11"):
    got = additive_mask(np.array([True, False]), allowed=False)
    assert got.tolist() == [-np.inf, 0.0], f"additive_mask([True, False], allowed=False): expected [-inf, 0.0], got {got.tolist()}"
    got = causal_mask(2, 3)
    assert got.tolist() == [[0, -np.inf, -np.inf], [0, 0, -np.inf]], f"causal_mask(2, 3): expected [[0, -inf, -inf], [0, 0, -inf]], got {got.tolist()}"
    same(scaled_dot_product_attention(q, k4, v4), F.scaled_dot_product_attention(T(q), T(k4), T(v4)), "SDPA without a mask")
    same(scaled_dot_product_attention(q, k4, v4, is_causal=True), F.scaled_dot_product_attention(T(q), T(k4), T(v4), is_causal=True),
         "SDPA is_causal=True with 5 queries and 7 keys")
    same(scaled_dot_product_attention(q, k4, v4, keep), F.scaled_dot_product_attention(T(q), T(k4), T(v4), T(keep)),
         "SDPA with a bool mask (True: may look)")
    same(scaled_dot_product_attention(q, k4, v4, bias, scale=0.5), F.scaled_dot_product_attention(T(q), T(k4), T(v4), T(bias), scale=0.5),
         "SDPA with a float mask and scale=0.5")
    same(scaled_dot_product_attention(q, k, v, enable_gqa=True), F.scaled_dot_product_attention(T(q), T(k), T(v), enable_gqa=True),
         "SDPA enable_gqa: 4 query heads over 2 key heads")
    x = rng.standard_normal((2, 5, 12), dtype=np.float32)
    got = split_heads(x, 3)
    same(got, T(x).view(2, 5, 3, 4).transpose(1, 2), "split_heads((2, 5, 12), 3) -> (2, 3, 5, 4)")
    same(merge_heads(got), T(x), "merge_heads(split_heads(x)) = x")

# %%
from kuiper.layers.attention import multihead_attention

torch.manual_seed(0)
mha = torch.nn.MultiheadAttention(16, 4, kdim=6, vdim=5, add_bias_kv=True, add_zero_attn=True).eval()
xq, xk, xv = torch.randn(3, 2, 16), torch.randn(7, 2, 6), torch.randn(7, 2, 5)
padding = torch.tensor([[False] * 6 + [True], [False] * 7])
weights = {name.replace(".", "_"): p.detach().numpy() for name, p in mha.named_parameters()}
got, got_weights = multihead_attention(xq.numpy(), xk.numpy(), xv.numpy(), key_padding_mask=padding.numpy(),
                                       num_heads=4, **weights, add_zero_attn=True)
with torch.no_grad():
    want, want_weights = mha(xq, xk, xv, key_padding_mask=padding)
print("nn.MultiheadAttention vs torch:", agreement(got, want.numpy()), "| weights:", agreement(got_weights, want_weights.numpy()))

# %% [markdown]
# ## What you built
#
# `kuiper/expression.py` lexes, parses and evaluates PNNX expressions, and
# `kuiper/layers/expression.py` registers the `pnnx.Expression` layer that ResNet's residual
# additions and YOLO's box decoding run through.
