"""A seeded, bounded mutation fuzzer for the file formats kuiper reads.

    python tools/fuzz.py --cases 2000                    # every format, 2,000 cases each
    python tools/fuzz.py --format pnnx.bin --cases 200   # one format (repeatable option)
    python tools/fuzz.py --cases 2000 --save fuzz-failures/  # keep the inputs that break a reader

Each case takes one of a format's valid seed files, applies one to three mutations (bit flips,
truncation, inserted or deleted bytes, edited numbers), writes it to a temporary folder and hands
it to the format's reader. The invariant: the reader gives the right result or raises a
KuiperError, within TIME_LIMIT seconds per case, in a process limited to MEMORY_LIMIT bytes of
address space (resource.setrlimit), so that a file that asks for gigabytes fails the run instead of
the machine. Cases are numbered and seeded by (seed, format, number): a failure names the three,
and `--format F --first N --cases 1` replays it.

To fuzz another format, add a `Format` to FORMATS: `seeds(folder)` writes the valid files it needs
into `folder` and returns the path of each one to mutate; `check(path)` reads a (mutated) file and
returns "ok" for a right result (raising AssertionError for a wrong one) — a KuiperError it lets
through counts as a refusal.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kuiper.errors import KuiperError  # noqa: E402

TIME_LIMIT = 10.0  # seconds per case
MEMORY_LIMIT = 6 * 2**30  # bytes of address space for the whole run (numba and OpenBLAS reserve ~2 GiB)
INTERESTING_TEXT = [b"0", b"-1", b"1", b"65535", b"2147483648", b"99999999999999999999", b"\xd9\xa3", b"nan",
                    b"inf", b"1e308", b"?", b"(", b")", b",", b"=", b"@", b"#"]
INTERESTING_WORDS = [0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 2**24]


@dataclass
class Format:
    """A file format to fuzz: its seed files and the check of one (mutated) file."""

    seeds: Callable[[Path], list[Path]]
    check: Callable[[Path], str]


class CaseTimeout(Exception):
    """A case ran past TIME_LIMIT."""


# ---- mutations -------------------------------------------------------------------------------

def flip(rng: random.Random, data: bytes) -> bytes:
    """One byte XOR-ed with a random non-zero mask."""
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ rng.randrange(1, 256)]) + data[i + 1:]


def truncate(rng: random.Random, data: bytes) -> bytes:
    """The first 0..len-1 bytes."""
    return data[:rng.randrange(len(data))] if data else data


def insert(rng: random.Random, data: bytes) -> bytes:
    """Random bytes, or a copy of a piece of the file, inserted somewhere."""
    i = rng.randrange(len(data) + 1)
    if data and rng.random() < 0.5:
        start = rng.randrange(len(data))
        piece = data[start:start + rng.randint(1, 64)]
    else:
        piece = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return data[:i] + piece + data[i:]


def delete(rng: random.Random, data: bytes) -> bytes:
    """A span of 1..32 bytes removed."""
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 32):]


def edit_number(rng: random.Random, data: bytes) -> bytes:
    """A decimal number in the text replaced by an interesting token, or (binary files) an aligned
    32-bit word replaced by an interesting value."""
    numbers = list(re.finditer(rb"[0-9]+", data))
    if numbers and rng.random() < 0.7:
        match = rng.choice(numbers)
        return data[:match.start()] + rng.choice(INTERESTING_TEXT) + data[match.end():]
    if len(data) < 4:
        return data
    i = rng.randrange(len(data) // 4) * 4
    return data[:i] + rng.choice(INTERESTING_WORDS).to_bytes(4, "little") + data[i + 4:]


MUTATIONS = [flip, truncate, insert, delete, edit_number]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three mutations of `data`."""
    for _ in range(rng.randint(1, 3)):
        data = rng.choice(MUTATIONS)(rng, data)
    return data


# ---- formats ---------------------------------------------------------------------------------

TINY = ROOT / "data" / "tiny.pnnx.param"
SMALL_CNN = """7767517
9 9
pnnx.Input input 0 1 0 #0=(1,3,8,8)f32
nn.Conv2d conv 1 1 0 1 bias=True dilation=(1,1) groups=1 in_channels=3 kernel_size=(3,3) out_channels=4 padding=(1,1) padding_mode=zeros stride=(1,1) @bias=(4)f32 @weight=(4,3,3,3)f32 #1=(1,4,8,8)f32
nn.MaxPool2d pool 1 1 1 2 ceil_mode=False dilation=(1,1) kernel_size=(2,2) padding=(0,0) return_indices=False stride=(2,2) #2=(1,4,4,4)f32
nn.Upsample up 1 1 2 3 mode=nearest scale_factor=(2.0,2.0) #3=(1,4,8,8)f32
torch.chunk chunk 1 2 3 4 5 chunks=2 dim=1 #4=(1,2,8,8)f32 #5=(1,2,8,8)f32
nn.SiLU act 1 1 4 6 #6=(1,2,8,8)f32
torch.cat cat 2 1 6 5 7 dim=1 #7=(1,4,8,8)f32
Tensor.view flat 1 1 7 8 shape=(1,256) #8=(1,256)f32
pnnx.Output output 1 0 8 #8=(1,256)f32
"""


def small_cnn(folder: Path) -> Path:
    """A small PNNX model with a convolution, pooling, resizing, chunk and concatenation."""
    param = folder / "cnn.pnnx.param"
    param.write_text(SMALL_CNN)
    g = np.random.default_rng(0)
    with zipfile.ZipFile(param.with_name("cnn.pnnx.bin"), "w") as archive:
        archive.writestr("conv.bias", g.standard_normal(4, dtype=np.float32).tobytes())
        archive.writestr("conv.weight", g.standard_normal((4, 3, 3, 3), dtype=np.float32).tobytes())
    return param


def pnnx_seeds(folder: Path) -> list[Path]:
    """The tiny model of lesson 02 and the small CNN above, .param and .bin side by side."""
    shutil.copy(TINY, folder / "tiny.pnnx.param")
    shutil.copy(TINY.with_suffix(".bin"), folder / "tiny.pnnx.bin")
    return [folder / "tiny.pnnx.param", small_cnn(folder)]


def run_graph(param: Path) -> np.ndarray:
    """Load the model and run it on a fixed input of its seed's shape."""
    import kuiper

    graph = kuiper.load(param)
    shape = (1, 3, 4, 4) if param.name.startswith("tiny") else (1, 3, 8, 8)
    return graph(np.random.default_rng(1).standard_normal(shape, dtype=np.float32))


def check_param(param: Path) -> str:
    """A mutated .param beside its seed's .bin: loads and runs, or a KuiperError."""
    seed = param.with_name(param.name.split(".")[0].split("-")[0] + ".pnnx.bin")
    binary = param.with_name(param.name.removesuffix(".param") + ".bin")
    if not binary.exists():
        shutil.copy(seed, binary)
    out = run_graph(param)
    outputs = out if isinstance(out, tuple) else (out,)
    assert all(isinstance(o, np.ndarray) for o in outputs), f"the graph returned {type(out).__name__}"
    return "ok"


def pnnx_bin_seeds(folder: Path) -> list[Path]:
    """The .bin files of pnnx_seeds, to be mutated beside their unchanged .param."""
    return [param.with_name(param.name.removesuffix(".param") + ".bin") for param in pnnx_seeds(folder)]


def check_bin(binary: Path) -> str:
    """A mutated .bin beside its seed's .param: either a KuiperError, or exactly the seed's weights."""
    from kuiper.pnnx import load_pnnx

    stem = binary.name.split(".")[0].split("-")[0]
    param = binary.with_name(binary.name.removesuffix(".bin") + ".param")
    if not param.exists():
        shutil.copy(binary.with_name(f"{stem}.pnnx.param"), param)
    got = load_pnnx(param)
    want = load_pnnx(binary.with_name(f"{stem}.pnnx.param"))
    for a, b in zip(got.operators, want.operators):
        for key in b.attrs:
            assert np.array_equal(a.attrs[key].data, b.attrs[key].data, equal_nan=True), \
                f"weight {a.name}.{key} loaded with different values"
    return "ok"


def image_seeds(folder: Path) -> list[Path]:
    """Small images in the formats and modes people have: JPEG (with EXIF), PNG (RGBA, 16-bit,
    palette), TIFF (float, CMYK), GIF, BMP, WebP."""
    from PIL import Image

    g = np.random.default_rng(0)
    rgb = Image.fromarray(g.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    images = {"photo.jpg": (rgb, dict(exif=exif)), "rgba.png": (rgb.convert("RGBA"), {}),
              "sixteen.png": (Image.fromarray(g.integers(0, 65536, (24, 32), dtype=np.uint16)), {}),
              "palette.png": (rgb.convert("P"), dict(transparency=3)),
              "float.tiff": (Image.fromarray(g.random((24, 32), dtype=np.float32)), {}),
              "cmyk.tiff": (rgb.convert("CMYK"), {}), "anim.gif": (rgb.convert("P"), {}),
              "plain.bmp": (rgb, {}), "lossy.webp": (rgb, {})}
    paths = []
    for name, (image, options) in images.items():
        image.save(folder / name, **options)
        paths.append(folder / name)
    return paths


def check_image(path: Path) -> str:
    """A mutated image: decoded to RGB and prepared for a 224 model, or an ImageError."""
    from kuiper.vision.classify import load_image, prepare

    image = load_image(path)
    assert image.mode == "RGB", image.mode
    x = prepare(path, 224)
    assert x.shape == (3, 224, 224) and np.isfinite(x).all(), "prepared input is not finite (3, 224, 224)"
    return "ok"


FORMATS: dict[str, Format] = {
    "pnnx.param": Format(pnnx_seeds, check_param),
    "pnnx.bin": Format(pnnx_bin_seeds, check_bin),
    "image": Format(image_seeds, check_image),
}


# ---- the run ---------------------------------------------------------------------------------

def alarm(signum, frame):
    raise CaseTimeout(f"ran past {TIME_LIMIT} s")


def run_case(fmt: Format, seeds: list[Path], name: str, seed: int, number: int, folder: Path) -> tuple[str, str]:
    """Mutate one seed file, check it; (outcome, detail): ok, refused (a KuiperError) or failed."""
    rng = random.Random(f"{seed}:{name}:{number}")
    source = rng.choice(seeds)
    stem, _, rest = source.name.partition(".")
    case = folder / f"{stem}-{number}.{rest}"
    case.write_bytes(mutate(rng, source.read_bytes()))
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT)
    try:
        return fmt.check(case), ""
    except KuiperError as err:
        message = str(err)
        return ("refused", "") if message and "\n" not in message else ("failed", f"bad message {message!r}")
    except BaseException as err:  # noqa: BLE001: everything else breaks the invariant
        if isinstance(err, KeyboardInterrupt):
            raise
        return "failed", "".join(traceback.format_exception(err)[-3:]).strip()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for path in folder.glob(f"{stem}-{number}.*"):
            path.unlink()


def fuzz(name: str, cases: int, seed: int = 0, first: int = 0, save: Path | None = None,
         out: io.TextIOBase = sys.stdout) -> Counter:
    """Run `cases` cases of format `name`; the count of each outcome (ok, refused, failed)."""
    fmt, counts = FORMATS[name], Counter()
    signal.signal(signal.SIGALRM, alarm)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seeds = fmt.seeds(folder)
        start = time.perf_counter()
        for number in range(first, first + cases):
            outcome, detail = run_case(fmt, seeds, name, seed, number, folder)
            counts[outcome] += 1
            if outcome == "failed":
                print(f"FAILED {name} seed {seed} case {number}: {detail}", file=out)
                if save is not None:
                    rng = random.Random(f"{seed}:{name}:{number}")
                    source = rng.choice(seeds)
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"{name}-{seed}-{number}-{source.name}").write_bytes(mutate(rng, source.read_bytes()))
        seconds = time.perf_counter() - start
    print(f"{name:12} {cases:6} cases: {counts['ok']:6} right, {counts['refused']:6} KuiperError, "
          f"{counts['failed']:4} failed ({seconds:.1f} s)", file=out)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200, help="cases per format (default 200)")
    parser.add_argument("--format", action="append", choices=sorted(FORMATS), help="fuzz only this format")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--first", type=int, default=0, help="number of the first case (to replay one)")
    parser.add_argument("--save", type=Path, help="write each failing input into this folder")
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    failed = 0
    for name in args.format or FORMATS:
        failed += fuzz(name, args.cases, args.seed, args.first, args.save)["failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
