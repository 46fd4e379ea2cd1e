"""CLP, Channel Lipschitzness-based Pruning (Zheng, Zhang, Wang, Zhao, Jia; ECCV 2022): data-free.

For a convolution and the BatchNorm that normalises its output, output channel k of the pair maps
its input x to ``gamma_k (W_k * x - mu_k) / sigma_k + beta_k``; an upper bound of that channel's
Lipschitz constant (UCLC) is ``||W_k||_2 * |gamma_k / sigma_k|``, with ``W_k`` the channel's kernel
reshaped to ``[in, kh * kw]`` and ``||.||_2`` its largest singular value, ``sigma_k =
sqrt(running_var_k + eps)``. Backdoor channels react strongly to a small trigger, so their bound
stands out: within each pair, channels whose bound exceeds ``mean + u * std`` of that layer's
bounds are pruned (``u = 3`` by default, as published; ``std`` with Bessel's correction, as
``torch.std`` in the authors' code).

**What zeroes a channel.** Pruning sets the BN's ``gamma_k`` and ``beta_k`` to 0 (as the authors'
code does): the BN's output channel k is then exactly 0 for every input, in eval and train mode,
so the channel the bound describes is removed from everything that reads the BN. (Zeroing the
conv's output channel instead would leave ``beta_k - gamma_k mu_k / sigma_k`` behind.) The change
lives in the parameters, so a cached state dict needs no :meth:`~Defense.restore`.

**Pairing.** The BN that normalises a conv's output is the BN that *consumes exactly that tensor*.
:func:`conv_bn_pairs` reads it off the model's torch.fx graph (every module without children is a
leaf), so it does not depend on module order:

- VGG (conv -> BN -> ReLU): each conv with the BN after it.
- PreAct-ResNet18 (BN -> ReLU -> conv inside each block): a block's ``conv1`` with the same block's
  ``bn2``; the stem ``conv1`` with ``layer1.0.bn1``. The authors' code (and BackdoorBench's copy)
  pairs each BN with the last conv *registered* before it, which in a pre-activation network
  pairs ``bn1`` with the previous block's ``conv2`` or shortcut conv.
- A conv whose output is summed with a shortcut before any BN (every PreAct block's ``conv2`` and
  shortcut conv; the next block's ``bn1`` normalises the *sum*, whose statistics are not this
  conv's) is not paired: no conv-BN channel exists for the bound to describe, and zeroing the
  next ``bn1`` would not remove the conv's channel from the identity path. Such convs are left
  alone and listed in ``found["unpaired"]``. The stem conv's output also travels unnormalised
  along ``layer1.0``'s identity shortcut; pruning zeroes the conv-BN channel only, as the
  definition asks.

A model without BatchNorm, or whose BNs normalise no conv's output directly, raises
:class:`ValueError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx, nn

from ftsam.config import ConfigError
from ftsam.defenses.base import Defended, Defense

_CONV, _BN = (nn.Conv2d,), (nn.BatchNorm2d,)


class _LeafTracer(fx.Tracer):
    """Every module without children is one graph node (so a custom layer with shape-dependent
    Python in its forward, like VGG's max-pool, does not break the trace); containers, including
    ones built during the forward, are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return next(m.children(), None) is None

    def call_module(self, m, forward, args, kwargs):
        try:
            self.path_of_module(m)
        except NameError:   # a container made on the fly (VGG's ``classifier[:-1]``): trace through it
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """``{conv name: name of the BatchNorm2d that takes exactly that conv's output as input}``."""
    if not any(isinstance(m, _BN) for m in model.modules()):
        raise ValueError(f"CLP needs BatchNorm: {type(model).__name__} has no nn.BatchNorm2d, so no channel has "
                         "the conv-BN Lipschitz bound CLP prunes by")
    try:
        graph = _LeafTracer().trace(model)
    except Exception as e:     # fx raises several types on untraceable Python
        raise ValueError(f"CLP: cannot trace {type(model).__name__} with torch.fx to find which BatchNorm "
                         f"normalises which convolution's output: {e}") from e
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BN) or not node.args:
            continue
        src = node.args[0]
        if isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules[src.target], _CONV):
            if src.target in pairs:
                raise ValueError(f"CLP: the output of {src.target!r} is normalised by two BatchNorms "
                                 f"({pairs[src.target]!r}, {node.target!r}); one bound per channel is undefined")
            pairs[src.target] = node.target
    if not pairs:
        raise ValueError(f"CLP: no BatchNorm of {type(model).__name__} normalises a convolution's output directly")
    return pairs


@torch.no_grad()
def channel_bounds(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """UCLC of each output channel of conv followed by bn: ||W_k||_2 |gamma_k| / sqrt(var_k + eps)."""
    if bn.weight is None or bn.running_var is None:
        raise ValueError("CLP needs BatchNorm with an affine scale and running statistics")
    w = conv.weight.detach().float()
    if w.shape[0] != bn.num_features:
        raise ValueError(f"CLP: a conv with {w.shape[0]} output channels feeds a BatchNorm of {bn.num_features}")
    spectral = torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2)
    return spectral * (bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)).abs()


def outliers(bounds: torch.Tensor, u: float) -> list[int]:
    """Channels whose bound exceeds mean + u * std of the layer's bounds."""
    if len(bounds) < 2:
        return []
    return [int(i) for i in torch.nonzero(bounds > bounds.mean() + u * bounds.std()).flatten()]


class CLP(Defense):
    name, title = "clp", "CLP"
    needs = ("model",)

    @dataclass(frozen=True)
    class Options:
        u: float = 3.0      # prune channels whose bound exceeds mean + u * std within their layer

    @classmethod
    def check_options(cls, opts):
        if not math.isfinite(opts.u):
            raise ConfigError(f"defense.clp.u must be a finite number, got {opts.u!r}")

    def run(self, given, ctx):
        model = given.model
        pairs = conv_bn_pairs(model)
        modules = dict(model.named_modules())
        pruned, bounds = {}, {}
        for conv_name, bn_name in pairs.items():
            bn = modules[bn_name]
            b = channel_bounds(modules[conv_name], bn)
            bounds[conv_name] = b.tolist()
            pruned[conv_name] = outliers(b, self.opts.u)
            with torch.no_grad():
                bn.weight[pruned[conv_name]] = 0.0
                bn.bias[pruned[conv_name]] = 0.0
        unpaired = [n for n, m in model.named_modules() if isinstance(m, _CONV) and n not in pairs]
        return Defended(model, [], {"pruned": pruned, "bounds": bounds, "pairs": pairs, "unpaired": unpaired})
