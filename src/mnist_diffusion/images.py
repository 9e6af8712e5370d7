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


MAX_GRID_PIXELS = 1 << 28  # 256 M pixels: a 1.0 GB grid at scale 2


def check_grid(n: int, nrow: Optional[int] = None, pad: int = 2, scale: int = 2) -> None:
    """Refuse, before any sampling, a grid too large to allocate (--num-images 1000000 --nrow 1)."""
    cols = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / cols))
    h, w = (rows * (28 + pad) + pad) * scale, (cols * (28 + pad) + pad) * scale
    if h * w > MAX_GRID_PIXELS:
        raise ValueError(f"a grid of {n:,} images, {cols} per row, would be {w:,}x{h:,} pixels (more than "
                         f"{MAX_GRID_PIXELS:,}); choose another --nrow, or write the images with --npz")


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


MAX_IMAGE_PIXELS = 64 << 20  # an image file claiming more pixels is refused before it is decoded
MAX_NPZ_BYTES = 4 << 30  # an npz array claiming more is refused before it is allocated


def open_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS,
               size: Optional[tuple[int, int]] = None) -> Image.Image:
    """A decoded image file, checked before decoding: a regular file (a FIFO named x.png would hang
    the read), a format Pillow knows, and a size in its header no larger than `max_pixels` (a
    decompression bomb is refused, not decoded) and equal to `size` (width, height) when given.
    Every failure is a ValueError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: not a regular file")
    try:
        with Image.open(p) as im:  # reads the header only
            w, h = im.size
            if size is not None and (w, h) != tuple(size):
                raise ValueError(f"{p}: image is {w}x{h}, expected {size[0]}x{size[1]}")
            if w * h > max_pixels:
                raise ValueError(f"{p}: the image claims {w}x{h} pixels (more than {max_pixels:,}); refusing to "
                                 "decode it")
            im.load()  # a file that lies about its size or is cut short fails here, not later
            return im.copy()
    except Image.DecompressionBombError:  # Pillow's own limit, met before ours
        raise ValueError(f"{p}: the image claims more than {max_pixels:,} pixels; refusing to decode it") from None
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(p)):
            raise  # ours, already naming the file
        raise ValueError(f"{p}: not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def npz_array(path: str | os.PathLike, key: str, max_bytes: int = MAX_NPZ_BYTES) -> np.ndarray:
    """One array of an .npz, its header read and checked first: no pickles, and no more than
    `max_bytes` claimed (a header can claim billions of elements in a few bytes)."""
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: not a regular file")
    try:
        with zipfile.ZipFile(p) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            if key not in names:
                raise ValueError(f"{p}: npz has no {key!r} array (found {', '.join(names) or 'nothing'})")
            with z.open(key + ".npy") as f:
                shape, dtype = _npy_header(f)
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if dtype.hasobject or nbytes > max_bytes:
            raise ValueError(f"{p}: {key!r} claims {dtype} {tuple(shape)} ({nbytes / 1e9:.1f} GB); refusing to load it"
                             if not dtype.hasobject else f"{p}: {key!r} holds Python objects; refusing to unpickle")
        with np.load(p, allow_pickle=False) as z:
            return z[key]
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(p)):
            raise  # ours, already naming the file
        # a header that lies about the data (numpy: "cannot reshape array of size ..."), a torn file
        raise ValueError(f"{p}: not a readable npz ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def _npy_header(f):
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


VALUE_RANGES = {"unit": (0.0, 1.0), "signed": (-1.0, 1.0)}  # floats in [0, 1] or [-1, 1]


def load_sample_set(path: str | os.PathLike, value_range: Optional[str] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Another tool's samples, as uint8 (N, 28, 28) and the labels they were drawn for (or None).

    npz: ours (`images`, `labels`) or OpenAI's (`arr_0` as (N, H, W, C) uint8, labels in `arr_1`);
    (N, 28, 28), (N, 1, 28, 28) or (N, 28, 28, 1); uint8, or float with `value_range` "unit" ([0, 1])
    or "signed" ([-1, 1]) said explicitly (a float array is never guessed). A folder: every .png below it, nested
    folders included, in sorted path order. A wrong shape, dtype or range is a ValueError naming
    the file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".png")
        if not files:
            raise ValueError(f"{path}: folder holds no .png files")
        out = []
        for p in files:
            with open_image(p, size=(28, 28)) as im:
                out.append(np.asarray(im.convert("L")))
        return np.stack(out).astype(np.uint8), None
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not path.is_file():  # a FIFO named x.npz would block the zip reader forever
        raise ValueError(f"{path}: not a regular file")
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: expected an .npz file or a folder of PNGs")
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable npz ({e})") from None
    key, label_key = ("images", "labels") if "images" in names else ("arr_0", "arr_1")
    if key not in names:
        raise ValueError(f"{path}: npz has neither 'images' nor 'arr_0' (found {', '.join(sorted(names)) or 'nothing'})")
    a = npz_array(path, key)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise ValueError(f"{path}: {key} has shape {a.shape}, expected (N, 28, 28), (N, 1, 28, 28) or (N, 28, 28, 1)")
    images = _to_uint8(a, path, key, value_range)
    labels = None
    if label_key in names:
        labels = npz_array(path, label_key)
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
            raise ValueError(f"{path}: {label_key} must be {len(images)} integer labels, got {labels.dtype} "
                             f"{labels.shape}")
    return images, labels


def _to_uint8(a: np.ndarray, path: Path, key: str, value_range: Optional[str]) -> np.ndarray:
    if a.dtype == np.uint8:
        if value_range is not None:
            raise ValueError(f"{path}: {key} is uint8 already; --value-range is for float arrays")
        return a
    if a.dtype.kind != "f":
        raise ValueError(f"{path}: {key} has dtype {a.dtype}, expected uint8 (0 = background) or float with "
                         "--value-range")
    if value_range is None:
        raise ValueError(f"{path}: {key} is {a.dtype}: say its range with --value-range unit ([0, 1]) or signed ([-1, 1]) "
                         "(it is not guessed)")
    lo, hi = VALUE_RANGES[value_range]
    if not np.isfinite(a).all() or a.min() < lo - 1e-3 or a.max() > hi + 1e-3:
        raise ValueError(f"{path}: {key} holds values in [{a.min():.3g}, {a.max():.3g}], outside --value-range "
                         f"{value_range}")
    return np.round((np.clip(a, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)


def load_images(path: str | os.PathLike) -> np.ndarray:
    """Read a set of 28x28 images from an .npz (uint8 `images`, (N,28,28) or (N,1,28,28)) or a
    folder of PNGs (sorted by name). Returns uint8 (N, 28, 28). Raises ValueError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise ValueError(f"{path}: folder holds no .png files")
        out = []
        for p in files:
            with open_image(p, size=(28, 28)) as im:
                out.append(np.asarray(im.convert("L")))
        return np.stack(out).astype(np.uint8)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: expected an .npz file or a folder of PNGs")
    a = npz_array(path, "images")
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise ValueError(f"{path}: images have shape {a.shape}, expected (N, 28, 28) or (N, 1, 28, 28)")
    if a.dtype != np.uint8:
        raise ValueError(f"{path}: images have dtype {a.dtype}, expected uint8 (0 = background)")
    return a
