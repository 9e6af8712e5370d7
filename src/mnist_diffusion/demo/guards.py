"""The server's hardening inside Gradio: every handler's failures as one-line messages (no traceback
in the log), and a gr.Blocks whose own refusals of a request, before any handler sees it, are
one-line messages naming the field. Gradio is imported only when the demo is built.
"""
from __future__ import annotations

import html
from pathlib import Path

from .checks import DemoError, Request, _show, first_line
from .draws import generate_frames


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
