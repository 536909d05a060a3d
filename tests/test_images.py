"""kuiper.vision.classify.load_image: images as people have them become upright 8-bit RGB, or an
ImageError naming the file; sizes are checked before anything is decoded."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kuiper.errors import ImageError
from kuiper.vision.classify import MAX_PIXELS, load_image, prepare


def saved(tmp_path: Path, image: Image.Image, name: str, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_exif_orientation_is_honoured(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to view
    image = load_image(saved(tmp_path, Image.fromarray(pixels), "phone.png", exif=exif))
    assert image.size == (20, 40)
    assert np.asarray(image)[5, 10].tolist() == [255, 0, 0] and np.asarray(image)[35, 10].tolist() == [0, 0, 255]


@pytest.mark.parametrize("mode, value, name, want", [
    ("I;16", 32768, "sixteen.png", 128),
    ("I", 65535, "wide.tiff", 255),
    ("F", 0.5, "float.tiff", 128),
    ("F", float("nan"), "nan.tiff", 0),
])
def test_wide_images_are_scaled_to_8_bits(tmp_path, mode, value, name, want):
    image = Image.new(mode, (8, 6), value)
    got = np.asarray(load_image(saved(tmp_path, image, name)))
    assert got.shape == (6, 8, 3) and np.all(got == want), got[0, 0]


@pytest.mark.parametrize("image, want", [
    (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), [255, 255, 255]),      # transparent: white
    (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), [255, 0, 0]),         # opaque: itself
    (Image.new("LA", (4, 4), (0, 128)), [127, 127, 127]),               # half black on white
    (Image.new("L", (4, 4), 77), [77, 77, 77]),
    (Image.new("1", (4, 4), 1), [255, 255, 255]),
    (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), [255, 0, 0]),
])
def test_every_mode_becomes_rgb(tmp_path, image, want):
    suffix = ".tiff" if image.mode == "CMYK" else ".png"
    got = np.asarray(load_image(saved(tmp_path, image, "x" + suffix)))
    assert got.shape == (4, 4, 3) and np.abs(got.astype(int) - want).max() <= 1, got[0, 0]


def test_a_palette_image_with_transparency_goes_on_white(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    got = np.asarray(load_image(saved(tmp_path, image, "p.png", transparency=1)))
    assert got[0, 0].tolist() == [255, 255, 255]


def png_claiming(tmp_path: Path, width: int, height: int) -> Path:
    """A tiny 1x1 PNG whose header claims width x height (its CRC fixed): a decompression bomb's shape."""
    raw = bytearray((saved(tmp_path, Image.new("L", (1, 1)), "seed.png")).read_bytes())
    ihdr = raw[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path = tmp_path / f"claims_{width}x{height}.png"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("width, height", [(9000, 9000), (100_000, 100_000)])
def test_huge_claimed_sizes_are_refused_before_decoding(tmp_path, width, height):
    path = png_claiming(tmp_path, width, height)
    with pytest.raises(ImageError, match=str(path.name)):
        load_image(path)


def test_a_long_thin_strip_is_refused_before_resizing(tmp_path):
    path = saved(tmp_path, Image.new("L", (20000, 1), 9), "strip.png")
    assert path.stat().st_size < 1000 and 20000 < MAX_PIXELS
    with pytest.raises(ImageError, match="strip.png: 20000 × 1 is too long and thin"):
        prepare(path, 224)
    assert prepare(saved(tmp_path, Image.new("L", (600, 20), 9), "wide.png"), 224).shape == (3, 224, 224)


@pytest.mark.parametrize("cut", [0, 10, 100, 400])
def test_truncated_files_are_image_errors(tmp_path, cut):
    source = saved(tmp_path, Image.new("RGB", (64, 64), (1, 2, 3)), "full.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(source.read_bytes()[:cut])
    with pytest.raises(ImageError, match="broken.jpg: not an image that can be read"):
        load_image(broken)
