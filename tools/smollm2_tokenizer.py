"""Write SmolLM2's tokenizer.json from its GGUF file with Hugging Face `tokenizers`: the reference
that lesson 10 and tests/test_tokenizer.py check kuiper's tokenizer against.

    python tools/smollm2_tokenizer.py [GGUF [OUT]]

GGUF defaults to data/models/smollm2-135m-instruct-q4_1.gguf (tools/llms.py puts it there); OUT to data/models/smollm2-135m-instruct.tokenizer.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/smollm2_tokenizer.py`
    sys.path.insert(0, str(ROOT))
MODELS = ROOT / "data" / "models"
OUT = MODELS / "smollm2-135m-instruct.tokenizer.json"


def default_gguf() -> Path | None:
    """SmolLM2-135M-Instruct Q4_1 as tools/llms.py puts it in data/models, or None before set-up."""
    path = MODELS / "smollm2-135m-instruct-q4_1.gguf"
    return path if path.exists() else None


def read_metadata(path: Path) -> dict:
    """The tokenizer.* metadata of a GGUF file, read by kuiper's own reader."""
    from kuiper.llm.gguf import GGUFFile

    return {name: value for name, value in GGUFFile(path).metadata.items() if name.startswith("tokenizer.")}


def build(metadata: dict, pre: str = "smollm"):
    """A tokenizers.Tokenizer with the GGUF vocabulary and merges, and SmolLM2's pre-tokenizer
    (each digit alone, then GPT-2's regex); pre="gpt-2" leaves out the digit step."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
    merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE({token: id for id, token in enumerate(tokens)}, merges))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token, kind in zip(tokens, types) if kind == 3])
    return tokenizer


def main(argv: list[str]) -> int:
    gguf_path = Path(argv[0]) if argv else default_gguf()
    out = Path(argv[1]) if len(argv) > 1 else OUT
    if gguf_path is None:
        print("no SmolLM2 GGUF: run python tools/llms.py, or give its path", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    build(read_metadata(gguf_path)).save(str(out))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
