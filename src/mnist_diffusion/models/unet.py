"""The default network: a time-conditioned U-Net for 28x28 images (Ho et al. 2020, Appendix B,
scaled down). Residual blocks with GroupNorm, a sinusoidal timestep embedding through an MLP,
concatenated skip connections, optional class embedding added to the time embedding.

Resolutions for channel_mults of length 3: 28 -> 14 -> 7 and back. `unet_p2` first folds each 2x2
patch of pixels into 4 channels (pixel unshuffle: 28 -> 14 before the first convolution) and unfolds
its 4 output channels at the end (pixel shuffle), so its levels start at 14x14: wider, fewer
positions, the same receptive field per layer in image pixels doubled.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from . import register
from .layers import LabelEmbedding, sinusoidal_embedding


def _norm(ch: int) -> nn.GroupNorm:
    groups = 8 if ch % 8 == 0 else 1
    return nn.GroupNorm(groups, ch)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, norms: int = 2):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch) if norms == 2 else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over spatial positions (used at the 7x7 level when enabled)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, cfg: ModelConfig, attention: bool = False, patch: int = 1):
        super().__init__()
        c = cfg.base_dim
        emb_dim = 4 * c
        norms = cfg.block_norms
        self.skips_per_level = cfg.num_res_blocks + 1  # each level's up path reads the first up_blocks of them
        self.up_blocks = cfg.decoder_blocks or self.skips_per_level
        self.base_dim = c
        self.time_mlp = nn.Sequential(nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = LabelEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes else None
        self.patch = patch
        self.conv_in = nn.Conv2d(patch * patch, c, 3, padding=1)

        chans = [c * m for m in cfg.channel_mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_chs = [c]
        ch = c
        for i, out_ch in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, out_ch, emb_dim, cfg.dropout, norms))
                ch = out_ch
                skip_chs.append(ch)
            self.down.append(blocks)
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skip_chs.append(ch)

        self.mid1 = ResBlock(ch, ch, emb_dim, cfg.dropout, norms)
        self.mid_attn = SelfAttention(ch) if attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, cfg.dropout, norms)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, out_ch in reversed(list(enumerate(chans))):
            blocks = nn.ModuleList()
            for j in range(self.skips_per_level):
                skip = skip_chs.pop()
                if j < self.up_blocks:
                    blocks.append(ResBlock(ch + skip, out_ch, emb_dim, cfg.dropout, norms))
                    ch = out_ch
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1) if i > 0 else nn.Identity())

        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, patch * patch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_dim).to(x.dtype))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y, x.shape[0], x.device)
        h = self.conv_in(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        skips = [h]
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks, up in zip(self.up, self.upsample):
            level = [skips.pop() for _ in range(self.skips_per_level)]  # this level's, deepest first
            for block, skip in zip(blocks, level):
                h = block(torch.cat([h, skip], dim=1), emb)
            if not isinstance(up, nn.Identity):
                # to the size of the skip it meets next: 7 -> 14, but 4 -> 7 when a fourth level halved 7
                h = up(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


@register("unet", "residual U-Net, GroupNorm, sinusoidal time embedding (default)",
          defaults={"base_dim": 32, "channel_mults": (1, 2, 2), "num_res_blocks": 2})
def _unet(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg)


@register("unet_attn", "unet plus self-attention at the lowest resolution",
          defaults={"base_dim": 32, "channel_mults": (1, 2, 2), "num_res_blocks": 2})
def _unet_attn(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg, attention=True)


@register("unet_p2", "unet on 2x2 pixel patches: levels from 14x14 (faster per image, worse FID)",
          defaults={"base_dim": 64, "channel_mults": (1, 2), "num_res_blocks": 1})
def _unet_p2(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg, patch=2)
