"""Models: each takes images in [0, 1] and normalizes them itself, so triggers live in pixel space."""
from __future__ import annotations

import torch
from torch import nn

from ftsam.config import MODELS, ConfigError, ModelConfig
from ftsam.data import DatasetInfo


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def build_model(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """The model ``cfg.name`` for a dataset's channels, image size and class count."""
    if cfg.name == "preactresnet18":
        from ftsam.models.preact_resnet import PreActResNet18
        return PreActResNet18(info.channels, info.num_classes, info.mean, info.std, width=cfg.width)
    if cfg.name == "vgg19_bn":
        from ftsam.models.vgg import VGG19BN
        return VGG19BN(info.channels, info.num_classes, info.mean, info.std, width=cfg.width)
    if cfg.name == "simple_cnn":
        from ftsam.models.simple_cnn import SimpleCNN
        return SimpleCNN(info.channels, info.num_classes, info.mean, info.std, width=cfg.width, size=info.size)
    raise ConfigError(f"model.name: unknown model {cfg.name!r}; valid choices: {', '.join(MODELS)}")


def last_conv_name(model: nn.Module) -> str:
    """Name of the last convolution (the layer of the paper's Figure 1 and of Grad-CAM)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]
