"""The demo's request checks (demo/checks.py) without a server: every value a page or a script may
send is checked before any work, and each refusal is one line naming the field. test_demo.py sends
the same values over HTTP to the real server (and the count and file checks only Gradio can see)."""
from __future__ import annotations

import numpy as np
import pytest

from mnist_diffusion import demo
from mnist_diffusion.pretrained import PRETRAINED

pytestmark = pytest.mark.skipif("mnist" not in PRETRAINED, reason="the checks are read against the shipped mnist")

GENERATE = ["one of each", 0.5, "ddim", 4, 0, 2]
EDIT = ["test digit", None, 3, "7", 0.3, "SDEdit", "bottom", None, 0]
CHECK = {"generate": lambda diff, v: demo.check(demo.Request(*v), diff),
         "edit": lambda diff, v: demo.check_edit(diff, *v),
         "explain": lambda diff, v: demo.check_explain(diff, *v)}


@pytest.fixture(scope="module")
def mnist_model(mnist):  # the test digits come from the dataset (1,000 of them)
    from mnist_diffusion.diffusion import Diffusion
    return Diffusion.load("mnist", device="cpu")


def _with(values: list, i: int, v) -> list:
    return [*values[:i], v, *values[i + 1:]]


# (request, the values, what the message says): each is one thing wrong
WRONG = [
    ("generate", _with(GENERATE, 0, 7), "digit must be one of 'one of each', '0', "),
    ("generate", _with(GENERATE, 0, None), "digit must be one of 'one of each', '0', "),
    ("generate", _with(GENERATE, 1, "abc"), "guidance must be a number in [0, 10], got 'abc'"),
    ("generate", _with(GENERATE, 1, float("nan")), "guidance must be a number in [0, 10], got nan"),
    ("generate", _with(GENERATE, 1, float("-inf")), "guidance must be a number in [0, 10], got -inf"),
    ("generate", _with(GENERATE, 1, True), "guidance must be a number in [0, 10], got True"),
    ("generate", _with(GENERATE, 1, 10.5), "guidance must be a number in [0, 10], got 10.5"),
    ("generate", _with(GENERATE, 2, "euler"), "sampler must be one of 'dpmpp', 'ddim', 'ddpm', got 'euler'"),
    ("generate", _with(GENERATE, 3, 2.5), "steps for ddim must be a whole number from 1 to 200, got 2.5"),
    ("generate", _with(_with(GENERATE, 2, "dpmpp"), 3, 101), "steps for dpmpp must be a whole number from 1 to 100"),
    ("generate", _with(GENERATE, 3, 0), "steps for ddim must be a whole number from 1 to 200, got 0"),
    ("generate", _with(GENERATE, 4, -1), "seed must be a whole number from 0 to 2147483647, got -1"),
    ("generate", _with(GENERATE, 4, 2**31), "seed must be a whole number from 0 to 2147483647, got 2147483648"),
    ("generate", _with(GENERATE, 5, 17),
     "the number of images (at most 16 images) must be a whole number from 1 to 16"),
    ("generate", ["none", 0.5, "ddim", 4, 0, 2], "guidance steers towards a class: pick one, or set guidance to 0"),
    ("edit", _with(EDIT, 0, "bogus"), "start from must be one of 'canvas', 'test digit', got 'bogus'"),
    ("edit", _with(EDIT, 2, "x"), "test digit # must be a whole number from 0 to 999, got 'x'"),
    ("edit", _with(EDIT, 2, 1000), "test digit # must be a whole number from 0 to 999, got 1000"),
    ("edit", _with(EDIT, 3, 7), "towards class must be one of '0', '1', "),
    ("edit", _with(EDIT, 4, float("nan")), "SDEdit strength must be a number in [0, 1], got nan"),
    ("edit", _with(EDIT, 4, 0), "SDEdit strength 0 changes nothing: give a value in (0, 1]"),
    ("edit", _with(EDIT, 5, "bogus"), "edit must be one of 'SDEdit', 'inpaint', got 'bogus'"),
    ("edit", _with(_with(EDIT, 5, "inpaint"), 6, "everywhere"), "inpaint: region to fill must be one of 'left', "),
    ("edit", _with(_with(EDIT, 5, "inpaint"), 6, "painted"), "draw something first (or pick a test digit)"),
    ("edit", _with(EDIT, 0, "canvas"), "draw something first (or pick a test digit)"),
    ("edit", _with(_with(EDIT, 0, "canvas"), 1, np.zeros((280, 280), np.uint8)), "the canvas is empty"),
    ("edit", _with(_with(EDIT, 0, "canvas"), 1, np.zeros((4096, 4096), np.uint8)),
     "the image must be a picture of at most 4,194,304 pixels, got shape (4096, 4096)"),
    ("edit", _with(EDIT, 8, "s"), "seed must be a whole number from 0 to 2147483647, got 's'"),
    ("explain", [None, 5], "test digit # must be a whole number from 0 to 999, got nothing"),
    ("explain", [0, float("inf")], "timestep t must be a whole number from 0 to 999, got inf"),
    ("explain", [0, 1000], "timestep t must be a whole number from 0 to 999, got 1000"),
]


@pytest.mark.parametrize("what, values, message", WRONG, ids=[f"{w}-{i}" for i, (w, _, _) in enumerate(WRONG)])
def test_each_wrong_value_is_refused_in_one_line_naming_it(mnist_model, what, values, message):
    with pytest.raises(demo.DemoError) as e:
        CHECK[what](mnist_model, values)
    said = str(e.value)
    assert message in said and "\n" not in said, said


def test_good_requests_come_back_checked_and_whole(mnist_model):
    req = demo.Request("one of each", 0.5, "ddim", 4.0, 7.0, 12.0)  # JSON numbers may come as floats
    labels, n = demo.check(req, mnist_model)
    assert n == 12 and labels.tolist() == [i % 10 for i in range(12)]
    assert (req.steps, req.seed, req.num_images) == (4, 7, 12) and all(
        type(v) is int for v in (req.steps, req.seed, req.num_images))
    assert demo.check(demo.Request("3", 0.0, "ddpm", 1000, 0, 2), mnist_model)[0].tolist() == [3, 3]
    assert demo.check(demo.Request("none", 0.0, "dpmpp", 20, 0, 2), mnist_model)[0] is None

    sdedit = demo.check_edit(mnist_model, *EDIT)
    assert (sdedit.mode, sdedit.label, sdedit.strength, sdedit.mask, sdedit.seed) == ("SDEdit", 7, 0.3, None, 0)
    assert sdedit.digit.shape == (1, 28, 28) and sdedit.digit.dtype == np.uint8
    inpaint = demo.check_edit(mnist_model, *_with(_with(EDIT, 5, "inpaint"), 4, None))
    assert tuple(inpaint.mask.shape) == (1, 28, 28) and inpaint.strength is None
    # the bottom preset: known pixels and a region to fill
    assert set(np.unique(np.asarray(inpaint.mask))) == {0.0, 1.0}
    stroke = np.zeros((280, 280), np.uint8)
    stroke[100:180, 130:150] = 255
    painted = demo.check_edit(mnist_model, *_with(_with(_with(EDIT, 5, "inpaint"), 6, "painted"), 7, stroke))
    assert 0 < float(painted.mask.mean()) < 1  # the painted strokes are what is filled in
    assert demo.check_explain(mnist_model, 5.0, 999.0) == (5, 999)


def test_a_students_limits(mnist):
    if "mnist-fast" not in PRETRAINED:
        pytest.skip("mnist-fast is not shipped")
    from mnist_diffusion.diffusion import Diffusion
    student = Diffusion.load("mnist-fast", device="cpu")
    for req, words in [(demo.Request("7", 0.5, "ddim", 1, 0, 2), "guidance W = 0.5 built in"),
                       (demo.Request("none", 0, "ddim", 1, 0, 2), "not unlabelled images"),
                       (demo.Request("7", 0, "dpmpp", 1, 0, 2), "sampler of a distilled student must be one of 'ddim'"),
                       (demo.Request("7", 0, "ddim", 3, 0, 2), "steps of a distilled student must be a whole number "
                                                               "from 1 to 2")]:
        with pytest.raises(demo.DemoError, match=words):
            demo.check(req, student)
    assert demo.check(demo.Request("7", 0, "ddim", 2, 0, 3), student)[0].tolist() == [7, 7, 7]
    with pytest.raises(demo.DemoError, match="inpaint with its teacher"):
        demo.check_edit(student, *_with(EDIT, 5, "inpaint"))
    with pytest.raises(demo.DemoError, match="not unlabelled images"):
        demo.check_edit(student, *_with(EDIT, 3, "none"))
