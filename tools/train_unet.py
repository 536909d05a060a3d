"""Train a small UNet from scratch to segment the synthetic shapes of tools/shapes.py, on a CPU.

    nohup python tools/train_unet.py --epochs 4 --train 2000 --out data/unet_shapes.pt > /tmp/unet.log &

The model is tools/architectures.py's carvana-style UNet (milesial/Pytorch-UNet: double 3x3
conv + BatchNorm + ReLU blocks, four 2x2 max-pool steps down, four 2x2 transposed convolutions up,
skip concatenations), base width 16, 6 output classes (background + data/shapes/classes.txt). Its
input is the 256-pixel picture resized to 128 x 128 (PIL bilinear, as kuiper.vision.detect's
letterbox does for a square picture), values in [0, 1]; the target is the class mask resized with
nearest neighbour. Random flips and quarter turns (a shape's class does not change under them),
random 96 x 96 windows, batch 8, per-pixel cross-entropy, AdamW with a one-cycle cosine schedule, a checkpoint every epoch
(--resume continues from it), the weights saved in float16. At the end, per-class IoU and mIoU on
200 held-out images (seeds from 1,000,000) at the model's resolution; tools/eval_unet.py measures the
exported model, run by kuiper, at the pictures' own size.
"""

from __future__ import annotations

import argparse
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
CHECKPOINT = Path("/tmp/unet/ckpt.pt")
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


def main() -> None:
    """The command line: train, evaluate, save float16 weights."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=200, help="held-out images")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96, help="training window side, a multiple of 16")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on 2 shared cores, 1 ran 5x faster than 2)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "unet_shapes.pt")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    train = ShapeMasks(args.train, augment=True, crop=args.crop)
    val = ShapeMasks(args.val, first_seed=VAL_SEED)
    print(f"rendered {len(train)} + {len(val)} images in {time.perf_counter() - start:.0f} s",
          flush=True)
    model = unet(3, NUM_CLASSES, BASE)
    loader = DataLoader(train, batch_size=args.batch, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, epochs=args.epochs,
                                                   steps_per_epoch=len(loader), pct_start=0.15)
    first = 0
    if args.resume:
        state = torch.load(CHECKPOINT, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        first = state["epoch"] + 1
    for epoch in range(first, args.epochs):
        model.train()
        losses = []
        for step, (images, masks) in enumerate(loader):
            loss = F.cross_entropy(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{len(loader)} loss {loss.item():.4f} "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
        CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
                    "epoch": epoch}, CHECKPOINT)
        print(f"epoch {epoch} mean loss {np.mean(losses):.4f}  {report(evaluate(model, val))}  "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save({k: v.half() if v.is_floating_point() else v
                for k, v in model.state_dict().items()}, tmp)
    tmp.replace(args.out)
    print(f"saved {args.out} after {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
