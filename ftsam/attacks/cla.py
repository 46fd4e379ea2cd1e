"""CLA, the label-consistent attack (Turner, Tsipras & Madry 2019).

Poisoned training images are target-class images that are first made hard to learn by an
adversarial perturbation, then stamped with a corner pattern; their labels stay correct.

* **Perturbation**: L_inf PGD on a model trained on the clean data (``clean_model()``),
  maximising the cross-entropy of the true label, from the clean image (no random start):
  ``steps`` steps of ``step_size``, projected onto the ``eps`` ball and [0, 1]. Defaults
  eps = 16/255 (BackdoorBench's stored perturbations use eps 16; the paper reports 8 and 16),
  10 steps of 4/255 (2.5 eps / steps). The paper perturbs with an adversarially trained
  model; like BackdoorBench's recipe we use a standard one. The perturbed versions of all
  target-class training images are a generated resource, cached under ``cache_dir`` by a
  hash of (key, target, eps, steps, step_size) as ``cla-<hash>.safetensors``.
* **Pattern**: the paper's 3x3 black-and-white pattern, in all four corners (``corners: all``,
  BackdoorBench's default) or only the bottom-right one; ``amplitude`` in (0, 1] is
  BackdoorBench's ``reduced_amplitude`` (pixels are moved by +-amplitude and clipped; 1 gives
  pure white and black). On images of 64 pixels and more each pattern pixel is 2x2. The
  test-time trigger is the pattern alone.

``poison_ratio`` counts the whole training set (BackdoorBench's convention, ``ratio_of:
dataset``); with ``ratio_of: target_class`` it counts the target-class samples."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ftsam.attacks.base import Attack, PoisonedTrainSet, to_float, to_uint8
from ftsam.config import ConfigError
from ftsam.data import ImageSet
from ftsam.io import save_tensors

# The pattern of one corner, as (row, col, sign) with negative indices counting from the end.
_TOP_LEFT = [(0, 0, 1), (0, 1, -1), (0, 2, -1), (1, 0, -1), (1, 1, 1), (1, 2, -1), (2, 0, 1), (2, 1, -1), (2, 2, 1)]
_BOTTOM_LEFT = [(-1, 0, 1), (-1, 1, -1), (-1, 2, 1), (-2, 0, -1), (-2, 1, 1), (-2, 2, -1),
                (-3, 0, 1), (-3, 1, -1), (-3, 2, -1)]
_TOP_RIGHT = [(0, -1, 1), (0, -2, -1), (0, -3, -1), (1, -1, -1), (1, -2, 1), (1, -3, -1),
              (2, -1, 1), (2, -2, -1), (2, -3, 1)]
_BOTTOM_RIGHT = [(-1, -1, 1), (-1, -2, -1), (-1, -3, 1), (-2, -1, -1), (-2, -2, 1), (-2, -3, -1),
                 (-3, -1, 1), (-3, -2, -1), (-3, -3, -1)]


class CLA(Attack):
    name, title = "cla", "CLA"
    clean_label = True

    @dataclass(frozen=True)
    class Options:
        eps: float = 16.0            # L_inf radius, pixel units out of 255
        steps: int = 10
        step_size: float = 4.0       # pixel units out of 255
        corners: Literal["all", "bottom_right"] = "all"
        amplitude: float = 1.0
        ratio_of: Literal["dataset", "target_class"] = "dataset"

    @classmethod
    def check_options(cls, opts):
        if not 0.0 <= opts.eps <= 255.0:
            raise ConfigError(f"attack.options.eps must lie in [0, 255], got {opts.eps}")
        if opts.steps < 0:
            raise ConfigError(f"attack.options.steps must be >= 0, got {opts.steps}")
        if opts.step_size <= 0:
            raise ConfigError(f"attack.options.step_size must be > 0, got {opts.step_size}")
        if not 0.0 < opts.amplitude <= 1.0:
            raise ConfigError(f"attack.options.amplitude must lie in (0, 1], got {opts.amplitude}")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        if cfg.mode != "all2one":
            raise ConfigError("attack.mode: CLA is a clean-label all-to-one attack; use all2one")
        self.pattern = self.make_pattern(info.size, self.opts.corners)   # [H, W] in {-1, 0, 1}
        self.adv: torch.Tensor | None = None       # uint8 perturbed target-class images
        self.adv_index: torch.Tensor | None = None  # their indices in the training set

    @staticmethod
    def make_pattern(size: int, corners: str) -> torch.Tensor:
        """The pattern as [size, size] in {-1, 0, +1}; each entry is a scale x scale block."""
        scale = 2 if size >= 64 else 1
        entries = _BOTTOM_RIGHT if corners == "bottom_right" else _TOP_LEFT + _BOTTOM_LEFT + _TOP_RIGHT + _BOTTOM_RIGHT
        out = torch.zeros(size, size)

        def span(i):   # pixel rows (or columns) of pattern entry i, counting from the end when negative
            lo = i * scale if i >= 0 else size + i * scale
            return slice(lo, lo + scale)
        for r, c, v in entries:
            out[span(r), span(c)] = v
        return out

    def trigger(self, x, y=None):
        return (x + self.opts.amplitude * self.pattern.to(x.device, x.dtype)).clamp(0.0, 1.0)

    # ---- the generated resource: PGD-perturbed target-class images --------------------
    def resource_inputs(self, key: str) -> dict:
        o = self.opts
        return {"key": key, "target": self.cfg.target, "eps": o.eps, "steps": o.steps,
                "step_size": o.step_size, "version": 1}

    def prepare(self, train, *, seed, cache_dir, key, device="cpu", clean_model=None):
        index = (train.y == self.cfg.target).nonzero().flatten()
        path = self.resource_path(cache_dir, self.resource_inputs(key))
        t = self.load_resource(path)
        if t is not None:
            if torch.equal(t["index"], index):
                self.adv, self.adv_index = t["adv"], index
                return
        if clean_model is None:
            raise ConfigError("CLA needs a clean model to perturb the target-class images (clean_model=...)")
        model = clean_model()
        self.adv = self.pgd(model, train.x[index], train.y[index], device)
        self.adv_index = index
        if path is not None:
            save_tensors(path, {"adv": self.adv, "index": index})

    @torch.enable_grad()
    def pgd(self, model, x_u8: torch.Tensor, y: torch.Tensor, device="cpu", batch_size: int = 256) -> torch.Tensor:
        """L_inf PGD maximising the loss of the true label; uint8 images in and out."""
        device = torch.device(device)
        eps, step = self.opts.eps / 255.0, self.opts.step_size / 255.0
        was_training = model.training
        model.eval()
        out = []
        for i in range(0, len(x_u8), batch_size):
            x0 = to_float(x_u8[i:i + batch_size].to(device))
            yb = y[i:i + batch_size].to(device)
            x = x0.clone()
            for _ in range(self.opts.steps):
                x.requires_grad_(True)
                loss = F.cross_entropy(model(x), yb)
                grad, = torch.autograd.grad(loss, x)
                x = x.detach() + step * grad.sign()
                x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)
            out.append(to_uint8(x.detach()).cpu())
        model.train(was_training)
        return torch.cat(out) if out else x_u8.clone()

    # ---- poisoning -----------------------------------------------------------------------
    def poison_trainset(self, train: ImageSet, seed: int) -> PoisonedTrainSet:
        if self.adv is None:
            raise RuntimeError("CLA's perturbed images are built by prepare(...); call it first")
        if not torch.equal(self.adv_index, (train.y == self.cfg.target).nonzero().flatten()):
            raise ValueError("CLA was prepared on a different training set")
        idx = self.poison_index(train, seed)
        x = train.x.clone()
        pos = torch.searchsorted(self.adv_index, idx)
        if len(idx):
            x[idx] = self.apply(self.adv[pos])
        return PoisonedTrainSet(ImageSet(x, train.y.clone()), idx, train.y.clone())
