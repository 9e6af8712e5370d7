"""Images to edit and masks to inpaint with: reading a user's picture the way the model sees digits,
and the mask presets the benchmarks and the CLI use.

The editing itself is sampling that conditions on an image: `Diffusion.inpaint` (RePaint) and
`Diffusion.edit` (SDEdit) over samplers.repaint / samplers.sdedit.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageChops, ImageStat

from .data import prepare
from .images import load_sample_set, npz_array, open_image

MASK_PRESETS = ("left", "right", "top", "bottom", "center", "random")


def mask_preset(name: str, num_images: int = 1, seed: int = 0) -> np.ndarray:
    """Masks of known pixels (1 = known, 0 = to fill), (N, 28, 28) float32, named by the region
    they hide: a half (left, right, top, bottom), the central 14x14 square, or half the pixels at
    random (each image its own draw from (seed, image index))."""
    if name not in MASK_PRESETS:
        raise ValueError(f"unknown mask preset {name!r}; choose from {', '.join(MASK_PRESETS)}")
    m = np.ones((num_images, 28, 28), dtype=np.float32)
    hide = {"left": (slice(None), slice(0, 14)), "right": (slice(None), slice(14, 28)),
            "top": (slice(0, 14), slice(None)), "bottom": (slice(14, 28), slice(None)),
            "center": (slice(7, 21), slice(7, 21))}
    if name in hide:
        m[(slice(None), *hide[name])] = 0.0
        return m
    for i in range(num_images):
        m[i] = np.random.default_rng([seed, i]).random((28, 28)) >= 0.5
    return m


def check_mask(mask, num_images: int) -> np.ndarray:
    """A mask of known pixels for `num_images` images: (28, 28) for all of them, or (N, 28, 28);
    values in [0, 1]; with something known and something to fill in every image."""
    m = np.asarray(mask, dtype=np.float32)
    if m.shape == (28, 28):
        m = np.broadcast_to(m, (num_images, 28, 28))
    if m.shape != (num_images, 28, 28):
        raise ValueError(f"the mask has shape {m.shape}; expected (28, 28) or ({num_images}, 28, 28), one per image")
    if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError("mask values must be in [0, 1] (1 = known pixel, 0 = to fill in)")
    known = m.reshape(num_images, -1).sum(1)
    if (known == 0).any():
        raise ValueError("the mask keeps no pixel of an image: nothing to complete from (that is plain sampling)")
    if (known == 28 * 28).any():
        raise ValueError("the mask keeps every pixel of an image: nothing to inpaint")
    return np.array(m, order="C")  # a copy of its own: a broadcast (28, 28) mask is a read-only view


def load_picture(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """A user's image file as the model sees digits (picture_to_digit), after open_image's checks."""
    with open_image(path) as im:
        return picture_to_digit(im, str(path))


MAX_ASPECT = 50  # a picture longer than this to one side holds no digit (20000x1 would be one row of 28)


def _placement(w: int, h: int, name: str) -> tuple[int, int, int, int]:
    """Where a w x h picture lands in 28x28, for images and masks alike: its size there, aspect
    kept and the long side 28, and its offset (centred). Refuses an empty or absurdly thin one."""
    if w < 1 or h < 1:
        raise ValueError(f"{name}: the image is empty ({w}x{h} pixels)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ValueError(f"{name}: {w}x{h} pixels is thinner than {MAX_ASPECT}:1, no digit picture; crop it "
                         "to the digit")
    side = max(w, h)
    nw, nh = max(1, round(28 * w / side)), max(1, round(28 * h / side))
    return nw, nh, (28 - nw) // 2, (28 - nh) // 2


def _letterbox(g: Image.Image, name: str, invert: bool = False) -> np.ndarray:
    """A grayscale (L) picture as uint8 (28, 28): resized first (LANCZOS, aspect kept), then
    inverted if asked, then centred on a 0 ground. The work is bounded by the input and the
    output, never by the padded square (a 20000x1 picture padded first is 400 M pixels)."""
    nw, nh, x0, y0 = _placement(*g.size, name)
    if g.size != (nw, nh):
        g = g.resize((nw, nh), Image.LANCZOS)
    a = np.asarray(g, dtype=np.uint8)
    out = np.zeros((28, 28), dtype=np.uint8)
    out[y0:y0 + nh, x0:x0 + nw] = 255 - a if invert else a
    return out


def _has_alpha(im: Image.Image) -> bool:
    if hasattr(im, "has_transparency_data"):  # Pillow >= 10.1
        return im.has_transparency_data
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _grayscale(im: Image.Image, name: str, ground: Optional[int] = None) -> tuple[Image.Image, list[str]]:
    """Any picture as 8-bit grayscale (L), and a line for each conversion that is not plain.

    16-bit and 32-bit integer pictures are scaled from their range (0..65535; a 32-bit one holding
    only 0..255 is kept), float ones from [0, 1] or [0, 255] (other ranges are refused: nothing
    says what is white). Transparent pixels are laid on `ground`, or, when it is None, on the
    ground the opaque pixels stand out from: black behind light strokes, white paper behind dark
    ones (a palette PNG whose transparent index is the background is a digit, not a blank)."""
    notes = []
    try:
        if im.mode == "F" or im.mode.startswith("I"):
            f = im.convert("F")
            if im.mode == "F" and not np.isfinite(np.asarray(f)).all():
                raise ValueError(f"{name}: the float image holds NaN or infinite values")
            lo, hi = f.getextrema()
            if im.mode.startswith("I;16"):
                top = 65535
            elif im.mode == "I":
                top = 255 if lo >= 0 and hi <= 255 else 65535
            else:
                top = 1 if lo >= 0 and hi <= 1 else 255
            if lo < 0 or hi > top:
                expected = "0 to 1 or 0 to 255" if im.mode == "F" else f"0 to {top}"
                raise ValueError(f"{name}: {im.mode} pixel values from {lo:g} to {hi:g}; expected {expected}")
            if top != 255:
                notes.append(f"{name}: {im.mode} values in [0, {top}] scaled to [0, 255]")
            return f.point(lambda v: v * (255 / top) + 0.5).convert("L"), notes
        if not _has_alpha(im):
            return im.convert("L"), notes
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] == 255:  # every pixel opaque
            return rgba.convert("L"), notes
        if ground is None:
            weight = ImageStat.Stat(alpha).sum[0]
            lum = ImageStat.Stat(ImageChops.multiply(rgba.convert("L"), alpha)).sum[0] * 255 / max(weight, 1)
            ground = 0 if weight > 0 and lum > 127 else 255
            behind = "black behind light" if ground == 0 else "white behind dark"
            notes.append(f"{name}: transparent pixels taken as the ground ({behind} strokes)")
        back = Image.new("RGBA", rgba.size, (ground, ground, ground, 255))
        return Image.alpha_composite(back, rgba).convert("L"), notes
    except ValueError as e:
        if str(e).startswith(name):
            raise
        raise ValueError(f"{name}: cannot read a {im.mode} image as grayscale ({e})") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read a {im.mode} image as grayscale ({e})") from None


def picture_to_digit(im: Image.Image, name: str = "the image") -> tuple[np.ndarray, list[str]]:
    """A picture as the model sees digits: uint8 (1, 28, 28), light strokes on a dark ground.

    Any size and mode (_grayscale: transparent pixels are the ground, 16-bit and float values
    scaled from their range): resized to fit 28x28 with its aspect kept and centred on the dark
    ground (letterboxed, the geometry load_mask gives a mask too); inverted when it is dark on
    light (the border is brighter than mid-grey), as drawings on paper are. Memory is bounded by
    the input and the 28x28 output; a picture thinner than 50:1 is refused. Returns the image and
    a line for each conversion made. Every refusal is a one-line ValueError naming `name`."""
    notes = []
    w, h = im.size
    _placement(w, h, name)  # refused before any conversion
    if im.mode != "L" or im.size != (28, 28):
        notes.append(f"{name}: {w}x{h} {im.mode} converted to 28x28 grayscale")
    g, more = _grayscale(im, name)
    notes += more
    edges = [g.crop(box) for box in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h))]
    border = np.concatenate([np.asarray(e, dtype=np.float64).ravel() for e in edges])
    invert = bool(border.mean() > 127)
    if invert:
        notes.append(f"{name}: inverted (dark strokes on a light ground; MNIST is light on dark)")
    return _letterbox(g, name, invert=invert)[None], notes


def load_inputs(image: Optional[str] = None, from_test: Optional[int] = None, dataset: str = "mnist",
                data_dir: Optional[str] = None) -> tuple[np.ndarray, Optional[np.ndarray], list[str]]:
    """The images an edit starts from: a PNG (or any picture Pillow reads), an npz of images (our
    layout or another tool's, with their labels), or the first N test images of `dataset`.
    Returns (uint8 (N, 28, 28), their labels or None, notes)."""
    if (image is None) == (from_test is None):
        raise ValueError("give exactly one of an image file and --from-test N")
    if from_test is not None:
        test = prepare(dataset, data_dir=data_dir, log=lambda _m: None)["test"]
        if not 1 <= from_test <= len(test.images):
            raise ValueError(f"--from-test {from_test}: the {dataset} test split has {len(test.images)} images")
        return test.images[:from_test], test.labels[:from_test].astype(np.int64), []
    if Path(image).suffix.lower() == ".npz" or Path(image).is_dir():
        images, labels = load_sample_set(image)
        return images, labels, []
    picture, notes = load_picture(image)
    return picture, None, notes


def load_mask(path: str | os.PathLike, num_images: int) -> np.ndarray:
    """A mask file as known pixels: a picture where white marks what to fill in and black what to
    keep (as inpainting tools paint it; transparent pixels are kept), brought to 28x28 by the very
    geometry picture_to_digit gives an image (aspect kept, centred; the margin is kept), so a mask
    painted over a picture of the same size hides the same region; or an npz whose `mask` holds
    1 = known."""
    if Path(path).suffix.lower() == ".npz":
        return check_mask(npz_array(path, "mask"), num_images)
    name = str(path)
    with open_image(path) as im:
        _placement(*im.size, name)
        g, _ = _grayscale(im, name, ground=0)
    return check_mask((_letterbox(g, name) < 128).astype(np.float32), num_images)
