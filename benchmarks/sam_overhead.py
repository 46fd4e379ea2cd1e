"""1. FT-SAM step time / FT step time, same model, batch and data (target <= 2.05).

One FT-SAM step is two forward/backward passes plus the SAM bookkeeping (eps, w + eps,
w - eps); one FT step is one pass. The steps below are ``ftsam.train.fit``'s loop body
(uint8 batch -> float, batched crop/flip, label-smoothed loss, SGD with momentum), timed one
by one after a warm-up, FT and FT-SAM alternating, median of many. ``fit`` itself is timed
too (whole epochs, FT vs FT-SAM) as a cross-check that the loop adds nothing else."""
from __future__ import annotations

import copy
import dataclasses
import time

import torch
import torch.nn.functional as F

from benchmarks.common import Check, Section, interleaved, median, ms
from ftsam.config import ModelConfig, SAMConfig, TrainConfig, load_config
from ftsam.data import DatasetInfo, ImageSet, load_dataset
from ftsam.defenses.ft_sam import sam_step
from ftsam.models import build_model
from ftsam.sam import SAM, frozen_bn
from ftsam.train import augment, epoch_generator, fit, make_optimizer

TARGET = 2.05


class Stepper:
    """fit()'s loop body for one model, FT (``sam=None``) or FT-SAM, cycling through batches."""

    def __init__(self, model, data: ImageSet, cfg: TrainConfig, sam: SAMConfig | None, seed: int = 0):
        self.model, self.data, self.cfg = model.train(), data, cfg
        self.opt = make_optimizer(model, cfg)
        self.sam = SAM(self.opt, model, sam.rho, sam.eta, sam.adaptive, sam.perturb) if sam else None
        self.g = epoch_generator(seed, 0, torch.device("cpu"))
        self.order = torch.randperm(len(data), generator=self.g)
        self.iters = len(data) // cfg.batch_size
        self.it = 0
        self.parts: dict[str, list[float]] = {}

    def batch(self):
        b = self.cfg.batch_size
        idx = self.order[(self.it % self.iters) * b:(self.it % self.iters + 1) * b]
        self.it += 1
        xb = augment(self.data.x[idx].float().div_(255.0), self.cfg.crop_padding, self.cfg.hflip, self.g)
        return xb, self.data.y[idx]

    def loss(self, xb, yb):
        return F.cross_entropy(self.model(xb), yb, label_smoothing=self.cfg.label_smoothing)

    def step(self) -> None:
        xb, yb = self.batch()
        self.loss(xb, yb).backward()
        if self.sam is None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            self.sam.ascent_step()
            with frozen_bn(self.model):
                self.loss(xb, yb).backward()
            self.sam.descent_step()

    def timed_step(self) -> None:
        """The same step, each part timed (for the breakdown)."""
        t = [time.perf_counter()]
        xb, yb = self.batch()
        t.append(time.perf_counter())
        self.loss(xb, yb).backward()
        t.append(time.perf_counter())
        if self.sam is None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            t.append(time.perf_counter())
            names = ("batch", "pass 1", "SGD step")
        else:
            self.sam.ascent_step()
            t.append(time.perf_counter())
            with frozen_bn(self.model):
                self.loss(xb, yb).backward()
            t.append(time.perf_counter())
            self.sam.descent_step()
            t.append(time.perf_counter())
            names = ("batch", "pass 1", "ascent (eps, w+eps)", "pass 2 (frozen BN)", "descent (w-eps, SGD step)")
        for name, a, b in zip(names, t, t[1:]):
            self.parts.setdefault(name, []).append(b - a)


def synthetic(n: int, channels: int, size: int, classes: int = 10, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
                    torch.randint(0, classes, (n,), generator=g))


def settings(quick: bool):
    """(label, model, data, train cfg, sam cfg, rounds) for the two model sizes."""
    cfg = load_config("params/offline.yaml")
    train, _, info = load_dataset(cfg.data)
    torch.manual_seed(0)
    small = build_model(cfg.model, info)
    yield (f"offline default: digits {info.size}x{info.size}x{info.channels}, PreAct-ResNet18 width "
           f"{cfg.model.width}, batch {cfg.defense.train.batch_size}",
           small, train, cfg.defense.train, cfg.defense.ft_sam, 10 if quick else 60)
    cinfo = DatasetInfo("cifar-sized", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    torch.manual_seed(0)
    big = build_model(ModelConfig("preactresnet18", 32), cinfo)
    tcfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, label_smoothing=0.1, crop_padding=4, hflip=True)
    yield ("32x32x3 (random fixed uint8), PreAct-ResNet18 width 32, batch 32", big,
           synthetic(1024, 3, 32), tcfg, SAMConfig(rho=2.0), 4 if quick else 24)


def run(quick: bool = False) -> Section:
    sec = Section("1. FT-SAM step time / FT step time")
    sec.add("Steps are `ftsam.train.fit`'s loop body (uint8 batch to float, batched crop/flip, "
            "label-smoothed cross-entropy, SGD momentum 0.9, weight decay 5e-4; FT-SAM adds the ascent, "
            "a second pass with BatchNorm statistics frozen, and the descent). Same model initialisation, "
            "same batches, FT and FT-SAM alternating step by step, 2 warm-up steps each; the ratio checked is the "
            "median over the pairs of adjacent steps (robust to a load that changes during the run). "
            f"Target: ratio <= {TARGET} (two passes, plus at most 2.5% of a step of SAM bookkeeping).", "")
    rows, parts_rows = [], []
    for label, model, data, tcfg, scfg, rounds in settings(quick):
        ft = Stepper(copy.deepcopy(model), data, tcfg, None)
        fs = Stepper(copy.deepcopy(model), data, tcfg, scfg)
        t = interleaved({"ft": ft.step, "ft_sam": fs.step}, rounds=rounds, per_round=1)
        a, b = median(t["ft"]), median(t["ft_sam"])
        ratio = median([fs_t / ft_t for ft_t, fs_t in zip(t["ft"], t["ft_sam"])])    # paired: adjacent steps
        rows.append([label, ms(a), ms(b), b / a, ratio, len(t["ft"])])
        sec.checks.append(Check(f"FT-SAM/FT step, {label.split(':')[0].split(',')[0]}", ratio, TARGET, "<=",
                                note=f"medians {ms(b):.1f} ms / {ms(a):.1f} ms"))
        for _ in range(max(3, rounds // 2)):
            ft.timed_step()
            fs.timed_step()
        step_b = sum(median(v) for v in fs.parts.values())
        short = label.split(":")[0].split(",")[0]
        for kind, parts in (("FT", ft.parts), ("FT-SAM", fs.parts)):
            for name, v in parts.items():
                parts_rows.append([short, kind, name, ms(median(v)),
                                   100 * median(v) / step_b if kind == "FT-SAM" else float("nan")])
        sam_only = median(fs.parts["ascent (eps, w+eps)"]) + median(fs.parts["descent (w-eps, SGD step)"]) \
            - median(ft.parts["SGD step"])
        sec.add(f"- {label}: SAM bookkeeping beyond the two passes (ascent + descent - plain SGD step) "
                f"= {ms(sam_only):.2f} ms = {100 * sam_only / b:.1f}% of an FT-SAM step.")
    sec.add("")
    sec.table(["setting", "FT step (ms)", "FT-SAM step (ms)", "ratio of medians",
               "median of paired ratios (the check)", "steps timed each"], rows)
    sec.add("Breakdown (medians of separately timed parts):", "")
    sec.table(["setting", "step", "part", "ms", "% of FT-SAM step"], parts_rows)

    # cross-check: whole epochs of fit(), FT vs FT-SAM, on the offline default
    cfg = load_config("params/offline.yaml")
    train, _, info = load_dataset(cfg.data)
    torch.manual_seed(0)
    base = build_model(cfg.model, info)
    tcfg = dataclasses.replace(cfg.defense.train, epochs=1)

    def fit_once(sam):
        m = copy.deepcopy(base)
        return lambda: fit(m, train, tcfg, sam_step(m, tcfg, sam) if sam else None, seed=0, progress=False)
    ft_fit, fs_fit = fit_once(None), fit_once(cfg.defense.ft_sam)
    t = interleaved({"ft": ft_fit, "ft_sam": fs_fit}, rounds=2 if quick else 3, warmup=1)
    a, b = median(t["ft"]), median(t["ft_sam"])
    sec.add(f"Cross-check with `fit` itself (offline default, one epoch over all {len(train)} digits training "
            f"images = {len(train) // tcfg.batch_size} steps, no evaluation): FT {a:.2f} s, FT-SAM {b:.2f} s, "
            f"ratio **{b / a:.3f}**.", "")
    return sec
