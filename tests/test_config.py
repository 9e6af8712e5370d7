import json

import pytest

from mnist_diffusion.config import ConfigError, RunConfig, preset


def test_json_round_trip_is_identity():
    cfg = preset("quick")
    assert RunConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("patch, words", [
    ({"train": {"lrr": 1e-3}}, "unknown key(s) in train: lrr"),
    ({"bogus": {}}, "unknown config section"),
    ({"train": {"batch_size": "128"}}, "train.batch_size must be an integer"),
    ({"train": {"batch_size": 1.5}}, "train.batch_size must be an integer"),
    ({"model": {"channel_mults": 2}}, "model.channel_mults must be a list"),
    ({"train": {"clip": 1}}, "train.clip must be true or false"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be positive"),
    ({"train": {"lr": -1.0}}, "train.lr must be in"),
    ({"diffusion": {"schedule": "quadratic"}}, "diffusion.schedule must be one of"),
    ({"train": {"dataset": "cifar"}}, "train.dataset must be one of"),
    ({"train": {"t_sampling": "lognormal"}}, "train.t_sampling must be one of"),
    ({"train": {"t_logit_std": 0.0}}, "train.t_logit_std must be in (0, 20]"),
    ({"train": {"t_logit_mean": float("nan")}}, "train.t_logit_mean must be a finite number"),
])
def test_bad_config_is_rejected_naming_the_key(patch, words):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(patch)
    assert words in str(e.value)


def test_invalid_json_is_a_config_error():
    with pytest.raises(ConfigError):
        RunConfig.from_json("{not json")


def test_replace_validates():
    cfg = preset("quick")
    assert cfg.replace(train={"lr": 1e-3}).train.lr == 1e-3
    with pytest.raises(ConfigError):
        cfg.replace(train={"epochs": -3})


def test_config_file_is_plain_json():
    d = json.loads(preset("default").to_json())
    assert set(d) == {"model", "diffusion", "train", "sampling"}


# ---------------------------------------------------------------------------------------------
# the sampling section a model ships with

def test_a_config_without_a_sampling_section_gets_the_library_default():
    from mnist_diffusion.config import SamplingConfig
    cfg = RunConfig.from_dict({"model": {"num_classes": 10}})
    assert cfg.sampling == SamplingConfig() and cfg.sampling.sampler == "dpmpp" and cfg.sampling.steps is None
    assert cfg.sampling.guidance == 0.0


def test_the_sampling_section_round_trips_through_json():
    from mnist_diffusion.config import SamplingConfig
    cfg = RunConfig.from_dict({"model": {"num_classes": 10},
                               "sampling": {"sampler": "dpmpp", "steps": 20, "guidance": 0.5,
                                            "guidance_interval": [0, float("inf")], "corrector": 0}})
    back = RunConfig.from_json(cfg.to_json())
    assert back == cfg and back.sampling.guidance_interval == (0.0, float("inf"))
    assert back.sampling == SamplingConfig(sampler="dpmpp", steps=20, guidance=0.5,
                                           guidance_interval=(0.0, float("inf")), corrector=0)


@pytest.mark.parametrize("section, message", [
    ({"sampler": "rk4"}, "unknown sampler"), ({"steps": 2.5}, "sampling.steps must be an integer"),
    ({"guidance": "0.5"}, "sampling.guidance must be a finite number"), ({"eta": 11.0}, "eta 11.0 is outside"),
    ({"corrector": 1, "sampler": "ddim"}, "the corrector is dpmpp's"), ({"nonsense": 1}, "unknown key"),
    ({"steps": 5000}, "only T = 1000")])
def test_a_bad_sampling_section_is_one_line_naming_it(section, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"sampling": section})


def test_override_keeps_what_is_not_given_and_a_new_sampler_starts_from_its_own_defaults():
    from mnist_diffusion.config import SamplingConfig
    own = SamplingConfig(sampler="dpmpp", steps=20, guidance=0.5, corrector=0)
    assert own.override(steps=None, guidance=None) == own
    assert own.override(guidance=1.0) == SamplingConfig(sampler="dpmpp", steps=20, guidance=1.0, corrector=0)
    # ddim with the stored dpmpp steps/corrector would be wrong: they were chosen for dpmpp
    assert own.override(sampler="ddim") == SamplingConfig(sampler="ddim", guidance=0.5)
    with pytest.raises(TypeError, match="unknown sampling option"):
        own.override(stepz=3)


def test_new_runs_record_the_recommended_sampling():
    from mnist_diffusion.config import preset, resolve
    quick = resolve(preset("quick"), {})
    assert (quick.sampling.sampler, quick.sampling.steps, quick.sampling.guidance) == ("dpmpp", 20, 0.5)
    uncond = resolve(preset("quick"), {}, conditional=False)
    assert uncond.sampling.guidance == 0.0
    clusters = resolve(preset("quick"), {"train.clusters": 10}, conditional=False)
    assert clusters.sampling.guidance == 1.0
    tiny = resolve(RunConfig.from_dict({"diffusion": {"timesteps": 10}}), {})
    assert tiny.sampling.steps == 10  # never more steps than the model has timesteps
    # a checkpoint from before configs had a sampling section resumes with the recommended one,
    # and a finished config comes back as it is: training.train edits neither
    assert resolve(preset("quick"), {}, resuming="old.pt").sampling == quick.sampling
    assert resolve(quick, {}) == quick and resolve(uncond, {}, resuming="last.pt") == uncond
