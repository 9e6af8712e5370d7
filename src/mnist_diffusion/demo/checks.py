"""What the demo accepts: its limits, and the checks of every request as it came over HTTP
(types, NaN and infinity, ranges, choices), each refusal a one-line DemoError naming the field.
Plain Python and numpy: no Gradio here, so every rule is unit-tested without a server.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..data import prepare
from ..editing import MASK_PRESETS, check_mask, mask_preset, picture_to_digit

LIMITS = {"images": 16, "guidance": 10.0, "steps": {"ddpm": 1000, "ddim": 200, "dpmpp": 100},
          "upload_pixels": 2048 * 2048, "upload_bytes": "4mb"}
SAMPLERS = ("dpmpp", "ddim", "ddpm")  # as the page lists them
# a distilled student (diff.distilled): DDIM on its own grid, its one-step map or its two-step draw
STUDENT = {"sampler": "ddim", "steps": 2}
MAX_QUEUE = 24
# Gradio's folder (uploads, every image sent to a page): before each request and every every_s
# seconds, its files past age_s and then the oldest past `files` or `bytes` are deleted
CACHE = {"files": 256, "bytes": 64 << 20, "age_s": 300, "every_s": 30}
# What Gradio remembers of past requests, each API call (a script, gradio_client) a new session:
# "sessions", a copy of the page's configuration (~100 kB) for each of the most recent (its default
# 10,000: ~1 GB; the demo keeps nothing per session, no gr.State, no updated components, so a
# session forgotten costs a fresh copy at its next request); "events", the monitoring page's record
# of each event (its default 10,000). Its per-session event ids are forgotten once answered
# (`_forget_answered`); its per-session message queues are its own LRU of 2,000.
GRADIO_MEMORY = {"sessions": 64, "events": 1000}
DRAWN = "drawn clusters"  # a model trained on clusters: each image's cluster drawn by the clusters' sizes


class DemoError(ValueError):
    """A request outside the demo's limits; shown in the page."""


@dataclass
class Request:
    label: str  # "one of each", "none" or a class name
    guidance: float
    sampler: str
    steps: int
    seed: int
    num_images: int


def first_line(e: Exception) -> str:
    """What the page shows of an error: its first line (its type when it has no message)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _show(value) -> str:
    """A value sent to the demo as a message quotes it: short, and 'nothing' for a cleared field."""
    if value is None:
        return "nothing"
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_number(value) -> bool:
    """A JSON number (NaN and infinity included): not a string, a list or a boolean."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _whole(value, lo: int, hi: int, what: str) -> int:
    """A whole number in [lo, hi] from a page field (None when the field was cleared), else DemoError."""
    if not (_is_number(value) and lo <= value <= hi and float(value).is_integer()):  # NaN fails the range
        raise DemoError(f"{what} must be a whole number from {lo} to {hi}, got {_show(value)}")
    return int(value)


def _number(value, lo: float, hi: float, what: str) -> float:
    if not (_is_number(value) and lo <= value <= hi):  # also NaN
        raise DemoError(f"{what} must be a number in [{lo:g}, {hi:g}], got {_show(value)}")
    return float(value)


def _choice(value, choices, what: str) -> str:
    """One of the page's choices (a string), else DemoError listing them."""
    choices = list(choices)
    if not (isinstance(value, str) and value in choices):
        listed = ", ".join(map(repr, choices[:12])) + (f", ... ({len(choices)} in all)" if len(choices) > 12 else "")
        raise DemoError(f"{what} must be one of {listed}, got {_show(value)}")
    return value


def label_choices(diff) -> list[str]:
    """What the Generate tab's digit field offers (and accepts: 'none' on a clustered model too; a
    student of labelled images draws none unlabelled)."""
    can = diff.capabilities
    names = list(can.class_names)
    if not can.draws_unlabelled:
        return ["one of each", *names]
    return [DRAWN, "one of each", *names] if can.clustered else (["one of each"] + names if names else []) + ["none"]


def check(req: Request, diff) -> tuple[Optional[object], int]:
    """The labels and number of images of a generate request, or DemoError naming the limit. A
    distilled student takes DDIM, 1 or 2 steps, no guidance (its teacher's is built in) and labels."""
    can = diff.capabilities
    names, student = list(can.class_names), can.distilled
    _choice(req.label, dict.fromkeys(label_choices(diff) + (["none"] if can.clustered or student else [])), "digit")
    if student:
        _choice(req.sampler, [STUDENT["sampler"]], "sampler of a distilled student")
        req.steps = _whole(req.steps, 1, min(STUDENT["steps"], diff.timesteps), "steps of a distilled student")
    else:
        _choice(req.sampler, SAMPLERS, "sampler")
        top = min(LIMITS["steps"][req.sampler], diff.timesteps)
        req.steps = _whole(req.steps, 1, top, f"steps for {req.sampler}")
    req.guidance = _number(req.guidance, 0.0, LIMITS["guidance"], "guidance")
    if student and req.guidance:
        raise DemoError(f"guidance: this distilled student has its teacher's guidance W = "
                        f"{can.built_in_guidance:g} built in and takes none of its own: send 0")
    if req.label == "none" and not can.draws_unlabelled:
        raise DemoError("this distilled student draws the classes it is asked for, not unlabelled images: pick one, "
                        "or 'one of each'")
    n = req.num_images = _whole(req.num_images, 1, LIMITS["images"], "the number of images (at most 16 images)")
    req.seed = _whole(req.seed, 0, 2**31 - 1, "seed")
    if req.label == "none" and can.clustered:  # its unlabelled draw is its clusters, drawn by size
        req.label = DRAWN
    if req.label == "none":
        if req.guidance:
            raise DemoError("guidance steers towards a class: pick one, or set guidance to 0")
        return None, n
    if req.label == DRAWN:  # one of the choices only for a model trained on clusters
        return diff.labels("clusters", n, req.seed).numpy(), n
    if req.label == "one of each":
        return np.arange(n) % diff.num_classes, n
    return np.full(n, names.index(req.label)), n


def class_names(diff) -> list[str]:
    """The model's class names, as its capabilities give them (the page and the CLI read the same)."""
    return list(diff.capabilities.class_names)


def digit_from_canvas(value, max_pixels: int = LIMITS["upload_pixels"]) -> np.ndarray:
    """A Sketchpad/upload value as the model sees digits: uint8 (1, 28, 28)."""
    from PIL import Image

    if value is None:
        raise DemoError("draw something first (or pick a test digit)")
    a = value.get("composite") if isinstance(value, dict) else value
    if a is None:
        raise DemoError("draw something first (or pick a test digit)")
    a = np.asarray(a)
    if a.ndim not in (2, 3) or a.size == 0 or a.shape[0] * a.shape[1] > max_pixels:
        raise DemoError(f"the image must be a picture of at most {max_pixels:,} pixels, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    img = Image.fromarray(a)
    digit, _ = picture_to_digit(img, "the drawing")
    if digit.max() < 16:
        raise DemoError("the canvas is empty: draw a digit or a scribble first")
    return digit


EDIT_SOURCES = ("canvas", "test digit")
EDIT_MODES = ("SDEdit", "inpaint")
EDIT_MASKS = (*MASK_PRESETS, "painted")  # the regions to fill in: a preset, or painted on the mask canvas


@dataclass
class Edit:
    """An edit request, checked: what `draws.edit` needs, nothing it has to check again."""
    mode: str  # "SDEdit" or "inpaint"
    digit: np.ndarray  # uint8 (1, 28, 28): the drawing or the test digit
    target: str  # a class name or "none"
    label: Optional[int]
    strength: Optional[float]  # SDEdit's, in (0, 1]
    preset: Optional[str]  # inpainting's region
    mask: Optional[np.ndarray]  # inpainting's known pixels (1 keep, 0 fill)
    seed: int


def check_edit(diff, source: str, canvas, test_index, target: str, strength, mode: str, preset, mask_canvas,
               seed) -> Edit:
    """Every argument of an edit checked before any work; one the edit does not use may be None (a
    cleared field), any other value must be valid. `canvas` and `mask_canvas`: decoded Sketchpad
    values. A distilled student does SDEdit only, towards a class if it has classes."""
    source = _choice(source, EDIT_SOURCES, "start from")
    mode = _choice(mode, EDIT_MODES, "edit")
    seed = _whole(seed, 0, 2**31 - 1, "seed")
    names = class_names(diff)
    target = _choice(target, names + ["none"], "towards class")
    test = test_images(diff.dataset)
    if source == "test digit" or test_index is not None:
        test_index = _whole(test_index, 0, len(test) - 1, "test digit #")
    if mode == "SDEdit" or strength is not None:
        strength = _number(strength, 0.0, 1.0, "SDEdit strength")
    if mode == "inpaint" or preset is not None:
        preset = _choice(preset, EDIT_MASKS, "inpaint: region to fill")
    _student_edit_refusals(diff, mode, target)
    digit = digit_from_canvas(canvas) if source == "canvas" else test[test_index][None]
    mask = None
    if mode == "SDEdit" and strength == 0:
        raise DemoError("SDEdit strength 0 changes nothing: give a value in (0, 1]")
    if mode == "inpaint" and preset == "painted":
        painted = digit_from_canvas(mask_canvas)[0] > 127  # strokes mark what to fill in
        mask = check_mask((~painted).astype(np.float32), 1)
    elif mode == "inpaint":
        mask = mask_preset(preset, 1, seed=seed)
    return Edit(mode, digit, target, names.index(target) if target != "none" else None, strength, preset, mask, seed)


def _student_edit_refusals(diff, mode: str, target: str) -> None:
    """What a distilled student cannot edit, each a DemoError: inpainting, and an unlabelled edit of
    a model with classes."""
    can = diff.capabilities
    if mode == "inpaint" and not can.inpaints:
        raise DemoError("inpaint: a distilled student draws in one or two steps, and inpainting resamples at every "
                        f"one of many: inpaint with its teacher ({can.teacher})")
    if target == "none" and not can.draws_unlabelled:
        raise DemoError("towards class: this distilled student draws the classes it is asked for, not unlabelled "
                        "images: pick one")


def check_explain(diff, test_index, t) -> tuple[int, int]:
    """The Explain tab's test digit # and timestep t."""
    test_index = _whole(test_index, 0, len(test_images(diff.dataset)) - 1, "test digit #")
    return test_index, _whole(t, 0, diff.timesteps - 1, "timestep t")


_TEST: dict[str, np.ndarray] = {}


def test_images(dataset: str) -> np.ndarray:
    """The first 1,000 test images of the model's dataset (for picking a digit), or a few noise-free
    blanks when the data is not installed."""
    if dataset not in _TEST:
        try:
            _TEST[dataset] = prepare(dataset, download=False)["test"].images[:1000]
        except Exception:  # noqa: BLE001  (the demo works without the datasets installed)
            _TEST[dataset] = np.zeros((1, 28, 28), np.uint8)
    return _TEST[dataset]
