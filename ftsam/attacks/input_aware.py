"""Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020): a generator makes a different
trigger for every input, trained together with the victim.

Two small encoder-decoder networks read the image: ``netG`` makes a pattern ``p(x)`` and
``netM`` a one-channel mask ``m(x)``; the poisoned image is

    x' = x + (p(x) - x) * m(x)

Both networks are the official ``Generator`` (VinAIResearch/input-aware-backdoor-attack-release,
also BackdoorBench's ``inputaware.py``): ``steps`` times two conv blocks (3x3 conv, BatchNorm,
ReLU) and a 2x2 max-pool with the channels doubling from ``channels``, a middle block, then
``steps`` times a bilinear 2x upsampling and two conv blocks halving the channels, the last
block without ReLU; the output is squashed to (0, 1) by ``tanh(h) / (2 + 1e-7) + 1/2``, and the
mask further sharpened by ``tanh(20 m - 10) / (2 + 1e-7) + 1/2``. The official code blends in
the normalised domain; ours blends float images in [0, 1] with a pattern in (0, 1), which is
the same blend (normalisation is affine per channel), and x' stays in [0, 1]. Diversity
distances are taken in the normalised domain (``info.mean``, ``info.std``) as in the official code.
``channels`` and ``steps`` default (0) by image size: the official MNIST net (16, 2) from 28
pixels, the CIFAR-10/GTSRB one (32, 3) from 32 pixels, and (8, 2) below 28 (the offline 16x16
digits: a quarter of the MNIST net's cost, so the attack costs little beyond a plain run).

**Stage 1** (:meth:`prepare`, seeded, cached under ``cache_dir`` by a hash of ``key`` and the
stage-1 options as ``input_aware-mask-<hash>.safetensors``): ``netM`` alone for
``mask_epochs`` (official 25) epochs of Adam (lr ``lr_m``, betas (0.5, 0.9), lr x0.1 after
40% and 80% of the epochs: the official milestones 10 and 20 of 25) on random pairs of
training images (x1, x2), minimising

    lambda_norm * mean(relu(m(x1) - mask_density)) + lambda_div * mean(d(x1, x2) / (d(m(x1), m(x2)) + eps))

with ``d(a, b) = sqrt(mean((a - b)^2))`` per sample (the official code weights the diversity
term by ``lambda_div`` twice, the same at its default 1; it also augments these images, which we
use as they are, and runs ``netM`` on x1 and x2 separately where we run it once on both). ``netM`` is then frozen (eval mode, no gradients).

**Stage 2** (:meth:`poison_batch` inside :func:`ftsam.train.fit`, ``trainable = True``): in
every augmented batch of n the first ``int(n * poison_ratio)`` samples get their own trigger
and the target label, the next ``int(n * p_cross)`` get the trigger of another image of the
batch (a random permutation of the batch stands in for the official second data loader:
cross-trigger samples) and keep their labels, the rest stay clean. The batch keeps the
autograd graph to ``netG``, so the classifier's loss trains it, and :meth:`extra_loss` adds
the diversity loss ``lambda_div * mean(d(x1, x2) / (d(p(x1), p(x2)) + eps))`` over the pairs
(poisoned image, cross-trigger source) of unmasked patterns, as the official code. ``netG`` has
its own Adam (lr ``lr_g``, betas (0.5, 0.9)), stepped after the classifier's step by
:meth:`after_step`. Its learning rate follows the classifier's schedule (``g_schedule: model``,
e.g. our cosine): the official one is constant over its first 200 epochs (``g_schedule:
constant``), but over a short cosine run a generator still moving at full rate when the
classifier has stopped leaves the test-time trigger (netG in eval mode, BatchNorm running
statistics) behind what the classifier learned. Unlike the official code, netG's gradients
are cleared after every step (the official loop never zeroes them). One
``netG`` forward serves both the poisoned and the cross samples (official: two, so BatchNorm's
batch statistics differ slightly). No fixed training samples are poisoned (``poison_index`` is
empty). The test set is the non-target images with their own trigger, made with the trained
networks in eval mode and quantised to uint8.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ftsam.attacks.base import Attack, to_float
from ftsam.config import ConfigError
from ftsam.data import ImageSet
from ftsam.io import CheckpointError, save_tensors

_EPS_SQUASH = 1e-7       # the official 1 / (2 + 1e-7) squashing


def _block(c_in: int, c_out: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class TriggerNet(nn.Sequential):
    """The official encoder-decoder ``Generator``; outputs in (0, 1)."""

    def __init__(self, in_channels: int, out_channels: int, channels: int, steps: int):
        super().__init__()
        c_in, c = in_channels, channels
        for s in range(steps):
            self.add_module(f"down{s}", nn.Sequential(_block(c_in, c), _block(c, c), nn.MaxPool2d(2)))
            c_in = c
            if s < steps - 1:
                c *= 2
        self.add_module("middle", _block(c, c))
        for s in range(steps):
            last = s == steps - 1
            c_out = out_channels if last else c // 2
            self.add_module(f"up{s}", nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                                                    _block(c, c), _block(c, c_out, relu=not last)))
            c = c_out

    def forward(self, x):
        return torch.tanh(super().forward(x)) / (2 + _EPS_SQUASH) + 0.5

    @staticmethod
    def threshold(m: torch.Tensor) -> torch.Tensor:
        """The official sharpening of a mask in (0, 1) towards {0, 1}."""
        return torch.tanh(m * 20 - 10) / (2 + _EPS_SQUASH) + 0.5


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square distance, as the official ``sqrt(mean(MSE))``; its gradient
    is 0 (not NaN) where a sample's two sides are equal (an image paired with itself)."""
    ms = (a - b).pow(2).mean(dim=(1, 2, 3))
    return torch.where(ms > 0, ms.clamp_min(1e-30).sqrt(), ms)


def diversity_loss(x1, x2, g1, g2, eps: float = 1e-7) -> torch.Tensor:
    """mean over samples of d(x1, x2) / (d(g1, g2) + eps): small when different inputs get
    different outputs."""
    return (distance(x1, x2) / (distance(g1, g2) + eps)).mean()


class InputAware(Attack):
    name, title = "input_aware", "Input-aware"
    on_the_fly = True
    trainable = True

    @dataclass(frozen=True)
    class Options:
        p_cross: float = 0.1         # cross-trigger share of a batch (p_attack is attack.poison_ratio)
        lambda_div: float = 1.0      # diversity loss weight (both stages)
        lambda_norm: float = 100.0   # mask-norm loss weight (stage 1)
        mask_density: float = 0.032  # mask values above this are penalised (stage 1)
        mask_epochs: int = 25        # stage 1
        mask_batch_size: int = 128   # stage 1
        lr_g: float = 0.01           # Adam, betas (0.5, 0.9)
        g_schedule: Literal["model", "constant"] = "model"   # netG's lr: the model's schedule, or constant
        lr_m: float = 0.01
        channels: int = 0            # first-stage channels of netG and netM; 0: by image size
        steps: int = 0               # down/upsampling stages; 0: by image size
        eps: float = 1e-7            # in the diversity losses' denominators

    @classmethod
    def check_options(cls, o):
        if not 0.0 <= o.p_cross < 1.0:
            raise ConfigError(f"attack.options.p_cross must lie in [0, 1), got {o.p_cross}")
        for k in ("lambda_div", "lambda_norm", "eps"):
            if getattr(o, k) < 0:
                raise ConfigError(f"attack.options.{k} must be >= 0, got {getattr(o, k)}")
        if not 0.0 < o.mask_density < 1.0:
            raise ConfigError(f"attack.options.mask_density must lie in (0, 1), got {o.mask_density}")
        if o.mask_epochs < 0 or o.channels < 0 or o.steps < 0:
            raise ConfigError("attack.options.mask_epochs, channels and steps must be >= 0 "
                              f"(got {o.mask_epochs}, {o.channels}, {o.steps})")
        if o.mask_batch_size < 2:
            raise ConfigError(f"attack.options.mask_batch_size must be >= 2, got {o.mask_batch_size}")
        if o.lr_g <= 0 or o.lr_m <= 0:
            raise ConfigError(f"attack.options.lr_g and lr_m must be > 0, got {o.lr_g}, {o.lr_m}")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.channels, self.steps = self.architecture(info.size, self.opts.channels, self.opts.steps)
        if info.size % 2 ** self.steps:
            raise ConfigError(f"attack.options.steps: {self.steps} stages of 2x pooling need an image size "
                              f"divisible by {2 ** self.steps}, got {info.size}")
        if self.cfg.poison_ratio + self.opts.p_cross > 1.0:
            raise ConfigError(f"attack.poison_ratio + attack.options.p_cross must be <= 1, got "
                              f"{self.cfg.poison_ratio} + {self.opts.p_cross}")
        self.netG: TriggerNet | None = None   # built by prepare
        self.netM: TriggerNet | None = None
        self.opt_g: torch.optim.Adam | None = None
        self._extra: torch.Tensor | None = None
        c = info.channels
        self._mean = torch.tensor(info.mean, dtype=torch.float32).view(1, c, 1, 1)
        self._std = torch.tensor(info.std, dtype=torch.float32).view(1, c, 1, 1)

    @staticmethod
    def architecture(size: int, channels: int = 0, steps: int = 0) -> tuple[int, int]:
        """(channels, steps), the zeros resolved by image size: (32, 3) from 32 pixels (the
        official CIFAR-10/GTSRB net), (16, 2) from 28 (MNIST), (8, 2) below."""
        auto = (32, 3) if size >= 32 else (16, 2) if size >= 28 else (8, 2)
        return channels or auto[0], steps or auto[1]

    def build_nets(self) -> tuple[TriggerNet, TriggerNet]:
        c = self.info.channels
        return (TriggerNet(c, c, self.channels, self.steps), TriggerNet(c, 1, self.channels, self.steps))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean.to(x.device, x.dtype)) / self._std.to(x.device, x.dtype)

    def _check(self):
        if self.netG is None:
            raise RuntimeError("Input-aware's networks are built by prepare(...); call it first")

    # ---- the trigger ---------------------------------------------------------------------
    @staticmethod
    def blend(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x where the mask is 0, the pattern where it is 1."""
        return x + (pattern - x) * mask

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        return TriggerNet.threshold(self.netM(x))

    @torch.no_grad()
    def cross_trigger(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``x`` with the trigger (pattern and mask) generated from ``source``, eval mode."""
        self._check()
        was = self.netG.training
        self.netG.eval()
        dev = next(self.netG.parameters()).device
        out = []
        for i in range(0, len(x), 512):
            xb, sb = x[i:i + 512].to(dev), source[i:i + 512].to(dev)
            out.append(self.blend(xb, self.netG(sb), self.masks(sb)).to(x.device))
        self.netG.train(was)
        return torch.cat(out) if out else x.clone()

    def trigger(self, x, y=None):
        return self.cross_trigger(x, x)

    # ---- stage 1: the mask network -------------------------------------------------------
    def resource_inputs(self, key: str, seed: int) -> dict:
        o = self.opts
        return {"key": key, "seed": seed, "channels": self.channels, "steps": self.steps,
                "image": [self.info.channels, self.info.size, list(self.info.mean), list(self.info.std)],
                "lambda_div": o.lambda_div, "lambda_norm": o.lambda_norm, "mask_density": o.mask_density,
                "mask_epochs": o.mask_epochs, "mask_batch_size": o.mask_batch_size, "lr_m": o.lr_m,
                "eps": o.eps, "version": 1}

    def prepare(self, train, *, seed, cache_dir, key, device="cpu", clean_model=None):
        device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            netG, netM = self.build_nets()
        self.netG, self.netM = netG.to(device), netM.to(device)
        self.opt_g = torch.optim.Adam(self.netG.parameters(), self.opts.lr_g, betas=(0.5, 0.9))
        self._extra = None
        path = self.resource_path(cache_dir, self.resource_inputs(key, seed), tag="input_aware-mask")
        t = self.load_resource(path)
        if t is not None:
            self.netM.load_state_dict(t)
        else:
            self.train_mask(train, seed)
            if path is not None:
                save_tensors(path, self.netM.state_dict())
        self.netM.eval().requires_grad_(False)
        self.netG.train()

    def train_mask(self, train: ImageSet, seed: int) -> list[dict]:
        """Stage 1: ``netM`` alone, on random pairs of training images. Returns per-epoch losses."""
        o, netM = self.opts, self.netM
        dev = next(netM.parameters()).device
        netM.train().requires_grad_(True)
        opt = torch.optim.Adam(netM.parameters(), o.lr_m, betas=(0.5, 0.9))
        g = torch.Generator(device=dev).manual_seed(seed * 100_003 + 7_777_777)
        x_all = train.x.to(dev)
        n = len(x_all)
        bs = min(o.mask_batch_size, n)
        iters = max(1, n // bs)
        milestones = (round(0.4 * o.mask_epochs), round(0.8 * o.mask_epochs))
        history = []
        for epoch in range(o.mask_epochs):
            for group in opt.param_groups:
                group["lr"] = o.lr_m * 0.1 ** sum(epoch >= m for m in milestones)
            p1 = torch.randperm(n, generator=g, device=dev)
            p2 = torch.randperm(n, generator=g, device=dev)
            tot_norm = tot_div = 0.0
            for it in range(iters):
                x1 = to_float(x_all[p1[it * bs:(it + 1) * bs]])
                x2 = to_float(x_all[p2[it * bs:(it + 1) * bs]])
                m = self.masks(torch.cat([x1, x2]))
                m1, m2 = m[:len(x1)], m[len(x1):]
                loss_div = diversity_loss(self._norm(x1), self._norm(x2), m1, m2, o.eps)
                loss_norm = F.relu(m1 - o.mask_density).mean()
                loss = o.lambda_norm * loss_norm + o.lambda_div * loss_div
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot_norm += float(loss_norm.detach())
                tot_div += float(loss_div.detach())
            history.append({"epoch": epoch + 1, "norm": tot_norm / iters, "div": tot_div / iters})
        netM.eval().requires_grad_(False)
        return history

    # ---- stage 2: poisoning inside the training loop -------------------------------------
    def poison_index(self, train: ImageSet, seed: int) -> torch.Tensor:
        return torch.empty(0, dtype=torch.long)      # poisoned per batch, not as a fixed set

    def batch_counts(self, batch_size: int) -> tuple[int, int]:
        """(poisoned, cross-trigger) samples in a batch of ``batch_size``, as the official code counts."""
        num_bd = int(batch_size * self.cfg.poison_ratio)
        return num_bd, min(int(batch_size * self.opts.p_cross), batch_size - num_bd)

    def poison_batch(self, x, y, generator):
        self._check()
        o = self.opts
        n = len(x)
        nb, nc = self.batch_counts(n)
        self._extra = None
        if nb + nc == 0:
            return x, y
        x2 = x[torch.randperm(n, generator=generator, device=x.device)]   # the official second batch
        src = torch.cat([x[:nb], x2[nb:nb + nc]])
        self.netG.train()
        patterns = self.netG(src)
        with torch.no_grad():
            masks = self.masks(src)
        x_bd = self.blend(x[:nb], patterns[:nb], masks[:nb])
        x_cross = self.blend(x[nb:nb + nc], patterns[nb:], masks[nb:])
        k = min(nb, nc)
        if k and o.lambda_div:
            self._extra = o.lambda_div * diversity_loss(self._norm(x[:k]), self._norm(x2[nb:nb + k]),
                                                        self._norm(patterns[:k]), self._norm(patterns[nb:nb + k]),
                                                        o.eps)
        x = torch.cat([x_bd, x_cross, x[nb + nc:]])
        y = torch.cat([self.target_of(y[:nb]), y[nb:]])
        return x, y

    def extra_loss(self):
        extra, self._extra = self._extra, None
        return extra

    def after_step(self, lr_factor=1.0):
        for group in self.opt_g.param_groups:
            group["lr"] = self.opts.lr_g * (lr_factor if self.opts.g_schedule == "model" else 1.0)
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)

    # ---- state ---------------------------------------------------------------------------
    def state_tensors(self):
        self._check()
        t = {f"netG.{k}": v for k, v in self.netG.state_dict().items()}
        t.update({f"netM.{k}": v for k, v in self.netM.state_dict().items()})
        for i, p in enumerate(self.netG.parameters()):
            for k, v in self.opt_g.state.get(p, {}).items():
                t[f"optG.{i}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
        return t

    def load_state_tensors(self, tensors):
        self._check()
        try:
            for name, net in (("netG", self.netG), ("netM", self.netM)):
                net.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
        except RuntimeError as e:
            raise CheckpointError(f"Input-aware state does not fit its networks: {e}") from None
        self.opt_g.state.clear()
        for i, p in enumerate(self.netG.parameters()):
            state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optG.{i}.")}
            if state:   # Adam's step counter stays a CPU tensor; the moments go with the parameter
                self.opt_g.state[p] = {k: v.clone() if k == "step" else v.to(p.device) for k, v in state.items()}
        self.netM.eval().requires_grad_(False)
