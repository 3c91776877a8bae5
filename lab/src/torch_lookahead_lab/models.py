"""The networks the lab trains: a small CNN for digits, a character LSTM, a small causal
Transformer for bytes, and ResNet-18 for CIFAR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CharLSTM", "CharTransformer", "DigitsCNN", "ResNet18"]


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions (16 and 32 channels), one 2x2 max-pool and a 64-unit hidden layer.

    Input: ``(batch, 1, 8, 8)`` images scaled to [0, 1]; output: 10 logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, images: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.features(images))
        return logits


class CharLSTM(nn.Module):
    """Byte-level language model: embedding, a stacked LSTM, and a linear read-out to 256 logits."""

    def __init__(
        self, embedding_dim: int = 32, hidden_size: int = 128, num_layers: int = 1
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(256, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.readout = nn.Linear(hidden_size, 256)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden, _ = self.lstm(self.embedding(tokens))
        logits: Tensor = self.readout(hidden)
        return logits


class _CausalBlock(nn.Module):
    """A Transformer block: causal multi-head self-attention, then a 4x-wide MLP, each a residual
    branch. Pre-norm (``norm_first``): ``x + f(norm(x))``; post-norm (the original Transformer,
    the variant that needs warm-up most): ``norm(x + f(x))``."""

    def __init__(self, d_model: int, heads: int, norm_first: bool = True) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def _attend(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: Tensor = self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_first:
            x = x + self._attend(self.norm1(x))
            out: Tensor = x + self.mlp(self.norm2(x))
            return out
        x = self.norm1(x + self._attend(x))
        post: Tensor = self.norm2(x + self.mlp(x))
        return post


class CharTransformer(nn.Module):
    """Byte-level causal Transformer: byte and learned position embeddings, ``layers`` pre-norm
    (or, ``norm_first=False``, post-norm) blocks of ``heads``-head causal self-attention and a
    4x MLP, a final layer norm (pre-norm only: a post-norm block ends normalised) and a linear
    read-out to 256 logits. Input ``(batch, length)`` bytes with ``length <= context``."""

    def __init__(
        self,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        context: int = 64,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(256, d_model)
        self.position = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(
            *(_CausalBlock(d_model, heads, norm_first) for _ in range(layers))
        )
        self.norm: nn.Module = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.readout = nn.Linear(d_model, 256)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = self.blocks(self.embedding(tokens) + self.position(positions))
        logits: Tensor = self.readout(self.norm(hidden))
        return logits


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 in its CIFAR form (He et al. 2016): a 3x3 stem without max-pool, four stages of
    two basic blocks (64, 128, 256, 512 channels; stride 2 from the second stage), global average
    pooling and a linear classifier. 11.2M parameters for 10 classes.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        stages: list[nn.Module] = []
        in_channels = 64
        for out_channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(
                    _BasicBlock(in_channels, out_channels, stride),
                    _BasicBlock(out_channels, out_channels, 1),
                )
            )
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)
        )

    def forward(self, images: Tensor) -> Tensor:
        logits: Tensor = self.head(self.stages(self.stem(images)))
        return logits
