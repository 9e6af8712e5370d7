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
    assert set(d) == {"model", "diffusion", "train"}
