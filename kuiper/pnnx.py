# Generated from solutions/02_graph.py by tools/sync.py: edit the lesson, not this file.
from __future__ import annotations

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


INT = re.compile(r"[-+]?[0-9]{1,18}")
FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?(?:inf|nan)")
MAX_DEPTH = 16  # brackets inside brackets; PNNX itself writes at most 2


def parse_value(text: str, depth: int = 0) -> object:
    """A PNNX parameter value as Python: None, bool, int, float, str, or a tuple of these.

    Raises PnnxError when brackets nest deeper than MAX_DEPTH."""
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


PNNX_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "i64": "int64", "i32": "int32",
               "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool"}


def parse_annotation(text: str) -> tuple[tuple[int, ...], str]:
    """'(1,3,?,224)f32' -> ((1, 3, -1, 224), 'float32'); `?` (unknown size) becomes -1."""
    match = re.fullmatch(r"\(((?:[0-9]{1,18}|\?)(?:,(?:[0-9]{1,18}|\?))*)?\)(\w+)", text)
    if match is None:
        raise PnnxError(f"expected an annotation like (1,3,224,224)f32, found {text!r}")
    dims, kind = match.groups()
    if kind not in PNNX_DTYPES:
        raise PnnxError(f"unknown element type {kind!r} in {text!r}: expected one of {', '.join(PNNX_DTYPES)}")
    shape = tuple(-1 if d == "?" else int(d) for d in (dims or "").split(",") if d)
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
