"""ViT for Mini-ImageNet-size inputs (spec architectures.md §12.4; dimensions are a fedbench proposal).

Twelve pre-LN encoders (LN → MHSA → residual; LN → MLP(GELU) → residual), a
learned positional embedding and a CLS token, final LN and Linear on the CLS
token; ViT-Tiny widths (D = 192, 3 heads, MLP ratio 4). Blocks: b_1 = patch
embedding + encoders 1–4, b_2 = encoders 5–8, b_3 = encoders 9–12.

The patch size follows the input so the token grid stays about 7×7:
``patch = min(H, W) // 7`` gives the spec's patch 12 (49 patches) on 84×84, and
patch 4 on 32×32 (8×8 patches) and 28×28 (7×7). Width scaling keeps all heads
and scales each head's q/k/v dimension, the token width and the MLP width by
the multiplier (HeteroFL's transformer rule); the tagged axes make the heads
sliceable without special cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.models.base import BlockModel, CutSpec, EncoderStandIn, TokenHead, require_min_side, scaled, tag

DIM = 192
HEADS = 3
MLP_RATIO = 4
NUM_BLOCKS = 3
ENCODERS_PER_BLOCK = 4
GRID = 7  # tokens per side the patch size aims at
EMBED = "embed"  # the channel space of the residual token stream


class SelfAttention(nn.Module):
    """The attention sub-layer ``x + proj(MHSA(LN(x)))``; q/k/v laid out as (3, heads, head_dim)."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, name: str) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        head_space = f"{name}.head"
        self.norm = tag(nn.LayerNorm(dim), out=EMBED)
        self.qkv = tag(nn.Linear(dim, 3 * heads * head_dim), out=(head_space,) * (3 * heads), in_=EMBED)
        self.proj = tag(nn.Linear(heads * head_dim, dim), out=EMBED, in_=(head_space,) * heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))


class FeedForward(nn.Module):
    """The MLP sub-layer ``x + fc2(GELU(fc1(LN(x))))`` (what NeuLite co-adapts)."""

    def __init__(self, dim: int, hidden: int, *, name: str) -> None:
        super().__init__()
        self.norm = tag(nn.LayerNorm(dim), out=EMBED)
        self.fc1 = tag(nn.Linear(dim, hidden), out=f"{name}.mlp", in_=EMBED)
        self.fc2 = tag(nn.Linear(hidden, dim), out=EMBED, in_=f"{name}.mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Encoder(nn.Module):
    """One pre-LN transformer encoder layer on (batch, tokens, dim)."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, *, name: str = "encoder") -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads, head_dim, name=name)
        self.mlp = FeedForward(dim, mlp_dim, name=name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


class PatchEmbedding(nn.Module):
    """Non-overlapping patches → linear embedding, a CLS token in front, plus learned positions."""

    def __init__(self, in_channels: int, dim: int, patch: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.proj = tag(nn.Conv2d(in_channels, dim, patch, stride=patch), out=EMBED, in_=None)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        tag(self, out=EMBED, cls_token=(None, None, EMBED), pos_embed=(None, None, EMBED))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], 1) + self.pos_embed


def build(
    input_shape: tuple[int, int, int],
    num_classes: int,
    width: float = 1.0,
    *,
    dim: int = DIM,
    heads: int = HEADS,
    mlp_ratio: int = MLP_RATIO,
) -> BlockModel:
    require_min_side("vit", input_shape, GRID, f"patches of at least 1 px on a {GRID}×{GRID} token grid")
    channels, height, width_px = input_shape
    patch = min(height, width_px) // GRID
    grid = (height // patch, width_px // patch)
    dim_r, head_dim, mlp_dim = scaled(dim, width), scaled(dim // heads, width), scaled(dim * mlp_ratio, width)
    blocks, last_encoders = [], []
    for b in range(NUM_BLOCKS):
        encoders = [
            Encoder(dim_r, heads, head_dim, mlp_dim, name=f"encoder{b * ENCODERS_PER_BLOCK + e + 1}")
            for e in range(ENCODERS_PER_BLOCK)
        ]
        blocks.append(nn.Sequential(*encoders))
        last_encoders.append(encoders[-1])
    model = BlockModel(
        arch="vit",
        stem=PatchEmbedding(channels, dim_r, patch, grid),
        blocks=blocks,
        head=TokenHead(dim_r, num_classes, in_space=EMBED),
        input_shape=input_shape,
        num_classes=num_classes,
        width=width,
    )
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    standin = EncoderStandIn(dim_r, heads, head_dim, mlp_dim)
    model.cut = CutSpec(
        standins=(None,) + (standin,) * (NUM_BLOCKS - 1),
        stage_head="token_linear",
        feature_dim=dim_r,
        coadapt=((),) + tuple(model.names_of([e.mlp]) for e in last_encoders[:-1]),
    )
    return model
