"""`simple`: the first network people try — a plain stack of convolutions at full resolution,
with t/T passed through a linear layer and added to every layer's features. No down-sampling, no
skips: it shows how much the U-Net's structure buys.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from . import register
from .layers import LabelEmbedding


class SimpleCNN(nn.Module):
    def __init__(self, cfg: ModelConfig, timesteps: int):
        super().__init__()
        c = cfg.base_dim
        self.timesteps = timesteps
        self.t_linear = nn.Linear(1, c)
        self.label_emb = LabelEmbedding(cfg.num_classes, c) if cfg.num_classes else None
        depth = 2 + 2 * cfg.num_res_blocks
        self.convs = nn.ModuleList([nn.Conv2d(1, c, 3, padding=1)] +
                                   [nn.Conv2d(c, c, 3, padding=1) for _ in range(depth - 1)])
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x, t, y=None):
        emb = self.t_linear((t.float() / self.timesteps)[:, None].to(x.dtype))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y, x.shape[0], x.device)
        h = x
        for conv in self.convs:
            h = F.silu(conv(h) + emb[:, :, None, None])
        return self.out(h)


@register("simple", "plain CNN at full resolution, linear t embedding (a baseline)", needs_timesteps=True,
          defaults={"base_dim": 64, "num_res_blocks": 2})
def _simple(cfg: ModelConfig, timesteps: int) -> nn.Module:
    return SimpleCNN(cfg, timesteps)
