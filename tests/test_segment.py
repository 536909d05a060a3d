"""UNet segmentation in kuiper: the trained unet_shapes against PyTorch at batch 1 and 8, its mIoU on
held-out shapes, scores mapped back through the letterbox, and `kuiper segment` (overlays, masks,
fractions, never writing over an input, one-line errors)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kuiper
from kuiper import cli
from kuiper.vision.segment import mask_from_logits
from tools.eval_unet import masks, scores
from tools.train_unet import VAL_SEED

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL = DATA / "models" / "unet_shapes.pnnx.param"
SHAPES = sorted(str(p) for p in (DATA / "shapes").glob("*.jpg"))
LABELS = str(DATA / "shapes" / "classes.txt")


def test_matches_pytorch_at_batch_1():
    x = np.load(MODEL.with_name("unet_shapes.input.npy"))
    want = np.load(MODEL.with_name("unet_shapes.output.npy"))
    got = kuiper.load(MODEL)(x)
    assert got.shape == want.shape == (1, 6, 128, 128)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_matches_pytorch_at_batch_8():
    x = np.random.default_rng(8).random((8, 3, 128, 128), dtype=np.float32)
    with torch.no_grad():
        want = torch.jit.load(str(MODEL.with_name("unet_shapes.torchscript.pt")))(torch.from_numpy(x)).numpy()
    got = kuiper.load(MODEL)(x)
    assert got.shape == want.shape == (8, 6, 128, 128)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_segments_held_out_shapes():
    iou, miou = scores(masks(kuiper.load(MODEL), range(VAL_SEED, VAL_SEED + 24)))
    assert miou >= 0.88, np.round(iou, 3)
    assert iou.min() >= 0.8, np.round(iou, 3)


def test_segment_fractions_match_the_true_masks(capsys):
    assert cli.main(["segment", str(MODEL), *SHAPES, "--labels", LABELS, "--json"]) == 0
    for result, path in zip(json.loads(capsys.readouterr().out), SHAPES):
        truth = np.asarray(Image.open(path.replace(".jpg", "_mask.png")))
        want = np.bincount(truth.ravel(), minlength=6) / truth.size
        assert np.abs(np.array(list(result["fractions"].values())) - want).max() < 0.01, (result, want)


def test_scores_map_back_through_the_letterbox():
    # a 200 x 100 photo letterboxed to 128: scale 0.64, content 128 x 64 at (0, 32), grey above and below
    logits = np.zeros((3, 128, 128), np.float32)
    logits[0] = 5  # the grey bars say "background"
    logits[1, 32:96, :64] = 10  # left half of the content: class 1
    logits[2, 32:96, 64:] = 10  # right half: class 2
    mask, confidence = mask_from_logits(logits, 0.64, (0, 32), (200, 100), band=7)
    assert mask.shape == confidence.shape == (100, 200) and mask.dtype == np.uint8
    assert (mask[:, :95] == 1).all() and (mask[:, 105:] == 2).all()
    assert confidence[:, :95].min() > 0.99 and confidence[:, 105:].min() > 0.99  # e^10 / (e^10 + e^5 + 1)


def run(*args):
    return subprocess.run([sys.executable, "-m", "kuiper", *map(str, args)], capture_output=True, text=True)


def test_segment_writes_overlays_masks_and_fractions(tmp_path, capsys):
    assert cli.main(["segment", str(MODEL), *SHAPES, "--labels", LABELS, "--out", str(tmp_path), "--mask",
                     "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"shapes_{i}.{s}.png" for i in (1, 2, 3) for s in ("segment", "mask"))
    for result, path in zip(results, SHAPES):
        fractions = result["fractions"]
        assert list(fractions) == ["background", "circle", "square", "triangle", "ring", "cross"]
        assert abs(sum(fractions.values()) - 1) < 1e-5
        overlay = np.asarray(Image.open(result["overlay"]))
        photo = np.asarray(Image.open(path).convert("RGB"))
        mask = np.asarray(Image.open(result["mask"]))
        assert overlay.shape == photo.shape and mask.shape == photo.shape[:2] and mask.max() < 6
        assert (overlay[mask == 0] == photo[mask == 0]).all()
        assert np.allclose(np.bincount(mask.ravel(), minlength=6) / mask.size, list(fractions.values()), atol=1e-5)


def test_segment_never_writes_over_an_input(tmp_path):
    photo = tmp_path / "photo.png"
    shutil.copy(SHAPES[0], photo)
    before = photo.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    os.link(photo, out / "photo.segment.png")  # another name for the same file: caught by identity, not by path
    done = run("segment", MODEL, photo, "--out", out, "--alpha", "1")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "is the input" in done.stderr, done.stderr
    assert photo.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["photo.segment.png"]
    done = run("segment", MODEL, photo, "--out", tmp_path)  # beside the photo: a new name, the photo untouched
    assert done.returncode == 0 and photo.read_bytes() == before, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photo.png", "photo.segment.png"]


@pytest.mark.parametrize("args, message", [
    (["--alpha", "1.5"], "argument --alpha: expected a number in [0, 1], got '1.5'"),
    (["--alpha", "nan"], "argument --alpha: expected a number in [0, 1], got 'nan'"),
    (["--batch", "0"], "argument --batch: expected an integer from 1 to"),
    (["--mask"], "--mask needs --out"),
    (["--labels", str(DATA / "imagenet_classes.txt")], "names 1000 classes, but the model scores 6"),
])
def test_bad_options_are_one_line_and_exit_1(args, message):
    done = run("segment", MODEL, SHAPES[0], *args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr


@pytest.mark.parametrize("args, message", [
    (["segment", str(MODEL), "gone.jpg"], "gone.jpg: no such file"),
    (["segment", str(DATA / "models" / "mobilenet_v2.pnnx.param"), SHAPES[0]], "not per-pixel scores"),
    (["segment", str(MODEL), str(DATA / "README.md")], "README.md: not an image that can be read"),
])
def test_bad_inputs_are_one_line_and_exit_1(args, message):
    done = run(*args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr
