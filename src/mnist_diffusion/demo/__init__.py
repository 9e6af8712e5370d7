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

The parts: checks.py (the limits and every request's checks: plain Python), draws.py (the work a
checked request asks for), guards.py (failures as messages, Gradio's own refusals as one line),
layout.py (the page), server.py (launch: the temporary folder, the bounded memory, signals).
Not here: sampling and editing themselves (diffusion.py); the command line (cli.py).
"""
from __future__ import annotations

from .checks import (CACHE, DRAWN, EDIT_MASKS, EDIT_MODES, EDIT_SOURCES, GRADIO_MEMORY, LIMITS, MAX_QUEUE, SAMPLERS,
                     STUDENT, DemoError, Edit, Request, check, check_edit, check_explain, class_names,
                     digit_from_canvas, first_line, label_choices)
from .draws import edit, explain, generate_frames, show
from .layout import build
from .server import TempFolder, launch

__all__ = ["CACHE", "DRAWN", "EDIT_MASKS", "EDIT_MODES", "EDIT_SOURCES", "GRADIO_MEMORY", "LIMITS", "MAX_QUEUE",
           "SAMPLERS", "STUDENT", "DemoError", "Edit", "Request", "TempFolder", "build", "check", "check_edit",
           "check_explain", "class_names", "digit_from_canvas", "edit", "explain", "first_line", "generate_frames",
           "label_choices", "launch", "show"]
