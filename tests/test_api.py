"""The public API: the README's Python example runs as written (on the tiny preset), and
`import mnist_diffusion` stays light until a name is used."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The first ```python block of the README: the example its first screen shows."""
    return re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)


def test_readme_example_runs_on_the_tiny_preset(mnist, tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert 'md.preset("quick")' in code and len(code.strip().splitlines()) <= 6
    monkeypatch.chdir(tmp_path)  # the example writes runs/ where it runs
    scope: dict = {}
    exec(code.replace('md.preset("quick")', 'md.preset("tiny")'), scope)  # noqa: S102 - our own README
    imgs, report, diff = scope["imgs"], scope["report"], scope["diff"]
    assert imgs.dtype == np.uint8 and imgs.shape == (16, 28, 28)
    assert report["n"] == 16 and {"fid", "fid_floor", "recognizable", "precision", "recall"} <= set(report)
    # the model loaded back from the run draws the very same images from the same seed
    again = diff.sample(16, label=7, guidance=0.5, sampler="dpmpp", steps=20, seed=0)
    assert again.tobytes() == imgs.tobytes()


def test_train_in_memory_writes_nothing(mnist, tmp_path, monkeypatch):
    import mnist_diffusion as md
    monkeypatch.chdir(tmp_path)
    diff = md.train("tiny", max_steps=3, progress=False)
    assert isinstance(diff, md.Diffusion) and diff.step == 3 and diff.num_classes == 10
    assert list(tmp_path.iterdir()) == []
    assert diff.sample(2, label=[3, 4], sampler="ddim", steps=2).shape == (2, 28, 28)


@pytest.mark.system
def test_import_is_light_until_a_name_is_used():
    code = ("import sys, mnist_diffusion as md; assert 'torch' not in sys.modules; "
            "md.preset('tiny'); assert 'torch' not in sys.modules; md.Diffusion; assert 'torch' in sys.modules; "
            "print(sorted(md.__all__))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("Diffusion", "load", "train", "evaluate", "preset", "RunConfig", "SamplingConfig", "SamplingPlan"):
        assert name in r.stdout
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import mnist_diffusion
        mnist_diffusion.nope


def test_train_checks_its_arguments_and_records_the_recommended_sampling(mnist, tmp_path, monkeypatch):
    import mnist_diffusion as md
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="dataset must be a name"):
        md.train("tiny", dataset=123, max_steps=1, progress=False)  # once trained on MNIST instead
    with pytest.raises(TypeError, match="config must be a RunConfig or a preset name"):
        md.train(3, max_steps=1, progress=False)
    with pytest.raises(ValueError, match="unknown key"):
        md.train("tiny", max_stepz=1, progress=False)
    diff = md.train(md.preset("tiny"), max_steps=1, progress=False)  # a RunConfig: no sampling section of its own
    assert (diff.config.sampling.sampler, diff.config.sampling.guidance) == ("dpmpp", 0.5)


def test_edit_and_inpaint_check_their_arguments(mnist, monkeypatch, tmp_path):
    import mnist_diffusion as md
    monkeypatch.chdir(tmp_path)
    diff = md.load("mnist", device="cpu")
    images = mnist["test"].images[:2]
    for kwargs, error, words in [(dict(strength="0.5"), ValueError, "strength must be in"),
                                 (dict(strength=0.5, seed=1.5), TypeError, "seed must be"),
                                 (dict(strength=0.5, label=2.5), TypeError, "label must be"),
                                 (dict(strength=0.5, steps=0), ValueError, "steps must be")]:
        with pytest.raises(error, match=words):
            diff.edit(images, **kwargs)
    mask = np.ones((28, 28), np.float32)
    mask[:, 14:] = 0  # the right half to fill in
    for kwargs, error, words in [(dict(resample=0), ValueError, "resample must be"),
                                 (dict(jump_length=1.5), TypeError, "jump_length must be"),
                                 (dict(seed=-1), ValueError, "seed must be")]:
        with pytest.raises(error, match=words):
            diff.inpaint(images, mask, **kwargs)


def test_load_without_a_source_is_one_error_naming_it(tmp_path, monkeypatch):
    """md.load(None) used to fail inside pathlib and md.load('') to read the current folder."""
    import mnist_diffusion as md
    monkeypatch.chdir(tmp_path)
    for source, error in [(None, TypeError), ("", ValueError), ("  ", ValueError), (3, TypeError)]:
        for load in (md.load, md.Diffusion.load):
            with pytest.raises(error) as e:
                load(source)
            msg = str(e.value)
            assert msg.startswith("source ") and "shipped model" in msg and "\n" not in msg, msg
