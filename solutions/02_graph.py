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
# # Lesson 02 — The computation graph (PNNX)
#
# A trained model is a graph: operators (a convolution, a ReLU, a concatenation) joined by the
# tensors that flow between them, which PNNX calls *operands*. KuiperInfer does not parse PyTorch
# itself: it reads models exported by [PNNX](https://github.com/pnnx/pnnx), a plain-text graph
# (`model.pnnx.param`) plus a zip of weights (`model.pnnx.bin`). In this lesson you read both
# files and turn them into a `RuntimeGraph` that runs its operators in a valid order and frees
# each intermediate tensor as soon as nothing needs it any more.
#
# | exercise | what |
# |---|---|
# | 2.1 | parse a parameter value: `True`, `3`, `1.0e-05`, `(3,3)`, `zeros` |
# | 2.2 | parse an operand annotation such as `(1,3,?,224)f32` |
# | 2.3 | topological order by Kahn's algorithm, with cycle detection |
# | 2.4 | liveness: after which operator each tensor can be freed |
# | 2.5 | the bytes alive, each shared buffer counted once |

# %%
#| default_exp pnnx

# %%
import math
import time
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np

from kuiper.course import DATA, agreement, check, raises
from kuiper.errors import KuiperError
from kuiper.tensor import Tensor

# %% [markdown]
# ## A PNNX file, line by line
#
# `data/tiny.pnnx.param` is a small network exported by `tools/zoo.py`: flatten an input, send it
# through two `Linear` + ReLU branches, concatenate them and classify. Here it is:

# %%
print((DATA / "tiny.pnnx.param").read_text())

# %% [markdown]
# The first line is the magic number `7767517`, the second the counts of operators and operands.
# Every further line is one operator:
#
# ```
# type        name   #inputs #outputs  input operands…  output operands…  key=value…
# nn.Linear   left   1       1         1                2                 bias=True … @weight=(16,48)f32 #1=(1,48)f32 …
# ```
#
# The `key=value` pairs come in four kinds, told apart by their first character:
#
# | form | meaning | example |
# |---|---|---|
# | `key=value` | a parameter of the operator | `in_features=48`, `bias=True`, `padding_mode=zeros` |
# | `@key=(shape)type` | a weight stored in the `.bin` file | `@weight=(16,48)f32` |
# | `$key=operand` | which input operand a named argument is | `$input=4` |
# | `#operand=(shape)type` | the shape and type of an operand | `#1=(1,48)f32` |

# %% [markdown]
# ## Errors that point at the line
#
# A malformed file must say *where*: `tiny.pnnx.param:5: nn.Linear 'left' declares 1 input and 1
# output but lists 1 operand`. Two new errors join `kuiper/errors.py`: `PnnxError` for the files,
# `GraphError` for a graph that cannot run.

# %%
#| export errors
class PnnxError(KuiperError, ValueError):
    """A malformed .pnnx.param or .pnnx.bin; the message starts with file:line."""


class GraphError(KuiperError):
    """A graph that cannot run: a cycle, a missing producer, a layer with the wrong outputs."""


# %%
#| export
import math
import mmap
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kuiper.errors import PnnxError

# %% [markdown]
# ## Exercise 2.1 — parameter values
#
# PNNX writes each parameter value as text; its C++ reader (`Parameter::parse_from_string`)
# decides the type from the spelling, and so do we:
#
# | text | value |
# |---|---|
# | `None`, `()`, `[]` | `None` |
# | `True`, `False` | a bool |
# | `(3,3)`, `[1,2]` | a tuple of values, each parsed by these rules |
# | `-1`, `48` | an int |
# | `1.000000e-05`, `0.5`, `inf` | a float |
# | anything else (`zeros`, `add(@0,@1)`) | the string itself |
#
# Split a list only at commas that are not inside brackets, so that `[int(size(@0,2)),2]` keeps
# its first item whole; `split_top_level` does that for you.
#
# Two traps of a strict reader. Python's `int()` and `float()` accept more than PNNX writes —
# `int("١٢")` is 12 (Arabic-Indic digits), `int("1_000")` is 1000 — so a number is what the
# regular expressions `INT` and `FLOAT` below match, ASCII digits only. And a value nested a
# million brackets deep would exhaust Python's recursion: refuse nesting deeper than `MAX_DEPTH`
# with a `PnnxError`.

# %%
#| export
def split_top_level(text: str) -> list[str]:
    """Split `text` at the commas that are not inside (), [] or {}."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return items + [text[start:]]


# %%
#| export
INT = re.compile(r"[-+]?[0-9]{1,18}")
FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?(?:inf|nan)")
MAX_DEPTH = 16  # brackets inside brackets; PNNX itself writes at most 2


# %%
#| export
#| exercise: None, a bool, a tuple (PnnxError past MAX_DEPTH), an int (INT), a float (FLOAT) or the string
def parse_value(text: str, depth: int = 0) -> object:
    """A PNNX parameter value as Python: None, bool, int, float, str, or a tuple of these.

    Raises PnnxError when brackets nest deeper than MAX_DEPTH."""
    ### BEGIN SOLUTION
    if text in ("None", "()", "[]"):
        return None
    if text in ("True", "False"):
        return text == "True"
    if text[:1] in "([" and text[-1:] in ")]":
        if depth >= MAX_DEPTH:
            raise PnnxError(f"a value nests brackets deeper than {MAX_DEPTH}: {text[:40]!r}...")
        return tuple(parse_value(item, depth + 1) for item in split_top_level(text[1:-1]))
    if INT.fullmatch(text):
        return int(text)
    if FLOAT.fullmatch(text):
        return float(text)
    return text
    ### END SOLUTION


# %%
with check("Exercise 2.1"):
    cases = {"None": None, "()": None, "True": True, "False": False, "48": 48, "-1": -1,
             "1.000000e-05": 1e-05, "(3,3)": (3, 3), "(1.5,2)": (1.5, 2), "zeros": "zeros",
             "add(@0,mul(@0,2))": "add(@0,mul(@0,2))", "[int(size(@0,2)),2]": ("int(size(@0,2))", 2),
             "١٢": "١٢", "1_000": "1_000"}
    for text, want in cases.items():
        got = parse_value(text)
        assert got == want and type(got) is type(want), f"parse_value({text!r}) gave {got!r}, expected {want!r}"
    try:
        parse_value("(" * 100_000 + ")" * 100_000)
        raise AssertionError("100,000 nested brackets should raise PnnxError")
    except PnnxError:
        pass

# %% [markdown]
# ## Exercise 2.2 — operand annotations
#
# Operands and weights are annotated as `(shape)type`: `(1,3,224,224)f32`, `(16)f32`, `()i64` for
# a scalar, and `?` for a size that is only known when the model runs (we store it as `-1`).
# Parse one into a shape tuple and a numpy dtype name, raising `PnnxError` on anything else
# (the caller adds the file and line, so say only what is wrong).

# %%
#| export
PNNX_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "i64": "int64", "i32": "int32",
               "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool"}

# %%
#| export
#| exercise: split '(1,3,?,224)f32' into ((1, 3, -1, 224), 'float32'); PnnxError on bad text or type
def parse_annotation(text: str) -> tuple[tuple[int, ...], str]:
    """'(1,3,?,224)f32' -> ((1, 3, -1, 224), 'float32'); `?` (unknown size) becomes -1."""
    ### BEGIN SOLUTION
    match = re.fullmatch(r"\(((?:[0-9]{1,18}|\?)(?:,(?:[0-9]{1,18}|\?))*)?\)(\w+)", text)
    if match is None:
        raise PnnxError(f"expected an annotation like (1,3,224,224)f32, found {text!r}")
    dims, kind = match.groups()
    if kind not in PNNX_DTYPES:
        raise PnnxError(f"unknown element type {kind!r} in {text!r}: expected one of {', '.join(PNNX_DTYPES)}")
    shape = tuple(-1 if d == "?" else int(d) for d in (dims or "").split(",") if d)
    return shape, PNNX_DTYPES[kind]
    ### END SOLUTION


# %%
with check("Exercise 2.2"):
    cases = {"(1,3,224,224)f32": ((1, 3, 224, 224), "float32"), "(16)f32": ((16,), "float32"),
             "()i64": ((), "int64"), "(1,3,?,?)f16": ((1, 3, -1, -1), "float16")}
    for text, want in cases.items():
        got = parse_annotation(text)
        assert got == want, f"parse_annotation({text!r}): expected {want}, got {got}"
    for bad in ["(1,3)c64", "1,3f32", "(1;3)f32", "(1,3)", "(1,a)f32"]:
        raises(PnnxError, parse_annotation, bad)

# %% [markdown]
# ## Operators and operands
#
# With values and annotations parsed, one line becomes an `Operator`. Its operands (inputs and
# outputs) are names; the graph-wide `Operand` records each one's shape, type, the operator that
# produces it and those that consume it. A weight is an `Attribute`: shape and type from the
# `.param` line, the numbers from the `.bin` file.

# %%
#| export
@dataclass
class Attribute:
    """A weight of an operator: its shape and dtype from the .param file, its data from the .bin."""

    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None


@dataclass
class Operator:
    """One line of a .pnnx.param file."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, object] = field(default_factory=dict)
    attrs: dict[str, Attribute] = field(default_factory=dict)
    input_names: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def where(self) -> str:
        """How error messages name this operator."""
        return f"{self.type} {self.name!r} (line {self.line})"


@dataclass
class Operand:
    """A tensor flowing between operators: who makes it, who reads it, its expected shape."""

    name: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    producer: str | None = None
    consumers: list[str] = field(default_factory=list)


@dataclass
class PnnxGraph:
    """A parsed PNNX model: operators in file order and the operands between them."""

    path: Path
    operators: list[Operator]
    operands: dict[str, Operand]


# %% [markdown]
# Parsing a line is now bookkeeping: four fixed columns, the operand names, then the `key=value`
# pairs sorted by their first character. Every failure is re-raised with the file and line.

# %%
#| export
COUNT = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also accepts '²' and '١'
IO_ARITY = {"pnnx.Input": (0, 1), "pnnx.Output": (1, 0)}  # (inputs, outputs) of the graph's ends


def parse_operator(line: str, number: int, path: Path) -> Operator:
    """Parse one operator line; PnnxError names `path:number` and what is wrong."""
    where = f"{path.name}:{number}"
    tokens = line.split()
    if len(tokens) < 4 or not (COUNT.fullmatch(tokens[2]) and COUNT.fullmatch(tokens[3])):
        raise PnnxError(f"{where}: expected 'type name #inputs #outputs ...', found {line.strip()!r}")
    kind, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
    names = tokens[4:4 + n_in + n_out]
    if len(names) < n_in + n_out or any("=" in n for n in names):
        raise PnnxError(f"{where}: {kind} {name!r} declares {n_in} inputs and {n_out} outputs "
                        f"but lists {sum('=' not in n for n in names)} operands")
    op = Operator(kind, name, names[:n_in], names[n_in:], line=number)
    if kind in IO_ARITY and (n_in, n_out) != IO_ARITY[kind]:
        raise PnnxError(f"{where}: {kind} {name!r} has {n_in} inputs and {n_out} outputs, "
                        f"expected {IO_ARITY[kind][0]} and {IO_ARITY[kind][1]}")
    for token in tokens[4 + n_in + n_out:]:
        key, equals, value = token.partition("=")
        if not equals or len(key) < 1 or not value:
            raise PnnxError(f"{where}: {kind} {name!r}: expected key=value, found {token!r}")
        try:
            if key[0] == "@":
                op.attrs[key[1:]] = Attribute(*parse_annotation(value))
            elif key[0] == "$":
                op.input_names[key[1:]] = value
            elif key[0] != "#":
                op.params[key] = parse_value(value)
        except PnnxError as err:
            raise PnnxError(f"{where}: {kind} {name!r}: {err}") from None
    return op


# %%
op = parse_operator("nn.Linear left 1 1 1 2 bias=True in_features=48 out_features=16 "
                    "@bias=(16)f32 @weight=(16,48)f32 #1=(1,48)f32 #2=(1,16)f32", 5, Path("tiny.pnnx.param"))
op

# %% [markdown]
# ## Reading the whole file
#
# `read_param` checks what a truncated or hand-edited file gets wrong: the magic number, the
# counts on line 2, that every operand an operator reads was produced by an **earlier** line
# (PNNX writes files in an order that runs), that no operand is produced twice, and it collects
# the `#` annotations into the operands.

# %%
#| export
MAGIC = "7767517"
MAX_PARAM_BYTES = 64 * 2**20  # the largest .param file read; a big LLM's is under 1 MB


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; PnnxError naming the file and line of a byte that is not UTF-8."""
    if not path.is_file():
        raise PnnxError(f"{path}: no such file")
    if path.stat().st_size > MAX_PARAM_BYTES:
        raise PnnxError(f"{path}: {path.stat().st_size} bytes, more than the {MAX_PARAM_BYTES} a .param file may have")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise PnnxError(f"{path.name}:{line}: byte 0x{raw[err.start]:02x} is not UTF-8 text") from None
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_param(path: str | Path) -> PnnxGraph:
    """Parse a .pnnx.param file into operators and operands, checking its structure."""
    path = Path(path)
    lines = read_lines(path)
    if lines[-1:] == [""]:
        lines.pop()
    if not lines or lines[0].strip() != MAGIC:
        found = lines[0].strip() if lines else "an empty file"
        raise PnnxError(f"{path.name}:1: expected the PNNX magic number {MAGIC}, found {found!r}")
    counts = lines[1].split() if len(lines) > 1 else []
    if len(counts) != 2 or not all(COUNT.fullmatch(c) for c in counts):
        raise PnnxError(f"{path.name}:2: expected '<operator count> <operand count>', found {' '.join(counts)!r}")
    operators = [parse_operator(line, n, path) for n, line in enumerate(lines[2:], 3) if line.strip()]
    operands = link_operands(operators, path)
    if (len(operators), len(operands)) != (int(counts[0]), int(counts[1])):
        raise PnnxError(f"{path.name}:2: the header says {counts[0]} operators and {counts[1]} operands, "
                        f"the file has {len(operators)} and {len(operands)}")
    for n, line in enumerate(lines[2:], 3):
        for token in line.split():
            if token.startswith("#"):
                key, _, value = token[1:].partition("=")
                if key in operands:
                    try:
                        operands[key].shape, operands[key].dtype = parse_annotation(value)
                    except PnnxError as err:
                        raise PnnxError(f"{path.name}:{n}: operand {key!r}: {err}") from None
    return PnnxGraph(path, operators, operands)


def link_operands(operators: list[Operator], path: Path) -> dict[str, Operand]:
    """Every operand with its producer and consumers; PnnxError on use before production."""
    operands: dict[str, Operand] = {}
    lines: dict[str, int] = {}
    for op in operators:
        if op.name in lines:
            raise PnnxError(f"{path.name}:{op.line}: operator name {op.name!r} is used again "
                            f"(first on line {lines[op.name]})")
        lines[op.name] = op.line
        for name in op.inputs:
            if name not in operands:
                raise PnnxError(f"{path.name}:{op.line}: {op.type} {op.name!r} reads operand {name!r} "
                                f"before any operator produces it")
            operands[name].consumers.append(op.name)
        for name in op.outputs:
            if name in operands:
                first = next(o for o in operators if o.name == operands[name].producer)
                raise PnnxError(f"{path.name}:{op.line}: operand {name!r} is produced again "
                                f"(first by {first.name!r} on line {first.line})")
            operands[name] = Operand(name, producer=op.name)
    return operands


# %%
graph = read_param(DATA / "tiny.pnnx.param")
print(len(graph.operators), "operators;", graph.operands["6"])

# %% [markdown]
# ## The weights: a zip archive, memory-mapped
#
# `model.pnnx.bin` is a zip archive with one entry per weight, named `<operator>.<attribute>`
# (`left.weight`), holding the raw little-endian numbers. PNNX stores the entries uncompressed, so
# instead of reading them into memory we **map** the file and let numpy view each entry where it
# lies: loading a 500 MB model then costs no copy, and the operating system pages weights in as
# layers touch them. An entry's data starts after its 30-byte local header, file name and extra
# field.
#
# A damaged archive must not load as shifted or garbled weights, so each entry is checked
# against the archive's central directory before numpy sees it: the local header's signature,
# compression method, name and lengths, and the CRC-32 of the bytes themselves. (One extra-field
# length off by one would otherwise shift every weight by a byte, silently.)

# %%
#| export
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, crc, sizes, lengths
COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
DEFLATE_MAX_RATIO = 1032  # deflate's best case: 258 bytes from a 2-bit code (RFC 1951)


def entry_offset(archive: mmap.mmap, info: zipfile.ZipInfo, where: str) -> int:
    """Where the stored bytes of a zip entry begin, after its local header, name and extra field;
    PnnxError (prefixed by `where`) unless the local header agrees with the central directory."""
    start = info.header_offset
    if not 0 <= start <= len(archive) - LOCAL_HEADER.size:
        raise PnnxError(f"{where}: its local header at byte {start} lies outside the file")
    signature, _, _, method, _, _, _, _, _, name_length, extra_length = LOCAL_HEADER.unpack_from(archive, start)
    name = archive[start + LOCAL_HEADER.size:start + LOCAL_HEADER.size + name_length]
    if signature != b"PK\x03\x04" or method != info.compress_type or name != info.orig_filename.encode():
        raise PnnxError(f"{where}: its local header at byte {start} does not match the central directory")
    offset = start + LOCAL_HEADER.size + name_length + extra_length
    if offset + info.compress_size > len(archive):
        raise PnnxError(f"{where}: its {info.compress_size} bytes at byte {offset} run past the end of the file")
    return offset


def entry_data(archive: mmap.mmap, path: Path, info: zipfile.ZipInfo, where: str) -> memoryview | bytes:
    """The checked bytes of one zip entry: a view of the mapped file when stored, else inflated."""
    if info.compress_type not in COMPRESSIONS:
        raise PnnxError(f"{where}: compression method {info.compress_type} is not supported (stored, deflate)")
    offset = entry_offset(archive, info, where)
    if info.compress_type == zipfile.ZIP_STORED:
        data = memoryview(archive)[offset:offset + info.file_size]
        if info.compress_size != info.file_size or zlib.crc32(data) != info.CRC:
            raise PnnxError(f"{where}: its bytes are damaged (CRC-32 or size differs from the central directory)")
        return data
    if info.file_size > DEFLATE_MAX_RATIO * info.compress_size + 64:
        raise PnnxError(f"{where}: {info.compress_size} deflated bytes cannot hold the {info.file_size} it claims")
    try:
        with zipfile.ZipFile(path) as zipped:
            return zipped.read(info)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise PnnxError(f"{where}: cannot inflate ({err})") from None


def read_bin(graph: PnnxGraph, path: str | Path) -> None:
    """Attach every operator's weights from the .pnnx.bin zip, memory-mapped and checked;
    PnnxError if a weight is missing, of the wrong size or damaged."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            archive = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        with zipfile.ZipFile(path) as zipped:
            entries = {info.filename: info for info in zipped.infolist()}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise PnnxError(f"{path}: cannot read the weights archive ({err})") from None
    for op in graph.operators:
        for key, attr in op.attrs.items():
            entry = f"{op.name}.{key}"
            if entry not in entries:
                raise PnnxError(f"{path.name}: no weight {entry!r} for {op.where()} of {graph.path.name}")
            info, dtype = entries[entry], np.dtype(attr.dtype)
            expected = math.prod(attr.shape) * dtype.itemsize
            if info.file_size != expected:
                raise PnnxError(f"{path.name}: weight {entry!r} has {info.file_size} bytes, expected {expected} "
                                f"for shape {attr.shape} {attr.dtype} ({op.where()} of {graph.path.name})")
            data = entry_data(archive, path, info, f"{path.name}: weight {entry!r}")
            attr.data = np.frombuffer(data, dtype).reshape(attr.shape)


def load_pnnx(param: str | Path) -> PnnxGraph:
    """Read `model.pnnx.param` and the weights in `model.pnnx.bin` beside it."""
    graph = read_param(param)
    if any(op.attrs for op in graph.operators):
        read_bin(graph, Path(param).with_name(Path(param).name.removesuffix(".param") + ".bin"))
    return graph


# %%
graph = load_pnnx(DATA / "tiny.pnnx.param")
weight = graph.operators[2].attrs["weight"].data
print(graph.operators[2].name, weight.shape, weight.dtype, "| copied into memory:", weight.flags.owndata,
      "| writeable:", weight.flags.writeable)

# %% [markdown]
# The weights are read-only views of the mapped file: no layer can change a model by accident.
#
# ## From file order to run order
#
# PNNX happens to write operators in an order that runs, but a graph built or rewritten in code
# (fusing a convolution with its batch norm, inserting a quantize step) has no such guarantee. An
# engine therefore computes a **topological order**: every operator after all operators whose
# outputs it reads. Two classic algorithms:
#
# * **Kahn's algorithm** counts each operator's unfinished inputs (its *in-degree*), starts from
#   the operators with none, and each time one runs, decrements its successors' counts, queueing
#   those that reach zero. If operators are left over, they wait on each other: a **cycle**.
# * **Depth-first search** visits an operator's successors before finishing it; finishing order
#   reversed is a topological order (KuiperInfer does this).
#
# Both need the successor lists: who reads what each operator writes.

# %%
#| export graph
import heapq
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import replace

from kuiper.errors import GraphError, KuiperError, ShapeError
from kuiper.pnnx import Operator, PnnxGraph
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


# %% [markdown]
# A checker for any order: every operator must come after the producers of its inputs.

# %%
def is_topological(order: list[Operator]) -> bool:
    """True when every operator comes after the producers of all its inputs."""
    done = set()
    for op in order:
        if any(name not in done for name in op.inputs):
            return False
        done.update(op.outputs)
    return True


# %% [markdown]
# ## Exercise 2.3 — Kahn's algorithm
#
# Return the operators in a topological order, breaking ties by file order (so a file that is
# already in order comes back unchanged): keep the ready operators in a heap of file positions
# (`heapq`) rather than a plain queue. When a cycle leaves operators unvisited, raise
# `GraphError` naming them.

# %%
#| export graph
#| exercise: Kahn's algorithm over successors(); ties in file order; GraphError naming the operators on a cycle
def topological_order(operators: list[Operator]) -> list[Operator]:
    """The operators ordered so that each comes after every producer of its inputs."""
    following = successors(operators)
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
with check("Exercise 2.3"):
    ops = load_pnnx(DATA / "tiny.pnnx.param").operators
    shuffled = [ops[i] for i in (5, 0, 8, 3, 1, 6, 2, 4, 7)]
    order = topological_order(shuffled)
    names = [op.name for op in order]
    assert len(order) == len(ops), f"expected all {len(ops)} operators, got {len(order)}: {names}"
    assert is_topological(order), f"expected each operator after the producers of its inputs, got {names}"
    got = [op.name for op in topological_order(ops)]
    assert got == [op.name for op in ops], f"a file already in order: expected {[op.name for op in ops]}, got {got}"
    # two independent branches: ties go to the earlier line in the file
    free = [Operator("t", "in", [], ["i"]), Operator("t", "b", ["i"], ["y"]), Operator("t", "a", ["i"], ["x"]),
            Operator("t", "c", ["x", "y"], ["z"])]
    got = [op.name for op in topological_order([free[i] for i in (0, 3, 1, 2)])]
    assert got == ["in", "b", "a", "c"], f"ties in file order: expected ['in', 'b', 'a', 'c'], got {got}"
    cyclic = [Operator("t", "in", [], ["i"]), Operator("t", "a", ["i", "y"], ["x"]), Operator("t", "b", ["x"], ["y"])]
    err = raises(GraphError, topological_order, cyclic)
    assert "'a'" in str(err) and "'b'" in str(err) and "'in'" not in str(err), \
        f"expected the message to name 'a' and 'b' (not 'in'), got: {err}"

# %% [markdown]
# For comparison, the depth-first version:

# %%
def topological_order_dfs(operators: list[Operator]) -> list[Operator]:
    """Depth-first search: an operator finishes after all its successors; reverse the finish order."""
    following, by_name = successors(operators), {op.name: op for op in operators}
    finished, on_path, order = set(), set(), []

    def visit(name: str) -> None:
        if name in on_path:
            raise GraphError(f"the graph has a cycle through {name!r}")
        if name in finished:
            return
        on_path.add(name)
        for after in following[name]:
            visit(after)
        on_path.discard(name)
        finished.add(name)
        order.append(by_name[name])

    for op in operators:
        visit(op.name)
    return order[::-1]


# %% [markdown]
# Both algorithms give valid orders of the shuffled graph. They differ where the order is free:
# the two branches are independent, so either may run first.

# %%
kahn, dfs = topological_order(shuffled), topological_order_dfs(shuffled)
print("Kahn:", [op.name for op in kahn])
print("DFS: ", [op.name for op in dfs])
print("both valid:", is_topological(kahn) and is_topological(dfs), "| same order:", kahn == dfs)

# %% [markdown]
# ## A picture of the graph
#
# Place each operator in the column of its depth (the longest path from an input) and draw an
# arrow for every operand.

# %%
def draw_graph(operators: list[Operator], ax, max_label: int = 16) -> None:
    """Operators as labelled boxes, one column per depth, with an arrow for each operand."""
    producer = {name: op.name for op in operators for name in op.outputs}
    depth, rows, position = {}, Counter(), {}
    for op in topological_order(operators):
        depth[op.name] = 1 + max((depth[producer[n]] for n in op.inputs), default=-1)
        position[op.name] = (depth[op.name], -rows[depth[op.name]])
        rows[depth[op.name]] += 1
    for op in operators:
        for name in op.inputs:
            (x0, y0), (x1, y1) = position[producer[name]], position[op.name]
            ax.annotate("", (x1 - 0.32, y1), (x0 + 0.32, y0), arrowprops=dict(arrowstyle="->", color="gray"))
    for op in operators:
        x, y = position[op.name]
        ax.text(x, y, f"{op.type[:max_label]}\n{op.name[:max_label]}", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="tab:orange" if op.type in IO_TYPES else "lightsteelblue"))
    ax.set_xlim(-0.6, max(depth.values()) + 0.6)
    ax.set_ylim(-max(rows.values()) + 0.4, 0.6)
    ax.axis("off")


fig, ax = plt.subplots(figsize=(11, 2.6))
draw_graph(load_pnnx(DATA / "tiny.pnnx.param").operators, ax)
plt.show()

# %% [markdown]
# ## Exercise 2.4 — freeing tensors after their last use
#
# Running a graph keeps every operand that some later operator still needs, and nothing else. A
# ResNet-50 at batch 8 makes several gigabytes of activations in total but never needs more than
# a few hundred megabytes of them at once. For each operator, list the operands whose **last**
# reader it is: the graph drops them right after that operator runs. (KuiperInfer reuses buffers
# of equal size for the same effect; dropping at last use frees at least as much.)
#
# Graph outputs (the operands `pnnx.Output` reads) go to the caller: never list them. An operand
# nobody reads is freed right after the operator that made it.

# %%
#| export graph
#| exercise: map each operator name to the operands to free after it: last read there, or made and never read
def last_uses(order: list[Operator]) -> dict[str, list[str]]:
    """For each operator, the operands to free once it has run: those it reads last, or makes unread."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %%
with check("Exercise 2.4"):
    frees = last_uses(load_pnnx(DATA / "tiny.pnnx.param").operators)
    want = {"pnnx_input_0": [], "torch.flatten_1": ["0"], "left": [], "act": ["2"], "right": ["1"],
            "F.relu_2": ["4"], "torch.cat_0": ["3", "5"], "head": ["6"], "pnnx_output_0": []}
    got = {name: sorted(names) for name, names in frees.items()}
    assert got == want, f"expected {want}, got {got}"

# %% [markdown]
# ## The runtime graph
#
# `RuntimeGraph` puts it together. It orders the operators, asks `make_layer` for a callable per
# operator (lesson 03 builds these from a registry; here a small table will do), and `forward`:
#
# 1. checks each input against the `pnnx.Input` annotation (the batch size, dimension 0, is free),
# 2. runs the operators in order, timing each one,
# 3. checks each result against its `#` annotation, so a wrong layer is caught where it happens,
# 4. drops operands after their last use, recording the peak of what was alive (operands named in
#    `keep` are saved in `graph.kept` first, for looking at intermediate results).
#
# It takes and returns numpy arrays or `Tensor`s, whichever it was given. Two things make repeated
# runs cheaper. The operators run from a *plan* made once: where a layer can also do the work of
# the one operator that reads its output (`Layer.fuse` in lesson 03; lesson 06's convolution
# absorbs the activation after it, and a residual addition with the other operand as one more
# input), one merged step replaces both and the tensor between them is never made (unless it is
# named in `keep`). And the checks of steps 1 and 3 and the memory count
# of step 4 run once per set of input shapes: every later shape follows from those, so a repeat
# of the same shapes skips them (the peak is remembered).

# %%
#| export graph
Layer = Callable[..., "Tensor | tuple[Tensor, ...]"]

# %% [markdown]
# ## Exercise 2.5 — the bytes alive
#
# To report the peak memory of a run, `forward` adds up the bytes of the operands alive after
# each operator. A `flatten` or a slice returns a **view**: it shares the memory of the array it
# came from (`array.base`), so count each owner of memory once, and count the whole owner even
# when only a view of it is alive, since the view keeps all of it in memory. An owner that is not
# a numpy array (the `bytes` under `np.frombuffer`) has no `nbytes`: count the view's bytes then.

# %%
#| export graph
#| exercise: the bytes held by the operands, each owner of memory (array.base) counted once and whole
def live_bytes(values: dict[str, Tensor]) -> int:
    """Bytes held by the live operands, counting memory shared by views once."""
    ### BEGIN SOLUTION
    owners = {}
    for tensor in values.values():
        array = tensor.data  # numpy, or cupy on the GPU: counted where it lives, never copied to count it
        owner = array if array.base is None else array.base
        owners[id(owner)] = getattr(owner, "nbytes", array.nbytes)
    return sum(owners.values())
    ### END SOLUTION


# %%
with check("Exercise 2.5"):
    big = np.zeros((4, 8), np.float32)  # 128 bytes
    cases = [({"a": Tensor(big)}, 128), ({"a": Tensor(big), "b": Tensor(big[1:3]), "c": Tensor(big.reshape(-1))}, 128),
             ({"v": Tensor(big[:1])}, 128), ({"a": Tensor(big), "b": Tensor(np.ones(3, np.float32))}, 140),
             ({"raw": Tensor(np.frombuffer(bytes(40), np.float32))}, 40), ({}, 0)]
    for values, want in cases:
        got = live_bytes(values)
        shapes = {name: t.shape for name, t in values.items()}
        assert got == want, f"operands {shapes}: expected {want} bytes, got {got}"

# %%
#| export graph
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


# %% [markdown]
# To run the tiny model we need four layers. Each is a function of `Tensor`s; `make_layer` picks
# one by the operator's type and reads its parameters and weights. Lesson 03 replaces this table
# with a registry that any module can add to.

# %%
def make_layer(op: Operator):
    """A callable for each operator type of the tiny model."""
    if op.type in ("nn.ReLU", "F.relu"):
        return lambda x: Tensor(np.maximum(x.numpy(), 0))
    if op.type == "nn.Linear":
        weight, bias = op.attrs["weight"].data, op.attrs["bias"].data
        return lambda x: Tensor(x.numpy() @ weight.T + bias)
    if op.type == "torch.flatten":
        return lambda x: x.reshape(x.shape[0], -1)
    if op.type == "torch.cat":
        return lambda *xs: Tensor(np.concatenate([x.numpy() for x in xs], axis=op.params["dim"]))
    raise NotImplementedError(op.type)


tiny = RuntimeGraph(load_pnnx(DATA / "tiny.pnnx.param"), make_layer)
x, want = np.load(DATA / "tiny.input.npy"), np.load(DATA / "tiny.output.npy")
got = tiny(x)
print("output", got.shape, "| vs PyTorch:", agreement(got, want))

# %% [markdown]
# The reference output was saved by PyTorch when `tools/zoo.py` exported the model. The batch
# dimension is free, so eight inputs run at once; a wrong input shape is caught at the door:

# %%
batch = np.random.default_rng(0).random((8, 3, 4, 4), dtype=np.float32)
print("batch of 8 ->", tiny(batch).shape, "| peak activation memory:", tiny.peak_bytes, "bytes")
try:
    tiny(np.zeros((1, 3, 5, 4), np.float32))
except ShapeError as err:
    print("ShapeError:", err)

# %% [markdown]
# ## Where the time goes, and what stays in memory
#
# `forward` timed every operator. Summed per type, that is the profile later lessons use to find
# what to make fast:

# %%
# NBVAL_IGNORE_OUTPUT
for kind, seconds in tiny.time_by_type().items():
    print(f"{kind:14} {seconds * 1e6:8.1f} µs")

# %% [markdown]
# And memory: the bytes alive after each operator, with and without freeing at last use, for a
# batch of 256:

# %%
def live_profile(graph: RuntimeGraph, batch: int, free: bool) -> list[int]:
    """Bytes of activations alive after each operator, from the shapes in the .param file."""
    alive, sizes, frees = {}, [], graph.frees
    for op in graph.order:
        for name in op.outputs:
            shape = graph.model.operands[name].shape
            alive[name] = batch * math.prod(shape[1:]) * 4
        sizes.append(sum(alive.values()))
        for name in frees[op.name] if free else []:
            alive.pop(name)
    return sizes


fig, ax = plt.subplots(figsize=(7, 2.8))
for free, label in [(False, "keep everything"), (True, "free at last use")]:
    ax.step(range(len(tiny.order)), live_profile(tiny, 256, free), where="post", label=label)
ax.set_xticks(range(len(tiny.order)), [op.name for op in tiny.order], rotation=40, ha="right", fontsize=8)
ax.set_ylabel("live bytes (batch 256)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Tuples and lists inside the graph
#
# A model that returns several tensors, `return boxes, scores`, makes TorchScript pack them into
# one value: PNNX writes a `prim::TupleConstruct` operator whose single output is the tuple, and
# `pnnx.Output` reads that. Lists (`prim::ListConstruct`) and their unpacking
# (`prim::TupleUnpack`, `prim::ListUnpack`) appear the same way. None of them computes anything,
# so rather than teach every layer about tuples we take them apart once, before the graph runs:
# a reader of a packed value reads the tensors inside it instead, an unpacked value *is* the
# tensor that was packed, and a `pnnx.Output` of a tuple becomes one output per tensor, so that
# `forward` returns a tuple of arrays. An operator that returns a tuple as one value, such as
# `nn.MaxPool2d(return_indices=True)`, is unpacked by giving it one output per item. PNNX also writes a list of tensors as an expression,
# `expr=[@0,@1]`; where only tuples and outputs read it, it is a pack too.

# %%
#| export graph
import re
from dataclasses import replace

from kuiper.pnnx import link_operands

PACK = ("prim::TupleConstruct", "prim::ListConstruct")
UNPACK = ("prim::TupleUnpack", "prim::ListUnpack")


def list_inputs(op: Operator) -> list[str] | None:
    """The operands a pnnx.Expression like `[@0,@1]` lists (PNNX's way to write a list of tensors)."""
    items = op.params.get("expr") if op.type == "pnnx.Expression" else None
    if not isinstance(items, tuple) or not all(isinstance(i, str) and re.fullmatch(r"@\d+", i) for i in items):
        return None
    return [op.inputs[int(item[1:])] for item in items]


# %% [markdown]
# ## Exercise 2.6 — taking tuples apart
#
# Write `unpack_tuples`. First collect `packed`: the output name of every pack (and of every list
# expression that only packs, unpacks and outputs read) → the names it packs. Then walk the
# operators in file order, skipping the packs themselves; `spread` replaces each input by what
# it stands for: an alias made by an unpack, and a packed name by the tensors inside it (packs of
# packs too). An unpack either aliases its outputs to the packed tensors (GraphError naming the
# line when the counts differ) or, when its single input is the one output of an operator such as
# a max-pool with indices, gives that operator its outputs. A `pnnx.Output` of several tensors
# becomes one `pnnx.Output` per tensor, named `out.0`, `out.1`, ... Finally
# `link_operands` rebuilds the operand table, keeping each operand's shape and dtype.

# %%
#| export graph
#| exercise: splice packs into their readers, alias unpacks, one pnnx.Output per tensor; GraphError on a count mismatch
def unpack_tuples(model: PnnxGraph) -> PnnxGraph:
    """`model` without tuple and list operators: packs are spliced into their readers, unpacks
    alias the packed tensors (or, of an operator's single tuple output, become its outputs), and a
    pnnx.Output of a tuple becomes one pnnx.Output per tensor.
    GraphError if an unpack does not find as many tensors as it has outputs."""
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# %% [markdown]
# A model with two outputs, both read through a tuple and an unpack; a max-pool whose tuple output
# is unpacked; a tuple of a tuple; and an unpack that asks for more tensors than the tuple holds:

# %%
from kuiper.pnnx import Operator, Operand


def graph(path: str, operators: list[Operator]) -> PnnxGraph:
    """A PnnxGraph of `operators`, with a blank operand for every name they use."""
    model = PnnxGraph(Path(path), operators, {})
    model.operands = {name: Operand(name) for op in operators for name in op.inputs + op.outputs}
    return model


two = graph("two.pnnx.param", [
    Operator("pnnx.Input", "in", [], ["x"], line=3),
    Operator("prim::TupleConstruct", "pack", ["x", "x"], ["t"], line=4),
    Operator("prim::TupleUnpack", "unpack", ["t"], ["a", "b"], line=5),
    Operator("prim::TupleConstruct", "out_tuple", ["a", "b"], ["u"], line=6),
    Operator("pnnx.Output", "out", ["u"], [], line=7)])
pooled = graph("pool.pnnx.param", [
    Operator("pnnx.Input", "in", [], ["x"], line=3),
    Operator("nn.MaxPool2d", "pool", ["x"], ["t"], line=4),
    Operator("prim::TupleUnpack", "unpack", ["t"], ["values", "indices"], line=5),
    Operator("pnnx.Output", "out", ["values", "indices"], [], line=6)])
nested = graph("nested.pnnx.param", [
    Operator("pnnx.Input", "in", [], ["x", "y"], line=3),
    Operator("prim::TupleConstruct", "inner", ["x", "y"], ["t"], line=4),
    Operator("prim::TupleConstruct", "outer", ["t", "x"], ["u"], line=5),
    Operator("pnnx.Output", "out", ["u"], [], line=6)])
short = graph("short.pnnx.param", [
    Operator("pnnx.Input", "in", [], ["x"], line=3),
    Operator("prim::TupleConstruct", "pack", ["x", "x"], ["t"], line=4),
    Operator("prim::TupleUnpack", "unpack", ["t"], ["a", "b", "c"], line=5),
    Operator("pnnx.Output", "out", ["a"], [], line=6)])

with check("Exercise 2.6"):
    flat = unpack_tuples(two)
    got = [(op.name, op.inputs) for op in flat.operators if op.type == "pnnx.Output"]
    assert got == [("out.0", ["x"]), ("out.1", ["x"])], f"expected outputs [('out.0', ['x']), ('out.1', ['x'])], got {got}"
    assert [op.type for op in flat.operators] == ["pnnx.Input", "pnnx.Output", "pnnx.Output"], \
        f"expected no tuple operators left, got {[op.type for op in flat.operators]}"
    got = [(op.type, op.inputs, op.outputs) for op in unpack_tuples(pooled).operators]
    assert got[1] == ("nn.MaxPool2d", ["x"], ["values", "indices"]), \
        f"expected the pool to get the outputs ['values', 'indices'], got {got[1]}"
    assert [t for t, _, _ in got] == ["pnnx.Input", "nn.MaxPool2d", "pnnx.Output", "pnnx.Output"], \
        f"expected the unpack gone and one output per tensor, got {got}"
    got = [op.inputs for op in unpack_tuples(nested).operators if op.type == "pnnx.Output"]
    assert got == [["x"], ["y"], ["x"]], f"expected a tuple of a tuple to give outputs [['x'], ['y'], ['x']], got {got}"
    err = raises(GraphError, unpack_tuples, short)
    assert "short.pnnx.param" in str(err) and "5" in str(err), f"expected the message to name the file and line 5, got: {err}"

# %%
print([(op.type, op.name, op.inputs) for op in unpack_tuples(two).operators])
print([(op.type, op.inputs, op.outputs) for op in unpack_tuples(pooled).operators])

# %% [markdown]
# ## What you built
#
# `kuiper/pnnx.py` reads PNNX files with errors that name the file and line; `kuiper/graph.py`
# orders, runs, checks and profiles the graph. Lesson 03 turns the `make_layer` table into a
# registry, so that `kuiper.load("model.pnnx.param")` can build any model whose operators have
# registered layers.
