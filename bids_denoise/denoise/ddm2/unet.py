"""The 2-D U-Net used by both DDM2 networks (Stage I noise model and Stage III denoiser).

Architecture, as described in the DDM2 paper and its notes (written here from that
description):

* a 3x3 stem to ``width`` channels, then one encoder level per entry of ``channel_mults``
  (widths ``width * mult``), each with ``res_blocks`` residual blocks, and a stride-2 3x3
  convolution between levels;
* a middle of two residual blocks, the first with self-attention;
* a decoder that mirrors the encoder with ``res_blocks + 1`` blocks per level, each taking the
  matching encoder activation as a concatenated skip, and nearest-neighbour x2 upsampling plus
  a 3x3 convolution between levels (resized to the skip's exact size, so odd slice sizes such
  as 81x106 need no padding);
* a GroupNorm + SiLU + 3x3 head to ``out_channels``.

Residual block: GroupNorm, SiLU, 3x3 conv, (+ a per-channel projection of the noise-level
embedding), GroupNorm, SiLU, dropout, 3x3 conv, plus the input (through a 1x1 conv when the
width changes). Self-attention is single-head over all positions of the feature map and is used
in every block of the levels in ``attention_levels`` (level 3 = 1/8 scale in the paper's
configuration) and in the first middle block.

The Stage III network receives the *continuous* signal level ``gamma = sqrt(alpha_bar)`` of its
input, encoded sinusoidally and passed through a small MLP; the Stage I network has no noise
input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetworkSettings:
    """Size of the U-Net.

    Attributes
    ----------
    width : int
        Channels of the first level (paper: 32).
    channel_mults : tuple of int
        Width multiplier of every level (paper: 1, 2, 4, 8, 8, i.e. 32 to 256 channels).
    res_blocks : int
        Residual blocks per encoder level (paper: 2).
    attention_levels : tuple of int
        Levels (0 = full resolution) whose blocks use self-attention (paper: (3,), 1/8 scale).
    norm_groups : int
        GroupNorm groups (paper: 32), reduced to a divisor of each width when needed.
    dropout : float
        Dropout in the residual blocks (paper: 0).
    """

    width: int = 32
    channel_mults: tuple = (1, 2, 4, 8, 8)
    res_blocks: int = 2
    attention_levels: tuple = (3,)
    norm_groups: int = 32
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(int(a) for a in self.attention_levels))
        if self.width < 1 or self.res_blocks < 1 or not self.channel_mults:
            raise ValueError(f"invalid network settings: {self}")
        if any(m < 1 for m in self.channel_mults) or self.norm_groups < 1:
            raise ValueError(f"invalid network settings: {self}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    groups = math.gcd(channels, groups)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class LevelEncoding(nn.Module):
    """Sinusoidal features of a continuous level in [0, 1], then a 2-layer MLP."""

    #: The level is multiplied by this before the sinusoids, so that levels that differ by
    #: 1e-4 (neighbouring steps in the flat part of the schedule) still get distinct features.
    SCALE = 1000.0

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        half = max(1, dim // 2)
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim))

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        angles = (self.SCALE * level.float().reshape(-1, 1)) * self.frequencies
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ConditionEncoding(nn.Module):
    """A 2-layer MLP of a fixed-length condition vector (the Stage-I gradient geometry)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.mlp(condition.float())


class SelfAttention(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        attended = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
        return x + self.out(attended.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


class ResBlock(nn.Module):
    """GN-SiLU-conv, + level embedding, GN-SiLU-dropout-conv, + skip; optional attention."""

    def __init__(self, in_ch: int, out_ch: int, *, embed_dim: int | None, groups: int,
                 dropout: float, attention: bool):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_ch) if embed_dim else None
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attention = SelfAttention(out_ch, groups) if attention else None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.embed is not None:
            h = h + self.embed(embedding)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h = h + self.skip(x)
        if self.attention is not None:
            h = self.attention(h)
        return h


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """The DDM2 U-Net.

    Parameters
    ----------
    in_channels, out_channels : int
        ``n`` neighbour volumes -> 1 for Stage I; 1 -> 1 for Stage III.
    network : NetworkSettings
    level_input : bool
        Whether ``forward`` takes a continuous noise level (Stage III).
    condition_dim : int
        With ``level_input=False``: length of a condition vector that ``forward`` takes instead
        (0: none). It is embedded by an MLP and added in every residual block, exactly where the
        noise level goes in Stage III.

    ``forward(x, level=None)`` maps ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``;
    ``level`` is a ``(B,)`` tensor of signal levels ``sqrt(alpha_bar)`` in ``[0, 1]``.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, *,
                 network: NetworkSettings = NetworkSettings(), level_input: bool = False,
                 condition_dim: int = 0):
        super().__init__()
        net = network
        self.network = network
        self.level_input = level_input
        groups = net.norm_groups
        embed_dim = net.width if level_input or condition_dim else None
        if level_input:
            self.encoding = LevelEncoding(net.width)
        elif condition_dim:
            self.encoding = ConditionEncoding(condition_dim, net.width)
        else:
            self.encoding = None
        block = dict(embed_dim=embed_dim, groups=groups, dropout=net.dropout)

        self.stem = nn.Conv2d(in_channels, net.width, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [net.width]
        channels = net.width
        n_levels = len(net.channel_mults)
        for level, mult in enumerate(net.channel_mults):
            out_ch = net.width * mult
            attention = level in net.attention_levels
            for _ in range(net.res_blocks):
                self.down.append(ResBlock(channels, out_ch, attention=attention, **block))
                channels = out_ch
                skips.append(channels)
            if level != n_levels - 1:
                self.down.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
                skips.append(channels)

        self.middle = nn.ModuleList([
            ResBlock(channels, channels, attention=True, **block),
            ResBlock(channels, channels, attention=False, **block),
        ])

        self.up = nn.ModuleList()
        for level in reversed(range(n_levels)):
            out_ch = net.width * net.channel_mults[level]
            attention = level in net.attention_levels
            for _ in range(net.res_blocks + 1):
                self.up.append(ResBlock(channels + skips.pop(), out_ch, attention=attention, **block))
                channels = out_ch
            if level != 0:
                self.up.append(Upsample(channels))

        self.head = nn.Sequential(_norm(channels, groups), nn.SiLU(),
                                  nn.Conv2d(channels, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        embedding = None
        if self.encoding is not None:
            if level is None:
                raise ValueError("this network needs the noise level (or its condition vector)")
            embedding = self.encoding(level)
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, embedding) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, embedding)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), embedding)
            else:
                h = layer(h, skips[-1].shape[-2:])
        return self.head(h)


def orthogonal_init(model: nn.Module) -> nn.Module:
    """Orthogonal weights and zero biases for every conv and linear layer (Stage III init)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(network: NetworkSettings, height: int, width: int, *, in_channels: int = 1,
                  level_input: bool = True) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass on one ``height x width`` slice.

    Counted analytically over the same layer plan as :class:`UNet`: convolutions, the attention
    products and the linear layers (PyTorch's FLOP counter gives the same number, see the
    tests); normalisation and activations are not counted (a few percent).
    """
    net = network
    sizes = [(height, width)]
    for _ in net.channel_mults[1:]:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    flops = 0.0

    def conv(cin, cout, k, size):
        return 2.0 * cin * cout * k * k * size[0] * size[1]

    def attention(c, size):
        n = size[0] * size[1]
        return conv(c, 3 * c, 1, size) + 4.0 * n * n * c + conv(c, c, 1, size)

    def block(cin, cout, size, attend):
        total = conv(cin, cout, 3, size) + conv(cout, cout, 3, size)
        total += conv(cin, cout, 1, size) if cin != cout else 0.0
        total += 2.0 * net.width * cout if level_input else 0.0
        return total + (attention(cout, size) if attend else 0.0)

    if level_input:
        half = max(1, net.width // 2)
        flops += 2.0 * (2 * half) * (4 * net.width) + 2.0 * (4 * net.width) * net.width
    flops += conv(in_channels, net.width, 3, sizes[0])
    skips = [net.width]
    channels = net.width
    last = len(net.channel_mults) - 1
    for level, mult in enumerate(net.channel_mults):
        out = net.width * mult
        for _ in range(net.res_blocks):
            flops += block(channels, out, sizes[level], level in net.attention_levels)
            channels = out
            skips.append(channels)
        if level != last:
            flops += conv(channels, channels, 3, sizes[level + 1])
            skips.append(channels)
    flops += block(channels, channels, sizes[last], True) + block(channels, channels, sizes[last], False)
    for level in reversed(range(len(net.channel_mults))):
        out = net.width * net.channel_mults[level]
        for _ in range(net.res_blocks + 1):
            flops += block(channels + skips.pop(), out, sizes[level], level in net.attention_levels)
            channels = out
        if level != 0:
            flops += conv(channels, channels, 3, sizes[level - 1])
    return flops + conv(channels, 1, 3, sizes[0])


def counted_forward_flops(network: NetworkSettings, height: int, width: int, *, in_channels: int = 1,
                          level_input: bool = True) -> float:
    """:func:`forward_flops` measured by PyTorch's FLOP counter on a ``meta``-device model
    (slow for large networks: a cross-check for the tests)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = UNet(in_channels, 1, network=network, level_input=level_input)
        x = torch.empty(1, in_channels, height, width)
        level = torch.empty(1) if level_input else None
    with FlopCounterMode(display=False) as counter:
        model(x, level)
    return float(counter.get_total_flops())
