"""PreAct-ResNet18, the BackdoorBench variant: 3x3 stride-1 stem, no max-pool, blocks
[2, 2, 2, 2], global average pool, linear. Its last convolution is ``layer4.1.conv2``.
``width`` scales every stage (64 in the paper; smaller for CPU-sized runs)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ftsam.models import Normalize


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, mean, std, width: int = 64):
        super().__init__()
        self.normalize = Normalize(mean, std)
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.layer1 = self._stage(w, w, 1)
        self.layer2 = self._stage(w, 2 * w, 2)
        self.layer3 = self._stage(2 * w, 4 * w, 2)
        self.layer4 = self._stage(4 * w, 8 * w, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * w, num_classes)

    @staticmethod
    def _stage(cin, cout, stride):
        return nn.Sequential(PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (after global pooling), for t-SNE."""
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.avgpool(out), 1)

    def forward(self, x):
        return self.linear(self.penultimate(x))
