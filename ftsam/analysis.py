"""Per-neuron quantities behind the paper's Figure 1: how strongly each channel of a layer
reacts to the trigger (TAC), and the norms of its weights and gradients."""
from __future__ import annotations

import torch
from torch import nn

from ftsam.train import autocast


def layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise KeyError(f"no layer {name!r} in {type(model).__name__}; convolutions: {', '.join(convs[-5:])} ...")
    return modules[name]


@torch.no_grad()
def activations(model: nn.Module, layer_name: str, x_u8: torch.Tensor, device="cpu", batch_size: int = 512) -> torch.Tensor:
    """Output of ``layer_name`` for uint8 images, in eval mode: ``[N, C, H, W]`` on the CPU."""
    device = torch.device(device)
    out: list[torch.Tensor] = []
    handle = layer(model, layer_name).register_forward_hook(lambda m, i, o: out.append(o.float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x_u8), batch_size):
            with autocast(device):
                model(x_u8[i:i + batch_size].to(device).float().div_(255.0))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(out)


def tac(model: nn.Module, layer_name: str, clean_u8: torch.Tensor, triggered_u8: torch.Tensor, device="cpu") -> torch.Tensor:
    """Trigger-activated change per channel: the mean over samples of the l2 norm (over the
    spatial map) of the difference between a channel's activation on a clean image and on its
    triggered copy. ``clean_u8[i]`` and ``triggered_u8[i]`` must be the same image."""
    if clean_u8.shape != triggered_u8.shape:
        raise ValueError(f"clean and triggered batches differ in shape: {tuple(clean_u8.shape)} vs {tuple(triggered_u8.shape)}")
    diff = activations(model, layer_name, clean_u8, device) - activations(model, layer_name, triggered_u8, device)
    return diff.flatten(2).norm(dim=2).mean(0)


def channel_norms(t: torch.Tensor) -> torch.Tensor:
    """l2 norm of each output channel (first dimension) of a weight or gradient tensor."""
    return t.detach().float().flatten(1).norm(dim=1).cpu()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two vectors."""
    from scipy.stats import spearmanr
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


class FirstBatchGradNorms:
    """An ``on_update`` callback for :func:`ftsam.defend`: the per-channel gradient norms of
    ``layer_name``'s weight at the first batch of each of the first ``epochs`` epochs (the
    paper's Figure 1). For FT-SAM these are the gradients at w + eps, the ones that update w."""

    def __init__(self, layer_name: str, epochs: int = 8):
        self.layer_name, self.epochs = layer_name, epochs
        self.norms: dict[int, torch.Tensor] = {}

    def __call__(self, epoch: int, iteration: int, model: nn.Module) -> None:
        if iteration == 0 and epoch < self.epochs:
            self.norms[epoch] = channel_norms(layer(model, self.layer_name).weight.grad)


@torch.no_grad()
def penultimate(model: nn.Module, x_u8: torch.Tensor, device="cpu", batch_size: int = 512) -> torch.Tensor:
    """The model's penultimate features (``model.penultimate``) for uint8 images, ``[N, D]``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = [model.penultimate(x_u8[i:i + batch_size].to(device).float().div_(255.0)).float().cpu()
           for i in range(0, len(x_u8), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def gradcam(model: nn.Module, x_u8: torch.Tensor, layer_name: str, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM maps ``[N, H, W]`` in [0, 1] from pytorch-grad-cam, for the class in ``targets``
    (default: the model's prediction)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = x_u8.to(device).float().div(255.0)
    tg = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with GradCAM(model=model, target_layers=[layer(model, layer_name)]) as cam:
        maps = cam(input_tensor=x, targets=tg)
    model.train(was_training)
    return torch.from_numpy(maps).float()


def region_mass(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each map's total attribution that falls inside ``region`` (bool ``[H, W]``)."""
    total = maps.flatten(1).sum(1).clamp(min=1e-12)
    return maps[:, region].sum(1) / total
