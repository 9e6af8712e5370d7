"""The demo's page: three tabs (Generate, Edit, Explain) whose controls start at the model's own
plan, every event on one queue. Layout only: the checks are demo.checks', the work demo.draws'.
"""
from __future__ import annotations

from typing import Optional

from .checks import CACHE, EDIT_MASKS, EDIT_MODES, EDIT_SOURCES, LIMITS, SAMPLERS, STUDENT, class_names, label_choices
from .draws import edit, explain
from .guards import _blocks_class, _drawing, _guard, _streamer

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
