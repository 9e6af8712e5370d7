"""The demo's work, on requests demo.checks accepted: a generation streamed frame by frame from a
sampler thread, an edit, the forward process of a test digit. Each is the library call its status
line names (same seed, same images).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Optional

import numpy as np

from ..data import to_model_range, to_uint8
from ..images import grid
from ..schedule import q_sample
from .checks import DemoError, Request, check, check_edit, check_explain, first_line, test_images

FRAMES = 24  # most intermediate frames streamed per generation
SCALE = 4  # pixels per image pixel in the page


def _took(seconds: float) -> str:
    """A distilled student's time: milliseconds under a second (its draws take a few)."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


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
    with the images would be rewritten while the page may still be reading it). When the page goes
    away (the generator is closed), the sampler stops at its next step, so the queue's next request
    does not share the CPU with it."""
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


def edit(diff, source: str, canvas, test_index, target: str, strength: float, mode: str, preset: str,
         mask_canvas, seed) -> tuple[np.ndarray, str]:
    """SDEdit or inpainting of the drawn (or chosen test) digit, every argument checked first
    (`check_edit`); returns (before | after, status). A distilled student's SDEdit is its own draw
    (DDIM, one step on its grid cut at the strength), its guidance built in."""
    e = check_edit(diff, source, canvas, test_index, target, strength, mode, preset, mask_canvas, seed)
    guidance = 2.0 if e.label is not None else 0.0
    t0 = time.time()
    if e.mode == "SDEdit" and diff.distilled:
        out = diff.edit(e.digit, e.strength, label=e.label, seed=e.seed)
    elif e.mode == "SDEdit":
        out = diff.edit(e.digit, e.strength, label=e.label, guidance=guidance, sampler="ddim",
                        steps=min(50, diff.timesteps), seed=e.seed)
    else:
        out = diff.inpaint(e.digit, e.mask, label=e.label, guidance=guidance, sampler="ddpm",
                           steps=min(100, diff.timesteps), resample=2, jump_length=5, seed=e.seed)
    if e.mode == "SDEdit":
        what = f"SDEdit at strength {float(e.strength):g}" + (" (one network evaluation)" if diff.distilled else "")
    else:
        what = f"inpainting ({e.preset})"
    took = _took(time.time() - t0) if diff.distilled else f"{time.time() - t0:.1f} s"
    towards = f" towards {e.target}" if e.label is not None else ""
    return show(np.concatenate([e.digit, out])), f"{what}{towards}: {took}"


def explain(diff, test_index, t) -> tuple[np.ndarray, np.ndarray, str]:
    """x_t of a test digit at timestep t with the coefficients of q(x_t | x_0), and the forward
    process of that digit at eight timesteps."""
    import torch

    test_index, t = check_explain(diff, test_index, t)
    s = diff.schedule
    x0 = to_model_range(test_images(diff.dataset)[test_index][None])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(test_index))
    ts = [int(v) for v in np.linspace(0, diff.timesteps - 1, 8)]
    row = torch.cat([q_sample(s, x0, torch.tensor([u]), eps) for u in ts])
    xt = q_sample(s, x0, torch.tensor([t]), eps)
    text = (f"**t = {t}**: x_t = {s.sqrt_alpha_bar[t]:.4f} x_0 + {s.sqrt_one_minus_alpha_bar[t]:.4f} eps; "
            f"beta_t = {s.betas[t]:.2e}, alpha_bar_t = {s.alpha_bar[t]:.4f}, SNR = {s.snr[t]:.3g} "
            f"(log10 {np.log10(float(s.snr[t])):.2f}). The strip: t = {', '.join(map(str, ts))}.")
    return show(to_uint8(xt)), show(to_uint8(row), nrow=8), text
