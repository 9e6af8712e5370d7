"""The browser demo (`mnist-diffusion demo`): draw digits on demand and watch them denoise, edit a
sketch, and see the forward process live. Gradio, an optional extra (`pip install -e .[demo]`).

Every handler checks its own inputs against LIMITS (the page's sliders are a convenience, not a
guard): a request outside them gets a message in the page and the server goes on serving. Requests
queue with one running at a time (the model uses every core) and at most MAX_QUEUE waiting. The page
loads nothing from the internet (system fonts, no analytics), Gradio's files go to a temporary
folder, and the server binds to 127.0.0.1 unless told otherwise.

Not here: sampling and editing themselves (diffusion.py); the command line (cli.py).
"""
from __future__ import annotations

import atexit
import os
import queue
import shutil
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
MAX_QUEUE = 24
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


def _whole(value, lo: int, hi: int, what: str) -> int:
    """A whole number in [lo, hi] from a page field (None when the field was cleared), else DemoError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}") from None
    if not (v.is_integer() and lo <= v <= hi):
        raise DemoError(f"{what} must be a whole number from {lo} to {hi}, got {value}")
    return int(v)


def _number(value, lo: float, hi: float, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{what} must be a number in [{lo:g}, {hi:g}], got {value!r}") from None
    if not lo <= v <= hi:  # also NaN
        raise DemoError(f"{what} must be in [{lo:g}, {hi:g}], got {value}")
    return v


def check(req: Request, diff) -> tuple[Optional[object], int]:
    """The labels and number of images of a generate request, or DemoError naming the limit."""
    names = class_names(diff)
    if req.sampler not in LIMITS["steps"]:
        raise DemoError(f"unknown sampler {req.sampler!r}")
    top = min(LIMITS["steps"][req.sampler], diff.timesteps)
    req.steps = _whole(req.steps, 1, top, f"steps for {req.sampler}")
    req.guidance = _number(req.guidance, 0.0, LIMITS["guidance"], "guidance")
    n = req.num_images = _whole(req.num_images, 1, LIMITS["images"], "the number of images (at most 16 images)")
    req.seed = _whole(req.seed, 0, 2**31 - 1, "seed")
    if req.label == "none" and diff.clustered:  # its unlabelled draw is its clusters, drawn by size
        req.label = DRAWN
    if req.label == "none":
        if req.guidance:
            raise DemoError("guidance steers towards a class: pick one, or set guidance to 0")
        return None, n
    if not diff.num_classes:
        raise DemoError("this model has no classes: choose 'none'")
    if req.label == DRAWN:
        if not diff.clustered:
            raise DemoError(f"{DRAWN!r} is for models trained on clusters: pick a class")
        return diff.labels("clusters", n, req.seed).numpy(), n
    if req.label == "one of each":
        return np.arange(n) % diff.num_classes, n
    if req.label not in names:
        raise DemoError(f"unknown class {req.label!r}")
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
    shows (same seed, same images). When the page goes away (the generator is closed), the
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
            yield *last, None, f"step {i + 1} of {total}: t = {t}"
    finally:
        stop.set()
    if "error" in result:
        e = result["error"]
        raise DemoError(first_line(e))
    what = ("label=" + (f"[{', '.join(map(str, labels.tolist()))}]" if labels is not None else "None"))
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


def edit(diff, source: str, canvas, test_index, target: str, strength: float, mode: str, preset: str,
         mask_canvas, seed) -> tuple[np.ndarray, str]:
    """SDEdit or inpainting of the drawn (or chosen test) digit; returns (before | after, status)."""
    seed = _whole(seed, 0, 2**31 - 1, "seed")
    if source == "canvas":
        digit = digit_from_canvas(canvas)
    else:
        test = _test_images(diff.dataset)
        digit = test[_whole(test_index, 0, len(test) - 1, "test digit #")][None]
    names = class_names(diff)
    label = None
    if target != "none":
        if target not in names:
            raise DemoError(f"unknown class {target!r}")
        label = names.index(target)
    guidance = 2.0 if label is not None else 0.0
    t0 = time.time()
    if mode == "SDEdit":
        strength = _number(strength, 0.0, 1.0, "strength")
        if strength == 0:
            raise DemoError("strength 0 changes nothing: give a value in (0, 1]")
        out = diff.edit(digit, strength, label=label, guidance=guidance, sampler="ddim",
                        steps=min(50, diff.timesteps), seed=seed)
        what = f"SDEdit at strength {float(strength):g}"
    else:
        if preset == "painted":
            painted = digit_from_canvas(mask_canvas)[0] > 127  # strokes mark what to fill in
            mask = check_mask((~painted).astype(np.float32), 1)
        elif preset in MASK_PRESETS:
            mask = mask_preset(preset, 1, seed=seed)
        else:
            raise DemoError(f"unknown mask {preset!r}")
        out = diff.inpaint(digit, mask, label=label, guidance=guidance, sampler="ddpm",
                           steps=min(100, diff.timesteps), resample=2, jump_length=5, seed=seed)
        what = f"inpainting ({preset})"
    return show(np.concatenate([digit, out])), f"{what}{f' towards {target}' if label is not None else ''}: " \
                                               f"{time.time() - t0:.1f} s"


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
    s, t = diff.schedule, _whole(t, 0, diff.timesteps - 1, "t")
    x0 = to_model_range(test[test_index][None])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(test_index))
    ts = [int(v) for v in np.linspace(0, diff.timesteps - 1, 8)]
    row = torch.cat([q_sample(s, x0, torch.tensor([u]), eps) for u in ts])
    xt = q_sample(s, x0, torch.tensor([t]), eps)
    text = (f"**t = {t}**: x_t = {s.sqrt_alpha_bar[t]:.4f} x_0 + {s.sqrt_one_minus_alpha_bar[t]:.4f} eps; "
            f"beta_t = {s.betas[t]:.2e}, alpha_bar_t = {s.alpha_bar[t]:.4f}, SNR = {s.snr[t]:.3g} "
            f"(log10 {np.log10(float(s.snr[t])):.2f}). The strip: t = {', '.join(map(str, ts))}.")
    return show(to_uint8(xt)), show(to_uint8(row), nrow=8), text


def build(diff, *, schedule_figure: Optional[str] = None):
    """The Blocks app for a Diffusion: three tabs (Generate, Edit, Explain)."""
    import gradio as gr

    names = class_names(diff)
    classes = [DRAWN, "one of each", *names] if diff.clustered else (["one of each"] + names if names else []) + ["none"]

    def guard(fn):  # every expected failure is a message in the page; the server goes on serving
        def wrapped(*args):
            try:
                return fn(*args)
            except (DemoError, ValueError, TypeError) as e:
                raise gr.Error(first_line(e)) from None
        return wrapped

    def stream(label, guidance, sampler, steps, seed, num_images):
        try:
            yield from generate_frames(diff, Request(label, guidance, sampler, steps, seed, num_images))
        except (DemoError, ValueError, TypeError) as e:
            raise gr.Error(first_line(e)) from None

    with gr.Blocks(title="mnist-diffusion", analytics_enabled=False) as app:
        gr.Markdown(f"# mnist-diffusion\nA denoising diffusion model for {diff.dataset.replace('_', '-')} "
                    f"({diff.num_classes or 'no'} {'clusters' if diff.clustered else 'classes'}, T = "
                    f"{diff.timesteps}), running on this machine's "
                    f"{diff.device}. Source: `{diff.source}`.")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    label = gr.Dropdown(classes, value=classes[0], label="digit", elem_id="label")
                    own = diff.config.sampling  # the model's own: what its card recommends
                    guidance = gr.Slider(0, LIMITS["guidance"], value=own.guidance if names else 0, step=0.25,
                                         label="guidance W", elem_id="guidance")
                    sampler = gr.Radio(["dpmpp", "ddim", "ddpm"], value=own.sampler, label="sampler", elem_id="sampler")
                    steps = gr.Slider(1, LIMITS["steps"]["ddpm"], value=len(diff.plan(labelled=False).timesteps),
                                      step=1, label="steps", elem_id="steps")
                    seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                    num = gr.Slider(1, LIMITS["images"], value=10 if names else 8, step=1, label="images",
                                    elem_id="num_images")
                    go = gr.Button("Generate", variant="primary", elem_id="generate_button")
                with gr.Column(scale=2):
                    status = gr.Markdown("Pick a digit and press Generate.", elem_id="status")
                    with gr.Row():
                        xt = gr.Image(label="x_t (what the sampler holds)", format="png", elem_id="xt")
                        x0 = gr.Image(label="predicted x0", format="png", elem_id="x0")
                    final = gr.Image(label="samples", format="png", elem_id="final")
            go.click(stream, [label, guidance, sampler, steps, seed, num], [xt, x0, final, status], api_name="generate")
        with gr.Tab("Edit", id="edit"):
            with gr.Row():
                with gr.Column():
                    source = gr.Radio(["canvas", "test digit"], value="canvas", label="start from", elem_id="source")
                    canvas = gr.Sketchpad(label="draw a digit or a scribble", canvas_size=(280, 280),
                                          type="numpy", image_mode="L", elem_id="canvas",
                                          brush=gr.Brush(default_size=20, colors=["#000000"], color_mode="fixed"))
                    index = gr.Number(0, precision=0, label="test digit #", elem_id="test_index")
                with gr.Column():
                    mode = gr.Radio(["SDEdit", "inpaint"], value="SDEdit", label="edit", elem_id="mode")
                    target = gr.Dropdown((names or []) + ["none"], value=names[7] if len(names) > 7 else "none",
                                         label="towards class", elem_id="target")
                    strength = gr.Slider(0.05, 1.0, value=0.8, step=0.05, label="SDEdit strength", elem_id="strength")
                    preset = gr.Dropdown(["bottom", "top", "left", "right", "center", "random", "painted"],
                                         value="bottom", label="inpaint: region to fill", elem_id="preset")
                    mask_canvas = gr.Sketchpad(label="inpaint: paint the region to fill (with 'painted')",
                                               canvas_size=(280, 280), type="numpy", image_mode="L",
                                               elem_id="mask_canvas")
                    edit_seed = gr.Number(0, precision=0, label="seed", elem_id="edit_seed")
                    edit_go = gr.Button("Edit", variant="primary", elem_id="edit_button")
                with gr.Column():
                    edited = gr.Image(label="before | after", format="png", elem_id="edited")
                    edit_status = gr.Markdown("", elem_id="edit_status")
            edit_go.click(guard(lambda *a: edit(diff, *a)),
                          [source, canvas, index, target, strength, mode, preset, mask_canvas, edit_seed],
                          [edited, edit_status], api_name="edit")
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
            show_t = guard(lambda i, t: explain(diff, i, t))
            ex_index.change(show_t, [ex_index, ex_t], [ex_xt, ex_row, ex_text], api_name="explain")
            ex_t.change(show_t, [ex_index, ex_t], [ex_xt, ex_row, ex_text], api_name=False)
            app.load(show_t, [ex_index, ex_t], [ex_xt, ex_row, ex_text], api_name=False)
    return app


def launch(diff, *, host: str = "127.0.0.1", port: int = 7860, log=print, block: bool = True):
    """Start the demo: files in a temporary folder, no analytics, system fonts, bounded queue."""
    tmp = tempfile.mkdtemp(prefix="mnist-diffusion-demo-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # Gradio's files go nowhere else
    os.environ["GRADIO_TEMP_DIR"] = tmp
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr
    from PIL import Image

    from .visualize import plot_schedule
    # Gradio decodes uploads before our checks see them: past 2 x MAX_IMAGE_PIXELS, PIL refuses to
    # decode at all, so a small file claiming 10,000 x 10,000 pixels never becomes an array
    Image.MAX_IMAGE_PIXELS = LIMITS["upload_pixels"] // 2
    figure = str(Path(tmp) / "schedule.png")
    ts = sorted({int(v) for v in np.linspace(0, diff.timesteps - 1, 8)})
    plot_schedule(_test_images(diff.dataset)[0], figure, T=diff.timesteps, timesteps=ts)
    app = build(diff, schedule_figure=figure)
    app.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"WARNING: the demo listens on {host}: anyone who can reach this machine can use it")
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts fetched
    return app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True, theme=theme,
                      max_file_size=LIMITS["upload_bytes"], footer_links=[], ssr_mode=False)
