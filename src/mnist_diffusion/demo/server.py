"""The demo's server: a temporary folder kept within CACHE and removed when the server closes or
the process exits (Ctrl-C, SIGTERM), what Gradio keeps of past requests bounded, one bounded
queue, 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .checks import CACHE, GRADIO_MEMORY, LIMITS, MAX_QUEUE, test_images
from .layout import build


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

    from ..visualize import plot_schedule
    # Gradio's preprocessing decodes a drawing (in the edit's handler): past 2 x MAX_IMAGE_PIXELS, PIL
    # refuses to decode at all, so a small file claiming 10,000 x 10,000 pixels never becomes an array
    Image.MAX_IMAGE_PIXELS = LIMITS["upload_pixels"] // 2
    figure = str(folder.path / "schedule.png")
    ts = sorted({int(v) for v in np.linspace(0, diff.timesteps - 1, 8)})
    plot_schedule(test_images(diff.dataset)[0], figure, T=diff.timesteps, timesteps=ts)
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
