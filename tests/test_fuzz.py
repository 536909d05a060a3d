"""The fuzzer of tools/fuzz.py: a fast slice of every format (each reader gives the right result or a
KuiperError, within the time and memory bounds), and the fuzzer itself: repeatable, and able to fail."""

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tools import fuzz

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(fuzz.FORMATS))
def test_a_fast_slice_of_every_format_holds_the_invariant(name):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz.py"), "--format", name, "--cases", "200"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "200 cases" in done.stdout and " 0 failed" in done.stdout, done.stdout


def test_mutations_are_seeded():
    data = bytes(range(256)) * 4 + b"counts 12 345"
    first = [fuzz.mutate(random.Random(f"0:x:{n}"), data) for n in range(50)]
    again = [fuzz.mutate(random.Random(f"0:x:{n}"), data) for n in range(50)]
    assert first == again and sum(m != data for m in first) >= 45


def test_a_reader_that_breaks_the_invariant_is_caught(tmp_path, monkeypatch):
    def seeds(folder: Path) -> list[Path]:
        (folder / "seed.txt").write_text("7767517\n1 2\n")
        return [folder / "seed.txt"]

    def check(path: Path) -> str:
        raise ValueError("a raw exception")

    monkeypatch.setitem(fuzz.FORMATS, "broken", fuzz.Format(seeds, check))
    counts = fuzz.fuzz("broken", 5, save=tmp_path / "saved", out=open("/dev/null", "w"))
    assert counts["failed"] == 5 and len(list((tmp_path / "saved").iterdir())) == 5
