# Generated from solutions/02_graph.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

import mmap
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kuiper.errors import PnnxError


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


def parse_value(text: str) -> object:
    """A PNNX parameter value as Python: None, bool, int, float, str, or a tuple of these."""
    if text in ("None", "()", "[]"):
        return None
    if text in ("True", "False"):
        return text == "True"
    if text[:1] in "([" and text[-1:] in ")]":
        return tuple(parse_value(item) for item in split_top_level(text[1:-1]))
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


PNNX_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "i64": "int64", "i32": "int32",
               "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool"}


def parse_annotation(text: str) -> tuple[tuple[int, ...], str]:
    """'(1,3,?,224)f32' -> ((1, 3, -1, 224), 'float32'); `?` (unknown size) becomes -1."""
    match = re.fullmatch(r"\(([0-9?,]*)\)(\w+)", text)
    if match is None:
        raise PnnxError(f"expected an annotation like (1,3,224,224)f32, found {text!r}")
    dims, kind = match.groups()
    if kind not in PNNX_DTYPES:
        raise PnnxError(f"unknown element type {kind!r} in {text!r}: expected one of {', '.join(PNNX_DTYPES)}")
    shape = tuple(-1 if d == "?" else int(d) for d in dims.split(",") if d)
    return shape, PNNX_DTYPES[kind]


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


def parse_operator(line: str, number: int, path: Path) -> Operator:
    """Parse one operator line; PnnxError names `path:number` and what is wrong."""
    where = f"{path.name}:{number}"
    tokens = line.split()
    if len(tokens) < 4 or not (tokens[2].isdigit() and tokens[3].isdigit()):
        raise PnnxError(f"{where}: expected 'type name #inputs #outputs ...', found {line.strip()!r}")
    kind, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
    names = tokens[4:4 + n_in + n_out]
    if len(names) < n_in + n_out or any("=" in n for n in names):
        raise PnnxError(f"{where}: {kind} {name!r} declares {n_in} inputs and {n_out} outputs "
                        f"but lists {sum('=' not in n for n in names)} operands")
    op = Operator(kind, name, names[:n_in], names[n_in:], line=number)
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


MAGIC = "7767517"


def read_param(path: str | Path) -> PnnxGraph:
    """Parse a .pnnx.param file into operators and operands, checking its structure."""
    path = Path(path)
    if not path.is_file():
        raise PnnxError(f"{path}: no such file")
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != MAGIC:
        found = lines[0].strip() if lines else "an empty file"
        raise PnnxError(f"{path.name}:1: expected the PNNX magic number {MAGIC}, found {found!r}")
    counts = lines[1].split() if len(lines) > 1 else []
    if len(counts) != 2 or not all(c.isdigit() for c in counts):
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
    for op in operators:
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


def entry_offset(archive: mmap.mmap, info: zipfile.ZipInfo) -> int:
    """Where the stored bytes of a zip entry begin: after its local header, name and extra field."""
    name_length, extra_length = np.frombuffer(archive, "<u2", 2, info.header_offset + 26)
    return info.header_offset + 30 + int(name_length) + int(extra_length)


def read_bin(graph: PnnxGraph, path: str | Path) -> None:
    """Attach every operator's weights from the .pnnx.bin zip, memory-mapped; PnnxError if one is missing."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            archive = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        entries = {info.filename: info for info in zipfile.ZipFile(path).infolist()}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise PnnxError(f"{path}: cannot read the weights archive ({err})") from None
    for op in graph.operators:
        for key, attr in op.attrs.items():
            entry = f"{op.name}.{key}"
            if entry not in entries:
                raise PnnxError(f"{path.name}: no weight {entry!r} for {op.where()} of {graph.path.name}")
            info, dtype = entries[entry], np.dtype(attr.dtype)
            expected = int(np.prod(attr.shape)) * dtype.itemsize
            if info.file_size != expected:
                raise PnnxError(f"{path.name}: weight {entry!r} has {info.file_size} bytes, expected {expected} "
                                f"for shape {attr.shape} {attr.dtype} ({op.where()} of {graph.path.name})")
            if info.compress_type == zipfile.ZIP_STORED:
                flat = np.frombuffer(archive, dtype, expected // dtype.itemsize, entry_offset(archive, info))
            else:
                flat = np.frombuffer(zipfile.ZipFile(path).read(entry), dtype)
            attr.data = flat.reshape(attr.shape)


def load_pnnx(param: str | Path) -> PnnxGraph:
    """Read `model.pnnx.param` and the weights in `model.pnnx.bin` beside it."""
    graph = read_param(param)
    if any(op.attrs for op in graph.operators):
        read_bin(graph, Path(param).with_name(Path(param).name.removesuffix(".param") + ".bin"))
    return graph
