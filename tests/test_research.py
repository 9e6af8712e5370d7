"""research.py: the ablation form of DPM-Solver++ draws what samplers.dpmpp draws at the library's settings."""
from __future__ import annotations

import pytest
import torch

from mnist_diffusion.research import dpmpp_path
from mnist_diffusion.samplers import PerImageNoise, dpmpp, timestep_sequence
from mnist_diffusion.schedule import make_schedule

SCHEDULE = make_schedule("cosine", 100)


def _eps(x, t):
    """A smooth stand-in network: any deterministic function of (x, t) will do for the comparison."""
    return torch.tanh(x * 0.7 + t.view(-1, 1, 1, 1).float() / 100.0)


@pytest.mark.parametrize("eta, corrector", [(0.0, 0), (0.5, 1), (2.0, 0), (0.5, 2)])
def test_dpmpp_path_is_the_library_solver_at_its_settings(eta, corrector):
    steps, spacing = 8, "logsnr-capped"
    seq = timestep_sequence(SCHEDULE, steps, spacing, include_zero=False)
    a_noise, b_noise = PerImageNoise(3, 2), PerImageNoise(3, 2)
    x_a, x_b = a_noise.initial((1, 28, 28)), b_noise.initial((1, 28, 28))
    lib = dpmpp(_eps, SCHEDULE, x_a, a_noise, steps=steps, spacing=spacing, eta=eta, corrector=corrector)
    ablation = dpmpp_path(_eps, SCHEDULE, x_b, b_noise, seq, [eta] * len(seq), corrector=corrector)
    assert torch.allclose(lib, ablation, atol=1e-5)


def test_its_ablations_change_the_draw():
    seq = timestep_sequence(SCHEDULE, 8, "logsnr-capped", include_zero=False)
    x = PerImageNoise(0, 2).initial((1, 28, 28))
    base = dpmpp_path(_eps, SCHEDULE, x, None, seq, [0.0] * len(seq))
    assert not torch.allclose(base, dpmpp_path(_eps, SCHEDULE, x, None, seq, [0.0] * len(seq), order=3))
    assert not torch.allclose(base, dpmpp_path(_eps, SCHEDULE, x, None, seq, [0.0] * len(seq), pece=True))
