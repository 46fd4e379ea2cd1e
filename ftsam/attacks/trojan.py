"""Trojan, TrojanNN's trigger (Liu, Ma, Aafer, Lee, Zhai, Wang & Zhang, NDSS 2018, "Trojaning
attack on neural networks").

The trigger lives in a fixed mask ``m``: poisoned images are ``x' = (1 - m) x + m t`` and are
relabelled to the target (all-to-one; all-to-all maps ``y -> (y+1) mod C`` with the same
trigger). The pattern ``t`` is not chosen by hand but optimised on a model trained on the
clean data (``clean_model()``) so that a few internal neurons fire strongly; the victim then
learns to tie those neurons to the target class.

What follows the paper and BackdoorBench's ``attack/trojannn.py``:

* **Neuron selection**: the neurons are the inputs of one layer of the clean model, by
  default the last ``nn.Linear`` (the penultimate features: the pooled ``layer4`` channels of
  PreAct-ResNet18, the last hidden layer of VGG19-BN; BackdoorBench's ``selected_layer_name:
  linear``). The ``neurons`` (2) with the largest sum of absolute outgoing weights are picked
  (the paper's "most tightly connected" neurons; BackdoorBench sums ``|W|`` over the outputs).
  ``layer`` names another ``nn.Linear`` or ``nn.Conv2d`` whose input is used instead; a conv
  input channel counts as one neuron with its spatial mean as activation.
* **Trigger generation**: ``steps`` (1000) sign-gradient steps of size ``lr`` (0.1, [0, 1]
  units, BackdoorBench's alpha) on the masked pixels, minimising
  ``sum_i (a_i(x) - target_value)^2`` with ``target_value`` 100 (BackdoorBench's), stopping
  early below 1e-3; pixels stay in [0, 1].

Deviations:

* **Mask**: a square of ``patch`` pixels at the bottom-right (0: a quarter of the image side;
  the paper's square trigger covers ~7% of the image, ours 6.25%). The paper also uses an
  Apple-logo watermark, BackdoorBench an apple picture as mask; neither ships offline.
* **Start and box**: BackdoorBench starts from the mask picture and keeps within 0.3 of it; we
  start from a seeded uniform random pattern and let the masked pixels take any value in [0, 1].
* **Stamping**: BackdoorBench *adds* the trigger picture to the image (with a uint8 overflow);
  we stamp it, ``(1 - m) x + m t``, as the paper does.
* ``background: black`` (default) optimises the trigger on an otherwise black image (the
  paper's and BackdoorBench's setting); ``background: train`` averages the loss over
  ``images`` stamped training images instead.
* The paper also retrains the model on reverse-engineered data; like BackdoorBench we poison
  the real training set instead (``poison_ratio`` of it).

The pattern is a generated resource, cached under ``cache_dir`` as ``trojan-<hash>.safetensors``
by a hash of (key, seed, the generation options, version); the target label does not enter it
(nor the hash), since the trigger does not depend on it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ftsam.attacks.base import Attack, to_float
from ftsam.config import ConfigError
from ftsam.io import save_tensors

_TOLERANCE = 1e-3


class Trojan(Attack):
    name, title = "trojan", "Trojan"

    @dataclass(frozen=True)
    class Options:
        patch: int = 0                 # side of the square mask; 0: a quarter of the image side
        layer: str = ""                # module whose input neurons are driven; "": the last nn.Linear
        neurons: int = 2
        target_value: float = 100.0
        steps: int = 1000
        lr: float = 0.1                # sign-gradient step, [0, 1] units
        background: Literal["black", "train"] = "black"
        images: int = 64               # training images for background: train

    @classmethod
    def check_options(cls, opts):
        if opts.patch < 0:
            raise ConfigError(f"attack.options.patch must be >= 0, got {opts.patch}")
        if opts.neurons < 1:
            raise ConfigError(f"attack.options.neurons must be >= 1, got {opts.neurons}")
        if opts.steps < 0:
            raise ConfigError(f"attack.options.steps must be >= 0, got {opts.steps}")
        if not opts.lr > 0:
            raise ConfigError(f"attack.options.lr must be > 0, got {opts.lr}")
        if opts.images < 1:
            raise ConfigError(f"attack.options.images must be >= 1, got {opts.images}")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        if self.patch_size > info.size:
            raise ConfigError(f"attack.options.patch {self.opts.patch} is larger than the image ({info.size} pixels)")
        self.pattern: torch.Tensor | None = None   # [C, H, W] in [0, 1]; only the masked pixels matter
        self.neuron_index: torch.Tensor | None = None

    @property
    def patch_size(self) -> int:
        return self.opts.patch or max(1, self.info.size // 4)

    def mask(self, h: int | None = None, w: int | None = None) -> torch.Tensor:
        h, w, p = h or self.info.size, w or self.info.size, self.patch_size
        m = torch.zeros(h, w, dtype=torch.bool)
        m[h - p:, w - p:] = True
        return m

    # ---- the trigger ---------------------------------------------------------------------
    def trigger(self, x, y=None):
        if self.pattern is None:
            raise RuntimeError("Trojan's pattern is built by prepare(...); call it first")
        m = self.mask(*x.shape[-2:]).to(x.device)
        return torch.where(m, self.pattern.to(x.device, x.dtype), x)

    # ---- the clean model's neurons -------------------------------------------------------
    def layer_of(self, model: nn.Module) -> tuple[str, nn.Module]:
        layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        if self.opts.layer:
            if self.opts.layer not in layers:
                shown = ", ".join(list(layers)[-8:])
                raise ConfigError(f"attack.options.layer {self.opts.layer!r} is not an nn.Linear or nn.Conv2d of "
                                  f"the clean model; valid (last few): {shown}")
            return self.opts.layer, layers[self.opts.layer]
        linear = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
        if not linear:
            raise ConfigError("attack.options.layer: the clean model has no nn.Linear; name an nn.Conv2d")
        return linear[-1], layers[linear[-1]]

    def select_neurons(self, layer: nn.Module) -> torch.Tensor:
        """The input neurons of ``layer`` with the largest sum of absolute outgoing weights."""
        w = layer.weight.detach().abs()
        strength = w.sum(0) if w.ndim == 2 else w.sum((0, 2, 3))
        if self.opts.neurons > len(strength):
            raise ConfigError(f"attack.options.neurons {self.opts.neurons} exceeds the layer's {len(strength)} inputs")
        return strength.argsort(descending=True)[:self.opts.neurons].sort().values

    @staticmethod
    def activations(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The inputs of ``layer`` for images ``x``, as [N, neurons] (conv maps spatially averaged)."""
        seen = []
        handle = layer.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
        try:
            model(x)
        finally:
            handle.remove()
        a = seen[-1]
        return a.flatten(2).mean(2) if a.ndim > 2 else a

    # ---- the generated resource ----------------------------------------------------------
    def resource_inputs(self, key: str, seed: int) -> dict:
        o = self.opts
        return {"key": key, "seed": seed, "size": self.info.size, "patch": self.patch_size, "layer": o.layer,
                "neurons": o.neurons, "target_value": o.target_value, "steps": o.steps, "lr": o.lr,
                "background": o.background, "images": o.images if o.background == "train" else None, "version": 1}

    def prepare(self, train, *, seed, cache_dir, key, device="cpu", clean_model=None):
        shape = (self.info.channels, self.info.size, self.info.size)
        path = self.resource_path(cache_dir, self.resource_inputs(key, seed))
        t = self.load_resource(path)
        if t is not None:
            if tuple(t["pattern"].shape) == shape:
                self.pattern, self.neuron_index = t["pattern"], t["neurons"]
                return
        if clean_model is None:
            raise ConfigError("Trojan needs a clean model to optimise its trigger (clean_model=...)")
        g = torch.Generator().manual_seed(seed)
        if self.opts.background == "train":
            pick = torch.randperm(len(train), generator=g)[:self.opts.images]
            background = to_float(train.x[pick])
        else:
            background = torch.zeros(1, *shape)
        init = torch.rand(shape, generator=g)
        self.pattern, self.neuron_index = self.optimise(clean_model(), init, background, device)
        if path is not None:
            save_tensors(path, {"pattern": self.pattern, "neurons": self.neuron_index})

    def optimise(self, model: nn.Module, init: torch.Tensor, background: torch.Tensor, device="cpu"):
        """Sign-gradient descent of the masked pixels toward ``target_value`` on the selected
        neurons; returns (pattern on CPU, neuron indices)."""
        device = torch.device(device)
        o = self.opts
        model = model.to(device)
        was_training = model.training
        model.eval()
        _, layer = self.layer_of(model)
        idx = self.select_neurons(layer).to(device)
        m = self.mask(*init.shape[-2:]).to(device)
        bg = background.to(device)
        t = torch.where(m, init.to(device), torch.zeros((), device=device))
        with torch.enable_grad():
            for _ in range(o.steps):
                t.requires_grad_(True)
                a = self.activations(model, layer, torch.where(m, t, bg))[:, idx]
                cost = (a - o.target_value).pow(2).sum(1).mean()
                if float(cost.detach()) < _TOLERANCE:
                    break
                grad, = torch.autograd.grad(cost, t)
                t = (t.detach() - o.lr * grad.sign() * m).clamp(0.0, 1.0)
        model.train(was_training)
        return t.detach().float().cpu(), idx.cpu()
