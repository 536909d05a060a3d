"""The Llama-family model: logits and greedy text exact to transformers on SmolLM2 (GGUF) and on a
random Llama 3 (safetensors, rope scaling), the sampler, generation, chat and the CLI verbs."""

import inspect
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from kuiper import cli  # noqa: E402
from kuiper.errors import KuiperError, ShapeError  # noqa: E402
from kuiper.llm.generate import Chat, Stats, generate  # noqa: E402
from kuiper.llm.model import config_from_hf, load  # noqa: E402
from kuiper.llm.sample import Sampler, top_p_filter  # noqa: E402

LESSON = 11  # kuiper grade runs this file on the student build of lesson 11

SMOLLM2 = Path(__file__).resolve().parents[1] / "data" / "models" / "smollm2-135m-instruct-q4_1.gguf"
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:", "Photosynthesis is the process by which",
           "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def smollm2():
    if not SMOLLM2.exists():
        pytest.skip(f"{SMOLLM2} is missing: run python tools/llms.py")
    return load(SMOLLM2, max_seq_len=256)


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF reader (gguf dequantizes, transformers un-permutes q and k)."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32).eval()


def greedy(reference, ids: list[int], n: int) -> list[int]:
    """n greedy tokens from a transformers model, end-of-sequence tokens included (no early stop)."""
    with torch.no_grad():
        out = reference(torch.tensor([ids]), use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        for _ in range(n - 1):
            out = reference(torch.tensor([tokens[-1:]]), cache=out.past_key_values, use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_of_every_position_match_transformers(smollm2, reference, prompt):
    model, tokenizer = smollm2
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        want = reference(torch.tensor([ids])).logits[0].numpy()
    got = model.forward(np.array(ids), 0, all_logits=True)
    assert got.shape == want.shape == (len(ids), 49152)
    assert np.abs(got - want).max() <= 1e-3


def test_pack_copies_aligned_and_in_order():
    from kuiper.llm.ops import pack

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((5, 33), dtype=np.float32), np.arange(9, dtype=np.int8),
              rng.standard_normal((6, 8))[:, ::2], np.ones(3, np.float16)]
    copies = pack(arrays)
    for a, c in zip(arrays, copies, strict=True):
        assert c.shape == a.shape and c.dtype == a.dtype and np.array_equal(c, a) and c.flags.c_contiguous
        assert c.ctypes.data % 64 == 0
    copies[0][0, 0] = 7.0
    assert arrays[0][0, 0] != 7.0, "pack copies: its arrays do not share memory with the originals"
    starts = [c.ctypes.data for c in copies]
    assert starts == sorted(starts) and all(c.base is copies[0].base for c in copies)
    assert starts[1] - starts[0] == 704, "the 660 bytes of the first array round up to 704, a multiple of 64"


def test_model_matrices_lie_in_one_buffer_in_reading_order(smollm2):
    model, _ = smollm2
    matrices = [getattr(b, n) for b in model.blocks for n in ("wqkv", "wo", "w_gate_up", "w_down")] + [model.head]
    assert len({id(w.base) for w in matrices}) == 1 and matrices[0].base is not None
    starts = [w.ctypes.data for w in matrices]
    assert starts == sorted(starts)
    assert model.embed is model.head, "SmolLM2 ties its head to the embedding: one copy serves both"


def test_decoding_one_token_at_a_time_matches_the_whole_prompt(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer.encode(PROMPTS[2])
    whole = model.forward(np.array(ids), 0, all_logits=True)
    model.forward(np.array(ids[:3]), 0)
    steps = np.concatenate([model.forward(np.array([t]), 3 + i) for i, t in enumerate(ids[3:])])
    assert np.abs(steps - whole[3:]).max() <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_greedy_64_tokens_identical_to_transformers(smollm2, reference, prompt):
    model, tokenizer = smollm2
    ids = tokenizer.encode(prompt)
    assert list(generate(model, ids, Sampler(), 64)) == greedy(reference, ids, 64)


def test_answers_the_capital_of_france(smollm2):
    model, tokenizer = smollm2
    reply = "".join(Chat(model, tokenizer, Sampler(), max_tokens=24).say("What is the capital of France?"))
    assert "Paris" in reply


def test_chat_reuses_the_cache_of_earlier_turns(smollm2):
    model, tokenizer = smollm2
    chat, first, second = Chat(model, tokenizer, Sampler(), max_tokens=16), Stats(), Stats()
    "".join(chat.say("Hello!", first))
    "".join(chat.say("What is 2 + 2?", second))
    new_turn = tokenizer.encode("<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert len(new_turn) <= second.prompt_tokens <= len(new_turn) + 2 < first.prompt_tokens  # only the new turn runs
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]


def test_context_overflow_is_a_clear_error(smollm2):
    model, _ = smollm2
    with pytest.raises(ShapeError, match="exceed the context of 256"):
        model.forward(np.zeros(10, np.int64), 250)
    with pytest.raises(ShapeError, match="token ids must lie in 0..49151"):
        model.forward(np.array([49152]), 0)


def llama3_folder(tmp_path: Path) -> Path:
    """A random-init Llama 3 style model (GQA, rope scaling, untied head) saved by transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                         rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 64})
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def test_random_llama3_with_rope_scaling_matches_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    folder = llama3_folder(tmp_path)
    model, tokenizer = load(folder, max_seq_len=300)
    assert tokenizer is None and model.config.rope_scaling["rope_type"] == "llama3"
    assert not model.config.tied_embeddings and model.config.n_kv_heads == 2
    reference = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(0, 512, 200)
    with torch.no_grad():
        want = reference(torch.from_numpy(ids)[None]).logits[0].numpy()
    assert np.abs(model.forward(ids, 0, all_logits=True) - want).max() <= 1e-4 * np.abs(want).max()
    assert list(generate(model, ids[:8].tolist(), Sampler(), 32)) == greedy(reference, ids[:8].tolist(), 32)


def test_config_reads_old_and_new_rope_keys():
    old = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128,
           "vocab_size": 10, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_scaling": None}
    assert config_from_hf(old).rope_theta == 1e6 and config_from_hf(old).rope_scaling == {}
    new = old | {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    assert config_from_hf(new).rope_theta == 5e5


def test_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(KuiperError, match="not a .gguf file or a Hugging Face folder"):
        load(tmp_path)


def test_top_p_keeps_the_nucleus():
    assert np.allclose(top_p_filter(np.array([0.1, 0.5, 0.15, 0.25]), 0.7), [0, 2 / 3, 0, 1 / 3])
    assert np.allclose(top_p_filter(np.array([0.2, 0.8]), 0.1), [0, 1])


def test_sampler_is_seeded_and_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    draws = [Sampler(temperature=1.0, seed=7)(logits) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same first draw
    sampler = Sampler(temperature=1.0, seed=0)
    counts = np.bincount([sampler(logits) for _ in range(4000)], minlength=3) / 4000
    assert np.abs(counts - [0.5, 0.3, 0.2]).max() < 0.03
    top1 = Sampler(temperature=1.0, top_k=1, seed=0)
    assert {top1(logits) for _ in range(50)} == {0}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    sampler = Sampler(repetition_penalty=2.0)
    assert sampler(np.array([3.0, 2.0, -1.0]), history=[0]) == 1  # 3 / 2 = 1.5 < 2
    assert sampler(np.array([-1.0, -1.5, -5.0]), history=[0]) == 1  # -1 * 2 = -2 < -1.5


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_matches_transformers_logits_processors(seed):
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    rng = np.random.default_rng(seed)
    logits, history = rng.standard_normal(300) * 3, rng.integers(0, 300, 20)
    scores = torch.from_numpy(logits)[None]
    for process in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(50),
                    TopPLogitsWarper(0.8)):
        scores = process(torch.from_numpy(history)[None], scores)
    allowed = set(np.flatnonzero(scores[0].isfinite().numpy()))
    sampler = Sampler(temperature=0.7, top_k=50, top_p=0.8, repetition_penalty=1.3, seed=seed)
    assert {sampler(logits, history) for _ in range(300)} <= allowed


def test_generate_cli_answers_as_json(capsys):
    if not SMOLLM2.exists():
        pytest.skip("SmolLM2 missing")
    assert cli.main(["generate", str(SMOLLM2), "--prompt", "What is the capital of France?", "--max-tokens", "16",
                     "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "Paris" in result["text"] and result["new_tokens"] <= 16 and result["decode_tok_s"] > 0


def test_generate_cli_streams_text_and_reports_speed():
    if not SMOLLM2.exists():
        pytest.skip("SmolLM2 missing")
    done = subprocess.run([sys.executable, "-m", "kuiper", "generate", str(SMOLLM2), "--prompt", "Say hello.",
                           "--max-tokens", "8", "--temperature", "0.7", "--seed", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "decode:" in done.stderr and "tok/s" in done.stderr


def test_chat_cli_ends_cleanly_at_end_of_input():
    if not SMOLLM2.exists():
        pytest.skip("SmolLM2 missing")
    done = subprocess.run([sys.executable, "-m", "kuiper", "chat", str(SMOLLM2), "--max-tokens", "12"],
                          input="What is the capital of France?\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout and "Traceback" not in done.stderr


def test_generate_cli_missing_model_is_one_line(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "nope.gguf"), "--prompt", "hi"]) == 1
    assert "nope.gguf: no such model file or folder" in capsys.readouterr().err


def test_prefetch_compiles_to_a_prefetch_instruction():
    """kuiper.llm.ops.prefetch is LLVM's llvm.prefetch: the machine code holds a prefetch (x86) or prfm (Arm)."""
    from numba import njit

    from kuiper.llm.ops import prefetch

    @njit
    def touch(a, offset):
        prefetch(a, offset)
        return a[0]

    assert touch(np.arange(256, dtype=np.uint8), 128) == 0
    asm = touch.inspect_asm(touch.signatures[0]).lower()
    assert "prefetch" in asm or "prfm" in asm, "expected a prefetch instruction in the compiled code"


@pytest.mark.parametrize("rows, k", [(1, 3), (37, 100), (5, 1536)])
def test_matvec_is_w_times_x(rows, k):
    """Exercise 11.10's _matvec writes every row of w @ x, prefetching past the end of small matrices."""
    from kuiper.llm.ops import _matvec

    rng = np.random.default_rng(rows)
    w, x = rng.standard_normal((rows, k), dtype=np.float32), rng.standard_normal(k, dtype=np.float32)
    out = np.full(rows, np.nan, np.float32)
    _matvec(w, x, out)
    want = w.astype(np.float64) @ x
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 machine code")
def test_matvec_keeps_vector_multiply_adds_and_prefetches():
    """The prefetch sits outside the sum's loop, so LLVM still vectorises the sum: packed FMAs and prefetcht0."""
    from numba import njit

    from kuiper.llm import ops

    source = inspect.unwrap(ops._matvec)  # the Python function under numba's dispatcher (and the student wrapper)
    fresh = njit(parallel=True, fastmath=True)(source)  # a cached dispatcher shows no machine code
    fresh(np.ones((3, 64), np.float32), np.ones(64, np.float32), np.empty(3, np.float32))
    asm = fresh.inspect_asm(fresh.signatures[0])
    assert "prefetcht0" in asm, "expected prefetcht0 in _matvec's machine code"
    packed = re.findall(r"vfmadd\w*ps\s[^\n]*%[yz]mm", asm)  # AT&T: 256/512-bit registers
    assert packed, "expected packed multiply-adds (vfmadd...ps) in _matvec's machine code, got none"
