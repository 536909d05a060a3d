"""LLM inputs as people have them (issue 16): strict GGUF and safetensors readers, sharded
checkpoints, checked config.json and tokenizer.json, RoPE scalings, sampler settings, the context
limit and one model shared by threads. Every bad input is a KuiperError naming what is wrong."""

import json
import struct
import subprocess
import sys
import threading
import tracemalloc
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from kuiper.errors import GGUFError, KuiperError, SafetensorsError, TokenizerError
from kuiper.llm.generate import generate
from kuiper.llm.gguf import GGUFFile
from kuiper.llm.model import config_from_gguf, config_from_hf, load, model_from_gguf
from kuiper.llm.safetensors import SafetensorsFile, load_config
from kuiper.llm.sample import Sampler
from kuiper.llm.tokenizer import BPETokenizer
from llm_files import (DIM, VOCAB, gguf_string, raw_gguf, tiny_config, tiny_metadata, tiny_weights, write_gguf,
                       write_tokenizer_json)

F32, U32, ARRAY = 0, 4, 9


# ---- GGUF -------------------------------------------------------------------------------------

def gguf_fails(tmp_path: Path, data: bytes, pattern: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=pattern) as err:
        model_from_gguf(GGUFFile(path))
    assert str(path) in str(err.value)


def test_tiny_gguf_loads_and_runs(tmp_path):
    model = model_from_gguf(GGUFFile(write_gguf(tmp_path / "tiny.gguf")))
    logits = model.forward(np.array([1, 2, 3]), 0)
    assert logits.shape == (1, VOCAB) and np.isfinite(logits).all()


def test_gguf_more_than_four_dimensions(tmp_path):
    gguf_fails(tmp_path, raw_gguf([], [("t", [1, 1, 1, 1, 1], F32, 0)], b"\0" * 32),
               r"tensor 't' has 5 dimensions; GGUF allows 1 to 4")


def test_gguf_overlapping_tensors(tmp_path):
    infos = [("a", [16], F32, 0), ("b", [8], F32, 32)]
    gguf_fails(tmp_path, raw_gguf([], infos, b"\0" * 64), r"tensors 'a' \(bytes \d+ to \d+\) and 'b' .* overlap")


def test_gguf_tensor_past_the_end(tmp_path):
    gguf_fails(tmp_path, raw_gguf([], [("a", [64], F32, 0)], b"\0" * 32), r"tensor 'a' .* needs bytes")


def test_gguf_absurd_dimension_allocates_nothing(tmp_path):
    tracemalloc.start()
    gguf_fails(tmp_path, raw_gguf([], [("a", [2**32 - 1, 2**32 - 1], F32, 0)], b"\0" * 32), r"tensor 'a'")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20


def test_gguf_counts_larger_than_the_file(tmp_path):
    gguf_fails(tmp_path, raw_gguf([], [], b"", n_kv=2**40), r"promises 1099511627776 metadata entries")
    gguf_fails(tmp_path, raw_gguf([], [], b"", n_tensors=2**60), r"promises \d+ tensors")


def test_gguf_nested_arrays(tmp_path):
    inner = struct.pack("<IQ", U32, 1) + struct.pack("<I", 7)
    nested = struct.pack("<IQ", ARRAY, 1) + inner
    gguf_fails(tmp_path, raw_gguf([("x.list", ARRAY, nested)], [], b""), r"metadata 'x.list' is an array of arrays")


def test_gguf_zero_dimension(tmp_path):
    gguf_fails(tmp_path, raw_gguf([], [("a", [4, 0], F32, 0)], b"\0" * 32), r"tensor 'a' has a dimension of 0")


@pytest.mark.parametrize("key, value, pattern", [
    ("llama.block_count", None, r"llama.block_count is missing"),
    ("llama.embedding_length", 0, r"llama.embedding_length must be an integer > 0, got 0"),
    ("llama.attention.head_count", None, r"llama.attention.head_count is missing"),
    ("llama.attention.head_count_kv", 3, r"2 attention heads cannot share 3 key/value heads"),
    ("llama.attention.layer_norm_rms_epsilon", None, r"layer_norm_rms_epsilon is missing"),
    ("llama.feed_forward_length", "big", r"feed_forward_length must be an integer > 0, got 'big'"),
    ("llama.rope.scaling.type", "longrope", r"rope_scaling type 'longrope' is not implemented"),
])
def test_gguf_hyperparameters_are_checked(tmp_path, key, value, pattern):
    metadata = tiny_metadata()
    if value is None:
        del metadata[key]
    else:
        metadata[key] = value
    with pytest.raises(GGUFError, match=pattern) as err:
        model_from_gguf(GGUFFile(write_gguf(tmp_path / "m.gguf", metadata)))
    assert "m.gguf" in str(err.value)


def test_gguf_yarn_keys_kuiper_does_not_read_are_refused(tmp_path):
    metadata = tiny_metadata() | {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
                                  "llama.rope.scaling.attn_factor": 0.5}
    with pytest.raises(GGUFError, match=r"llama.rope.scaling.attn_factor is not implemented"):
        model_from_gguf(GGUFFile(write_gguf(tmp_path / "m.gguf", metadata)))
    del metadata["llama.rope.scaling.attn_factor"]
    model = model_from_gguf(GGUFFile(write_gguf(tmp_path / "m.gguf", metadata)))
    assert model.config.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def test_gguf_unknown_architecture_is_refused():
    with pytest.raises(GGUFError, match=r"general.architecture 'gemma' is not one kuiper runs"):
        config_from_gguf({"general.architecture": "gemma"})


@pytest.mark.parametrize("name, shape", [("blk.0.attn_norm.weight", (6,)), ("blk.0.ffn_down.weight", (DIM, 12)),
                                         ("token_embd.weight", (VOCAB - 2, DIM)), ("output_norm.weight", (2 * DIM,))])
def test_gguf_weight_shapes_are_checked_against_the_config(tmp_path, name, shape):
    weights = tiny_weights()
    weights[name] = np.ones(shape, np.float32)
    with pytest.raises(GGUFError, match=rf"tensor '{name}' has shape \({shape[0]},.*\), but the config needs"):
        model_from_gguf(GGUFFile(write_gguf(tmp_path / "m.gguf", weights=weights)))


def test_gguf_linear_rope_scaling_is_applied(tmp_path):
    plain = model_from_gguf(GGUFFile(write_gguf(tmp_path / "a.gguf")))
    metadata = tiny_metadata() | {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    scaled = model_from_gguf(GGUFFile(write_gguf(tmp_path / "b.gguf", metadata)))
    assert scaled.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    # position 4 under linear scaling by 4 turns exactly as far as position 1 without it
    assert np.allclose(scaled.cos[4], plain.cos[1], atol=1e-6) and np.allclose(scaled.sin[4], plain.sin[1], atol=1e-6)


# ---- safetensors ------------------------------------------------------------------------------

def safetensors_fails(tmp_path: Path, header, data: bytes, pattern: str) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    with pytest.raises(SafetensorsError, match=pattern) as err:
        SafetensorsFile(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("spec, pattern", [
    ({"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}, r"a shape of integers >= 0"),
    ({"dtype": "F32", "shape": [[2]], "data_offsets": [0, 8]}, r"a shape of integers >= 0"),
    ({"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}, r"a shape of integers >= 0"),
    ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, r"needs a dtype string"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}, r"data_offsets \[begin, end\]"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [-8, 8]}, r"data_offsets \[begin, end\]"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4000]}, r"outside the 8 data bytes"),
    ({"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}, r"should take 4 bytes, its data_offsets give 8"),
    ("nested", r"needs a dtype string"),
])
def test_safetensors_bad_entries(tmp_path, spec, pattern):
    spec = {"w": {"dtype": "F32"}} if spec == "nested" else spec
    safetensors_fails(tmp_path, {"w": spec}, b"\0" * 8, pattern)


def test_safetensors_deep_nesting_and_overlap(tmp_path):
    safetensors_fails(tmp_path, b"[" * 100000 + b"]" * 100000, b"", r"nests JSON values too deep")
    safetensors_fails(tmp_path, {"__metadata__": {"a": {"b": 1}}}, b"", r"__metadata__ must be a JSON object of strings")
    overlap = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    safetensors_fails(tmp_path, overlap, b"\0" * 12, r"the bytes of tensors 'a' and 'b' overlap")


def hf_llama_folder(path: Path, rope: dict | None = None, layers: int = 2):
    """A random-init Llama saved by transformers, with `rope` as its rope_parameters."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0})
    return LlamaForCausalLM(config).eval()


def transformers_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].numpy()


def test_sharded_checkpoint_matches_unsharded(tmp_path):
    reference = hf_llama_folder(tmp_path)
    reference.save_pretrained(tmp_path / "one")
    reference.save_pretrained(tmp_path / "shards", max_shard_size="60KB")
    shards = sorted(p.name for p in (tmp_path / "shards").glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    ids = np.random.default_rng(0).integers(0, 256, 40)
    one, _ = load(tmp_path / "one", max_seq_len=64)
    sharded, _ = load(tmp_path / "shards", max_seq_len=64)
    got = sharded.forward(ids, 0, all_logits=True)
    assert np.array_equal(got, one.forward(ids, 0, all_logits=True))
    want = transformers_logits(reference, ids)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_sharded_index_errors(tmp_path):
    reference = hf_llama_folder(tmp_path, layers=1)
    reference.save_pretrained(tmp_path, max_shard_size="60KB")
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(set(data["weight_map"].values()))[0]
    (tmp_path / first).unlink()
    with pytest.raises(SafetensorsError, match=rf"{first}"):
        load(tmp_path)
    index.write_text(json.dumps(data | {"weight_map": {"lm_head.weight": "../model.safetensors"}}))
    with pytest.raises(SafetensorsError, match=r"'../model.safetensors' is not a .safetensors file next to the index"):
        load(tmp_path)
    index.unlink()
    with pytest.raises(SafetensorsError, match=r"neither model.safetensors nor model.safetensors.index.json"):
        load(tmp_path)


# ---- config.json ------------------------------------------------------------------------------

@pytest.mark.parametrize("change, pattern", [
    ({"hidden_size": None}, r"hidden_size is missing"),
    ({"num_hidden_layers": 0}, r"num_hidden_layers must be an integer > 0, got 0"),
    ({"vocab_size": "12"}, r"vocab_size must be an integer > 0, got '12'"),
    ({"num_attention_heads": True}, r"num_attention_heads must be an integer > 0, got True"),
    ({"intermediate_size": 1.5}, r"intermediate_size must be an integer > 0, got 1.5"),
    ({"rms_norm_eps": -1e-6}, r"rms_norm_eps must be a number > 0"),
    ({"rope_theta": float("nan")}, r"rope_theta must be a number > 0, got nan"),
    ({"tie_word_embeddings": "yes"}, r"tie_word_embeddings must be true or false"),
    ({"model_type": "gemma"}, r"model_type 'gemma' is not one kuiper runs"),
    ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not implemented"),
    ({"num_key_value_heads": 3}, r"2 attention heads cannot share 3 key/value heads"),
    ({"rope_scaling": {"rope_type": "su", "factor": 4.0}}, r"rope_scaling type 'su' is not implemented"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": "x"}}, r"rope_scaling: beta_fast must be"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}},
     r"partial_rotary_factor 0.5 is not implemented"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}, r"rope_scaling type 'longrope' is not implemented"),
    ({"rope_scaling": {"rope_type": "linear"}}, r"rope_scaling: factor is missing"),
    ({"rope_scaling": [1, 2]}, r"rope_scaling must be an object"),
])
def test_config_json_is_checked(tmp_path, change, pattern):
    config = {k: v for k, v in (tiny_config() | change).items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SafetensorsError, match=pattern) as err:
        config_from_hf(load_config(path), str(path))
    assert str(path) in str(err.value)


def test_config_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(SafetensorsError, match=r"must hold a JSON object, got list"):
        load_config(tmp_path)


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "beta_fast": 16, "beta_slow": 2, "mscale": 0.707,
     "mscale_all_dim": 1.0},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "attention_factor": 1.3, "truncate": False},
])
def test_rope_scalings_match_transformers(tmp_path, rope):
    reference = hf_llama_folder(tmp_path, rope)
    reference.save_pretrained(tmp_path)
    model, _ = load(tmp_path, max_seq_len=256)
    assert model.config.rope_scaling["rope_type"] == rope["rope_type"]
    assert rope["rope_type"] == "dynamic" or not np.allclose(model.cos, load_default_cos(tmp_path, rope))
    ids = np.random.default_rng(1).integers(0, 256, 200)
    want = transformers_logits(reference, ids)
    assert np.abs(model.forward(ids, 0, all_logits=True) - want).max() <= 1e-4 * np.abs(want).max()


def load_default_cos(tmp_path: Path, rope: dict) -> np.ndarray:
    """The cos table of the same model without rope scaling: scaling must change it."""
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("rope_scaling", None)
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return load(tmp_path, max_seq_len=256)[0].cos


# ---- tokenizer.json ---------------------------------------------------------------------------

def test_nfc_normalizer_matches_tokenizers(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    path = write_tokenizer_json(tmp_path / "tokenizer.json", normalizer={"type": "NFC"})
    ours, theirs = BPETokenizer.from_tokenizer_json(path), HFTokenizer.from_file(str(path))
    texts = ["cafe\u0301 hello", "A\u030a\u0308ngstro\u0308m", "e\u0301\u0301 \u1e0b\u0323 world",
             "\uac00\u11a8 hello<|endoftext|>x\u0301"]
    for text in texts:
        assert unicodedata.normalize("NFC", text) != text or "<|" in text
        assert ours.encode(text) == theirs.encode(text).ids, text
    plain = BPETokenizer.from_tokenizer_json(write_tokenizer_json(tmp_path / "plain.json"))
    assert plain.encode(texts[0]) != ours.encode(texts[0])  # the normalizer changed the ids


def test_qwen_tokenizer_with_the_nfc_normalizer_real_files_carry(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    source = Path(__file__).resolve().parents[1] / "data" / "models" / "qwen2.5-tiny" / "tokenizer.json"
    if not source.exists():
        pytest.skip(f"{source} is missing: run python tools/llms.py")
    data = json.loads(source.read_text(encoding="utf-8")) | {"normalizer": {"type": "NFC"}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    ours, theirs = BPETokenizer.from_tokenizer_json(path, eos="<|im_end|>"), HFTokenizer.from_file(str(path))
    texts = ["Café crème brûlée", "각 각", "Ångström",
             "<|im_start|>user\nrésumé<|im_end|>", "éé Å Ω"]
    for text in texts:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, text


@pytest.mark.parametrize("normalizer, pattern", [
    ({"type": "Lowercase"}, r"normalizer .*Lowercase.* is not one kuiper applies"),
    ({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Strip"}]}, r"normalizer .*Strip"),
])
def test_other_normalizers_are_refused_by_name(tmp_path, normalizer, pattern):
    with pytest.raises(TokenizerError, match=pattern):
        BPETokenizer.from_tokenizer_json(write_tokenizer_json(tmp_path / "t.json", normalizer=normalizer))


def added(content, id):
    return {"id": id, "content": content, "special": True}


@pytest.mark.parametrize("tokens, pattern", [
    ([added("", 261)], r"added token #0 needs a non-empty content"),
    ([added("<a>", 261), added("<a>", 262)], r"added token '<a>' appears with ids 261 and 262"),
    ([added("<a>", 261), added("<b>", 261)], r"tokens '<a>' and '<b>' share id 261"),
    ([added("<a>", 10**9)], r"token '<a>' has id 1000000000; the 262 tokens need ids 0..261"),
    ([added("<a>", -1)], r"added token #0 needs a non-empty content and an id >= 0"),
    ([{"content": "<a>"}], r"added token #0 needs"),
    ("oops", r"added_tokens must be a list"),
])
def test_bad_added_tokens(tmp_path, tokens, pattern):
    path = write_tokenizer_json(tmp_path / "t.json", added=tokens)
    tracemalloc.start()
    with pytest.raises(TokenizerError, match=pattern):
        BPETokenizer.from_tokenizer_json(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20  # an id of 10^9 must not allocate a list of 10^9 pieces


# ---- sampler, generation, threads -------------------------------------------------------------

@pytest.mark.parametrize("settings, name", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": -1.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"temperature": -0.5}, "temperature"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": float("nan")}, "repetition_penalty"), ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"), ({"seed": -1}, "seed"),
])
def test_meaningless_sampler_settings_are_refused(settings, name):
    with pytest.raises(KuiperError, match=rf"sampler setting {name} must be"):
        Sampler(**settings)


def test_small_top_p_keeps_the_most_likely_token():
    logits = np.log(np.array([0.1, 0.6, 0.3]))
    sampler = Sampler(temperature=1.0, top_p=1e-9, seed=0)
    assert [sampler(logits) for _ in range(20)] == [1] * 20
    assert Sampler(temperature=0.0)(logits) == 1


def test_generation_ends_cleanly_at_the_context_limit(tmp_path):
    model = model_from_gguf(GGUFFile(write_gguf(tmp_path / "tiny.gguf")), max_seq_len=10)
    tokens = list(generate(model, [1, 2, 3], Sampler(), max_tokens=100))
    assert len(tokens) == 10 - 3 + 1  # the last token needs no cache slot: it is never fed back


def test_cli_json_returns_the_text_at_the_context_limit():
    path = Path(__file__).resolve().parents[1] / "data" / "models" / "smollm2-135m-instruct-q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    run = subprocess.run([sys.executable, "-m", "kuiper", "generate", str(path), "--prompt", "The capital of France is", "--raw",
                          "--context", "12", "--max-tokens", "50", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["prompt_tokens"] + result["new_tokens"] == 12 + 1 and result["text"]


def test_one_model_in_two_threads(tmp_path):
    model = model_from_gguf(GGUFFile(write_gguf(tmp_path / "tiny.gguf")), max_seq_len=64)
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    sequential = [list(generate(model, prompt, Sampler(), 40)) for prompt in prompts]
    results, errors, start = {}, [], threading.Barrier(2)

    def run(i):
        start.wait()
        try:
            results[i] = list(generate(model, prompts[i], Sampler(), 40))
        except KuiperError as err:
            errors.append(str(err))

    for _ in range(5):
        results.clear()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(results[i] == sequential[i] for i in results)  # never garbage
    assert all("in use by another thread" in error for error in errors)


def test_a_held_model_refuses_another_thread(tmp_path):
    model = model_from_gguf(GGUFFile(write_gguf(tmp_path / "tiny.gguf")), max_seq_len=64)
    caught = []
    with model.in_use():
        thread = threading.Thread(target=lambda: caught.append(pytest.raises(KuiperError, model.forward,
                                                                            np.array([1]), 0)))
        thread.start()
        thread.join()
        model.forward(np.array([1]), 0)  # the holding thread may go on
    assert len(caught) == 1 and "in use by another thread" in str(caught[0].value)
    model.forward(np.array([1]), 0)  # released
