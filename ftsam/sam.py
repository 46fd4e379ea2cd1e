"""Adaptive sharpness-aware minimization (FT-SAM's optimizer), as a wrapper around a base
optimizer you already built, in the two-step style of ASAM (SamsungLabs/ASAM).

One FT-SAM step, with T_w = diag(|w| + eta) (or the identity when ``adaptive=False``)::

    loss(w).backward()          # pass 1: g = grad L(w)
    sam.ascent_step()           # w <- w + eps,  eps = rho * T_w^2 g / ||T_w g||_2
    with frozen_bn(model):
        loss(w + eps).backward()    # pass 2: grad L(w + eps); BN running stats untouched
    sam.descent_step()          # w <- w - eps, then the base optimizer steps with that gradient

``eps`` solves the first-order inner maximisation max_{||T_w^-1 eps|| <= rho} L(w + eps)
(Section A of the supplement, eq. 3-4). The norm is one global norm over every perturbed
parameter. ``perturb="all"`` perturbs every parameter with a gradient (the authors' code);
``"weights"`` only those whose name ends in ``weight``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class SAM:
    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, rho: float,
                 eta: float = 0.0, adaptive: bool = True, perturb: str = "all"):
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        if perturb not in ("all", "weights"):
            raise ValueError(f"perturb: unknown value {perturb!r}; valid choices: all, weights")
        self.optimizer, self.rho, self.eta, self.adaptive = optimizer, rho, eta, adaptive
        self.params = [p for n, p in model.named_parameters()
                       if p.requires_grad and (perturb == "all" or n.endswith("weight"))]
        self._eps: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def perturbation(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(param, eps) pairs for the current gradients: eps = rho T^2 g / ||T g||."""
        ps = [p for p in self.params if p.grad is not None]
        if not ps:
            return []
        gs = [p.grad for p in ps]
        if self.adaptive:
            ts = torch._foreach_add(torch._foreach_abs(ps), self.eta)       # T_w = |w| + eta
            tg = torch._foreach_mul(ts, gs)                                 # T_w g
        else:
            ts, tg = None, gs
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tg)))
        scale = self.rho / (norm + 1e-12)
        eps = torch._foreach_mul(torch._foreach_mul(ts, tg), scale) if self.adaptive \
            else torch._foreach_mul(gs, scale)                              # rho T^2 g / ||T g||
        return list(zip(ps, eps))

    @torch.no_grad()
    def ascent_step(self) -> None:
        self._eps = self.perturbation()
        for p, e in self._eps:
            p.add_(e)
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def descent_step(self) -> None:
        for p, e in self._eps:
            p.sub_(e)
        self._eps = []
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@contextmanager
def frozen_bn(model: nn.Module):
    """Keep BatchNorm running statistics fixed (train-mode batch statistics still used)."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield model
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
