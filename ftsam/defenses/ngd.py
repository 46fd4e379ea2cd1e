"""NGD: natural-gradient fine-tuning (Karim, Al Arafat, Khalid, Guo, Rahnavard, "In search of
smooth minima for purifying backdoor in deep neural networks", 2022; arXiv 2306.17441 as
"Efficient Backdoor Removal Through Natural Gradient Fine-tuning", NGF), reference [6] of the
FT-SAM supplement (its Table 5).

What the method does (paper and reference code ``Purification_NGF.py`` /
``natural_gradient_optimizer.py`` of the authors' anonymous release):

- Fine-tune **one layer**, the classification layer, on the defender's clean data; the rest of
  the network stays as it is (``layers: last``, the default: the paper's method). Two options
  for comparison: ``layers: all`` preconditions every Linear/Conv2d layer and gives every other
  parameter (BatchNorm's) its plain gradient; ``layers: reference`` is what the reference script
  actually runs: its optimizer preconditions the classification layer only (``module_start``)
  but is built over all parameters, so the rest of the network gets plain SGD steps.
- The optimizer is **K-FAC** (Martens & Grosse 2015; KFC for convolutions): per layer the Fisher
  block is approximated by A (x) G, A = E[a a^T] of the layer's inputs (with a 1 for the bias),
  G = E[g g^T] of the per-sample loss gradients at its outputs (the gradient of the training
  loss itself: the empirical Fisher, as the reference computes it). Both are running averages
  (``stat_decay`` 0.95) refreshed every ``cov_every`` (10) steps; their eigendecompositions
  A = Q_a diag(d_a) Q_a^T, G = Q_g diag(d_g) Q_g^T every ``inv_every`` (100) steps. The
  update of a layer's [out, in(+1)] gradient matrix V is

      V_nat = Q_g [ (Q_g^T V Q_a) / (d_g d_a^T + damping) ] Q_a^T  =  (G (x) A + damping I)^-1 vec(V),

  then scaled by nu = min(1, sqrt(kl_clip / sum(lr^2 V_nat . V))) (K-FAC's KL clipping), and
  given to SGD with momentum and weight decay.
- A clean-distribution-aware regulariser from the Fisher of the backdoored model on the clean
  data (the paper's "CDA" term): (eta_F / 2) sum_j F_jj (theta_j - theta0_j)^2 over the tuned
  parameters, F_jj the mean of squared per-sample gradients (empirical diagonal Fisher) at the
  start, theta0 the backdoored weights. The author advises a small weight (``fisher_reg``,
  0.1 here; the reference script trains with cross-entropy alone, so 0 reproduces it).

Departures, each for a reason:
- The reference optimizer further rescales the eigenbasis every 10 steps from per-sample
  gradients (EKFAC, George et al. 2018); the paper describes K-FAC, and that is what is here.
- The reference adds weight decay only after 200 steps and steps the learning rate down by 10x at
  35% and 75% of training; here the shared ``defense.train`` schedule (cosine) applies.
- Length: the reference runs 2000 iterations at batch 128 on 5% of CIFAR-10 (2500 images), about
  100 epochs, the paper's FT budget; ``epochs: 0`` takes ``defense.train.epochs`` (the same
  budget as FT on every setting). lr 0.005 (the supplement's setting for NGD).
- BatchNorm keeps training mode during fine-tuning (as the reference's ``net.train()``), so the
  frozen layers' running statistics follow the clean data.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ftsam.config import ConfigError
from ftsam.defenses.base import Defended, Defense
from ftsam.train import Loss, classification_loss


# ---- K-FAC statistics of one layer -------------------------------------------------------
def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows a of the layer's input statistics: [samples (x positions), in (+1 for the bias)]."""
    if isinstance(module, nn.Conv2d):
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)   # [N, C*k*k, L]
        x = x.transpose(1, 2).reshape(-1, x.shape[1])
    else:
        x = x.reshape(-1, x.shape[-1])
    if module.bias is not None:
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
    return x


def output_grads(module: nn.Module, g: torch.Tensor, batch: int) -> torch.Tensor:
    """The rows of the layer's output-gradient statistics: [samples (x positions), out]. ``g`` is
    the gradient of the batch-mean loss, so times the batch size it is the per-sample one."""
    if isinstance(module, nn.Conv2d):
        g = g.transpose(1, 3).reshape(-1, g.shape[1])    # [N*H*W, C]
    else:
        g = g.reshape(-1, g.shape[-1])
    return g * batch


def grad_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's gradient as one [out, in(+1)] matrix (bias as the last column)."""
    g = module.weight.grad.reshape(module.weight.shape[0], -1)
    return torch.cat([g, module.bias.grad[:, None]], 1) if module.bias is not None else g


def kfac_direction(v: torch.Tensor, qa, da, qg, dg, damping: float) -> torch.Tensor:
    """(G (x) A + damping I)^-1 applied to the gradient matrix v, in the factors' eigenbases."""
    return qg @ ((qg.T @ v @ qa) / (dg[:, None] * da[None, :] + damping)) @ qa.T


def running(old: torch.Tensor, new: torch.Tensor, decay: float) -> torch.Tensor:
    return decay * old + (1.0 - decay) * new


# ---- the step ----------------------------------------------------------------------------
@dataclass
class NGDStep:
    """One natural-gradient update of the K-FAC ``modules`` (name -> Linear/Conv2d). Its state
    (step count, running factors and their eigendecompositions) is in :meth:`state_tensors`, so a
    resumed fit continues exactly."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Loss
    modules: dict
    damping: float = 1e-3
    kl_clip: float = 1e-2
    stat_decay: float = 0.95
    cov_every: int = 10
    inv_every: int = 100
    steps: int = 0
    factors: dict = field(default_factory=dict)      # "<name>.A", ".G", ".Qa", ".da", ".Qg", ".dg"

    @contextmanager
    def _recording(self, on: bool):
        """Hooks that add this batch's input and output-gradient statistics to the running
        factors (only on steps that refresh them); removed after the batch."""
        handles = []
        if on:
            for name, m in self.modules.items():
                def fwd(mod, args, out, name=name):
                    a = layer_inputs(mod, args[0].detach().float())
                    self._update(f"{name}.A", a.T @ a / a.shape[0])
                    n = args[0].shape[0]
                    out.register_hook(lambda g, mod=mod, name=name, n=n: self._grad_stat(mod, name, g, n))
                handles.append(m.register_forward_hook(fwd))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _grad_stat(self, mod, name, g, n):
        s = output_grads(mod, g.detach().float(), n)
        self._update(f"{name}.G", s.T @ s / s.shape[0])

    def _update(self, key: str, new: torch.Tensor) -> None:
        old = self.factors.get(key)
        # K-FAC starts its running factors from the identity (the reference does too)
        old = torch.eye(new.shape[0], device=new.device, dtype=new.dtype) if old is None else old
        self.factors[key] = running(old, new, self.stat_decay)

    def _invert(self) -> None:
        for name in self.modules:
            for f, q, d in (("A", "Qa", "da"), ("G", "Qg", "dg")):
                evals, evecs = torch.linalg.eigh(self.factors[f"{name}.{f}"])
                self.factors[f"{name}.{d}"] = evals.clamp_min(0.0) * (evals > 1e-10)   # drop round-off negatives
                # eigh returns column-major eigenvectors; a checkpoint stores them row-major. Keep them
                # row-major here too, so a resumed run's products take the same kernel path (on an AMD
                # EPYC the two layouts rounded differently and a resumed fit drifted in the last bits).
                self.factors[f"{name}.{q}"] = evecs.contiguous()

    def precondition(self, lr: float) -> None:
        """Replace the K-FAC layers' gradients by their KL-clipped natural gradients."""
        if self.steps % self.inv_every == 0:
            self._invert()
        nat, vg = {}, 0.0
        for name, m in self.modules.items():
            f = self.factors
            v = grad_matrix(m).float()
            nat[name] = kfac_direction(v, f[f"{name}.Qa"], f[f"{name}.da"], f[f"{name}.Qg"], f[f"{name}.dg"],
                                       self.damping)
            vg += float((nat[name] * v).sum()) * lr ** 2
        nu = min(1.0, math.sqrt(self.kl_clip / vg)) if vg > 0 else 1.0
        for name, m in self.modules.items():
            u = nat[name] * nu
            if m.bias is not None:
                m.bias.grad.copy_(u[:, -1])
                u = u[:, :-1]
            m.weight.grad.copy_(u.reshape(m.weight.shape))

    def __call__(self, xb, yb, before_update=None):
        with self._recording(self.steps % self.cov_every == 0):
            loss = self.loss(self.model, xb, yb)
            loss.backward()
        self.precondition(self.optimizer.param_groups[0]["lr"])
        if before_update is not None:
            before_update()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return loss

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"steps": torch.tensor(self.steps), **{f"factor.{k}": v for k, v in self.factors.items()}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.steps = int(tensors["steps"])
        self.factors = {k[len("factor."):]: v for k, v in tensors.items() if k.startswith("factor.")}


# ---- the clean-distribution-aware regulariser ------------------------------------------------
def diagonal_fisher(model: nn.Module, params: dict[str, nn.Parameter], x_u8: torch.Tensor, y: torch.Tensor,
                    device: torch.device, chunk: int = 32) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of ``params`` on the clean data: the mean over samples of the
    squared per-sample cross-entropy gradients, in eval mode (one sample's gradient must not
    depend on the others through BatchNorm's batch statistics)."""
    from torch.func import functional_call, grad, vmap
    was_training = model.training
    model.eval()
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in params}
    buffers = dict(model.named_buffers())

    def sample_loss(p, x, t):
        out = functional_call(model, ({**fixed, **p}, buffers), (x[None],))
        return F.cross_entropy(out, t[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    p0 = {k: v.detach() for k, v in params.items()}
    total = {k: torch.zeros_like(v) for k, v in p0.items()}
    for i in range(0, len(x_u8), chunk):
        xb = x_u8[i:i + chunk].to(device).float().div(255)
        g = per_sample(p0, xb, y[i:i + chunk].to(device))
        for k in total:
            total[k] += g[k].pow(2).sum(0)
    model.train(was_training)
    return {k: v / len(x_u8) for k, v in total.items()}


def fisher_regularised(ce: Loss, params: dict[str, nn.Parameter], fisher: dict[str, torch.Tensor],
                       weight: float) -> Loss:
    """ce + (weight / 2) sum_j F_jj (theta_j - theta0_j)^2, theta0 = the parameters now."""
    start = {k: p.detach().clone() for k, p in params.items()}

    def loss(m, xb, yb):
        out = ce(m, xb, yb)
        if weight:
            out = out + 0.5 * weight * sum((fisher[k] * (p - start[k]).pow(2)).sum() for k, p in params.items())
        return out
    return loss


def kfac_modules(model: nn.Module, which: str) -> dict[str, nn.Module]:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if not layers:
        raise ConfigError(f"NGD: {type(model).__name__} has no Linear or Conv2d layer to fine-tune")
    if which in ("last", "reference"):
        name = [n for n, m in layers.items() if isinstance(m, nn.Linear)][-1:] or list(layers)[-1:]
        return {name[0]: layers[name[0]]}
    return layers


class NGD(Defense):
    name, title = "ngd", "NGD"
    needs = ("model", "clean")

    @dataclass(frozen=True)
    class Options:
        lr: float = 0.005               # the supplement's NGD setting
        epochs: int = 0                 # 0: defense.train.epochs (reference: 2000 iterations ~ FT's 100 epochs)
        momentum: float = 0.9
        weight_decay: float = 1e-4
        damping: float = 1e-3           # Tikhonov damping of each Kronecker-factored block
        kl_clip: float = 1e-2
        stat_decay: float = 0.95        # running average of the factors
        cov_every: int = 10             # steps between refreshes of the factors
        inv_every: int = 100            # steps between their eigendecompositions
        fisher_reg: float = 0.1         # eta_F of the clean-distribution-aware regulariser
        # "last": the classification layer only (the paper's one layer); "all": every Linear/Conv2d;
        # "reference": K-FAC on the classification layer, plain SGD on the rest (the reference code)
        layers: Literal["last", "all", "reference"] = "last"

    @classmethod
    def check_options(cls, o):
        for key in ("lr", "damping", "kl_clip"):
            if not getattr(o, key) > 0:
                raise ConfigError(f"defense.ngd.{key} must be > 0, got {getattr(o, key)!r}")
        for key in ("momentum", "stat_decay"):
            if not 0.0 <= getattr(o, key) < 1.0:
                raise ConfigError(f"defense.ngd.{key} must lie in [0, 1), got {getattr(o, key)!r}")
        for key in ("weight_decay", "fisher_reg", "epochs"):
            if not getattr(o, key) >= 0:
                raise ConfigError(f"defense.ngd.{key} must be >= 0, got {getattr(o, key)!r}")
        for key in ("cov_every", "inv_every"):
            if not getattr(o, key) >= 1:
                raise ConfigError(f"defense.ngd.{key} must be >= 1, got {getattr(o, key)!r}")

    def step(self, model: nn.Module, fisher_data=None, device=torch.device("cpu")) -> NGDStep:
        """The NGD step for ``model``: freezes what it does not tune; with ``fisher_data``
        (images, labels) and ``fisher_reg`` > 0 adds the Fisher regulariser."""
        o, train = self.opts, self.cfg.train
        modules = kfac_modules(model, o.layers)
        tuned = {f"{n}.{k}": p for n, m in modules.items() for k, p in m.named_parameters()}
        if o.layers in ("all", "reference"):
            tuned = {n: p for n, p in model.named_parameters() if p.requires_grad}
        for n, p in model.named_parameters():
            p.requires_grad_(n in tuned)
        loss = classification_loss(train.label_smoothing)
        if fisher_data is not None and o.fisher_reg > 0:
            fisher = diagonal_fisher(model, tuned, *fisher_data, device)
            loss = fisher_regularised(loss, tuned, fisher, o.fisher_reg)
        opt = torch.optim.SGD(list(tuned.values()), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        return NGDStep(model, opt, loss, modules, o.damping, o.kl_clip, o.stat_decay, o.cov_every, o.inv_every)

    def run(self, given, ctx):
        model, clean, o = given.model.to(ctx.device), given.clean, self.opts
        cfg = dataclasses.replace(self.cfg.train, lr=o.lr, epochs=o.epochs or self.cfg.train.epochs)
        step = self.step(model, (clean.x, clean.y), ctx.device)
        fitted = ctx.fit(model, clean, cfg, step, desc=self.title)
        model.requires_grad_(True)
        return Defended(model, fitted.history, {"layers": sorted(step.modules)})

