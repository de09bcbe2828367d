"""Tiny models for tests, examples and CPU smoke runs (no weights needed)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import Backbone
from .zoo import backbone_from_module


class TinyCNN(nn.Module):
    """conv(3->8, s2) - ReLU - conv(8->channels, s2) - ReLU [= ``features``] - GAP - linear.

    Input ``[B,3,H,W]`` -> logits ``[B,num_classes]``; ``features`` is ``[B,channels,H/4,W/4]``.
    """

    def __init__(self, num_classes: int = 10, channels: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(channels, num_classes)

    def head(self, f: Tensor) -> Tensor:
        return self.fc(f.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def tiny_backbone(num_classes: int = 10, channels: int = 16, seed: int = 0,
                  model: TinyCNN = None, input_size: int = 32) -> Backbone:
    """A :class:`Backbone` around a (seeded, random unless ``model`` given) :class:`TinyCNN`."""
    if model is None:
        g = torch.Generator().manual_seed(seed)
        model = TinyCNN(num_classes, channels)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return backbone_from_module(
        model, {"features": model.body}, name="tiny", default_layer="features",
        heads={"features": model.head}, num_classes=num_classes, input_size=input_size,
    )
