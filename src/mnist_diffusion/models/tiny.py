"""`tiny`: the "ultra light" design — a U-Net of depthwise-separable convolutions with residual
shortcuts and channel shuffle, and a simple learned timestep embedding (one nn.Embedding row per
timestep), in the spirit of the MNISTDiffusion seed project. About 1.1M parameters at base_dim 64.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from . import register
from .layers import LabelEmbedding


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class SepConv(nn.Module):
    """Depthwise 3x3 + pointwise 1x1, each with BatchNorm-free GroupNorm (batch-size independent)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch)
        self.pw = nn.Conv2d(in_ch, out_ch, 1)
        self.norm = nn.GroupNorm(8 if out_ch % 8 == 0 else 1, out_ch)

    def forward(self, x):
        return F.silu(self.norm(self.pw(self.dw(x))))


class Block(nn.Module):
    """Two separable convs with a shortcut; the time embedding is added in between."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.conv1 = SepConv(in_ch, out_ch)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.conv2 = SepConv(out_ch, out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(x) + self.emb(emb)[:, :, None, None]
        h = self.conv2(_shuffle(h, 2) if h.shape[1] % 2 == 0 else h)
        return self.skip(x) + h


class TinyUNet(nn.Module):
    def __init__(self, cfg: ModelConfig, timesteps: int):
        super().__init__()
        c = cfg.base_dim
        mults = cfg.channel_mults
        emb_dim = c
        self.time_emb = nn.Embedding(timesteps, emb_dim)  # learned, one row per t
        self.label_emb = LabelEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes else None
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        chans = [c] + [c * m for m in mults]
        n = cfg.num_res_blocks
        self.enc = nn.ModuleList(
            nn.ModuleList([Block(chans[i], chans[i + 1], emb_dim)] + [Block(chans[i + 1], chans[i + 1], emb_dim)
                                                                       for _ in range(n - 1)])
            for i in range(len(mults)))
        self.mid = Block(chans[-1], chans[-1], emb_dim)
        self.dec = nn.ModuleList(
            nn.ModuleList([Block(chans[i + 1] * 2, chans[i], emb_dim)] + [Block(chans[i], chans[i], emb_dim)
                                                                          for _ in range(n - 1)])
            for i in reversed(range(len(mults))))
        self.head = nn.Conv2d(c, 1, 1)
        self.num_levels = len(mults)

    def forward(self, x, t, y=None):
        emb = self.time_emb(t)
        if self.label_emb is not None:
            emb = emb + self.label_emb(y, x.shape[0], x.device)
        h = self.stem(x)
        skips = []
        for i, blocks in enumerate(self.enc):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if i < self.num_levels - 1:
                h = F.avg_pool2d(h, 2)  # 28 -> 14 -> 7
        h = self.mid(h, emb)
        for blocks in self.dec:
            s = skips.pop()
            if h.shape[-1] != s.shape[-1]:
                h = F.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = blocks[0](torch.cat([h, s], dim=1), emb)
            for block in blocks[1:]:
                h = block(h, emb)
        return self.head(h)


@register("tiny", "depthwise-separable U-Net, learned t embedding (~1.1M params at base_dim 64)", needs_timesteps=True,
          defaults={"base_dim": 64, "channel_mults": (2, 4), "num_res_blocks": 3})
def _tiny(cfg: ModelConfig, timesteps: int) -> nn.Module:
    return TinyUNet(cfg, timesteps)
