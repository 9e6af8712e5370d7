"""The static page's sampler against the library's, call by call: Python draws with a model and
records every network call; `node --test tests/page_sampler.test.mjs` replays them through the
page's sampler.js (an interpreter of plan.json's programs: no browser, no ONNX runtime) and must feed
the network the same inputs and end on the same images, within float32 rounding. A distilled
student, a guided teacher (linear and quadratic corrector, the guidance interval's switch steps, at
its own weight, another and none; its card's eta, and eta 0), a ddim card at eta 1, an unlabelled
model, a flow model, and SDEdits, each the plan the CLI runs (`sample` with those options; `edit` at
that strength); the fresh noise of eta > 0 is the library's, replayed. Python also interprets each
program itself and must land on the library's images bit for bit.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mnist_diffusion.config import ConfigError, DistillConfig, SamplingConfig
from mnist_diffusion.diffusion import Diffusion
from mnist_diffusion.distill import student_config
from mnist_diffusion.portable import EDIT_STRENGTHS, compile_plan, sampling_plan
from mnist_diffusion.samplers import PerImageNoise, predict_x0
from mnist_diffusion.sampling import edit_batches, run_plan

from conftest import random_unet, wrap

NODE = shutil.which("node")
HERE = Path(__file__).resolve().parent
SAMPLER_JS = HERE.parent / "src" / "mnist_diffusion" / "webpage" / "sampler.js"
TOLERANCE = 1e-4  # relative to max(1, |value|): float32 rounding, not a different step
PLAN_KEYS = ("sampler", "steps", "spacing", "timesteps", "eta", "clip", "switches", "corrector", "start")

pytestmark = [pytest.mark.usefixtures("one_thread")]


def cli_plan(diff, steps: int, labelled: bool, guidance: float, strength=None):
    """The plan the CLI runs for the page's draw `steps` at this guidance: `sample --steps STEPS` (or
    `edit --strength`), the model's own draw (a student's without guidance)."""
    task = {"task": "edit", "strength": strength} if strength is not None else {}
    if diff.capabilities.distilled:
        return diff.plan(steps=steps, labelled=labelled, **task)
    return diff.plan(steps=steps, guidance=guidance, labelled=labelled, **task)


def interpret(program: dict, diff, labels, guidance: float, noise, image=None, fresh=()) -> torch.Tensor:
    """`program` run as sampler.js runs it, in PyTorch: rows c_1 v_1 + c_2 v_2 + ..., left to right;
    `fresh`: the noise of the steps marked fresh, in order."""
    v, fresh = {"noise": noise, "image": image}, iter(fresh)

    def combine(row):
        out = None
        for c, name in row:
            out = c * v[name] if out is None else out + c * v[name]
        return out
    v["x"] = combine(program["init"])
    for step in program["program"]:
        eps_fn = diff.eps_fn(labels, guidance if step["guided"] else 0.0)
        v["x0"], v["eps"] = predict_x0(eps_fn, diff.schedule, v["x"], step["t"], step["clip"])
        if step["fresh"]:
            v["fresh"] = next(fresh)
        for target, row in step["then"]:
            v[target] = combine(row)
    return v["x"]


def recorded_draw(diff, draw: str, labels, noise: torch.Tensor, *, guidance=None, strength=None,
                  image=None) -> dict:
    """The library's draw of the page's `draw` from `noise` (an SDEdit of `image` at `strength`: the
    CLI's `edit`, whose noise is the seed's), with every network call it made, and plan.json."""
    plan_json = sampling_plan(diff)
    if guidance is None:
        guidance = plan_json["guidance"]
    guided = labels is not None and plan_json["takes_guidance"] and guidance > 0
    modes = plan_json["draws"][draw] if strength is None else plan_json["draws"][draw]["edits"][f"{strength:g}"]
    program = modes["guided" if guided else "unguided"]
    how = cli_plan(diff, int(draw), labels is not None, guidance if guided else 0.0, strength)
    # the page's program is the CLI's plan, step for step
    assert {k: program[k] for k in PLAN_KEYS} == {k: getattr(how, k) if k != "timesteps" and k != "switches"
                                                  else list(getattr(how, k)) for k in PLAN_KEYS}
    assert [s["t"] for s in program["program"] if s["guided"]] == list(how.guided_timesteps if how.guidance else [])
    calls, forward = [], diff.model.forward

    def record(x, t, y=None):
        out = forward(x, t, y) if y is not None else forward(x, t)
        calls.append({"t": int(t[0]), "labels": None if y is None else y.tolist(),
                      "x": x.flatten().tolist(), "out": out.float().flatten().tolist()})
        return out
    drawn, draw_noise = [], PerImageNoise.__call__

    def record_noise(self, like):  # every draw of the seed's per-image generators, in order
        drawn.append(draw_noise(self, like))
        return drawn[-1]
    y = None if labels is None else torch.tensor(labels)
    diff.model.forward, PerImageNoise.__call__ = record, record_noise
    try:
        with torch.no_grad():
            if strength is None:  # the start noise given, eta > 0's fresh noise seed 5's
                x0 = run_plan(how, diff.eps_fn(y, how.guidance, how.guidance_interval), diff.schedule, noise,
                              PerImageNoise(5, len(noise)))
            else:  # the CLI's edit: image i's noise is that of image i of the seed (seed 5 here), then its fresh
                [(_, x0)] = list(edit_batches(diff, image, how, labels=y, seed=5))
                noise = drawn.pop(0)
    finally:
        del diff.model.forward
        PerImageNoise.__call__ = draw_noise
    assert len(drawn) == sum(step["fresh"] for step in program["program"]) and (len(drawn) > 0) == (how.eta > 0)
    with torch.no_grad():
        assert torch.equal(interpret(program, diff, y, guidance, noise, image, drawn), x0)
    return {"plan": plan_json, "draw": draw, "guidance": guidance, "labels": labels, "strength": strength,
            "image": None if image is None else image.flatten().tolist(), "noise": noise.flatten().tolist(),
            "fresh": [v for z in drawn for v in z.flatten().tolist()],
            "calls": calls, "want": x0.flatten().tolist(), "tolerance": TOLERANCE}


def student():
    """A distilled student (v, its own ddim grid, guidance 0.5 built in) with random weights."""
    teacher = wrap(random_unet(), T=50)
    cfg = student_config(teacher, DistillConfig(teacher="teacher.pt", guidance=0.5, pairs=8, teacher_steps=2))
    return Diffusion(random_unet(seed=3), cfg, device="cpu", precision="fp32")


def cases():
    """(name, model, draw, labels, what): what the page is asked to draw."""
    guided = wrap(random_unet(), T=50).with_sampling(SamplingConfig(guidance=1.0))
    quadratic = guided.with_sampling(SamplingConfig(guidance=1.0, corrector=2))
    deterministic = guided.with_sampling(SamplingConfig(guidance=1.0, eta=0.0))
    ddim = guided.with_sampling(SamplingConfig(sampler="ddim", eta=1.0))
    uncond = wrap(random_unet(num_classes=None, seed=1), num_classes=None, T=50)
    flow = wrap(random_unet(seed=2), T=50, schedule="flow", prediction="flow").with_sampling(
        SamplingConfig(guidance=0.5))
    pupil = student()
    image = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return [("student-1", pupil, "1", [3, 8], {}), ("student-2", pupil, "2", [0, 9], {}),
            ("guided-teacher-20", guided, "20", [3, 8], {}),
            ("guided-teacher-20-at-2", guided, "20", [3, 8], {"guidance": 2.0}),
            ("guided-teacher-10-unguided", guided, "10", [3, 8], {"guidance": 0.0}),
            ("guided-teacher-10-quadratic", quadratic, "10", [0, 9], {}),
            ("guided-teacher-10-eta0", deterministic, "10", [5, 6], {}), ("ddim-eta1-10", ddim, "10", [2, 7], {}),
            ("unlabelled-20", uncond, "20", None, {}), ("flow-20", flow, "20", [1, 2], {}),
            ("edit-guided-teacher-20", guided, "20", [4, 7], {"strength": 0.6, "image": image}),
            ("edit-student-2", pupil, "2", [4, 7], {"strength": 0.3, "image": image}),
            ("edit-unlabelled-10-from-noise", uncond, "10", None, {"strength": 1.0, "image": image})]


def test_plan_json_offers_every_draw_guided_unguided_and_as_each_edit(cond):
    plan = sampling_plan(cond.with_sampling(SamplingConfig(guidance=1.0)))
    assert plan["edit_strengths"] == [f"{s:g}" for s in EDIT_STRENGTHS] and set(plan["draws"]) == {"10", "20"}
    for draw in plan["draws"].values():
        for modes in (draw, *draw["edits"].values()):
            assert modes["guided"]["corrector"] == 1 and modes["unguided"]["corrector"] == 0
    # t0 = round(s T) - 1 on T = 20; from T - 1 the noise itself (samplers.sdedit)
    assert plan["draws"]["20"]["edits"]["0.5"]["guided"]["start"] == 9
    assert plan["draws"]["20"]["edits"]["1"]["guided"]["init"] == [[1.0, "noise"]]
    # the card's draw, its eta too: guided 0.5 (fresh noise at every step but the last), unguided 2
    assert (plan["draws"]["20"]["guided"]["eta"], plan["draws"]["20"]["unguided"]["eta"]) == (0.5, 2.0)
    assert [s["fresh"] for s in plan["draws"]["20"]["guided"]["program"]] == [True] * 19 + [False]
    # what the page cannot run is refused in one line; a card with such a sampler is drawn with dpmpp
    for sampler in ("ddpm", "heun"):
        with pytest.raises(ConfigError, match="the page runs ddim or dpmpp draws and edits") as e:
            compile_plan(cond.plan(sampler=sampler, steps=4), cond.schedule)
        assert "\n" not in str(e.value)
        assert sampling_plan(cond.with_sampling(SamplingConfig(sampler=sampler)))["draws"]["10"]["unguided"][
            "sampler"] == "dpmpp"


@pytest.mark.system
@pytest.mark.skipif(NODE is None, reason="no Node.js here")
def test_the_page_sampler_replays_pythons_draws(tmp_path):
    noise = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    for name, diff, draw, labels, what in cases():
        fixture = recorded_draw(diff, draw, labels, noise, **what)
        assert fixture["calls"], name
        (tmp_path / f"{name}.json").write_text(json.dumps(fixture))
    shutil.copyfile(SAMPLER_JS, tmp_path / "sampler.mjs")
    r = subprocess.run([NODE, "--test", str(HERE / "page_sampler.test.mjs")], capture_output=True, text=True,
                       timeout=300, env={"PAGE_FIXTURES": str(tmp_path), "PAGE_SAMPLER": str(tmp_path / "sampler.mjs"),
                                         "PATH": str(Path(NODE).parent)})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert f"# pass {len(cases()) + 2}" in r.stdout, r.stdout[-2000:]
