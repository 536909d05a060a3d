"""A seeded, bounded mutation fuzzer for the LLM input formats: GGUF, safetensors, config.json and
tokenizer.json. Each case mutates a small valid file (bytes, or for JSON the parsed structure) and
loads it; the invariant is a KuiperError or a correct result, within a time and memory bound.

The fast slice runs in the tests; the long run is
    python tests/test_fuzz_llm.py --cases 2000
which prints, per format, how many cases ended in a KuiperError, a correct result, or anything else."""

import argparse
import copy
import json
import re
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kuiper.errors import KuiperError  # noqa: E402
from kuiper.llm.gguf import GGUFFile  # noqa: E402
from kuiper.llm.model import config_from_hf, model_from_gguf, weight_shapes  # noqa: E402
from kuiper.llm.safetensors import SafetensorsFile, load_config  # noqa: E402
from kuiper.llm.tokenizer import BPETokenizer  # noqa: E402
from llm_files import VOCAB, tiny_config, write_gguf, write_tokenizer_json  # noqa: E402

SECONDS, BYTES = 5.0, 256 * 2**20  # the bound on one case
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 12, 31, 32, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1,
               2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1]
JSON_VALUES = [None, True, False, 0, -1, 1, 2, 3, 7, 2**31, 2**64, 10**9, -(10**9), 0.5, 1e308, -1e-9, "", "x",
               "<|endoftext|>", "e\u0301", "\udcff", [], [1], [[]], {}, {"type": "NFC"}, "BPE", "NFC", "Split"]


def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """1 to 4 of: flip a bit, set a byte, write an interesting 4- or 8-byte integer, cut the end,
    delete, duplicate or insert a run of bytes."""
    data = bytearray(data)
    for _ in range(rng.integers(1, 5)):
        at = int(rng.integers(0, max(len(data), 1)))
        kind = rng.integers(0, 7)
        if kind == 0 and data:
            data[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1 and data:
            data[at] = int(rng.integers(0, 256))
        elif kind == 2:
            width = int(rng.choice([4, 8]))
            value = int(rng.choice(INTERESTING)) % 2 ** (8 * width)
            data[at:at + width] = value.to_bytes(width, "little")
        elif kind == 3:
            del data[int(rng.integers(0, len(data) + 1)):]
        elif kind == 4:
            del data[at:at + int(rng.integers(1, 64))]
        elif kind == 5:
            data[at:at] = data[at:at + int(rng.integers(1, 64))]
        else:
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    return bytes(data)


def places(value) -> list:
    """Every (path, value) inside a parsed JSON value, at most 200 levels deep."""
    found, stack = [], [((), value)]
    while stack:
        path, value = stack.pop()
        found.append((path, value))
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend((path + (key,), inner) for key, inner in items if len(path) < 200)
    return found


def mutate_json(value, rng: np.random.Generator) -> bytes:
    """1 to 3 structural changes to a parsed JSON value: replace a value, delete a key or item,
    put a deeply nested array there, or copy a sibling; then the JSON text (sometimes with bytes
    mutated too)."""
    value = copy.deepcopy(value)
    for _ in range(rng.integers(1, 4)):
        found = places(value)
        path, inner = found[int(rng.integers(0, len(found)))]
        if not path:
            continue
        *parent_path, key = path
        parent = value
        for step in parent_path:
            parent = parent[step]
        kind = rng.integers(0, 4)
        if kind == 0:
            parent[key] = copy.deepcopy(JSON_VALUES[int(rng.integers(0, len(JSON_VALUES)))])
        elif kind == 1:
            del parent[key]
        elif kind == 2:
            parent[key] = f"@nest{int(rng.choice([2, 50, 5000]))}@"
        elif isinstance(parent, list) and parent:
            parent.append(copy.deepcopy(parent[int(rng.integers(0, len(parent)))]))
        elif isinstance(parent, dict):
            parent[key + "_" if isinstance(key, str) else key] = copy.deepcopy(inner)
    text = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    text = re.sub(rb'"@nest(\d+)@"', lambda m: b"[" * int(m[1]) + b"1" + b"]" * int(m[1]), text)
    return mutate_bytes(text, rng) if rng.random() < 0.2 else text


# ---- the formats: a base file, a mutation, and a loader that checks what it loaded -------------

def load_gguf(path: Path) -> None:
    model = model_from_gguf(GGUFFile(path), max_seq_len=16)
    logits = model.forward(np.array([1, 2]), 0)
    assert logits.shape == (1, model.config.vocab_size)


def load_safetensors(path: Path) -> None:
    weights = SafetensorsFile(path)
    for name, (dtype, shape) in weights.tensors.items():
        assert weights.tensor(name).shape == shape


def load_config_json(path: Path) -> None:
    config = config_from_hf(load_config(path), str(path))
    assert all(n > 0 for shape in weight_shapes(config).values() for n in shape)


def load_tokenizer_json(path: Path) -> None:
    tokenizer = BPETokenizer.from_tokenizer_json(path)
    ids = tokenizer.encode("hello world, cafe\u0301 <|endoftext|> 42")
    assert all(0 <= id < tokenizer.vocab_size for id in ids)
    tokenizer.decode(ids)


def formats(folder: Path) -> dict[str, tuple[bytes, Callable, Callable]]:
    """format -> (base file bytes, mutate(bytes or JSON value, rng) -> bytes, load(path))."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({"model.embed_tokens.weight": rng.standard_normal((VOCAB, 8)).astype(np.float32),
               "model.norm.weight": np.ones(8, np.float16), "ids": np.arange(6, dtype=np.int64)},
              str(folder / "base.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(tiny_config()))
    tokenizer = write_tokenizer_json(folder / "tokenizer.json", normalizer={"type": "NFC"})
    gguf = write_gguf(folder / "base.gguf").read_bytes()
    json_mutation = lambda data, rng: mutate_json(json.loads(data), rng) if rng.random() < 0.8 \
        else mutate_bytes(data, rng)  # noqa: E731
    return {"gguf": (gguf, mutate_bytes, load_gguf),
            "safetensors": ((folder / "base.safetensors").read_bytes(), mutate_bytes, load_safetensors),
            "config.json": ((folder / "config.json").read_bytes(), json_mutation, load_config_json),
            "tokenizer.json": (tokenizer.read_bytes(), json_mutation, load_tokenizer_json)}


def fuzz(name: str, cases: int, seed: int = 0) -> tuple[Counter, list[str]]:
    """Run `cases` seeded mutations of format `name`: Counter of kuiper / correct / other, and what
    each 'other' case was."""
    outcomes, others = Counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base, mutate, load = formats(folder)[name]
        load(write(folder / f"warm{Path(name).suffix or '.' + name}", base))  # compile numba kernels outside the bound
        for case in range(cases):
            rng = np.random.default_rng([seed, case])
            path = write(folder / f"case{Path(name).suffix or '.' + name}", mutate(base, rng))
            tracemalloc.start()
            start = time.perf_counter()
            try:
                with np.errstate(all="ignore"):  # garbage weights may overflow: that is their result
                    load(path)
                outcome = "correct"
            except KuiperError:
                outcome = "kuiper"
            except Exception as err:  # noqa: BLE001 - the fuzzer's finding
                outcome, detail = "other", f"{type(err).__name__}: {str(err)[:200]}"
            seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            if seconds > SECONDS or peak > BYTES:
                outcome, detail = "other", f"bound exceeded: {seconds:.1f} s, {peak / 2**20:.0f} MiB"
            outcomes[outcome] += 1
            if outcome == "other":
                others.append(f"{name} seed {seed} case {case}: {detail}")
    return outcomes, others


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, cases", [("gguf", 150), ("safetensors", 200), ("config.json", 200),
                                         ("tokenizer.json", 120)])
def test_fuzz_slice(name, cases):
    outcomes, others = fuzz(name, cases)
    assert not others, "\n".join(others[:10])
    assert outcomes["kuiper"] > cases // 10 and outcomes["correct"] > 0  # the mutations reach both sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("formats", nargs="*", default=["gguf", "safetensors", "config.json", "tokenizer.json"])
    args = parser.parse_args()
    for name in args.formats:
        start = time.perf_counter()
        outcomes, others = fuzz(name, args.cases, args.seed)
        print(f"{name}: {args.cases} cases in {time.perf_counter() - start:.0f} s: kuiper {outcomes['kuiper']}, "
              f"correct {outcomes['correct']}, other {outcomes['other']}", flush=True)
        for line in others[:20]:
            print("  ", line)


if __name__ == "__main__":
    main()
