"""Train a small UNet from scratch to segment the synthetic shapes of tools/shapes.py, on a CPU.

    nohup python tools/train_unet.py --minutes 30 --train 1000 --lr 2e-3 --out data/unet_shapes.pt > unet.log &

The model is tools/architectures.py's carvana-style UNet (milesial/Pytorch-UNet: double 3x3
conv + BatchNorm + ReLU blocks, four 2x2 max-pool steps down, four 2x2 transposed convolutions up,
skip concatenations), base width 16, 6 output classes (background + data/shapes/classes.txt). Its
input is the 256-pixel picture resized to 128 x 128 (PIL bilinear, as kuiper.vision.detect's
letterbox does for a square picture), values in [0, 1]; the target is the class mask resized with
nearest neighbour. Random flips and quarter turns (a shape's class does not change under them),
random 96 x 96 windows, batch 8, per-pixel cross-entropy, AdamW with a warm-up and a cosine decay
over a wall-clock budget (the two cores are shared, so steps take from 0.3 to 3 s), the weights saved
in float16. At the end, per-class IoU and mIoU on
200 held-out images (seeds from 1,000,000) at the model's resolution; tools/eval_unet.py measures the
exported model, run by kuiper, at the pictures' own size.

The committed data/unet_shapes.pt came from two runs on 2 shared cores, about 1,870 steps and 31
minutes in all: `--minutes 14 --train 400` (about 270 steps under heavy load, still calling every
pixel background), then `--init` from it, `--minutes 15 --train 1000 --lr 2e-3 --threads 1` (1,600
steps, 0.55 s each). Held-out mIoU 0.918 here at 128 px; tools/eval_unet.py, kuiper at 256 px:
background 0.994, circle 0.959, square 0.914, triangle 0.883, ring 0.928, cross 0.913, mIoU 0.932.
The one 30-minute run above is the same recipe without the pause; it has not been rerun. One thread
is the default: on two cores shared with other jobs, two torch threads ran up to 5x slower.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/train_unet.py`
    sys.path.insert(0, str(ROOT))
from tools.architectures import unet  # noqa: E402
from tools.shapes import CLASSES, make_mask_sample  # noqa: E402

VAL_SEED = 1_000_000
INPUT_SIZE, BASE = 128, 16
NUM_CLASSES = len(CLASSES) + 1  # background first


def model_sample(seed: int, size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Sample `seed` at the model's resolution: image (3, size, size) float32 in [0, 1] and class
    mask (size, size) int64."""
    image, mask = make_mask_sample(seed)
    image = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    mask = Image.fromarray(mask).resize((size, size), Image.NEAREST)
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255  # (3, size, size)
    return pixels, np.asarray(mask, dtype=np.int64)


class ShapeMasks(Dataset):
    """`n` samples, seeds `first_seed`...; with `augment`, random flips, quarter turns and
    `crop` x `crop` windows (a fully convolutional model trains on parts and runs on the whole)."""

    def __init__(self, n: int, first_seed: int = 0, augment: bool = False, crop: int = INPUT_SIZE):
        samples = [model_sample(first_seed + i) for i in range(n)]
        self.images = torch.from_numpy(np.stack([s[0] for s in samples]))  # (n, 3, H, W)
        self.masks = torch.from_numpy(np.stack([s[1] for s in samples]))  # (n, H, W)
        self.augment, self.crop = augment, crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[i], self.masks[i]
        if self.augment:
            turns = int(torch.randint(4, ()))
            image, mask = image.rot90(turns, (1, 2)), mask.rot90(turns, (0, 1))
            if torch.rand(()) < 0.5:
                image, mask = image.flip(2), mask.flip(1)
            top, left = torch.randint(INPUT_SIZE - self.crop + 1, (2,)).tolist()
            window = (slice(top, top + self.crop), slice(left, left + self.crop))
            image, mask = image[(slice(None), *window)], mask[window]
        return image.contiguous(), mask.contiguous()


def confusion(pred: torch.Tensor, target: torch.Tensor, k: int = NUM_CLASSES) -> torch.Tensor:
    """The (k, k) confusion matrix, rows the true class, columns the predicted one."""
    return torch.bincount(target.reshape(-1) * k + pred.reshape(-1), minlength=k * k).view(k, k)


def iou(matrix: torch.Tensor) -> torch.Tensor:
    """Per-class IoU from a confusion matrix: TP / (TP + FP + FN)."""
    tp = matrix.diag().double()
    return tp / (matrix.sum(0) + matrix.sum(1) - tp).double()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ShapeMasks) -> torch.Tensor:
    """Per-class IoU of `model` on `data` at the model's resolution."""
    model.eval()
    total = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for images, masks in DataLoader(data, batch_size=16):
        total += confusion(model(images).argmax(1), masks)
    return iou(total)


def report(ious: torch.Tensor) -> str:
    """One line: IoU per class and their mean."""
    names = ("background", *CLASSES)
    return "  ".join(f"{n} {v:.3f}" for n, v in zip(names, ious.tolist())) + \
        f"  mIoU {ious.mean():.3f}"


def learning_rate(peak: float, step: int, elapsed: float, warmup: int = 30) -> float:
    """A linear warm-up over the first `warmup` steps, then cosine decay to 0 over the time budget
    (`elapsed` is the fraction of it used), so that training ends annealed however busy the CPU is."""
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(elapsed, 1.0)))


def train(model: torch.nn.Module, data: ShapeMasks, batch: int, peak: float, seconds: float) -> None:
    """AdamW on per-pixel cross-entropy until `seconds` of wall time have passed."""
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=1e-4)
    model.train()
    start, step, losses = time.perf_counter(), 0, []
    while (elapsed := (time.perf_counter() - start) / seconds) < 1:
        for images, masks in loader:
            elapsed = (time.perf_counter() - start) / seconds
            if elapsed >= 1:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(peak, step, elapsed)
            loss = F.cross_entropy(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0:
                print(f"step {step} ({step * batch / len(data):.1f} epochs) loss {np.mean(losses[-50:]):.4f} "
                      f"lr {optimizer.param_groups[0]['lr']:.5f} {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    """The command line: train, evaluate, save float16 weights."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20, help="training time budget (wall clock)")
    parser.add_argument("--train", type=int, default=1000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="held-out images")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96, help="training window side, a multiple of 16")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on 2 shared cores, 1 ran 5x faster than 2)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "unet_shapes.pt")
    parser.add_argument("--init", type=Path, help="start from these float16 weights instead of at random")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    data = ShapeMasks(args.train, augment=True, crop=args.crop)
    print(f"rendered {len(data)} images in {time.perf_counter() - start:.0f} s", flush=True)
    model = unet(3, NUM_CLASSES, BASE)
    if args.init:
        state = torch.load(args.init, weights_only=True)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    train(model, data, args.batch, args.lr, args.minutes * 60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save({k: v.half() if v.is_floating_point() else v
                for k, v in model.state_dict().items()}, tmp)
    tmp.replace(args.out)
    print(f"saved {args.out} after {time.perf_counter() - start:.0f} s", flush=True)
    print(report(evaluate(model, ShapeMasks(args.val, first_seed=VAL_SEED))), flush=True)


if __name__ == "__main__":
    main()
