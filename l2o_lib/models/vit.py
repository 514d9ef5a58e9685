"""A tiny Vision Transformer with hand-written attention and separate q / k / v layers (LoRA targets them)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import check_int, check_positive
from .checks import check_input_shape, check_num_classes

__all__ = ["ViTTiny", "vit_tiny"]


class _Attention(nn.Module):
    """Multi-head self-attention by hand: ``nn.MultiheadAttention`` fuses q/k/v into one
    parameter and takes fast paths that ``torch.func.vmap`` and LoRA on q/v cannot use."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTiny(nn.Module):
    """A tiny Vision Transformer (Dosovitskiy et al., 2021) for small images.

    Patch embedding (``Conv2d`` with ``stride=patch``), a learned class token and position
    embedding, ``depth`` pre-norm blocks of multi-head self-attention and a GELU MLP, a final
    LayerNorm and a linear head on the class token. The attention projections of block ``i``
    are the separate linear layers ``blocks.i.attn.q``, ``.k``, ``.v`` and ``.proj``. No
    dropout, so forward passes are deterministic. Linear layers and embeddings are initialised
    with a truncated normal (std 0.02), biases with zeros.

    Args:
        input_shape: ``(C, H, W)`` with H and W divisible by ``patch``.
        num_classes: number of output logits (>= 2).
        patch: patch side length.
        dim: embedding width (divisible by ``heads``).
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2,
    ) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, (3,), "ViTTiny")
        self.num_classes = check_num_classes(num_classes)
        check_int("patch", patch)
        check_int("dim", dim)
        check_int("depth", depth)
        check_int("heads", heads)
        check_positive("mlp_ratio", mlp_ratio)
        c, h, w = self.input_shape
        if h % patch or w % patch:
            raise ValueError(f"patch={patch} must divide the image size, got input_shape {self.input_shape}")
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        hidden = max(1, int(round(dim * mlp_ratio)))
        num_patches = (h // patch) * (w // patch)
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for a batch ``(batch, C, H, W)``."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


#: :class:`ViTTiny` (142,026 parameters for 3x32x32 inputs, 10 classes and the defaults).
vit_tiny = ViTTiny
