"""kuiper.llm.safetensors against the `safetensors` package: files written by its numpy and torch
writers, our writer read back by it, and damaged headers."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from kuiper.errors import KuiperError, SafetensorsError
from kuiper.llm.safetensors import SafetensorsFile, load_config, save_safetensors

LESSON = 9  # kuiper grade runs this file on the student build of lesson 09

st_numpy = pytest.importorskip("safetensors.numpy")
safe_open = pytest.importorskip("safetensors").safe_open

RNG = np.random.default_rng(0)
ARRAYS = {"f32": RNG.standard_normal((3, 4), dtype=np.float32), "f16": RNG.standard_normal(5).astype(np.float16),
          "f64": RNG.standard_normal((2, 2)), "i64": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
          "i32": np.array([-(2**31), 2**31 - 1], np.int32), "i16": np.array([-7, 7], np.int16),
          "i8": np.array([-128, 127], np.int8), "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
          "u16": np.array([65535], np.uint16), "u32": np.array([2**32 - 1], np.uint32),
          "u64": np.array([2**64 - 1], np.uint64), "bool": np.array([True, False, True]),
          "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float32)}


def test_reads_safetensors_numpy_files(tmp_path):
    path = tmp_path / "np.safetensors"
    st_numpy.save_file(ARRAYS, path, metadata={"format": "np", "note": "ünï"})
    ours = SafetensorsFile(path)
    assert ours.metadata == {"format": "np", "note": "ünï"}
    assert set(ours.tensors) == set(ARRAYS)
    for name, want in ARRAYS.items():
        dtype, shape = ours.tensors[name]
        assert shape == want.shape, name
        got = ours.tensor(name)
        if name == "f16":
            assert dtype == "F16" and got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))
        else:
            assert got.dtype == want.dtype and np.array_equal(got, want), name


def test_f32_is_a_read_only_view(tmp_path):
    path = tmp_path / "one.safetensors"
    st_numpy.save_file({"w": ARRAYS["f32"]}, path)
    w = SafetensorsFile(path).tensor("w")
    assert not w.flags.writeable and not w.flags.owndata and w.base is not None


def test_reads_torch_bf16_f16_f32(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    torch.manual_seed(0)
    saved = {"model.embed_tokens.weight": torch.randn(10, 8, dtype=torch.bfloat16),
             "model.norm.weight": torch.randn(8).half(), "lm_head.weight": torch.randn(10, 8),
             "special": torch.tensor([float("inf"), -0.0, 1e-40, 3e38], dtype=torch.bfloat16)}
    path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(saved, path, metadata={"format": "pt"})
    ours = SafetensorsFile(path)
    assert ours.metadata == {"format": "pt"}
    assert ours.tensors["model.embed_tokens.weight"] == ("BF16", (10, 8))
    for name, tensor in saved.items():
        got, want = ours.tensor(name), tensor.float().numpy()
        assert got.dtype == np.float32 and np.array_equal(got, want), name
        assert np.array_equal(np.signbit(got), np.signbit(want)), name


def test_rows_decoded_into_a_callers_array(tmp_path):
    """The loader's one copy: every other row of a BF16, F16 or F32 tensor written straight into rows of a bigger array."""
    torch = pytest.importorskip("torch")
    import safetensors.torch

    torch.manual_seed(1)
    saved = {"bf16": torch.randn(6, 8, dtype=torch.bfloat16), "f16": torch.randn(6, 8).half(), "f32": torch.randn(6, 8)}
    path = tmp_path / "rows.safetensors"
    safetensors.torch.save_file(saved, path)
    ours = SafetensorsFile(path)
    for name, tensor in saved.items():
        stacked = np.full((5, 8), np.nan, np.float32)
        got = ours.tensor(name, stacked[1:4], slice(1, 6, 2))
        assert np.shares_memory(got, stacked) and np.isnan(stacked[[0, 4]]).all(), name
        assert np.array_equal(stacked[1:4], tensor.float().numpy()[1::2]), name
    with pytest.raises(SafetensorsError, match=r"tensor 'f32' rows slice\(None, None, None\) are F32 \(6, 8\), "
                                               r"which do not fit out float32 \(5, 8\)"):
        ours.tensor("f32", np.zeros((5, 8), np.float32))


def test_our_writer_is_read_by_safetensors(tmp_path):
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, ARRAYS, metadata={"format": "np"})
    assert len(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]]) % 8 == 0
    loaded = st_numpy.load_file(path)
    assert set(loaded) == set(ARRAYS)
    for name, want in ARRAYS.items():
        assert loaded[name].dtype == want.dtype and np.array_equal(loaded[name], want), name
    with safe_open(path, "np") as reference:
        assert reference.metadata() == {"format": "np"}
    big_endian = np.arange(4, dtype=">f4")
    save_safetensors(path, {"be": big_endian, "strided": np.arange(12.0).reshape(3, 4)[:, ::2]})
    assert np.array_equal(SafetensorsFile(path).tensor("be"), [0, 1, 2, 3])
    assert np.array_equal(SafetensorsFile(path).tensor("strided"), [[0, 2], [4, 6], [8, 10]])


def test_writer_refuses_dtypes_safetensors_lacks(tmp_path):
    with pytest.raises(SafetensorsError, match=r"tensor 'z' has dtype complex64"):
        save_safetensors(tmp_path / "c.safetensors", {"z": np.zeros(2, np.complex64)})


def test_load_config(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "rope_theta": 100000.0,
              "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_config(tmp_path) == config and load_config(tmp_path / "config.json") == config
    (tmp_path / "config.json").write_text('{"hidden_size": 576,')
    with pytest.raises(SafetensorsError, match=r"config.json: the file is not valid JSON"):
        load_config(tmp_path)


# ---- damaged files ----------------------------------------------------------------------------

def write_raw(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    """A file with `header` (a dict, or raw bytes) as its JSON header and `data` after it."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def open_fails(path: Path, pattern: str) -> None:
    with pytest.raises(SafetensorsError, match=pattern) as err:
        SafetensorsFile(path)
    assert str(err.value).startswith(f"{path}: ") and isinstance(err.value, (KuiperError, ValueError))


def test_too_short(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x10\x00")
    open_fails(path, r"2 bytes is too short for the 8-byte header length")


def test_header_length_past_the_end(tmp_path):
    open_fails(write_raw(tmp_path / "h.safetensors", {}, length=10**9), r"header length 1000000000 is past the end")


def test_header_not_json(tmp_path):
    open_fails(write_raw(tmp_path / "j.safetensors", b'{"w": {"dtype": "F32",'), r"the header is not valid JSON")
    open_fails(write_raw(tmp_path / "u.safetensors", b'{"\xff": 1}'), r"the header is not valid JSON")
    open_fails(write_raw(tmp_path / "l.safetensors", [1, 2]), r"the header must be a JSON object, got list")


def test_entry_without_data_offsets(tmp_path):
    open_fails(write_raw(tmp_path / "k.safetensors", {"w": {"dtype": "F32", "shape": [1]}}, bytes(4)),
               r"tensor 'w' needs a dtype string, a shape of integers >= 0 and data_offsets")


def test_offsets_out_of_range(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    open_fails(write_raw(tmp_path / "o.safetensors", header, bytes(12)),
               r"tensor 'w' has data_offsets \[0, 16\] outside the 12 data bytes")


def test_offsets_disagree_with_shape(tmp_path):
    header = {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}}
    open_fails(write_raw(tmp_path / "s.safetensors", header, bytes(12)),
               r"tensor 'w' \(BF16 \(2, 3\)\) should take 12 bytes, its data_offsets give 8")


def test_unsupported_dtype_fails_when_read(tmp_path):
    header = {"f8": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]},
              "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    ours = SafetensorsFile(write_raw(tmp_path / "f8.safetensors", header, bytes(8)))
    assert ours.tensors["f8"] == ("F8_E4M3", (4,)) and ours.tensor("w").tolist() == [0.0]
    with pytest.raises(SafetensorsError, match=r"tensor 'f8' has dtype F8_E4M3, which kuiper cannot read"):
        ours.tensor("f8")


def test_missing_tensor_suggests_close_names(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors(path, {"model.norm.weight": np.ones(2, np.float32), "lm_head.weight": np.ones(2, np.float32)})
    with pytest.raises(SafetensorsError, match=r"no tensor 'model.norm.weights'.*did you mean 'model.norm.weight'"):
        SafetensorsFile(path).tensor("model.norm.weights")
