"""kuiper.quant: symmetric per-group int8 weights, their kernels, and Q8_0 GGUF files (checked against `gguf`)."""

import json

import numpy as np
import pytest

from kuiper.errors import DTypeError, KuiperError, ShapeError
from kuiper.quant import (
    QuantizedWeight,
    dequantize,
    from_q8_0,
    qmatmul,
    qmatvec,
    quantize,
    quantize_conv,
    round_half_away,
    save_q8_0_gguf,
    to_q8_0,
)

LESSON = 14  # kuiper grade runs this file on the student build of lesson 14

gguf = pytest.importorskip("gguf")
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def weights(n: int, k: int, seed: int = 0) -> np.ndarray:
    """A Gaussian weight matrix with a few large outliers, like an LLM's."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.02, (n, k)).astype(np.float32)
    w.flat[rng.choice(w.size, max(1, w.size // 1000), replace=False)] = 0.5
    return w


def test_round_half_away_matches_c_roundf():
    v = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 126.5, -126.49999, 3.0], np.float32)
    assert round_half_away(v).tolist() == [1, 2, 3, -1, -3, 0, 127, -126, 3]


@pytest.mark.parametrize("group", [32, 64, 128, 576 * 2])
def test_round_trip_error_at_most_half_a_step(group):
    w = weights(40, 1152)
    qw = quantize(w, group)
    assert qw.q.dtype == np.int8 and qw.scales.dtype == np.float32 and qw.group == group
    assert qw.shape == (40, 1152) and qw.scales.shape == (40, 1152 // group)
    assert qw.nbytes == 40 * 1152 + 40 * (1152 // group) * 4
    np.testing.assert_array_equal(qw.scales, np.abs(w.reshape(40, -1, group)).max(-1) / np.float32(127))
    assert np.abs(qw.q).max() == 127 and qw.q.min() >= -127
    step = np.repeat(qw.scales, group, axis=1)
    assert (np.abs(dequantize(qw) - w) <= step / 2 * (1 + 1e-6)).all()


def test_zero_groups_stay_zero():
    w = weights(4, 128)
    w[1] = 0
    w[2, 32:64] = 0
    qw = quantize(w, 32)
    assert np.isfinite(qw.scales).all() and qw.scales[1].max() == 0 and qw.scales[2, 1] == 0
    assert not qw.q[1].any() and not qw.q[2, 32:64].any()
    np.testing.assert_array_equal(dequantize(qw)[1], 0)


def test_group_is_output_channel_when_k():
    w = weights(8, 96)
    qw = quantize(w, 96)
    np.testing.assert_array_equal(qw.scales[:, 0], np.abs(w).max(1) / np.float32(127))


@pytest.mark.parametrize("shape", [(64, 576), (7, 1536), (3, 32)])
def test_q8_0_bytes_identical_to_gguf(shape):
    w = weights(*shape, seed=1)
    w[0, :32] = np.arange(32) - 15.5  # with the 127 below the scale is 1: every value is a tie (x.5),
    w[0, 0] = 127                      # which roundf (and round_half_away) sends away from zero
    want = gguf.quants.quantize(w, Q8_0)
    got = to_q8_0(quantize(w, 32))
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    back = from_q8_0(want, shape)
    np.testing.assert_array_equal(dequantize(back), gguf.quants.dequantize(want, Q8_0))
    np.testing.assert_array_equal(back.q, quantize(w, 32).q)
    np.testing.assert_array_equal(to_q8_0(back), want)


def test_q8_0_needs_group_32():
    with pytest.raises(ShapeError, match="group 64"):
        to_q8_0(quantize(weights(4, 128), 64))
    with pytest.raises(ShapeError, match="7 bytes|needs K"):
        from_q8_0(np.zeros(7, np.uint8), (1, 32))


@pytest.mark.parametrize("n, k, group", [(576, 576, 64), (192, 576, 32), (1536, 576, 64), (576, 1536, 128),
                                         (37, 256, 256), (5, 64, 32), (24, 96, 16), (9, 96, 48)])
@pytest.mark.parametrize("tokens", [1, 3, 16, 40])
def test_qmatmul_equals_dequantized_product(n, k, group, tokens):
    qw = quantize(weights(n, k, seed=n + k), group)
    x = np.random.default_rng(tokens).standard_normal((tokens, k), dtype=np.float32)
    want = x.astype(np.float64) @ dequantize(qw).T.astype(np.float64)
    got = qmatmul(x, qw)
    assert got.shape == (tokens, n) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    got1 = qmatvec(x[0], qw)
    assert got1.shape == (n,) and np.abs(got1 - want[0]).max() <= 1e-5 * np.abs(want[0]).max()


def test_qmatmul_in_pieces_of_blas_bytes(monkeypatch):
    """A weight larger than BLAS_BYTES is widened and multiplied in pieces, the last one short."""
    import kuiper.quant

    monkeypatch.setattr(kuiper.quant, "BLAS_BYTES", 7 * 64 * 4)  # 7 rows of K = 64 per piece
    qw = quantize(weights(30, 64), 32)
    x = np.random.default_rng(1).standard_normal((20, 64), dtype=np.float32)
    want = x.astype(np.float64) @ dequantize(qw).T.astype(np.float64)
    assert np.abs(qmatmul(x, qw) - want).max() <= 1e-5 * np.abs(want).max()


def test_qmatvec_accepts_any_float_vector():
    qw = quantize(weights(16, 64), 32)
    x = np.random.default_rng(0).standard_normal(128)[::2]  # float64, not contiguous
    np.testing.assert_allclose(qmatvec(x, qw), x.astype(np.float32) @ dequantize(qw).T, rtol=1e-5, atol=1e-6)


def test_shape_errors_name_expected_and_actual():
    w = weights(8, 100)
    with pytest.raises(ShapeError, match=r"multiple of group 64, got shape \(8, 100\)") as err:
        quantize(w, 64)
    assert isinstance(err.value, KuiperError)
    with pytest.raises(ShapeError, match="2-D"):
        quantize(w[0], 4)
    qw = quantize(weights(8, 128), 64)
    with pytest.raises(ShapeError, match=r"expected x of shape \(128,\).*got \(100,\)"):
        qmatvec(np.zeros(100, np.float32), qw)
    with pytest.raises(ShapeError, match=r"expected x of shape \(T, 128\).*got \(2, 100\)"):
        qmatmul(np.zeros((2, 100), np.float32), qw)
    with pytest.raises(ShapeError, match=r"scales"):
        QuantizedWeight(qw.q, qw.scales[:, :1], 64)
    with pytest.raises(DTypeError):
        QuantizedWeight(qw.q.astype(np.int16), qw.scales, 64)
    with pytest.raises(ShapeError, match="matrix"):
        QuantizedWeight(qw.q[0], qw.scales[0], 64)


def test_save_refuses_other_groups(tmp_path):
    with pytest.raises(ShapeError, match="'blk.0.ffn_up.weight' has groups of 64 weights, Q8_0 needs 32"):
        save_q8_0_gguf(tmp_path / "x.gguf", {"blk.0.ffn_up.weight": quantize(weights(4, 128), 64)}, {})


def test_gguf_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "token_embd.weight": weights(100, 64),
        "blk.0.attn_q.weight": quantize(weights(64, 64, seed=2), 32),
        "blk.0.attn_norm.weight": rng.standard_normal(64, dtype=np.float32),
        "odd.weight": rng.standard_normal((3, 5), dtype=np.float32),  # K not a multiple of 32: stays F32
    }
    metadata = {"general.architecture": "llama", "general.name": "tiny", "llama.context_length": 2048,
                "llama.rope.freq_base": 10000.0, "tokenizer.ggml.add_bos_token": True,
                "tokenizer.ggml.tokens": ["<s>", "a", "b"],
                "tokenizer.ggml.bos_token_id": (1, gguf.GGUFValueType.INT32),
                "tokenizer.ggml.token_type": ([1, 1, 3], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32),
                "general.file_type": 3}
    path = tmp_path / "tiny-q8_0.gguf"
    save_q8_0_gguf(path, tensors, metadata)

    reader = gguf.GGUFReader(path)
    read = {t.name: t for t in reader.tensors}
    assert list(read) == list(tensors)
    for name, tensor in tensors.items():
        got = read[name]
        if isinstance(tensor, QuantizedWeight) or (tensor.ndim == 2 and tensor.shape[1] % 32 == 0):
            qw = tensor if isinstance(tensor, QuantizedWeight) else quantize(tensor, 32)
            assert got.tensor_type == Q8_0
            np.testing.assert_array_equal(got.data.reshape(-1), to_q8_0(qw).reshape(-1))
            data = gguf.quants.dequantize(got.data, Q8_0).reshape(qw.shape)
            np.testing.assert_array_equal(data, dequantize(from_q8_0(to_q8_0(qw), qw.shape)))
            assert [int(d) for d in got.shape] == [qw.shape[1], qw.shape[0]]
        else:
            assert got.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(got.data.reshape(tensor.shape), tensor)

    fields = reader.fields
    types = gguf.GGUFValueType
    expect = {"general.architecture": ("llama", types.STRING), "general.name": ("tiny", types.STRING),
              "llama.context_length": (2048, types.UINT32), "llama.rope.freq_base": (10000.0, types.FLOAT32),
              "tokenizer.ggml.add_bos_token": (True, types.BOOL), "tokenizer.ggml.bos_token_id": (1, types.INT32),
              "tokenizer.ggml.tokens": (["<s>", "a", "b"], types.ARRAY),
              "tokenizer.ggml.token_type": ([1, 1, 3], types.ARRAY),
              "general.file_type": (int(gguf.LlamaFileType.MOSTLY_Q8_0), types.UINT32),
              "general.quantization_version": (gguf.GGML_QUANT_VERSION, types.UINT32)}
    for key, (value, vtype) in expect.items():
        assert fields[key].contents() == value and fields[key].types[0] == vtype, key
    assert fields["tokenizer.ggml.token_type"].types[-1] == types.INT32


def test_copy_metadata_from_a_gguf_file(tmp_path):
    """Metadata read with GGUFReader, passed on as (value, type[, item type]), is written unchanged."""
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    types = gguf.GGUFValueType
    save_q8_0_gguf(first, {"w": weights(2, 32)}, {"x.count": (7, types.UINT64), "x.names": ["p", "q"],
                                                  "x.bias": (-3, types.INT8)})
    source = gguf.GGUFReader(first).fields
    copied = {name: (field.contents(), *field.types) for name, field in source.items()}
    save_q8_0_gguf(second, {"w": weights(2, 32)}, copied)
    again = gguf.GGUFReader(second).fields
    assert set(again) == set(source)
    for name, field in source.items():
        assert again[name].contents() == field.contents() and again[name].types == field.types, name


def test_quantize_conv_per_output_channel():
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3), dtype=np.float32)
    got = quantize_conv(w)
    assert got.shape == w.shape and got.dtype == np.float32
    step = np.abs(w).reshape(8, -1).max(1) / 127
    assert (np.abs(got - w).reshape(8, -1) <= step[:, None] / 2 * (1 + 1e-6)).all()
    assert len(np.unique(got[0] / step[0])) <= 255


# ---- int8 in lesson 11's model (SmolLM2) ---------------------------------------------------------

from pathlib import Path  # noqa: E402

SMOLLM2 = Path(__file__).resolve().parents[1] / "data" / "models" / "smollm2-135m-instruct-q4_1.gguf"
LLAMA_CPP_Q8_0 = SMOLLM2.with_name("smollm2-135m-instruct-q8_0.gguf")
needs_smollm2 = pytest.mark.skipif(not SMOLLM2.exists(), reason="SmolLM2 GGUF not downloaded")
TEXT = ("The history of astronomy is the story of people looking up and asking what the lights in the sky are, "
        "how far away they lie, and why they move as they do. ") * 3


def test_quantized_weight_is_a_model_weight():
    from kuiper.llm import ops

    qw = quantize(weights(96, 128), 32)
    x = np.random.default_rng(0).standard_normal((5, 128), dtype=np.float32)
    want = x.astype(np.float64) @ dequantize(qw).T.astype(np.float64)
    for tokens in (1, 5):
        got = ops.matmul(x[:tokens], qw)  # the model's matmul hands a non-array weight to w.matmul
        assert got.shape == (tokens, 96) and np.abs(got - want[:tokens]).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_array_equal(qw.matmul(x), qmatmul(x, qw))


@pytest.fixture(scope="module")
def smollm2():
    from kuiper.llm.model import load

    if not SMOLLM2.exists():
        pytest.skip("SmolLM2 GGUF not downloaded")
    return load(SMOLLM2, max_seq_len=400)


def greedy(model, prompt: list[int], n: int) -> list[int]:
    logits, out = model.forward(np.array(prompt), 0), []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits = model.forward(np.array(out[-1:]), len(prompt) + len(out) - 1)
    return out


def test_quantize_model_swaps_linear_weights_and_head(smollm2):
    from kuiper.quant import quantize_model

    model, _ = smollm2
    quantized = quantize_model(model, 64)
    block, original = quantized.blocks[0], model.blocks[0]
    assert all(isinstance(getattr(block, n), QuantizedWeight) for n in ("wqkv", "wo", "w_gate_up", "w_down"))
    assert isinstance(original.wqkv, np.ndarray), "the float32 model is left unchanged"
    assert quantized.embed is model.embed and block.attn_norm is original.attn_norm, "embedding and norms stay fp32"
    assert isinstance(quantized.head, QuantizedWeight) and isinstance(model.head, np.ndarray)
    assert quantized.k_cache is not model.k_cache
    linear = sum(getattr(b, n).size for b in model.blocks for n in ("wqkv", "wo", "w_gate_up", "w_down"))
    linear += model.head.size
    assert model.weight_bytes - quantized.weight_bytes == linear * 4 - (linear + linear // 64 * 4)
    with pytest.raises(ShapeError, match="K = 576 inputs, not a multiple of group 128.*groups \\[32, 64\\]"):
        quantize_model(model, 128)


def test_quantized_model_weights_lie_in_one_buffer_in_reading_order(smollm2):
    from kuiper.quant import quantize_model

    model, _ = smollm2
    quantized = quantize_model(model, 32)
    weights = [getattr(b, n) for b in quantized.blocks for n in ("wqkv", "wo", "w_gate_up", "w_down")] + [quantized.head]
    arrays = [a for w in weights for a in (w.q, w.scales)]
    assert len({id(a.base) for a in arrays}) == 1 and arrays[0].base is not None
    starts = [a.ctypes.data for a in arrays]
    assert starts == sorted(starts) and all(start % 64 == 0 for start in starts)
    original = model.blocks[3].w_gate_up
    np.testing.assert_array_equal(quantized.blocks[3].w_gate_up.q, quantize(original, 32).q)


@pytest.mark.parametrize("group, tolerance", [(32, 0.045), (64, 0.045)])
def test_quantized_smollm2_logits_close_to_fp32(smollm2, group, tolerance):
    """Measured on these 96 tokens: max |Δlogit| / max |logit| 3.0 % (group 32), 2.8 % (group 64);
    mean |Δlogit| 0.13 and 0.15; the top token agrees at 98 % and 97 % of the positions."""
    from kuiper.quant import quantize_model

    model, tokenizer = smollm2
    ids = np.array(tokenizer.encode(TEXT)[:96])
    want = model.forward(ids, 0, all_logits=True)
    got = quantize_model(model, group).forward(ids, 0, all_logits=True)
    assert np.abs(got - want).max() / np.abs(want).max() < tolerance
    assert np.abs(got - want).mean() < 0.25
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("n", [64, pytest.param(256, marks=pytest.mark.slow)])
def test_quantized_smollm2_greedy_agrees(smollm2, n):
    """Measured (64 tokens, this prompt, head in int8 too): group 32 gives fp32's 64 tokens exactly; group 64
    parts ways after 4 tokens (one different token, then another text), so only group 32 is held to it; group
    64's closeness is the logit test above."""
    from kuiper.llm.tokenizer import chat_prompt
    from kuiper.quant import quantize_model

    model, tokenizer = smollm2
    prompt = tokenizer.encode(chat_prompt([{"role": "user", "content": "Write a short poem about the sea."}],
                                          tokenizer.chat_template))
    want = greedy(model, prompt, n)
    got = greedy(quantize_model(model, 32), prompt, n)
    assert got[:64] == want[:64]


@pytest.fixture(scope="module")
def kuiper_q8_0(tmp_path_factory):
    from kuiper.cli import main

    if not SMOLLM2.exists():
        pytest.skip("SmolLM2 GGUF not downloaded")
    out = tmp_path_factory.mktemp("q8") / "smollm2-135m-instruct-kuiper-q8_0.gguf"
    assert main(["quantize", str(SMOLLM2), str(out)]) == 0
    return out


@pytest.mark.slow
def test_quantize_cli_writes_standard_q8_0(kuiper_q8_0):
    from kuiper.llm.gguf import GGUFFile
    from kuiper.llm.model import model_from_gguf

    source, written = GGUFFile(SMOLLM2), gguf.GGUFReader(kuiper_q8_0)
    tensors = {t.name: t for t in written.tensors}
    assert list(tensors) == list(source.tensors)
    for name in ("blk.0.attn_q.weight", "blk.3.attn_k.weight", "blk.7.ffn_down.weight", "token_embd.weight"):
        assert tensors[name].tensor_type == Q8_0, name  # q and k in the file's own (interleaved) row order
        want = gguf.quants.quantize(source.tensor(name), Q8_0)
        np.testing.assert_array_equal(np.asarray(tensors[name].data).reshape(want.shape), want)
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    source_fields = gguf.GGUFReader(SMOLLM2).fields
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "llama.rope.freq_base"):
        assert written.fields[key].contents() == source_fields[key].contents(), key
    assert written.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    if LLAMA_CPP_Q8_0.exists():  # llama.cpp's own quantizer, from the same float32 values: the same bytes
        theirs = {t.name: t for t in gguf.GGUFReader(LLAMA_CPP_Q8_0).tensors}
        for name in ("blk.0.attn_q.weight", "blk.29.ffn_gate.weight"):
            np.testing.assert_array_equal(np.asarray(tensors[name].data), np.asarray(theirs[name].data))
    model = model_from_gguf(GGUFFile(kuiper_q8_0), max_seq_len=16)
    assert model.forward(np.array([1, 2, 3]), 0).shape == (1, 49152)


@pytest.mark.slow
def test_kuiper_q8_0_file_generates(kuiper_q8_0, capsys):
    from kuiper.cli import main

    assert main(["generate", str(kuiper_q8_0), "--prompt", "What is the capital of France?", "--max-tokens", "8",
                 "--json"]) == 0
    assert "Paris" in json.loads(capsys.readouterr().out)["text"]


@pytest.mark.slow
def test_kuiper_q8_0_file_runs_in_llama_cpp(kuiper_q8_0):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(kuiper_q8_0), n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    llm.eval([1, 504, 3458, 282])
    scores = np.asarray(llm.scores[llm.n_tokens - 1])
    assert scores.shape == (49152,) and np.isfinite(scores).all() and scores.std() > 0


def test_quantize_cli_refuses_group_64(tmp_path, capsys):
    from kuiper.cli import main

    source = tmp_path / "x.gguf"  # refused before the file is read
    source.touch()
    assert main(["quantize", str(source), str(tmp_path / "out.gguf"), "--group", "64"]) == 1
    err = capsys.readouterr().err
    assert "Q8_0, groups of 32 weights, not 64" in err and "--int8 64" in err
    assert not (tmp_path / "out.gguf").exists()


@needs_smollm2
def test_generate_int8_answers_paris(capsys):
    from kuiper.cli import main

    assert main(["generate", str(SMOLLM2), "--int8", "64", "--prompt", "What is the capital of France?",
                 "--max-tokens", "8", "--json"]) == 0
    assert "Paris" in json.loads(capsys.readouterr().out)["text"]


@pytest.mark.parametrize("n", [1, 2, 37])
@pytest.mark.parametrize("k, group", [(192, 32), (256, 64), (384, 128)])
def test_pairs_kernel_equals_the_one_row_kernel(n, k, group):
    """qmatvec's kernel works on two rows at once (an odd last row alone), 32 weights at a time, prefetching
    rows past the end of small matrices: the same sums as Exercise 14.5's."""
    from kuiper.quant import qmatvec_kernel, qmatvec_pairs_kernel

    qw = quantize(weights(n, k, seed=n), group)
    x = np.random.default_rng(n).standard_normal(k).astype(np.float32)
    pairs, single = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    qmatvec_pairs_kernel(x, qw.q, qw.scales, pairs)
    qmatvec_kernel(x, qw.q, qw.scales, single)
    np.testing.assert_allclose(pairs, single, rtol=1e-6, atol=1e-7 * np.abs(single).max())
