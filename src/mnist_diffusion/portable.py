"""The network as ONNX, with the sampling plan beside it: what runs a model outside PyTorch.

    DIR/model.onnx    the network: (x, t, label) -> its output (eps, v or flow, as plan.json says);
                      x float32 (N,1,28,28), t and label int32 (N,), label = num_classes is "none";
                      an unlabelled model has no label input
    DIR/plan.json     what a sampler needs besides the network: the prediction, alpha_bar_t for every
                      t, the classes, and the draws the model recommends (the student's 1 and 2
                      steps; a teacher's own draw at 10 and 20 steps), each guided and
                      unguided and as an SDEdit at each of EDIT_STRENGTHS, every one the plan
                      `sampling.plan` gives for it, compiled into its per-step program
                      (`compile_plan`), which the page's sampler.js interprets

The export is checked before anything is written: onnxruntime (the PyPI package) runs the file on
random inputs and its outputs must match PyTorch's at fp32 within `TOLERANCE` (max abs difference,
recorded in plan.json). The operators are those onnxruntime-web's WebAssembly backend runs (opset
17; GroupNorm leaves as InstanceNormalization + reshapes, the timestep and label inputs are int32,
cast to int64 inside the graph): tests/test_website.py runs the file in Chromium.

Not here: the static page that runs it (website.py), the model folders (hub.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .atomic import atomic_write_bytes, atomic_write_json
from .config import ConfigError
from .outputs import ONNX_FORMAT as FORMAT
from .outputs import ONNX_NAMES as FILES
from .outputs import check_folder
from .samplers import alpha_bar_at, corrector_weights, half_log_snr

OPSET = 17
TOLERANCE = 1e-4  # max abs difference between onnxruntime and PyTorch at fp32, on random inputs
# the draws plan.json offers: a student's own grid (1 or 2 evaluations), a teacher's own draw (its
# card's: DPM-Solver++ with its eta; the page draws the fresh noise of eta > 0 from the image's seed)
PAGE_SAMPLERS = ("ddim", "dpmpp")
STUDENT_STEPS = (1, 2)
TEACHER_STEPS = (10, 20)
# the SDEdit strengths the page offers: each draw's edit at each is the plan of `mnist-diffusion edit
# --strength S` with the draw's options
EDIT_STRENGTHS = tuple(k / 10 for k in range(1, 11))
COEFFICIENTS = ("sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "sqrt_recip_alpha_bar", "sqrt_recipm1_alpha_bar")


class _Exported(torch.nn.Module):
    """The network with int32 timestep and label inputs (int64 is awkward in JavaScript)."""

    def __init__(self, net: torch.nn.Module, labelled: bool):
        super().__init__()
        self.net, self.labelled = net, labelled

    def forward(self, x, t, label=None):
        if self.labelled:
            return self.net(x, t.long(), label.long())
        return self.net(x, t.long())


def _need_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs the onnx and onnxruntime packages: pip install 'mnist-diffusion[onnx]'") \
            from None


def onnx_bytes(diff) -> bytes:
    """The network of `diff` (a Diffusion) as an ONNX model, fp32, batch size free."""
    _need_onnx()
    import io
    import warnings

    labelled = diff.num_classes is not None
    net = _Exported(_fp32_copy(diff.model), labelled).eval()
    n = 2
    x = torch.zeros(n, 1, 28, 28)
    t = torch.zeros(n, dtype=torch.int32)
    args = (x, t, torch.zeros(n, dtype=torch.int32)) if labelled else (x, t)
    names = ["x", "t", "label"][:len(args)]
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice: it is the one that
        warnings.simplefilter("ignore")  # writes a single self-contained file with these operators
        torch.onnx.export(net, args, buf, input_names=names, output_names=["out"], opset_version=OPSET,
                          dynamic_axes={k: {0: "n"} for k in names + ["out"]}, dynamo=False)
    return buf.getvalue()


def _fp32_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


def check(diff, payload: bytes, *, num_images: int = 8, seed: int = 0) -> dict:
    """Run `payload` in onnxruntime on random inputs (x ~ N(0, I), t uniform, labels uniform with
    the null label among them) and compare with PyTorch at fp32. Raises ConfigError above TOLERANCE."""
    import onnx
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_images, 1, 28, 28, generator=g)
    t = torch.randint(0, diff.timesteps, (num_images,), generator=g, dtype=torch.int32)
    t[0] = diff.timesteps - 1
    feeds = {"x": x.numpy(), "t": t.numpy()}
    net = _fp32_copy(diff.model)
    with torch.no_grad():
        if diff.num_classes is not None:
            y = torch.randint(0, diff.num_classes + 1, (num_images,), generator=g, dtype=torch.int32)
            y[0] = diff.num_classes
            feeds["label"] = y.numpy()
            want = net(x, t.long(), y.long()).numpy()
        else:
            want = net(x, t.long()).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    diff_max = float(np.abs(got - want).max())
    if not np.isfinite(diff_max) or diff_max > TOLERANCE:
        raise ConfigError(f"the ONNX model disagrees with PyTorch: max abs difference {diff_max:.3g} > {TOLERANCE:g}")
    model = onnx.load_from_string(payload)
    return {"max_abs_difference": diff_max, "tolerance": TOLERANCE, "checked_images": num_images,
            "onnxruntime": ort.__version__, "opset": OPSET,
            "operators": sorted({node.op_type for node in model.graph.node})}


def compile_plan(plan, schedule) -> dict:
    """A draw's plan (sampling.SamplingPlan, task "sample" or "edit") as the program sampler.js
    interprets: the start and, per network evaluation, its timestep, whether it is guided, whether
    x0 is clipped, and the update that follows as rows `[target, [[c, source], ...]]`, each
    target = c_1 source_1 + c_2 source_2 + ..., run in order. Sources are named vectors: "noise" and
    "image" (an edit's) given, "x" (the point the network saw), "x0" and "eps" (its prediction at this
    step, sampling.predict_x0), "fresh" (new N(0, I) noise, drawn once at each step marked "fresh":
    the noise_fn draws of eta > 0, in the same order) and whatever an earlier row set. The
    coefficients are computed here in float64 exactly as samplers.ddim and samplers.dpmpp compute
    their scalars, and the rows are laid out in the order PyTorch runs their tensor operations, so a
    port that rounds each scalar, product and sum to float32 (as sampler.js does) draws what run_plan /
    sampling.edit_batches draw from the same noise. x ends as the image. ddim and dpmpp only."""
    if plan.sampler not in PAGE_SAMPLERS or plan.task not in ("sample", "edit"):
        raise ConfigError(f"the page runs ddim or dpmpp draws and edits, not a {plan.task} with {plan.describe()}")
    sub = schedule.prefix(plan.start + 1) if plan.task == "edit" else schedule
    if plan.task == "edit" and plan.start < schedule.timesteps - 1:  # samplers.sdedit's x_t0
        init = [[float(sub.sqrt_alpha_bar[plan.start]), "image"], [float(sub.sqrt_one_minus_alpha_bar[plan.start]), "noise"]]
    else:
        init = [[1.0, "noise"]]
    seq, guided = list(plan.timesteps), set(plan.guided_timesteps if plan.guidance else ())
    rows = (_ddim_rows if plan.sampler == "ddim" else _dpmpp_rows)(plan, sub, seq)
    return {"start": plan.start, "init": init,
            "program": [{"t": t, "guided": t in guided, "clip": plan.clip, "fresh": _reads_fresh(then), "then": then}
                        for t, then in zip(seq, rows)]}


def _reads_fresh(rows) -> bool:
    return any(name == "fresh" for _, row in rows for _, name in row)


def _ddim_rows(plan, schedule, seq) -> list:
    """samplers.ddim: x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps (+ sigma z where eta > 0), the
    last step to a_s = 1."""
    out = []
    for i, t in enumerate(seq):
        a_t, a_s = alpha_bar_at(schedule, t), alpha_bar_at(schedule, seq[i + 1] if i + 1 < len(seq) else -1)
        sigma = plan.eta * ((1 - a_s) / (1 - a_t)) ** 0.5 * (1 - a_t / a_s) ** 0.5
        then = [["x", [[a_s ** 0.5, "x0"], [max(1 - a_s - sigma ** 2, 0.0) ** 0.5, "eps"]]]]
        if sigma > 0:
            then.append(["x", [[1.0, "x"], [sigma, "fresh"]]])
        out.append(then)
    return out


def _dpmpp_rows(plan, schedule, seq) -> list:
    """samplers.dpmpp, step by step: the corrector redoing the step into x (UniPC; SA-Solver's with
    eta > 0), the multistep D (first order at the start and at plan.switches), the
    exponential-integrator step and, with eta > 0, the fresh noise "z" added to x (and to the linear
    part the corrector redoes). Vectors kept between steps: "base" (the last step's linear part),
    "x0_1" and "x0_2" (x0 one and two evaluations back)."""
    out, switches, corrector, eta = [], set(plan.switches), plan.corrector, plan.eta
    h_prev = last = None  # last: (a_s, h, whether x0_2 is the corrector's third point, h before) of the step into x
    for i, t in enumerate(seq):
        if i + 1 == len(seq):  # the final jump to lambda = inf: x = x0
            out.append([["x", [[1.0, "x0"]]]])
            break
        then = []
        if last is not None and t not in switches:
            a_t_, h_, has_b, h_b = last
            w_new, w_a, w_b = corrector_weights(h_, h_b if has_b else None, eta, corrector)
            mix = [[w_new, "x0"], [w_a, "x0_1"]] + ([[w_b, "x0_2"]] if w_b else [])
            then += [["mix", mix], ["x", [[1.0, "base"], [a_t_ ** 0.5, "mix"]]]]
        s = seq[i + 1]
        a_t, a_s = alpha_bar_at(schedule, t), alpha_bar_at(schedule, s)
        h = half_log_snr(schedule, s) - half_log_snr(schedule, t)
        first = h_prev is None or t in switches
        if first:
            then.append(["d", [[1.0, "x0"]]])
        else:
            r = h_prev / h
            then.append(["d", [[1 + 1 / (2 * r), "x0"], [-(1 / (2 * r)), "x0_1"]]])
        then += [["base", [[((1 - a_s) / (1 - a_t)) ** 0.5 * math.exp(-eta * h), "x"]]],
                 ["x", [[1.0, "base"], [-(a_s ** 0.5 * math.expm1(-(1 + eta) * h)), "d"]]]]
        if eta > 0:
            then += [["z", [[(1 - a_s) ** 0.5 * math.sqrt(-math.expm1(-2 * eta * h)), "fresh"]]],
                     ["x", [[1.0, "x"], [1.0, "z"]]]]
            if corrector:
                then.append(["base", [[1.0, "base"], [1.0, "z"]]])
        if corrector == 2 and not first:  # the corrector's third point at the next step
            then.append(["x0_2", [[1.0, "x0_1"]]])
        then.append(["x0_1", [[1.0, "x0"]]])
        if corrector:
            last = (a_s, h, corrector == 2 and not first, h_prev)
        h_prev = h
        out.append(then)
    return out


def _draw(plan, schedule) -> dict:
    return {"sampler": plan.sampler, "steps": plan.steps, "spacing": plan.spacing, "timesteps": list(plan.timesteps),
            "eta": plan.eta, "clip": plan.clip, "guidance": plan.guidance,
            "guided_timesteps": list(plan.guided_timesteps) if plan.guidance else [],
            "switches": list(plan.switches), "corrector": plan.corrector, "describe": plan.describe(),
            **compile_plan(plan, schedule)}


def page_plan(diff, steps: int, *, guided: bool, strength: Optional[float] = None):
    """The plan of the page's draw at `steps` (an SDEdit at `strength` when given), guided or not: the
    CLI's `sample --steps STEPS` (or `edit`) with guidance 0, or with the model's own weight (1 where it
    has none: the page puts its weight in; the plan is the same for every weight > 0). A model whose
    card samples with a sampler the page does not run (ddpm, euler, heun) is drawn with dpmpp."""
    can = diff.capabilities
    task = {"task": "edit", "strength": strength} if strength is not None else {}
    if can.distilled:
        return diff.plan(steps=steps, labelled=can.labelled, **task)
    weight = (diff.config.sampling.guidance or 1.0) if guided else 0.0
    sampler = None if diff.config.sampling.sampler in PAGE_SAMPLERS else "dpmpp"
    return diff.plan(sampler=sampler, steps=steps, guidance=weight, labelled=can.labelled, **task)


def _modes(diff, steps: int, strength: Optional[float] = None) -> dict:
    """A draw guided (a model that takes guidance) and unguided: the page runs the one its guidance asks for."""
    def one(guided):
        return _draw(page_plan(diff, steps, guided=guided, strength=strength), diff.schedule)
    return {"guided": one(True) if diff.capabilities.guidable else None, "unguided": one(False)}


def sampling_plan(diff) -> dict:
    """plan.json: everything but the network that the page's sampler (or any port) needs; what the
    model can be asked for is its `capabilities`, as the pipeline and the demo read them."""
    cfg, can = diff.config, diff.capabilities
    labelled = can.labelled
    draws = {str(steps): {**_modes(diff, steps),
                          "edits": {f"{s:g}": _modes(diff, steps, s) for s in EDIT_STRENGTHS}}
             for steps in (STUDENT_STEPS if can.distilled else TEACHER_STEPS)}
    guidance = can.built_in_guidance if can.distilled else (cfg.sampling.guidance if labelled else 0.0)
    return {"format": FORMAT, "dataset": diff.dataset, "prediction": diff.prediction, "timesteps": diff.timesteps,
            "alpha_bar": [float(a) for a in diff.schedule.alpha_bar],
            # the per-timestep coefficients as the schedule holds them (float64; PyTorch rounds them to
            # the images' float32 before each product, and so does the page, to draw the same images)
            "coefficients": {k: [float(a) for a in getattr(diff.schedule, k)] for k in COEFFICIENTS},
            "num_classes": diff.num_classes, "null_label": diff.null_label,
            "class_names": list(can.class_names) if labelled else None, "distilled": can.distilled,
            "guidance": float(guidance), "takes_guidance": can.guidable, "capabilities": can.as_dict(),
            "default_steps": STUDENT_STEPS[0] if can.distilled else TEACHER_STEPS[-1],
            "edit_strengths": [f"{s:g}" for s in EDIT_STRENGTHS], "draws": draws}


def export_onnx(diff, output: str | os.PathLike, *, source: Optional[str] = None) -> dict:
    """Write model.onnx and plan.json for `diff` into the folder `output`: a new or empty folder, or
    one an ONNX export wrote and nothing else (outputs.check_folder); ours are replaced only once
    both are built and checked. Returns what plan.json records of the export."""
    out = check_folder(output, "onnx")
    # one network per export: an autoguided model (a folder with guide.safetensors) is drawn without
    # its guide, and plan.json says so
    guide = getattr(diff, "guide", None)
    diff = diff.without_guide() if guide is not None else diff
    payload = onnx_bytes(diff)
    report = check(diff, payload)
    report.update({"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "source": source,
                   "source_sha256": diff.source_sha256,
                   **({"autoguide": f"not exported: drawn without its guide (step {guide.step})"}
                      if guide is not None else {})})
    plan = {**sampling_plan(diff), "export": report}
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.onnx-", dir=out.parent))
    try:
        atomic_write_bytes(stage / "model.onnx", payload)
        atomic_write_json(stage / "plan.json", plan)
        for name in FILES:  # plan.json last: a folder with a plan has its model
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def read_plan(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "plan.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable plan ({e})") from None
    if plan.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an mnist-diffusion ONNX plan")
    return plan
