"""LF, the low-frequency attack (Zeng, Park, Mao & Jia, ICCV 2021, "Rethinking the backdoor
attacks' triggers: a frequency perspective").

The trigger is one additive, smooth (low-frequency) perturbation ``delta`` shared by every
poisoned image: ``x' = clip(x + delta, 0, 1)``, labels changed to the target (all-to-one;
all-to-all keeps the same ``delta`` and maps ``y -> (y+1) mod C``, as BackdoorBench's LF does).
``delta`` is a universal adversarial perturbation (UAP) toward the target class, found on a
model trained on the clean data (``clean_model()``) and kept low-frequency throughout.

What follows the published code (the authors' ``Sec5_Smooth_Trigger`` and BackdoorBench's
``resource/lowFrequency`` generator, which is the same algorithm in PyTorch):

* ``images`` (100) training images, ``passes`` (at most 50) shuffled passes over them. For each
  image whose predicted label the current ``delta`` does not change yet, a *targeted DeepFool*
  step sequence moves ``x + delta`` toward the target (``r += |f| w / ||w||^2`` with
  ``f = f_target - f_top`` and ``w`` its input gradient, at most ``deepfool_steps`` (200) steps,
  overshoot 0.02); when it converged, ``delta <- project(lowpass(delta + lowpass(r)))``.
* After every pass the fooling rate (share of the images whose prediction ``delta`` changes)
  is measured; the search stops once it reaches ``fooling_rate`` (0.2, i.e. the code's
  ``delta = 0.8``) or has moved by less than 0.01 over the last five passes.
* ``project`` with ``norm: range`` (default) is the code's ``normalization``: the perturbation is
  shifted and scaled to span exactly ``[0, eps]`` (``eps`` = 0.2 in [0, 1] units = 51/255).
  ``norm: linf`` / ``l2`` instead scale it into the L_inf / L2 ball of radius ``eps/255``
  (a scaling, not a clip, so the trigger stays exactly low-frequency).

Deviations, all small and deliberate:

* **Low-pass filter**: the code blurs with a Gaussian (sigma 6 px on 32 px images, i.e.
  about a tenth of the spectrum kept). We use an *ideal* low-pass: the orthonormal 2-D DCT-II
  coefficients ``(u, v)`` with ``u >= ceil(freq_cut * H)`` or ``v >= ceil(freq_cut * W)`` are
  zeroed (per channel). It is a projection, so the trigger provably has no energy above the
  cut, and it scales with the image size (``freq_cut`` is a fraction of the spectrum).
* The images are drawn (seeded) from the non-target classes (the code takes any 100); the
  fooling rate is measured on them (as the authors' code does; BackdoorBench uses 10 test
  images per class, which ``prepare`` does not get). DeepFool starts from ``clip(x + delta)``,
  the image the trigger really produces. Only the one gradient targeted DeepFool uses is
  computed (the code computes one per class and uses two).
* The authors' code afterwards re-picks the target as the class most fooled into; the
  target here is ``attack.target`` (as in BackdoorBench).

``delta`` is a generated resource, cached under ``cache_dir`` as ``lf-<hash>.safetensors`` by a
hash of (key, target, seed, the generation options, version); ``poison_ratio`` counts the
whole training set."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ftsam.attacks.base import Attack, to_float
from ftsam.config import ConfigError
from ftsam.io import save_tensors


def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ x`` are the coefficients of ``x``, ``D.T @ c`` inverts)."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def kept(n: int, freq_cut: float) -> int:
    """How many DCT frequencies (from 0) of an axis of ``n`` pixels the low-pass keeps."""
    return max(1, min(n, math.ceil(freq_cut * n - 1e-9)))


def lowpass_matrix(n: int, freq_cut: float, dtype=torch.float64) -> torch.Tensor:
    """``P = D.T diag(1[k < kept]) D``: the orthogonal projection onto the low DCT frequencies."""
    d = dct_matrix(n, dtype)
    k = kept(n, freq_cut)
    return d[:k].T @ d[:k]


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two axes."""
    dh, dw = dct_matrix(x.shape[-2], x.dtype).to(x.device), dct_matrix(x.shape[-1], x.dtype).to(x.device)
    return dh @ x @ dw.T


class LF(Attack):
    name, title = "lf", "LF"

    @dataclass(frozen=True)
    class Options:
        eps: float = 51.0              # budget, pixel units out of 255 (the code's 0.2)
        norm: Literal["range", "linf", "l2"] = "range"
        freq_cut: float = 0.125        # share of the DCT spectrum kept, per axis
        images: int = 100              # images the UAP is computed on
        passes: int = 50               # at most this many passes over them
        fooling_rate: float = 0.2      # stop once the UAP changes this share of predictions
        overshoot: float = 0.02
        deepfool_steps: int = 200

    @classmethod
    def check_options(cls, opts):
        if not opts.eps > 0 or (opts.norm != "l2" and opts.eps > 255.0):
            raise ConfigError(f"attack.options.eps must lie in (0, 255] (l2: > 0), got {opts.eps}")
        if not 0.0 < opts.freq_cut <= 1.0:
            raise ConfigError(f"attack.options.freq_cut must lie in (0, 1], got {opts.freq_cut}")
        if opts.images < 1:
            raise ConfigError(f"attack.options.images must be >= 1, got {opts.images}")
        if opts.passes < 1:
            raise ConfigError(f"attack.options.passes must be >= 1, got {opts.passes}")
        if not 0.0 <= opts.fooling_rate <= 1.0:
            raise ConfigError(f"attack.options.fooling_rate must lie in [0, 1], got {opts.fooling_rate}")
        if opts.overshoot < 0:
            raise ConfigError(f"attack.options.overshoot must be >= 0, got {opts.overshoot}")
        if opts.deepfool_steps < 1:
            raise ConfigError(f"attack.options.deepfool_steps must be >= 1, got {opts.deepfool_steps}")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.delta: torch.Tensor | None = None      # [C, H, W] float, [0, 1] units
        self.fooling: list[float] = []               # fooling rate after each pass (when built here)

    # ---- the trigger ---------------------------------------------------------------------
    def trigger(self, x, y=None):
        if self.delta is None:
            raise RuntimeError("LF's perturbation is built by prepare(...); call it first")
        return (x + self.delta.to(x.device, x.dtype)).clamp(0.0, 1.0)

    def lowpass(self, v: torch.Tensor) -> torch.Tensor:
        """Project ``[..., H, W]`` onto the DCT frequencies below the cut."""
        ph = lowpass_matrix(v.shape[-2], self.opts.freq_cut).to(v.device, v.dtype)
        pw = lowpass_matrix(v.shape[-1], self.opts.freq_cut).to(v.device, v.dtype)
        return ph @ v @ pw

    def project(self, v: torch.Tensor) -> torch.Tensor:
        eps = self.opts.eps / 255.0
        if self.opts.norm == "range":
            span = v.max() - v.min()
            return (v - v.min()) * (eps / span) if span > 1e-12 else v
        size = v.abs().max() if self.opts.norm == "linf" else v.norm()
        return v * (eps / size) if size > eps else v

    # ---- the generated resource ----------------------------------------------------------
    def resource_inputs(self, key: str, seed: int) -> dict:
        o = self.opts
        return {"key": key, "target": self.cfg.target, "seed": seed, "eps": o.eps, "norm": o.norm,
                "freq_cut": o.freq_cut, "images": o.images, "passes": o.passes, "fooling_rate": o.fooling_rate,
                "overshoot": o.overshoot, "deepfool_steps": o.deepfool_steps, "version": 1}

    def prepare(self, train, *, seed, cache_dir, key, device="cpu", clean_model=None):
        shape = (self.info.channels, self.info.size, self.info.size)
        path = self.resource_path(cache_dir, self.resource_inputs(key, seed))
        t = self.load_resource(path)
        if t is not None:
            if tuple(t["delta"].shape) == shape:
                self.delta, self.fooling = t["delta"], t["fooling"].tolist()
                return
        if clean_model is None:
            raise ConfigError("LF needs a clean model to compute its universal perturbation (clean_model=...)")
        g = torch.Generator().manual_seed(seed)
        cand = (train.y != self.cfg.target).nonzero().flatten()
        index = cand[torch.randperm(len(cand), generator=g)[:self.opts.images]].sort().values
        self.delta, self.fooling = self.universal_perturbation(clean_model(), train.x[index], g, device)
        if path is not None:
            save_tensors(path, {"delta": self.delta, "fooling": torch.tensor(self.fooling), "index": index})

    @torch.no_grad()
    def universal_perturbation(self, model, x_u8: torch.Tensor, g: torch.Generator, device="cpu"):
        """The low-frequency targeted UAP on uint8 images ``x_u8``; returns (delta on CPU, fooling rates)."""
        device = torch.device(device)
        o = self.opts
        model = model.to(device)
        was_training = model.training
        model.eval()
        x = to_float(x_u8.to(device))
        v = torch.zeros(x.shape[1:], device=device)
        clean_pred = model(x).argmax(1)
        history: list[float] = []
        for _ in range(o.passes):
            for i in torch.randperm(len(x), generator=g).tolist():
                xv = (x[i:i + 1] + v).clamp(0.0, 1.0)
                if int(model(xv).argmax(1)) != int(clean_pred[i]):
                    continue                                  # already moved by v
                r, steps = self.deepfool(model, xv)
                if steps < o.deepfool_steps - 1 and torch.isfinite(r).all():   # converged (as the code checks)
                    v = self.project(self.lowpass(v + self.lowpass(r[0])))
            fooled = model((x + v).clamp(0.0, 1.0)).argmax(1) != clean_pred
            history.append(float(fooled.float().mean()))
            last = history[-5:]
            if history[-1] >= o.fooling_rate or (len(last) == 5 and max(last) - min(last) < 0.01):
                break
        model.train(was_training)
        return v.float().cpu(), history

    @torch.enable_grad()
    def deepfool(self, model, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Targeted DeepFool from ``x`` ([1, C, H, W]) toward ``cfg.target``: the perturbation
        (with overshoot) and the number of steps taken."""
        o, target = self.opts, self.cfg.target
        r = torch.zeros_like(x)
        top = None
        for step in range(o.deepfool_steps + 1):
            xp = (x + (1 + o.overshoot) * r).requires_grad_(True)
            out = model(xp)[0]
            k = int(out.argmax())
            top = k if top is None else top
            if k == target or step == o.deepfool_steps:
                return ((1 + o.overshoot) * r).detach(), step
            f = out[target] - out[top]
            w, = torch.autograd.grad(f, xp)
            step_r = f.detach().abs() * w / w.pow(2).sum()
            if torch.isfinite(step_r).all():                  # as the code does: drop a non-finite step
                r = r + step_r
        raise AssertionError("unreachable")
