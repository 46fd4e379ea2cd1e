"""NAD, Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li, Ma; ICLR 2021).

1. Teacher: a copy of the backdoored model fine-tuned on the defender's clean subset
   (``teacher_epochs``, 10 as in BackdoorBench and the original code; the shared
   ``defense.train`` settings otherwise).
2. Student: the backdoored model itself, trained on the same clean subset with
   cross-entropy plus attention-transfer losses against the frozen teacher (eval mode, no
   gradient) at several layers:

       L = CE(student(x), y) + sum_i beta_i * mean_{n, pixels} (A_s,i(x) - A_t,i(x))^2,
       A(f) = a / (||a||_2 + 1e-6),  a = sum_c |f_c|^p  (flattened per sample, p = 2).

   The distance is the original code's (bboylyg/NAD ``at.py``: ``F.mse_loss`` of the normalised
   maps, i.e. the mean of the squared differences over batch and pixels, with the eps added to
   the norm); the betas are BackdoorBench's 500 / 1000 / 1000 for three layers (the original's
   command-line default uses only the last layer, with 5000).

Layers: the outputs of the residual groups, as the original takes them (its WRN-16-1 has three:
it distils at the end of each). On PreAct-ResNet18 that is ``layer2``, ``layer3``, ``layer4``.
BackdoorBench instead takes layer3, layer4 and the 1x1 average-pool output, whose normalised
map is the constant 1 and carries no signal; we do not copy that. On a model without
``layer2..4`` (VGG19-BN, a small CNN) the default is the feature maps that enter the last
``len(betas)`` pooling modules that still have more than one pixel (the end of each of the last
convolutional stages); the option ``layers`` names modules (their outputs) explicitly.

The student trains for the teacher's epoch count unless ``student_epochs`` says otherwise (the
published setting: both phases equally short). BackdoorBench trains its student for 100 epochs.

Step size: both phases take the shared ``defense.train`` settings unless ``lr`` gives NAD its own
rate. The original trains its student at 0.1 for two epochs and at 0.01 after that
(``utils/util.py: adjust_learning_rate``), so mostly at 0.01; a params file whose shared rate was
chosen for FT-SAM's larger step can set NAD's here.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ftsam.config import ConfigError
from ftsam.defenses.base import Defended, Defense
from ftsam.train import SGDStep, classification_loss, make_optimizer, sgd_step

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def attention_map(f: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """[N, C, H, W] -> [N, H*W]: sum over channels of |f|^p, flattened, L2-normalised per sample."""
    a = f.float().abs().pow(p).sum(1).flatten(1)
    return a / (a.norm(dim=1, keepdim=True) + eps)


def attention_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], betas, p: float = 2.0) -> torch.Tensor:
    """sum_i beta_i * mean((A(s_i) - A(t_i))^2): the original NAD's distance (MSE of the maps)."""
    return sum(b * (attention_map(s, p) - attention_map(t, p).detach()).pow(2).mean()
               for b, s, t in zip(betas, student, teacher))


@contextmanager
def captured(model: nn.Module, points: list[tuple[str, str]]):
    """Record, during the block, the feature maps at ``points``: (module name, "output") for a
    module's output, (module name, "input") for the tensor entering it. Yields the list that the
    next forward fills, in the order of ``points``; the hooks are removed afterwards, so the
    defended model carries none."""
    modules = dict(model.named_modules())
    out: list = [None] * len(points)
    handles = []
    for i, (name, where) in enumerate(points):
        if name not in modules:
            raise ConfigError(f"defense.nad.layers: the model has no module {name!r}")

        def keep(_m, args, result=None, i=i, where=where):
            out[i] = args[0] if where == "input" else result
        handles.append(modules[name].register_forward_pre_hook(keep) if where == "input"
                       else modules[name].register_forward_hook(keep))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def default_points(model: nn.Module, probe: torch.Tensor, count: int) -> list[tuple[str, str]]:
    """Where NAD distils by default: the outputs of the last ``count`` residual groups
    (``layer1..layer4``) where the model has them; else the maps entering the last ``count``
    pooling modules that still have more than one pixel (``probe``: a float batch to find out)."""
    names = {n for n, _ in model.named_modules()}
    groups = [f"layer{i}" for i in range(1, 5) if f"layer{i}" in names]
    if len(groups) >= count:
        return [(g, "output") for g in groups[-count:]]
    pools = [n for n, m in model.named_modules() if isinstance(m, POOLS)]
    was_training = model.training
    model.eval()
    with torch.no_grad(), captured(model, [(n, "input") for n in pools]) as maps:
        model(probe)
    model.train(was_training)
    spatial = [(n, "input") for n, f in zip(pools, maps)
               if f is not None and f.dim() == 4 and f.shape[-1] * f.shape[-2] > 1]
    if len(spatial) < count:
        raise ConfigError(f"NAD: cannot find {count} layers to distil in {type(model).__name__} (no residual "
                          f"groups layer1..4, {len(spatial)} pooling stages with spatial maps); name them in "
                          f"defense.nad.layers")
    return spatial[-count:]


@dataclass
class NADStep(SGDStep):
    """One NAD update: the plain step on cross-entropy plus the attention losses of the student
    (``model``, train mode) against ``teacher`` (eval mode, no gradient, never updated) at ``points``."""
    teacher: nn.Module
    points: list
    betas: tuple
    p: float = 2.0

    def __post_init__(self):
        ce = self.loss

        def loss(model, xb, yb):
            with captured(model, self.points) as s_maps:
                out = ce(model, xb, yb)
            self.teacher.eval()
            with torch.no_grad(), captured(self.teacher, self.points) as t_maps:
                self.teacher(xb)
            return out + attention_loss(s_maps, t_maps, self.betas, self.p)
        self.loss = loss


class NAD(Defense):
    name, title = "nad", "NAD"
    needs = ("model", "clean")

    @dataclass(frozen=True)
    class Options:
        teacher_epochs: int = 10            # fine-tuning of the teacher (original and BackdoorBench: 10)
        student_epochs: int = 0             # 0: the teacher's count (the published setting)
        betas: tuple = (500.0, 1000.0, 1000.0)   # one weight per distilled layer (BackdoorBench's)
        p: float = 2.0                      # attention map: sum over channels of |f|^p
        layers: tuple = ()                  # module names (outputs); empty: see default_points
        lr: float = 0.0                     # teacher's and student's step; 0: defense.train.lr

    @classmethod
    def check_options(cls, opts):
        if opts.teacher_epochs < 1:
            raise ConfigError(f"defense.nad.teacher_epochs must be >= 1, got {opts.teacher_epochs!r}")
        if opts.student_epochs < 0:
            raise ConfigError(f"defense.nad.student_epochs must be >= 0 (0: the teacher's), got {opts.student_epochs!r}")
        if not isinstance(opts.betas, (list, tuple)) or not opts.betas or \
                not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b >= 0 for b in opts.betas):
            raise ConfigError(f"defense.nad.betas must be a non-empty list of numbers >= 0, got {opts.betas!r}")
        if not opts.p > 0:
            raise ConfigError(f"defense.nad.p must be > 0, got {opts.p!r}")
        if not isinstance(opts.layers, (list, tuple)) or not all(isinstance(n, str) for n in opts.layers):
            raise ConfigError(f"defense.nad.layers must be a list of module names, got {opts.layers!r}")
        if not opts.lr >= 0.0:
            raise ConfigError(f"defense.nad.lr must be >= 0 (0: defense.train.lr), got {opts.lr!r}")
        if opts.layers and len(opts.layers) != len(opts.betas):
            raise ConfigError(f"defense.nad.layers names {len(opts.layers)} modules but defense.nad.betas "
                              f"has {len(opts.betas)} weights")

    def points(self, model: nn.Module, clean) -> list[tuple[str, str]]:
        if self.opts.layers:
            return [(n, "output") for n in self.opts.layers]
        probe = clean.x[:2].float().div(255).to(next(model.parameters()).device)
        return default_points(model, probe, len(self.opts.betas))

    def run(self, given, ctx):
        model, clean, o = given.model, given.clean, self.opts
        train = dataclasses.replace(self.cfg.train, lr=o.lr or self.cfg.train.lr)
        teacher_cfg = dataclasses.replace(train, epochs=o.teacher_epochs)
        student_cfg = dataclasses.replace(train, epochs=o.student_epochs or o.teacher_epochs)
        teacher = copy.deepcopy(model)
        ctx.fit(teacher, clean, teacher_cfg, sgd_step(teacher, teacher_cfg), desc="NAD teacher",
                state="teacher_state", monitor=False)
        teacher.eval().requires_grad_(False)
        points = self.points(model.to(ctx.device), clean)
        step = NADStep(model, make_optimizer(model, student_cfg), classification_loss(student_cfg.label_smoothing),
                       teacher, points, tuple(float(b) for b in o.betas), o.p)
        fitted = ctx.fit(model, clean, student_cfg, step, desc=self.title, state="student_state")
        return Defended(model, fitted.history, {"layers": [f"{n}:{w}" for n, w in points]})
