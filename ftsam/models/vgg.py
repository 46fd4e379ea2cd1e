"""VGG19-BN as torchvision defines it (configuration "E" with batch norm, adaptive 7x7 pool,
two 4096-wide hidden layers; the same module names, so its checkpoints load), with the input channels and class count of the dataset.
``width`` scales every layer (64 is torchvision's)."""
from __future__ import annotations

import torch
from torch import nn

from ftsam.models import Normalize


class _MaxPool(nn.MaxPool2d):
    """torchvision's 2x2 max-pool, except that a map already down to one pixel passes through:
    five halvings need 32 pixels, so torchvision's VGG fails on smaller images (digits, Fashion-MNIST)."""

    def forward(self, x):
        return x if min(x.shape[-2:]) < 2 else super().forward(x)


CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"]


class VGG19BN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, mean, std, width: int = 64):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers, c = [], in_channels
        for v in CFG_E:
            if v == "M":
                layers.append(_MaxPool(2, 2))
            else:
                v = v * width // 64
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        hidden = 4096 * width // 64
        self.classifier = nn.Sequential(
            nn.Linear(c * 49, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the second hidden layer), for t-SNE."""
        out = torch.flatten(self.avgpool(self.features(self.normalize(x))), 1)
        return self.classifier[:-1](out)

    def forward(self, x):
        return self.classifier[-1](self.penultimate(x))
