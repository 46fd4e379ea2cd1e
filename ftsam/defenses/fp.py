"""FP, Fine-Pruning (Liu, Dolan-Gavitt, Garg; RAID 2018).

1. Record the mean activation of every channel of the last convolutional layer on the
   defender's clean data.
2. Prune channels from the least active up, one at a time, while the pruned model's accuracy on
   a held-out part of the defender's data stays within a tolerance of the unpruned model's; the
   first channel whose removal breaks the tolerance is kept (the returned model is the last one
   within it).
3. Fine-tune the pruned model on the defender's clean data; the mask stays.

**Which map is "the last convolutional layer's".** In the paper's networks the last conv layer's
post-ReLU feature maps are what the classifier reads, and pruning removes a map from everything
downstream. In PreAct-ResNet18 the last conv (``layer4.1.conv2``) is added to the block's shortcut
and the sum (no final BN or ReLU in this variant) is pooled into the linear layer. Masking the
conv's own output would leave the channel alive through the shortcut, so the "neuron" would not
be removed; we mask the map the last conv *contributes to* as the rest of the network sees it:
the output of the last module that, after the last ``nn.Conv2d`` runs, still returns a tensor of
that conv's shape (:func:`feature_layer`). That is ``layer4`` in PreAct-ResNet18 (the last
block's output), the ReLU after the last conv in VGG19-BN (exactly the paper's map) and, in a
plain conv-ReLU network, the ReLU. In PreAct-ResNet18 this equals BackdoorBench's masking of the
linear layer's inputs, since average pooling acts per channel; the activation statistic is the
plain mean of that map (as published, and as BackdoorBench takes it on ``layer4``), even though
this map is signed where the paper's was post-ReLU.

**The mask** is a buffer ``fp_mask`` (1 kept, 0 pruned) on that module with a forward hook that
multiplies its output by it: it lives in the state dict, fine-tuning cannot revive a pruned
channel (its output is zero whatever the weights become), and :meth:`FP.restore` re-attaches it
before a cached state dict is loaded.

**Data.** The defender's clean data is split (:func:`~ftsam.defenses.base.holdout_split`,
``holdout`` of each class): activations are recorded on the rest, the stopping accuracy on the
held-out part; fine-tuning then uses all of the defender's clean data (the held-out part has done
its job, and FT, which FP is compared with, trains on all of it) with the shared
``defense.train`` settings and the plain SGD step.

**Departures from BackdoorBench** (whose numbers the paper reports): it stops on *test* accuracy
(here: held-out defender data), prunes 1% of the channels per step (here: one channel, as
published), counts one channel fewer than it prunes and returns the model one step past the
tolerance (here: the last model within it). The tolerance is relative, as BackdoorBench's
``acc_ratio``: pruning stops before held-out accuracy falls below ``(1 - acc_drop)`` times the
unpruned model's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ftsam.config import ConfigError
from ftsam.data import ImageSet
from ftsam.defenses.base import Defended, Defense, holdout_split
from ftsam.metrics import accuracy
from ftsam.models import last_conv_name
from ftsam.train import predict, sgd_step

MASK = "fp_mask"
POOLING = (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd,
           nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


# ---- the pruned layer and its mask ----------------------------------------------------------
@torch.no_grad()
def feature_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The module whose output is the last convolution's feature map as the network uses it: of
    the modules that finish after the last ``nn.Conv2d`` (one forward pass of ``example``), the
    last of the unbroken run that returns a tensor of the conv's shape (a ReLU, a residual block
    that adds a shortcut); a pooling layer, or any change of shape, ends the run."""
    try:
        conv = last_conv_name(model)
    except IndexError:
        raise ValueError(f"FP prunes the last convolutional layer, but {type(model).__name__} has no nn.Conv2d") from None
    finished: list[tuple[str, tuple | None]] = []

    def record(name):
        return lambda m, i, out: finished.append((name, tuple(out.shape) if torch.is_tensor(out) else None))
    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        model.eval()
        model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    start = max(i for i, (n, _) in enumerate(finished) if n == conv)
    shape, chosen = finished[start][1], conv
    modules = dict(model.named_modules())
    for name, out_shape in finished[start + 1:]:
        if out_shape != shape or isinstance(modules[name], POOLING):   # a 1x1 map keeps its shape when pooled
            break
        chosen = name
    return chosen


def _apply_mask(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    mask = getattr(module, MASK)
    return output * mask.view(1, -1, *([1] * (output.dim() - 2))).to(output.dtype)


def attach_mask(model: nn.Module, layer: str, channels: int) -> torch.Tensor:
    """Give ``layer`` a channel mask (all ones: nothing pruned yet) that multiplies its output;
    returns the mask buffer (set entries to 0 to prune). Idempotent."""
    module = model.get_submodule(layer)
    if not hasattr(module, MASK):
        device = next(iter(model.parameters()), torch.empty(0)).device
        module.register_buffer(MASK, torch.ones(channels, device=device))
        module.register_forward_hook(_apply_mask)
    return getattr(module, MASK)


# ---- the three phases -----------------------------------------------------------------------
@torch.no_grad()
def mean_activations(model: nn.Module, layer: str, data: ImageSet, device: torch.device,
                     batch_size: int = 256) -> torch.Tensor:
    """Mean of each channel of ``layer``'s output over the images and positions of ``data``
    (eval mode)."""
    total, count = None, 0

    def hook(m, i, out):
        nonlocal total, count
        dims = [0, *range(2, out.dim())]
        s = out.detach().double().sum(dims)
        total = s if total is None else total + s
        count += out.numel() // out.shape[1]
    handle = model.get_submodule(layer).register_forward_hook(hook)
    was_training = model.training
    try:
        model.eval()
        for i in range(0, len(data), batch_size):
            model(data.x[i:i + batch_size].to(device).float().div_(255.0))
    finally:
        model.train(was_training)
        handle.remove()
    return (total / count).float().cpu()


@torch.no_grad()
def prune_until(mask: torch.Tensor, order: list[int], acc: Callable[[], float],
                acc_drop: float) -> tuple[list[int], list[float]]:
    """Zero ``mask`` at ``order[0]``, ``order[1]``, ... one channel at a time while ``acc()``
    (held-out accuracy of the masked model) stays at or above ``(1 - acc_drop)`` times its value
    with nothing pruned. Leaves the mask at the last state within the tolerance; returns the
    pruned channels (in order) and the accuracy after each count pruned (0, 1, ...), including
    the count that broke the tolerance when one did."""
    mask.fill_(1.0)
    curve = [acc()]
    floor = (1.0 - acc_drop) * curve[0]
    pruned: list[int] = []
    for ch in order:
        mask[ch] = 0.0
        curve.append(acc())
        if curve[-1] < floor:
            mask[ch] = 1.0
            break
        pruned.append(ch)
    return pruned, curve


class FP(Defense):
    name, title = "fp", "FP"
    needs = ("model", "clean")

    @dataclass(frozen=True)
    class Options:
        acc_drop: float = 0.1    # relative: prune while held-out acc >= (1 - acc_drop) * unpruned acc
        holdout: float = 0.2     # share of each class of the defender's data held out for the stopping rule
        layer: str = ""          # module whose output channels are pruned; "" finds it (feature_layer)

    @classmethod
    def check_options(cls, opts):
        if not 0.0 <= opts.acc_drop < 1.0:
            raise ConfigError(f"defense.fp.acc_drop must lie in [0, 1) (a relative drop), got {opts.acc_drop!r}")
        if not 0.0 < opts.holdout < 1.0:
            raise ConfigError(f"defense.fp.holdout must lie in (0, 1), got {opts.holdout!r}")

    def run(self, given, ctx):
        model, clean = given.model, given.clean
        rest, held = holdout_split(clean, self.opts.holdout, ctx.seed)
        layer = self.opts.layer or feature_layer(model, rest.x[:2].to(ctx.device).float().div(255.0))
        try:
            model.get_submodule(layer)
        except AttributeError:
            raise ConfigError(f"defense.fp.layer: {type(model).__name__} has no module {layer!r}") from None
        activations = mean_activations(model, layer, rest, ctx.device)
        order = [int(i) for i in torch.argsort(activations, stable=True)]   # least active first
        mask = attach_mask(model, layer, len(activations))

        def held_acc():
            return accuracy(predict(model, held.x, device=ctx.device), held.y)
        pruned, curve = prune_until(mask, order, held_acc, self.opts.acc_drop)
        fitted = ctx.fit(model, clean, self.cfg.train, sgd_step(model, self.cfg.train), desc=self.title)
        return Defended(model, fitted.history,
                        {"pruned": pruned, "activations": activations, "layer": layer, "holdout_acc": curve})

    def restore(self, model, found):
        mask = attach_mask(model, found["layer"], len(found["activations"]))
        mask.fill_(1.0)
        mask[list(found["pruned"])] = 0.0
        return model

