"""Per-class IoU and mIoU of the exported `unet_shapes` on held-out synthetic shapes, run by kuiper
(and, with --torch, by the traced PyTorch model on the same inputs), at the pictures' own size.

    python tools/eval_unet.py             # 200 held-out pictures (seeds 1,000,000...), kuiper only
    python tools/eval_unet.py --torch     # PyTorch too, and how many pixels the two agree on

Each 256-pixel picture of tools/shapes.py goes through kuiper.vision.segment as `kuiper segment`
runs it (letterbox to 128, the model, scores resized back to 256, per-pixel argmax) and is compared
with its true mask by the lesson's confusion matrix and IoU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/eval_unet.py`
    sys.path.insert(0, str(ROOT))
import kuiper  # noqa: E402
from kuiper.vision.detect import letterbox  # noqa: E402
from kuiper.vision.segment import confusion_matrix, iou_per_class, mask_from_logits  # noqa: E402
from tools.shapes import CLASSES, make_mask_sample  # noqa: E402
from tools.train_unet import INPUT_SIZE, NUM_CLASSES, VAL_SEED  # noqa: E402

MODEL = ROOT / "data" / "models" / "unet_shapes.pnnx.param"
NAMES = ("background", *CLASSES)


def masks(run: Callable[[np.ndarray], np.ndarray], seeds: range, batch: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """(true mask, predicted mask) of each sample seed, both (256, 256) uint8; `run` maps a
    (N, 3, 128, 128) float32 batch to (N, 6, 128, 128) scores."""
    pairs = []
    for start in range(seeds.start, seeds.stop, batch):
        samples = [make_mask_sample(seed) for seed in range(start, min(start + batch, seeds.stop))]
        boxed = [letterbox(Image.fromarray(image), INPUT_SIZE) for image, _ in samples]
        scores = run(np.stack([b[0] for b in boxed]))
        for (image, truth), (_, scale, pad), s in zip(samples, boxed, scores):
            pairs.append((truth, mask_from_logits(s, scale, pad, image.shape[1::-1])[0]))
    return pairs


def scores(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, float]:
    """Per-class IoU (6,) and mIoU over all the pixels of the (true, predicted) pairs."""
    return iou_per_class(sum(confusion_matrix(t, p, NUM_CLASSES) for t, p in pairs))


def line(name: str, iou: np.ndarray, miou: float) -> str:
    """One printed row: IoU per class and the mean."""
    return f"{name:<7}" + "  ".join(f"{n} {v:.3f}" for n, v in zip(NAMES, iou)) + f"  mIoU {miou:.3f}"


def torch_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The traced PyTorch model beside a .pnnx.param, as a numpy function."""
    import torch

    traced = torch.jit.load(str(path.with_name(path.name.replace(".pnnx.param", ".torchscript.pt"))))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return traced(torch.from_numpy(x)).numpy()
    return run


def main() -> None:
    """The command line: evaluate and print one row per engine."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="held-out pictures (default 200)")
    parser.add_argument("--model", type=Path, default=MODEL, help="the exported .pnnx.param")
    parser.add_argument("--torch", action="store_true", help="evaluate the traced PyTorch model too")
    args = parser.parse_args()
    seeds = range(VAL_SEED, VAL_SEED + args.n)
    ours = masks(kuiper.load(args.model), seeds)
    print(line("kuiper", *scores(ours)))
    if args.torch:
        theirs = masks(torch_runner(args.model), seeds)
        print(line("torch", *scores(theirs)))
        same = np.mean([(a[1] == b[1]).mean() for a, b in zip(ours, theirs)])
        print(f"kuiper and PyTorch give the same class to {same:.4%} of the pixels")


if __name__ == "__main__":
    main()
