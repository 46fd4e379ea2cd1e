"""A small CNN without BatchNorm: (conv3x3-ReLU-conv3x3-ReLU-maxpool2) twice, then a hidden
linear layer and the linear classifier. ``width`` is the first stage's channel count (the
second has twice as many; the hidden layer four times). The model the robustness suite uses to
check that FT-SAM does not rely on BatchNorm: without it, the weight scale is set by the
weights alone, and a perturbation relative to |w| acts on every layer directly."""
from __future__ import annotations

import torch
from torch import nn

from ftsam.models import Normalize


class SimpleCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, mean, std, width: int = 32, size: int = 32):
        super().__init__()
        self.normalize = Normalize(mean, std)
        c1, c2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = size // 4
        if side < 1:
            raise ValueError(f"simple_cnn needs images of at least 4x4 pixels, got {size}")
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c2 * side * side, 4 * width), nn.ReLU(inplace=True))
        self.linear = nn.Linear(4 * width, num_classes)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer's features (for t-SNE)."""
        return self.hidden(self.features(self.normalize(x)))

    def forward(self, x):
        return self.linear(self.penultimate(x))
