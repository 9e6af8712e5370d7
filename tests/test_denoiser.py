"""What a model can be asked for (denoiser.Capabilities), decided once from its config, and read the
same by the pipeline's checks, the demo and the static page's plan.json."""
from __future__ import annotations

import pytest
import torch

from mnist_diffusion.config import RunConfig
from mnist_diffusion.denoiser import capabilities

from conftest import random_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def config(num_classes=10, dataset="mnist", classes=(), cluster_sizes=(), teacher=""):
    return RunConfig.from_dict({
        "model": {"base_dim": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "num_classes": num_classes},
        "diffusion": {"timesteps": 20, "schedule": "cosine"},
        "train": {"dataset": dataset, "classes": list(classes), "clusters": len(cluster_sizes),
                  "cluster_sizes": list(cluster_sizes)},
        "distill": {"teacher": teacher, "guidance": 0.5}})


def test_each_kind_of_model_and_what_it_can_be_asked_for():
    rows = {  # config: (class names, clustered, distilled, guidable, draws unlabelled, inpaints)
        "unlabelled": (config(None), (), False, False, False, True, True),
        "mnist": (config(10), tuple("0123456789"), False, False, True, True, True),
        "fashion": (config(10, "fashion_mnist"), None, False, False, True, True, True),
        "named folder": (config(3, "folder:/data/pets", classes=("cat", "dog", "bird")), ("cat", "dog", "bird"),
                         False, False, True, True, True),
        "clusters": (config(4, cluster_sizes=(5, 6, 7, 8)), tuple(f"cluster {i}" for i in range(4)), True, False,
                     True, True, True),
        "student": (config(10, teacher="mnist"), tuple("0123456789"), False, True, False, False, False),
        "unlabelled student": (config(None, teacher="mnist-uncond"), (), False, True, False, True, False),
    }
    for what, (cfg, names, clustered, distilled, guidable, unlabelled, inpaints) in rows.items():
        can = capabilities(cfg)
        got = (can.clustered, can.distilled, can.guidable, can.draws_unlabelled, can.inpaints)
        assert got == (clustered, distilled, guidable, unlabelled, inpaints), what
        if names is not None:
            assert can.class_names == names, what
        assert can.labelled == bool(can.class_names) and len(can.class_names) == (cfg.model.num_classes or 0), what
        assert can.built_in_guidance == (0.5 if distilled else 0.0), what
    assert capabilities(config(10, "fashion_mnist")).class_names[9] == "Ankle boot"


def test_the_pipeline_refuses_what_the_capabilities_rule_out():
    from mnist_diffusion.diffusion import Diffusion
    student = Diffusion(random_unet(), config(10, teacher="mnist"), device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="a distilled student needs a label"):
        student.sample(2, steps=1)
    with pytest.raises(ValueError, match="built in; it takes no further guidance"):
        student.sample(2, label=3, guidance=1.0, steps=1)
    with pytest.raises(ValueError, match=r"inpaint with its teacher \(mnist\)"):
        half = torch.ones(28, 28)
        half[:, :14] = 0  # the left half to fill in
        student.inpaint(torch.zeros(1, 28, 28, dtype=torch.uint8).numpy(), half, label=3)
    assert student.sample(2, label=3, steps=1, seed=0).shape == (2, 28, 28)


def test_the_page_and_the_demo_name_the_classes_alike():
    """A model trained on one's own named classes: the static page's plan.json and the demo show its
    names (the page once showed 0..K-1 for them), and plan.json carries the capabilities whole."""
    from mnist_diffusion.demo import class_names, label_choices
    from mnist_diffusion.diffusion import Diffusion
    from mnist_diffusion.portable import sampling_plan
    diff = Diffusion(random_unet(3), config(3, "folder:/data/pets", classes=("cat", "dog", "bird")), device="cpu",
                     precision="fp32")
    plan = sampling_plan(diff)
    assert plan["class_names"] == class_names(diff) == ["cat", "dog", "bird"]
    assert label_choices(diff) == ["one of each", "cat", "dog", "bird", "none"]
    assert plan["capabilities"] == diff.capabilities.as_dict() and plan["takes_guidance"] is True
