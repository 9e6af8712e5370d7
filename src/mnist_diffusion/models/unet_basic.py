"""`unet_basic`: a plain U-Net — double 3x3 conv blocks with BatchNorm-free GroupNorm,
max-pool down, transposed-conv up, concatenated skips, and an nn.Embedding for t added after the
first conv of each block. No residual connections, no sinusoidal features.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from . import register
from .layers import LabelEmbedding


class DoubleConv(nn.Module):
    def __init__(self, in_ch, out_ch, emb_dim):
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.n1 = nn.GroupNorm(8 if out_ch % 8 == 0 else 1, out_ch)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.n2 = nn.GroupNorm(8 if out_ch % 8 == 0 else 1, out_ch)

    def forward(self, x, emb):
        h = F.relu(self.n1(self.c1(x)) + self.emb(emb)[:, :, None, None])
        return F.relu(self.n2(self.c2(h)))


class BasicUNet(nn.Module):
    def __init__(self, cfg: ModelConfig, timesteps: int):
        super().__init__()
        c = cfg.base_dim
        emb_dim = 4 * c
        self.t_embed = nn.Embedding(timesteps, emb_dim)
        self.label_emb = LabelEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes else None
        chans = [c * m for m in cfg.channel_mults]
        self.downs = nn.ModuleList()
        ch = 1
        for out_ch in chans:
            self.downs.append(DoubleConv(ch, out_ch, emb_dim))
            ch = out_ch
        self.mid = DoubleConv(ch, ch * 2, emb_dim)
        ch = ch * 2
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for out_ch in reversed(chans):
            self.ups.append(nn.ConvTranspose2d(ch, out_ch, 2, stride=2))
            self.up_convs.append(DoubleConv(out_ch * 2, out_ch, emb_dim))
            ch = out_ch
        self.out = nn.Conv2d(ch, 1, 1)

    def forward(self, x, t, y=None):
        emb = self.t_embed(t)
        if self.label_emb is not None:
            emb = emb + self.label_emb(y, x.shape[0], x.device)
        skips = []
        h = x
        for i, down in enumerate(self.downs):
            h = down(h, emb)
            skips.append(h)
            h = F.max_pool2d(h, 2, ceil_mode=True)  # 28 -> 14 -> 7 -> 4 (ceil keeps odd sizes)
        h = self.mid(h, emb)
        for up, conv in zip(self.ups, self.up_convs):
            s = skips.pop()
            h = up(h)[..., : s.shape[-2], : s.shape[-1]]  # crop the ceil-mode overhang
            h = conv(torch.cat([h, s], dim=1), emb)
        return self.out(h)


@register("unet_basic", "plain U-Net, concatenated skips, nn.Embedding for t", needs_timesteps=True,
          defaults={"base_dim": 32, "channel_mults": (1, 2, 4)})
def _unet_basic(cfg: ModelConfig, timesteps: int) -> nn.Module:
    return BasicUNet(cfg, timesteps)
