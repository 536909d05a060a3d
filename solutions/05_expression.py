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

# %%
#| default_exp expression

# %%
import matplotlib.pyplot as plt
import numpy as np

from kuiper.course import agreement, check, patch_to, raises
from kuiper.errors import KuiperError

# %% [markdown]
# ## The grammar
#
# Everything PNNX writes fits four rules (`|` separates alternatives, quoted text is literal):
#
# ```
# expr  := input | number | name "(" args ")" | "[" args "]"
# args  := expr ("," expr)*
# input := "@" digits                      e.g. @0
# number:= ["-"] digits ["." digits] [("e"|"E") ["+"|"-"] digits]   e.g. 2, -1, 2.000000e+00
# ```
#
# A `name` is a function from the table below; the bracketed list form (`[@0,@1]`) builds a list,
# which PNNX uses for shapes. Errors in the text are `ExpressionError`s that give the column.

# %%
#| export errors
class ExpressionError(KuiperError, ValueError):
    """A pnnx.Expression string that does not lex or parse; the message gives the column."""


# %%
#| export
import re
from dataclasses import dataclass

import numpy as np

from kuiper.errors import ExpressionError


def _rsqrt(x):
    return 1 / np.sqrt(x)


def _int(x):
    """Truncate toward zero to an integer, as Python's int() does."""
    return np.trunc(x).astype(np.int64) if isinstance(x, np.ndarray) else int(x)


UNARY = {"neg": np.negative, "abs": np.abs, "sqrt": np.sqrt, "rsqrt": _rsqrt, "exp": np.exp, "log": np.log,
         "log10": np.log10, "floor": np.floor, "ceil": np.ceil, "round": np.round, "trunc": np.trunc,
         "sign": np.sign, "square": np.square, "reciprocal": np.reciprocal, "sin": np.sin, "cos": np.cos,
         "tan": np.tan, "tanh": np.tanh, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
         "int": _int}
BINARY = {"add": np.add, "sub": np.subtract, "rsub": lambda a, b: np.subtract(b, a), "mul": np.multiply,
          "div": np.divide, "pow": np.power, "max": np.maximum, "min": np.minimum, "maximum": np.maximum,
          "minimum": np.minimum, "floor_divide": np.floor_divide, "remainder": np.remainder, "fmod": np.fmod,
          "atan2": np.arctan2, "size": lambda x, dim: np.shape(x)[int(dim)]}
FUNCTIONS = {name: (fn, 1) for name, fn in UNARY.items()} | {name: (fn, 2) for name, fn in BINARY.items()}

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
    """A constant."""

    value: int | float


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
#| exercise: parse one expr at self.pos: Input, Number, Call (known name, right arity) or ListOf
@patch_to(Parser)
def expr(self) -> Input | Number | Call | ListOf:
    """expr := input | number | name "(" args ")" | "[" args "]" """
    token = self.peek()
    if token is None:
        raise self.fail("expected an expression, found the end")
    ### BEGIN SOLUTION
    if token.kind == "input":
        self.take("input")
        return Input(int(token.text[1:]))
    if token.kind == "number":
        self.take("number")
        is_int = re.fullmatch(r"-?\d+", token.text)
        return Number(int(token.text) if is_int else float(token.text))
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
                                                         ListOf((Number(1), Number(2.5))))))]:
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
# ## The layer
#
# `pnnx.Expression` parses and flattens its expression **once**, when the graph is built (a
# malformed one is a `LayerError` naming the operator), and runs the program on every forward.
# PNNX's list form arrives from `parse_value` as a tuple of items, which we join back into text.

# %%
#| export layers.expression
import numpy as np

from kuiper.errors import ExpressionError, LayerError
from kuiper.expression import Input, evaluate, parse, to_rpn
from kuiper.layer import Layer
from kuiper.registry import register
from kuiper.tensor import Tensor


@register("pnnx.Expression")
class Expression(Layer):
    """Element-wise arithmetic that PNNX fused into one formula, e.g. add(@0,mul(@1,2))."""

    def __init__(self, op):
        super().__init__(op)
        text = self.param("expr", (str, tuple))
        if isinstance(text, tuple):
            text = "[" + ",".join(map(str, text)) + "]"
        try:
            self.program = to_rpn(parse(text))
        except ExpressionError as err:
            raise LayerError(f"{op.where()}: {err}") from None
        used = max((node.index for node in self.program if isinstance(node, Input)), default=-1)
        if used >= len(op.inputs):
            raise LayerError(f"{op.where()}: the expression reads @{used} but the operator has "
                             f"{len(op.inputs)} input(s)")

    def forward(self, *inputs: Tensor) -> Tensor:
        result = evaluate(self.program, [x.numpy() for x in inputs])
        return Tensor(np.asarray(result), device=inputs[0].device if inputs else "cpu")


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
# ## What you built
#
# `kuiper/expression.py` lexes, parses and evaluates PNNX expressions, and
# `kuiper/layers/expression.py` registers the `pnnx.Expression` layer that ResNet's residual
# additions and YOLO's box decoding run through.
