"""Tiny LLM input files for the robustness tests and the fuzzer: a GGUF model, a safetensors file,
a config.json and a byte-level BPE tokenizer.json, each a few kilobytes and each loadable by kuiper."""

import json
import struct
from pathlib import Path

import numpy as np

#: The tiny model's shape: 2 query heads of 4 sharing 1 key/value head, 1 layer, 12 tokens.
DIM, HEADS, KV_HEADS, HEAD_DIM, HIDDEN, VOCAB, LAYERS = 8, 2, 1, 4, 16, 12, 1


def tiny_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF-named float32 weights of the tiny model, in numpy (PyTorch) shape."""
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (VOCAB, DIM), "output_norm.weight": (DIM,), "blk.0.attn_norm.weight": (DIM,),
              "blk.0.attn_q.weight": (HEADS * HEAD_DIM, DIM), "blk.0.attn_k.weight": (KV_HEADS * HEAD_DIM, DIM),
              "blk.0.attn_v.weight": (KV_HEADS * HEAD_DIM, DIM), "blk.0.attn_output.weight": (DIM, HEADS * HEAD_DIM),
              "blk.0.ffn_norm.weight": (DIM,), "blk.0.ffn_gate.weight": (HIDDEN, DIM),
              "blk.0.ffn_up.weight": (HIDDEN, DIM), "blk.0.ffn_down.weight": (DIM, HIDDEN)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def tiny_metadata() -> dict[str, object]:
    """The llama.* hyper-parameters of the tiny model."""
    return {"llama.embedding_length": DIM, "llama.block_count": LAYERS, "llama.attention.head_count": HEADS,
            "llama.attention.head_count_kv": KV_HEADS, "llama.feed_forward_length": HIDDEN,
            "llama.context_length": 64, "llama.vocab_size": VOCAB, "llama.attention.layer_norm_rms_epsilon": 1e-5}


def write_gguf(path: Path, metadata: dict | None = None, weights: dict | None = None) -> Path:
    """The tiny model as a GGUF file written by the gguf package's GGUFWriter."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in (tiny_metadata() if metadata is None else metadata).items():
        if isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
    for name, array in (tiny_weights() if weights is None else weights).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def raw_gguf(kv: list[tuple[str, int, bytes]], infos: list[tuple[str, list[int], int, int]], data: bytes,
             n_kv: int | None = None, n_tensors: int | None = None) -> bytes:
    """A GGUF v3 file byte by byte: (key, value type, encoded value) entries, (name, ne, ggml type,
    offset) tensor infos, then `data` at the next 32-byte boundary; the counts can lie."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(infos) if n_tensors is None else n_tensors,
                                len(kv) if n_kv is None else n_kv)
    for key, kind, value in kv:
        out += gguf_string(key) + struct.pack("<I", kind) + value
    for name, ne, kind, offset in infos:
        out += gguf_string(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        out += struct.pack("<IQ", kind, offset)
    return out + b"\0" * (-len(out) % 32) + data


def write_tokenizer_json(path: Path, normalizer: dict | None = None, added: list | None = None) -> Path:
    """A byte-level BPE tokenizer.json over all 256 bytes with a few merges, in the format
    tokenizers writes (Qwen's pre-tokenizer: a Split regex, then ByteLevel without regex)."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    byte_level = sorted(alphabet, key=lambda c: (len(c), c))
    vocab = {piece: i for i, piece in enumerate(byte_level)}
    merges = [["h", "e"], ["l", "l"], ["he", "ll"], ["Ġ", "w"], ["o", "r"]]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    added = [{"id": len(vocab), "content": "<|endoftext|>", "special": True, "single_word": False,
              "lstrip": False, "rstrip": False, "normalized": False}] if added is None else added
    data = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""},
                 "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False,
                                                "trim_offsets": False, "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": merges}}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def tiny_config() -> dict[str, object]:
    """A config.json of a tiny Llama (the shape of the tiny GGUF model)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "intermediate_size": HIDDEN, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 64, "hidden_act": "silu", "tie_word_embeddings": True}
