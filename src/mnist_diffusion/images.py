"""Image IO with numpy + Pillow: grids, PNG folders, npz files and GIFs (no torchvision).

Images here are uint8 arrays (N, 28, 28) with 0 = background, as MNIST stores them.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .atomic import atomic_write_bytes



def grid(images: np.ndarray, nrow: Optional[int] = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile (N, H, W) uint8 images into one (rows*H', cols*W') array; nrow = images per row."""
    images = np.asarray(images, dtype=np.uint8)
    n, h, w = images.shape
    cols = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / cols))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), pad_value, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = images[i]
    return out


def save_png(array: np.ndarray, path: str | os.PathLike, scale: int = 1) -> Path:
    """Write a uint8 2-D array as a PNG (optionally upscaled with nearest neighbour)."""
    img = Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: Optional[int] = None, scale: int = 2) -> Path:
    return save_png(grid(images, nrow), path, scale=scale)


def save_npz(images: np.ndarray, path: str | os.PathLike, **extra) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.asarray(images, dtype=np.uint8), **extra)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, duration_ms: int = 80,
             final_hold_ms: int = 1500, scale: int = 2) -> Path:
    """Animated GIF from uint8 2-D frames; the last frame is held so the result can be seen."""
    imgs = []
    for f in frames:
        im = Image.fromarray(np.asarray(f, dtype=np.uint8), mode="L")
        if scale > 1:
            im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
        imgs.append(im)
    durations = [duration_ms] * (len(imgs) - 1) + [final_hold_ms]
    buf = io.BytesIO()
    # optimize=False: Pillow's frame-difference optimisation does not round-trip L frames exactly
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=durations, loop=0,
                 optimize=False)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def label_frame(array: np.ndarray, text: str, height: int = 18) -> np.ndarray:
    """A uint8 2-D image with a white caption strip above it (Pillow's default font, so GIFs can
    be labelled frame by frame without matplotlib)."""
    from PIL import ImageDraw, ImageFont

    array = np.asarray(array, dtype=np.uint8)
    img = Image.new("L", (array.shape[1], array.shape[0] + height), 255)
    img.paste(Image.fromarray(array, mode="L"), (0, height))
    try:
        font = ImageFont.load_default(size=max(8, height - 5))
    except TypeError:  # Pillow < 10.1: only the fixed-size bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text((4, height // 2), text, fill=0, font=font, anchor="lm")
    return np.asarray(img)


def load_images(path: str | os.PathLike) -> np.ndarray:
    """Read a set of 28x28 images from an .npz (uint8 `images`, (N,28,28) or (N,1,28,28)) or a
    folder of PNGs (sorted by name). Returns uint8 (N, 28, 28). Raises ValueError on bad input."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise ValueError(f"{path}: folder holds no .png files")
        out = []
        for p in files:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L"))
            if a.shape != (28, 28):
                raise ValueError(f"{p}: image is {a.shape[1]}x{a.shape[0]}, expected 28x28")
            out.append(a)
        return np.stack(out).astype(np.uint8)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: expected an .npz file or a folder of PNGs")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise ValueError(f"{path}: npz has no 'images' array (found {', '.join(z.files) or 'nothing'})")
            a = z["images"]
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable npz ({e})") from None
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise ValueError(f"{path}: images have shape {a.shape}, expected (N, 28, 28) or (N, 1, 28, 28)")
    if a.dtype != np.uint8:
        raise ValueError(f"{path}: images have dtype {a.dtype}, expected uint8 (0 = background)")
    return a
