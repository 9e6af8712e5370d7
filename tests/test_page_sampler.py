"""The static page's sampler against the library's, call by call: Python draws with a model and
records every network call; `node --test tests/page_sampler.test.mjs` replays them through the
page's sampler.js (no browser, no ONNX runtime) and must feed the network the same inputs and end
on the same images, within float32 rounding. Guided teacher (linear and quadratic corrector, the
guidance interval's switch steps), unlabelled model, flow model, DDIM.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mnist_diffusion.config import SamplingConfig
from mnist_diffusion.portable import sampling_plan
from mnist_diffusion.sampling import run_plan

from conftest import random_unet, wrap

NODE = shutil.which("node")
HERE = Path(__file__).resolve().parent
SAMPLER_JS = HERE.parent / "src" / "mnist_diffusion" / "webpage" / "sampler.js"
TOLERANCE = 1e-4  # relative to max(1, |value|): float32 rounding, not a different step

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(NODE is None, reason="no Node.js here")]


def recorded_draw(diff, draw: str, labels, x_T: torch.Tensor) -> dict:
    """Python's draw `draw` of the model's plan.json from x_T, with every network call it made."""
    plan_json = sampling_plan(diff)
    d = plan_json["draws"][draw]
    how = diff.plan(sampler=d["sampler"], steps=d["steps"], eta=d["eta"], labelled=labels is not None)
    assert how.timesteps == tuple(d["timesteps"]) and how.switches == tuple(d["switches"])
    calls, forward = [], diff.model.forward

    def record(x, t, y=None):
        out = forward(x, t, y) if y is not None else forward(x, t)
        calls.append({"t": int(t[0]), "labels": None if y is None else y.tolist(),
                      "x": x.flatten().tolist(), "out": out.float().flatten().tolist()})
        return out
    diff.model.forward = record
    try:
        y = None if labels is None else torch.tensor(labels)
        with torch.no_grad():
            x0 = run_plan(how, diff.eps_fn(y, how.guidance, how.guidance_interval), diff.schedule, x_T, None)
    finally:
        del diff.model.forward
    return {"plan": plan_json, "draw": draw, "guidance": how.guidance, "labels": labels,
            "x_T": x_T.flatten().tolist(), "calls": calls, "want": x0.flatten().tolist(), "tolerance": TOLERANCE}


def cases():
    """(name, model, draw, labels): what the page is asked to draw."""
    guided = wrap(random_unet(), T=50).with_sampling(SamplingConfig(guidance=1.0))
    quadratic = guided.with_sampling(SamplingConfig(guidance=1.0, corrector=2))
    uncond = wrap(random_unet(num_classes=None, seed=1), num_classes=None, T=50)
    flow = wrap(random_unet(seed=2), T=50, schedule="flow", prediction="flow").with_sampling(
        SamplingConfig(guidance=0.5))
    return [("guided-teacher-20", guided, "20", [3, 8]), ("guided-teacher-10-quadratic", quadratic, "10", [0, 9]),
            ("unlabelled-20", uncond, "20", None), ("flow-20", flow, "20", [1, 2])]


def test_the_page_sampler_replays_pythons_draws(tmp_path):
    x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    for name, diff, draw, labels in cases():
        fixture = recorded_draw(diff, draw, labels, x_T)
        assert fixture["calls"], name
        (tmp_path / f"{name}.json").write_text(json.dumps(fixture))
    shutil.copyfile(SAMPLER_JS, tmp_path / "sampler.mjs")
    r = subprocess.run([NODE, "--test", str(HERE / "page_sampler.test.mjs")], capture_output=True, text=True,
                       timeout=300, env={"PAGE_FIXTURES": str(tmp_path), "PAGE_SAMPLER": str(tmp_path / "sampler.mjs"),
                                         "PATH": str(Path(NODE).parent)})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert f"# pass {len(cases())}" in r.stdout, r.stdout[-2000:]
