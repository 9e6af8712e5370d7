"""The browser demo (`mnist-diffusion demo`): draw digits on demand and watch them denoise, edit a
sketch, and see the forward process live. Gradio, an optional extra (`pip install -e .[demo]`).

Every handler checks all of its own inputs as they came over HTTP (Gradio's preprocessing is off
but for decoding a drawing): types, NaN and infinity, LIMITS (the page's sliders are a convenience,
not a guard). A request outside them, or with too few or too many values, gets a one-line message
saying what was wrong, in the page and in the API's answer, no traceback in the server's log, and
the server goes on serving. All the events share one queue, one request running at a time (the
model uses every core) and at most MAX_QUEUE waiting. The page loads nothing from the internet
(system fonts, no analytics). Gradio's files go to a temporary folder kept within CACHE (oldest
deleted first) and removed when the server closes or the process exits (Ctrl-C, SIGTERM); what
it keeps in memory of past requests and sessions is bounded too (GRADIO_MEMORY), so the server's
memory levels off however many API calls come (experiments/demo_soak.py measures it); the server
binds to 127.0.0.1 unless told otherwise.

A distilled student (diff.distilled: a draw in one or two network evaluations, its teacher's
guidance built in) gets an instant Generate tab: it draws when the page loads and again at every
change of the digit, steps, seed or number of images, the last change only while one runs; its
guidance and sampler are fixed, its steps 1 or 2. What it cannot do (guidance, unlabelled
draws, inpainting) is refused in one line; SDEdit is its one-step draw from the noised digit.

Not here: sampling and editing themselves (diffusion.py); the command line (cli.py).
"""
from __future__ import annotations

import atexit
import html
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .data import CLASS_NAMES, prepare, to_model_range, to_uint8
from .editing import MASK_PRESETS, check_mask, mask_preset, picture_to_digit
from .images import grid
from .schedule import q_sample

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
FRAMES = 24  # most intermediate frames streamed per generation
SCALE = 4  # pixels per image pixel in the page


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


def _took(seconds: float) -> str:
    """A distilled student's time: milliseconds under a second (its draws take a few)."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


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
    names = class_names(diff)
    if diff.distilled and names:
        return ["one of each", *names]
    return [DRAWN, "one of each", *names] if diff.clustered else (["one of each"] + names if names else []) + ["none"]


def check(req: Request, diff) -> tuple[Optional[object], int]:
    """The labels and number of images of a generate request, or DemoError naming the limit. A
    distilled student takes DDIM, 1 or 2 steps, no guidance (its teacher's is built in) and labels."""
    names, student = class_names(diff), diff.distilled
    _choice(req.label, dict.fromkeys(label_choices(diff) + (["none"] if diff.clustered or student else [])), "digit")
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
                        f"{diff.config.distill.guidance:g} built in and takes none of its own: send 0")
    if student and req.label == "none" and names:
        raise DemoError("this distilled student draws the classes it is asked for, not unlabelled images: pick one, "
                        "or 'one of each'")
    n = req.num_images = _whole(req.num_images, 1, LIMITS["images"], "the number of images (at most 16 images)")
    req.seed = _whole(req.seed, 0, 2**31 - 1, "seed")
    if req.label == "none" and diff.clustered:  # its unlabelled draw is its clusters, drawn by size
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
    if not diff.num_classes:
        return []
    if diff.clustered:
        return [f"cluster {i}" for i in range(diff.num_classes)]
    if diff.config.train.classes:
        return list(diff.config.train.classes)
    return list(CLASS_NAMES.get(diff.dataset, [str(i) for i in range(diff.num_classes)]))


def show(images_u8: np.ndarray, nrow: Optional[int] = None) -> np.ndarray:
    """A grid of uint8 images, enlarged for the page."""
    g = grid(np.asarray(images_u8, dtype=np.uint8), nrow=nrow, pad=1)
    return g.repeat(SCALE, 0).repeat(SCALE, 1)


class _Cancelled(Exception):
    pass


def generate_frames(diff, req: Request):
    """Yield (x_t grid, predicted x0 grid, final grid or None, status) while sampling runs: the
    sampler works in a thread and posts every few steps; it is the library call the status line
    shows (same seed, same images). A distilled student's draw is one yield, its last step's x_t and
    x0 with the images (Gradio writes each image to a file named by its content: a frame sent again
    with the images would be rewritten while the page may still be reading it). When the page goes away (the generator is closed), the
    sampler stops at its next step, so the queue's next request does not share the CPU with it."""
    labels, n = check(req, diff)
    steps = None if req.sampler == "ddpm" and req.steps >= diff.timesteps else req.steps
    drawn = diff.plan(labelled=labels is not None, sampler=req.sampler, steps=steps, guidance=req.guidance)
    total = len(drawn.timesteps)
    every = max(1, total // FRAMES)
    posts: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    result: dict = {}
    nrow = min(n, 8)

    def on_step(start, i, t, x, x0):
        if stop.is_set():
            raise _Cancelled
        if i % every == 0 or i == total - 1:
            try:
                posts.put_nowait((i, t, to_uint8(x), to_uint8(x0)))
            except queue.Full:  # the page is behind: drop a frame rather than slow the sampler
                pass

    def run():
        try:
            result["images"] = diff.sample(n, label=labels, seed=req.seed, callback=on_step,
                                           **{k: getattr(drawn, k) for k in ("sampler", "steps", "guidance")})
        except _Cancelled:
            pass
        except Exception as e:  # noqa: BLE001  (shown in the page)
            result["error"] = e
        finally:
            while True:  # make room for the end mark whatever the reader did
                try:
                    posts.put_nowait(None)
                    break
                except queue.Full:
                    try:
                        posts.get_nowait()
                    except queue.Empty:
                        pass

    t0 = time.time()
    threading.Thread(target=run, daemon=True).start()
    last = (None, None)
    try:
        while (item := posts.get()) is not None:
            i, t, x, x0 = item
            last = show(x, nrow), show(x0, nrow)
            if not diff.distilled:  # a student's one or two steps: its last frame comes with the images
                yield *last, None, f"step {i + 1} of {total}: t = {t}"
    finally:
        stop.set()
    if "error" in result:
        e = result["error"]
        raise DemoError(first_line(e))
    what = ("label=" + (f"[{', '.join(map(str, labels.tolist()))}]" if labels is not None else "None"))
    if diff.distilled:  # one network evaluation per step (the teacher's guidance built in), its own sampler
        yield (*last, show(result["images"], nrow), f"done: {n} image(s) in {_took(time.time() - t0)}, "
               f"{total} network evaluation{'s' if total > 1 else ''} (a distilled student, its teacher's guidance "
               f"W = {diff.config.distill.guidance:g} built in). The same images: `md.load(...).sample({n}, {what}, "
               f"steps={total}, seed={req.seed})`")
        return
    yield (*last, show(result["images"], nrow),
           f"done: {n} image(s) in {time.time() - t0:.1f} s. The same images: `md.load(...).sample({n}, {what}, "
           f"guidance={req.guidance:g}, sampler=\"{req.sampler}\", steps={total}, seed={req.seed})`")


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


def edit(diff, source: str, canvas, test_index, target: str, strength: float, mode: str, preset: str,
         mask_canvas, seed) -> tuple[np.ndarray, str]:
    """SDEdit or inpainting of the drawn (or chosen test) digit; returns (before | after, status).
    Every argument is checked before any work; one the edit does not use may be None (a cleared
    field), any other value must be valid. `canvas` and `mask_canvas`: decoded Sketchpad values.
    A distilled student does SDEdit only (its own one-step draw from the noised digit, its guidance
    built in) and towards a class if it has classes."""
    source = _choice(source, EDIT_SOURCES, "start from")
    mode = _choice(mode, EDIT_MODES, "edit")
    seed = _whole(seed, 0, 2**31 - 1, "seed")
    names = class_names(diff)
    target = _choice(target, names + ["none"], "towards class")
    test = _test_images(diff.dataset)
    if source == "test digit" or test_index is not None:
        test_index = _whole(test_index, 0, len(test) - 1, "test digit #")
    if mode == "SDEdit" or strength is not None:
        strength = _number(strength, 0.0, 1.0, "SDEdit strength")
    if mode == "inpaint" or preset is not None:
        preset = _choice(preset, EDIT_MASKS, "inpaint: region to fill")
    if diff.distilled:
        _student_edit_refusals(diff, mode, target)
    digit = digit_from_canvas(canvas) if source == "canvas" else test[test_index][None]
    label = names.index(target) if target != "none" else None
    guidance = 2.0 if label is not None else 0.0
    t0 = time.time()
    if mode == "SDEdit":
        if strength == 0:
            raise DemoError("SDEdit strength 0 changes nothing: give a value in (0, 1]")
        if diff.distilled:  # its own draw (DDIM, one step on its grid cut at the strength), guidance built in
            out = diff.edit(digit, strength, label=label, seed=seed)
        else:
            out = diff.edit(digit, strength, label=label, guidance=guidance, sampler="ddim",
                            steps=min(50, diff.timesteps), seed=seed)
        what = f"SDEdit at strength {float(strength):g}" + (" (one network evaluation)" if diff.distilled else "")
    else:
        if preset == "painted":
            painted = digit_from_canvas(mask_canvas)[0] > 127  # strokes mark what to fill in
            mask = check_mask((~painted).astype(np.float32), 1)
        else:
            mask = mask_preset(preset, 1, seed=seed)
        out = diff.inpaint(digit, mask, label=label, guidance=guidance, sampler="ddpm",
                           steps=min(100, diff.timesteps), resample=2, jump_length=5, seed=seed)
        what = f"inpainting ({preset})"
    took = _took(time.time() - t0) if diff.distilled else f"{time.time() - t0:.1f} s"
    return show(np.concatenate([digit, out])), f"{what}{f' towards {target}' if label is not None else ''}: {took}"


def _student_edit_refusals(diff, mode: str, target: str) -> None:
    """What a distilled student cannot edit, each a DemoError: inpainting, and an unlabelled edit of
    a model with classes."""
    if mode == "inpaint":
        raise DemoError("inpaint: a distilled student draws in one or two steps, and inpainting resamples at every "
                        f"one of many: inpaint with its teacher ({diff.config.distill.teacher})")
    if target == "none" and class_names(diff):
        raise DemoError("towards class: this distilled student draws the classes it is asked for, not unlabelled "
                        "images: pick one")


def _files(value):
    """The file entries ({"path": ...} dicts) anywhere in a component's value as it came."""
    if isinstance(value, dict):
        if "path" in value:
            yield value
        else:
            for v in value.values():
                yield from _files(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _files(v)


class TempFolder:
    """The demo's temporary folder: Gradio's files (GRADIO_TEMP_DIR: uploads, each image sent to a
    page, in a folder per content hash) and the schedule figure. `sweep` keeps it within CACHE;
    `remove` deletes it (the server's close, the interpreter's exit)."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="mnist-diffusion-demo-"))
        self.kept: set[str] = set()  # never swept: the page's own files (set by `keep_all`)
        self._lock = threading.Lock()

    def keep_all(self) -> None:
        """Every file there now is the page's own (the figure, the components' defaults)."""
        self.kept |= {str(f) for f in self.path.rglob("*") if f.is_file()}

    def sweep(self, keep=frozenset(), now: Optional[float] = None) -> list[str]:
        """Delete the files older than CACHE["age_s"], then the oldest until at most CACHE["files"]
        files of CACHE["bytes"] are left (the kept ones not counted), and the folders left empty;
        returns the files deleted. One sweep at a time; a file that goes meanwhile is skipped."""
        if not self._lock.acquire(blocking=False):
            return []
        try:
            now = time.time() if now is None else now
            found = []
            for folder, _, names in os.walk(self.path):
                for name in names:
                    f = os.path.join(folder, name)
                    if f in self.kept or f in keep:
                        continue
                    try:
                        st = os.lstat(f)
                    except OSError:
                        continue
                    found.append((st.st_mtime, st.st_size, f))
            found.sort()  # oldest first
            count, size, gone = len(found), sum(f[1] for f in found), []
            for mtime, nbytes, f in found:
                if now - mtime <= CACHE["age_s"] and count <= CACHE["files"] and size <= CACHE["bytes"]:
                    break
                try:
                    os.unlink(f)
                    if os.path.dirname(f) != str(self.path):
                        os.rmdir(os.path.dirname(f))  # its hash's folder, if that is empty now
                except OSError:
                    pass
                gone.append(f)
                count, size = count - 1, size - nbytes
            for folder, _, _ in os.walk(self.path, topdown=False):  # emptied by Gradio's own delete_cache
                if folder != str(self.path):
                    try:
                        if now - os.lstat(folder).st_mtime > 10:  # not one Gradio is about to write in
                            os.rmdir(folder)  # only if empty
                    except OSError:
                        pass
            return gone
        finally:
            self._lock.release()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


_TEST: dict[str, np.ndarray] = {}


def _test_images(dataset: str) -> np.ndarray:
    """The first 1,000 test images of the model's dataset (for picking a digit), or a few noise-free
    blanks when the data is not installed."""
    if dataset not in _TEST:
        try:
            _TEST[dataset] = prepare(dataset, download=False)["test"].images[:1000]
        except Exception:  # noqa: BLE001  (the demo works without the datasets installed)
            _TEST[dataset] = np.zeros((1, 28, 28), np.uint8)
    return _TEST[dataset]


def explain(diff, test_index, t) -> tuple[np.ndarray, np.ndarray, str]:
    """x_t of a test digit at timestep t with the coefficients of q(x_t | x_0), and the forward
    process of that digit at eight timesteps."""
    import torch

    test = _test_images(diff.dataset)
    test_index = _whole(test_index, 0, len(test) - 1, "test digit #")
    s, t = diff.schedule, _whole(t, 0, diff.timesteps - 1, "timestep t")
    x0 = to_model_range(test[test_index][None])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(test_index))
    ts = [int(v) for v in np.linspace(0, diff.timesteps - 1, 8)]
    row = torch.cat([q_sample(s, x0, torch.tensor([u]), eps) for u in ts])
    xt = q_sample(s, x0, torch.tensor([t]), eps)
    text = (f"**t = {t}**: x_t = {s.sqrt_alpha_bar[t]:.4f} x_0 + {s.sqrt_one_minus_alpha_bar[t]:.4f} eps; "
            f"beta_t = {s.betas[t]:.2e}, alpha_bar_t = {s.alpha_bar[t]:.4f}, SNR = {s.snr[t]:.3g} "
            f"(log10 {np.log10(float(s.snr[t])):.2f}). The strip: t = {', '.join(map(str, ts))}.")
    return show(to_uint8(xt)), show(to_uint8(row), nrow=8), text


def _refuse(message: str):
    """A refusal: one line in the page (Gradio renders it as HTML: escaped) and the API's answer,
    no traceback in the server's log."""
    import gradio as gr

    return gr.Error(html.escape(message, quote=False), print_exception=False)


def _unexpected(e: Exception):
    """A failure no check foresaw (a bug): still a message in the page, and its traceback logged."""
    import gradio as gr

    return gr.Error(html.escape(f"unexpected error: {type(e).__name__}: {first_line(e)} (the server's "
                                "log has the traceback)", quote=False))


def _guard(fn, before=None):
    """`fn` as an event's handler: `before()` first, if given; every expected failure is a message in
    the page, and the server goes on serving."""
    def wrapped(*args):
        try:
            if before is not None:
                before()
            return fn(*args)
        except (DemoError, ValueError, TypeError) as e:
            raise _refuse(first_line(e)) from None
        except Exception as e:  # shown in the page, logged
            raise _unexpected(e) from e
    return wrapped


def _streamer(diff, before=None, *, quiet: bool = False):
    """The Generate button's handler: `generate_frames` of the page's values, failures as `_guard`'s.
    `quiet` (the instant events, fired as a control moves): a refusal is the status line and the
    images stay, no popup (a seed being retyped is cleared for a moment)."""
    import gradio as gr

    def stream(label, guidance, sampler, steps, seed, num_images):
        try:
            if before is not None:
                before()
            yield from generate_frames(diff, Request(label, guidance, sampler, steps, seed, num_images))
        except (DemoError, ValueError, TypeError) as e:
            if quiet:
                yield gr.skip(), gr.skip(), gr.skip(), html.escape(first_line(e), quote=False)
                return
            raise _refuse(first_line(e)) from None
        except Exception as e:  # shown in the page, logged
            raise _unexpected(e) from e
    return stream


def _label_of(block) -> str:
    return str(getattr(block, "label", None) or getattr(block, "elem_id", None) or block.get_block_name())


def _drawing(component, value):
    """A Sketchpad's value as it came (its files uploaded to this server, Gradio checked) decoded as
    Gradio's own preprocessing does (the editor's layers flattened, numpy); a file that is not a
    picture, or one too large to decode, is a DemoError naming the field."""
    if value is None:
        return None
    try:
        return component.preprocess(component.data_model.model_validate(value))
    except Exception as e:  # noqa: BLE001  (Pillow's errors are many: all of them mean "not readable")
        detail = first_line(e)
        for f in (value.get("background"), value.get("composite"), *(value.get("layers") or [])):
            if isinstance(f, dict) and isinstance(f.get("path"), str):  # the server's paths: the name only
                detail = detail.replace(f["path"], Path(f["path"]).name)
        raise DemoError(f"{_label_of(component)}: cannot be read as a picture ({detail})") from None


def _blocks_class():
    """The demo's gr.Blocks subclass, made when the demo is built (Gradio is imported only then)."""
    import gradio as gr
    import pydantic

    class Blocks(gr.Blocks):
        """gr.Blocks whose own refusals of a request, before any handler sees it (too few or too
        many values, a value that is not a component's data, a file that was not uploaded here),
        are one-line messages naming the field, not tracebacks; and whose close runs `on_close`."""

        def __init__(self, *args, **kwargs):
            self.on_close: list = []
            super().__init__(*args, **kwargs)

        def close(self, verbose: bool = True) -> None:
            try:
                super().close(verbose)
            finally:
                while self.on_close:
                    self.on_close.pop()()

        def validate_inputs(self, block_fn, inputs):
            want = block_fn.inputs
            if len(inputs) != len(want):  # Gradio would pass on extra values silently
                public = getattr(block_fn, "api_visibility", "public") == "public"  # api_name=False: "false"
                name = block_fn.api_name if public and isinstance(block_fn.api_name, str) else "this event"
                raise _refuse(f"{name} takes {len(want)} values ({', '.join(map(_label_of, want))}), "
                              f"got {len(inputs)}")

        async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
            if not isinstance(inputs, list):
                raise _refuse(f"the request's data must be a list of values, got {_show(inputs)}")
            self.validate_inputs(block_fn, inputs)
            for block, value in zip(block_fn.inputs, inputs):
                model = getattr(block, "data_model", None)
                if model is None or value is None:
                    continue
                try:
                    model.model_validate(value, context={"validate_meta": True})
                except pydantic.ValidationError as e:
                    err = e.errors()[0]
                    where = ".".join(map(str, err.get("loc", ())))
                    raise _refuse(f"{_label_of(block)}: {_show(value)} is not a drawing "
                                  f"({where + ': ' if where else ''}{err.get('msg', '')})") from None
                for f in _files(value):
                    if not isinstance(f.get("path"), str) or "://" in f["path"]:
                        raise _refuse(f"{_label_of(block)}: its files must be uploaded to this server first, "
                                      f"got {_show(f.get('path'))}")
            try:
                return await super().preprocess_data(block_fn, inputs, state, explicit_call)
            except gr.Error as e:  # Gradio's own refusal (a file not uploaded here): its message, no traceback
                raise _refuse((str(e.message).strip().splitlines() or ["refused"])[0]) from None
            except Exception as e:  # noqa: BLE001  (a value Gradio could not read: the request's fault)
                raise _refuse(f"the request could not be read: {first_line(e)}") from None

    return Blocks


# one queue for every event: the model uses every core
_ONE_QUEUE = {"concurrency_id": "model", "concurrency_limit": 1}


def _sampling_controls(diff) -> tuple:
    """The Generate tab's guidance, sampler and steps fields: the model's own values; a distilled
    student's guidance at 0 and fixed (its teacher's is built in), DDIM only, 1 or 2 steps."""
    import gradio as gr

    own = diff.config.sampling  # the model's own: what its card recommends
    if diff.distilled:
        built_in = (f"built into this distilled student (its teacher's W = {diff.config.distill.guidance:g}): "
                    "nothing to set")
        return (gr.Slider(0, LIMITS["guidance"], value=0, step=0.25, label="guidance W", elem_id="guidance",
                          interactive=False, info=built_in),
                gr.Radio([STUDENT["sampler"]], value=STUDENT["sampler"], label="sampler", elem_id="sampler",
                         interactive=False, info="a distilled student is drawn by DDIM on its own timestep grid"),
                gr.Slider(1, min(STUDENT["steps"], diff.timesteps), value=1, step=1, label="steps", elem_id="steps",
                          info="network evaluations: 1, its one-step draw; 2, its two-step draw"))
    return (gr.Slider(0, LIMITS["guidance"], value=own.guidance if class_names(diff) else 0, step=0.25,
                      label="guidance W", elem_id="guidance"),
            gr.Radio(list(SAMPLERS), value=own.sampler, label="sampler", elem_id="sampler"),
            gr.Slider(1, LIMITS["steps"]["ddpm"], value=len(diff.plan(labelled=False).timesteps), step=1,
                      label="steps", elem_id="steps"))


def _generate_tab(app, diff, before=None) -> None:
    """The Generate tab: a digit, guidance, sampler, steps, seed and how many; x_t, the predicted x0
    and the samples streamed as the sampler runs (event "generate"). A distilled student's tab is
    instant too: the page's load and every change of the digit, steps, seed or images draws again
    (always the last change: a moving slider does not queue up draws)."""
    import gradio as gr

    names, classes = class_names(diff), label_choices(diff)
    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            with gr.Column(scale=1):
                label = gr.Dropdown(classes, value=classes[0], label="digit", elem_id="label")
                guidance, sampler, steps = _sampling_controls(diff)
                seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                num = gr.Slider(1, LIMITS["images"], value=10 if names else 8, step=1, label="images",
                                elem_id="num_images")
                go = gr.Button("Generate", variant="primary", elem_id="generate_button")
            with gr.Column(scale=2):
                status = gr.Markdown("Move a control: this distilled student draws again at once." if diff.distilled
                                     else "Pick a digit and press Generate.", elem_id="status")
                with gr.Row():
                    xt = gr.Image(label="x_t (what the sampler holds)", format="png", elem_id="xt")
                    x0 = gr.Image(label="predicted x0", format="png", elem_id="x0")
                final = gr.Image(label="samples", format="png", elem_id="final")
        inputs, outputs = [label, guidance, sampler, steps, seed, num], [xt, x0, final, status]
        go.click(_streamer(diff, before), inputs, outputs, api_name="generate", preprocess=False, **_ONE_QUEUE)
        if diff.distilled:
            gr.on([app.load, label.change, steps.change, seed.change, num.change], _streamer(diff, before, quiet=True),
                  inputs, outputs, api_name=False, preprocess=False, trigger_mode="always_last",
                  show_progress="minimal", **_ONE_QUEUE)


def _edit_tab(diff, before=None) -> None:
    """The Edit tab: SDEdit or inpainting of a drawn (or test) digit, before | after (event "edit").
    A distilled student's: SDEdit only (no inpainting fields), towards one of its classes."""
    import gradio as gr

    names, student = class_names(diff), diff.distilled
    targets = names if student and names else (names or []) + ["none"]
    with gr.Tab("Edit", id="edit"):
        with gr.Row():
            with gr.Column():
                source = gr.Radio(list(EDIT_SOURCES), value="canvas", label="start from", elem_id="source")
                canvas = gr.Sketchpad(label="draw a digit or a scribble", canvas_size=(280, 280),
                                      type="numpy", image_mode="L", elem_id="canvas",
                                      brush=gr.Brush(default_size=20, colors=["#000000"], color_mode="fixed"))
                index = gr.Number(0, precision=0, label="test digit #", elem_id="test_index")
            with gr.Column():
                mode = gr.Radio(["SDEdit"] if student else list(EDIT_MODES), value="SDEdit", label="edit",
                                elem_id="mode", info=f"a distilled student does not inpaint (its teacher does: "
                                                     f"{diff.config.distill.teacher})" if student else None)
                target = gr.Dropdown(targets, value=targets[7] if len(targets) > 7 else targets[-1],
                                     label="towards class", elem_id="target")
                strength = gr.Slider(0.05, 1.0, value=0.8, step=0.05, label="SDEdit strength", elem_id="strength")
                preset = gr.Dropdown(list(EDIT_MASKS), value="bottom", label="inpaint: region to fill",
                                     elem_id="preset", visible=not student)
                mask_canvas = gr.Sketchpad(label="inpaint: paint the region to fill (with 'painted')",
                                           canvas_size=(280, 280), type="numpy", image_mode="L",
                                           elem_id="mask_canvas", visible=not student)
                edit_seed = gr.Number(0, precision=0, label="seed", elem_id="edit_seed")
                edit_go = gr.Button("Edit", variant="primary", elem_id="edit_button")
            with gr.Column():
                edited = gr.Image(label="before | after", format="png", elem_id="edited")
                edit_status = gr.Markdown("", elem_id="edit_status")

        def edit_drawn(source, drawn, index, target, strength, mode, preset, mask, seed):
            return edit(diff, source, _drawing(canvas, drawn), index, target, strength, mode, preset,
                        _drawing(mask_canvas, mask), seed)

        edit_go.click(_guard(edit_drawn, before),
                      [source, canvas, index, target, strength, mode, preset, mask_canvas, edit_seed],
                      [edited, edit_status], api_name="edit", preprocess=False, **_ONE_QUEUE)


def _explain_tab(app, diff, schedule_figure: str | None = None, before=None) -> None:
    """The Explain tab: x_t of a test digit at timestep t and the forward process (event "explain",
    also run when either field changes and when the page loads), and the schedule's figure if given."""
    import gradio as gr

    with gr.Tab("Explain", id="explain"):
        with gr.Row():
            ex_index = gr.Number(0, precision=0, label="test digit #", elem_id="explain_index")
            ex_t = gr.Slider(0, diff.timesteps - 1, value=diff.timesteps // 4, step=1, label="timestep t",
                             elem_id="explain_t")
        with gr.Row():
            ex_xt = gr.Image(label="x_t", format="png", elem_id="explain_xt")
            ex_row = gr.Image(label="the forward process", format="png", elem_id="explain_row")
        ex_text = gr.Markdown(elem_id="explain_text")
        if schedule_figure:
            gr.Image(schedule_figure, label="the schedule", elem_id="schedule_figure")
        show_t = _guard(lambda i, t: explain(diff, i, t), before)
        ex_index.change(show_t, [ex_index, ex_t], [ex_xt, ex_row, ex_text], api_name="explain",
                        preprocess=False, **_ONE_QUEUE)
        ex_t.change(show_t, [ex_index, ex_t], [ex_xt, ex_row, ex_text], api_name=False, preprocess=False,
                    **_ONE_QUEUE)
        app.load(show_t, [ex_index, ex_t], [ex_xt, ex_row, ex_text], api_name=False, preprocess=False, **_ONE_QUEUE)


def _student_line(diff) -> str:
    """The header's word on a distilled student (empty for any other model)."""
    if not diff.distilled:
        return ""
    return (f" A distilled student of `{diff.config.distill.teacher}`: a draw in one network evaluation (two with "
            f"steps 2), its teacher's guidance W = {diff.config.distill.guidance:g} built in; the Generate tab "
            "draws again as you move its controls.")


def build(diff, *, schedule_figure: Optional[str] = None, before=None):
    """The Blocks app for a Diffusion: three tabs (Generate, Edit, Explain). All their events share
    one queue (_ONE_QUEUE: concurrency id "model", one at a time); `before()`, if given, runs at the
    start of each request (launch: the temporary folder's sweep). `app.on_close` (callables) run
    after the server's close."""
    import gradio as gr

    with _blocks_class()(title="mnist-diffusion", analytics_enabled=False,
                         delete_cache=(CACHE["every_s"], CACHE["age_s"])) as app:
        gr.Markdown(f"# mnist-diffusion\nA denoising diffusion model for {diff.dataset.replace('_', '-')} "
                    f"({diff.num_classes or 'no'} {'clusters' if diff.clustered else 'classes'}, T = "
                    f"{diff.timesteps}), running on this machine's "
                    f"{diff.device}. Source: `{diff.source}`." + _student_line(diff))
        _generate_tab(app, diff, before)
        _edit_tab(diff, before)
        _explain_tab(app, diff, schedule_figure, before)
    return app


def _forget_answered(app) -> None:
    """Drop what Gradio's queue keeps of each session once it has nothing left to answer there (it
    keeps a set of event ids per session, emptied as each is answered but never removed: a few
    hundred bytes for every API call, for ever): the sessions whose set is empty, or whose messages
    its LRU has already dropped (no stream can read them). Run on the server's event loop, where
    the queue changes that dict, so nothing reads or grows it meanwhile; from one of the server's
    worker threads (a handler), else nothing."""
    import anyio.from_thread

    queue = getattr(app, "_queue", None)
    ids = getattr(queue, "pending_event_ids_session", None)
    messages = getattr(queue, "pending_messages_per_session", None)
    if not isinstance(ids, dict) or messages is None:
        return

    def forget():
        for session in [s for s, pending in ids.items() if not pending or s not in messages]:
            del ids[session]

    try:
        anyio.from_thread.run_sync(forget)
    except RuntimeError:  # not called from a worker thread of the server's event loop
        pass


def _stop_on_sigterm() -> Optional[object]:
    """SIGTERM (a service manager, `kill`) exits as Ctrl-C does, through the interpreter's exit (so
    the temporary folder goes), with status 143; only in the main thread and where nothing else
    handles it. Returns the handler installed, or None."""
    def stop(signum, frame):
        print(f"mnist-diffusion demo: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None
    signal.signal(signal.SIGTERM, stop)
    return stop


def launch(diff, *, host: str = "127.0.0.1", port: int = 7860, log=print, block: bool = True):
    """Start the demo: files in a temporary folder (bounded, removed when the server closes or the
    process exits, SIGTERM included), no analytics, system fonts, one bounded queue."""
    folder = TempFolder()
    atexit.register(folder.remove)  # Gradio's files go nowhere else
    os.environ["GRADIO_TEMP_DIR"] = str(folder.path)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_ANALYTICS_MAX_EVENTS"] = str(GRADIO_MEMORY["events"])  # read by app.queue()
    import gradio as gr
    from PIL import Image

    from .visualize import plot_schedule
    # Gradio's preprocessing decodes a drawing (in the edit's handler): past 2 x MAX_IMAGE_PIXELS, PIL
    # refuses to decode at all, so a small file claiming 10,000 x 10,000 pixels never becomes an array
    Image.MAX_IMAGE_PIXELS = LIMITS["upload_pixels"] // 2
    figure = str(folder.path / "schedule.png")
    ts = sorted({int(v) for v in np.linspace(0, diff.timesteps - 1, 8)})
    plot_schedule(_test_images(diff.dataset)[0], figure, T=diff.timesteps, timesteps=ts)
    app = None

    def sweep():
        keep = set().union(*(getattr(b, "keep_in_cache", set()) for b in list(app.blocks.values())))
        gone = folder.sweep(keep)
        for files in list(app.temp_file_sets):  # Gradio forgets them too (its own sweep keeps what it did not delete)
            files.difference_update(gone)

    def before():  # at the start of each request, in its worker thread
        sweep()
        _forget_answered(app)

    app = build(diff, schedule_figure=figure, before=before)
    app.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"WARNING: the demo listens on {host}: anyone who can reach this machine can use it")
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts fetched
    stopped = threading.Event()

    def sweeping():  # an idle server's files age out too
        while not stopped.wait(CACHE["every_s"]):
            sweep()

    handler = _stop_on_sigterm()

    def closed():
        stopped.set()
        folder.remove()
        if handler is not None and signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    app.on_close.append(closed)
    try:
        out = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, theme=theme,
                         max_file_size=LIMITS["upload_bytes"], footer_links=[], ssr_mode=False,
                         state_session_capacity=GRADIO_MEMORY["sessions"])
        folder.keep_all()  # the figure and the components' defaults, copied in by now
        threading.Thread(target=sweeping, name="demo-temp-sweep", daemon=True).start()
        if block:
            app.block_thread()
    except BaseException:
        # a Ctrl-C or SIGTERM at any point after the server thread started, not only inside
        # block_thread: closed here, or its thread would keep the process alive
        app.close()
        closed()
        raise
    if block:
        app.close()  # block_thread returns after Gradio's own Ctrl-C handling
    return out
