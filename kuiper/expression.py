# Generated from solutions/05_expression.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

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


@dataclass(frozen=True)
class Token:
    """One lexical unit of an expression: its kind, its text, and the column where it starts."""

    kind: str
    text: str
    column: int


TOKEN = re.compile(r"(?P<input>@\d+)|(?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
                   r"|(?P<name>[A-Za-z_]\w*)|(?P<punct>[(),\[\]])")


def tokenize(text: str) -> list[Token]:
    """The tokens of an expression string, each with its column."""
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

    def expr(self) -> Input | Number | Call | ListOf:
        """expr := input | number | constant | name "(" args ")" | "[" args "]" """
        token = self.peek()
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


def parse(text: str) -> Input | Number | Call | ListOf:
    """The syntax tree of a whole expression string; ExpressionError (with the column) if it is malformed."""
    parser = Parser(text)
    tree = parser.expr()
    if parser.peek() is not None:
        raise parser.fail(f"unexpected {parser.peek().text!r} after the expression")
    return tree


def to_rpn(tree: Input | Number | Call | ListOf) -> list:
    """The tree's nodes in reverse-Polish (post-) order, ready for a stack machine."""
    children = tree.args if isinstance(tree, Call) else tree.items if isinstance(tree, ListOf) else ()
    return [node for child in children for node in to_rpn(child)] + [tree]


def evaluate(program: list, inputs: list) -> object:
    """Run a reverse-Polish program over the input arrays; returns an array, number or list."""
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
