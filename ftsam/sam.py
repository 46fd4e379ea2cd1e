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
        self._scratch: dict[int, torch.Tensor] = {}   # T_w buffer per parameter when eta > 0 (see _perturb)

    @torch.no_grad()
    def perturbation(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(param, eps) pairs for the current gradients: eps = rho T^2 g / ||T g||.

        The eps are fresh tensors, bitwise equal to what :meth:`ascent_step` adds."""
        return self._perturb(in_place=False)

    @torch.no_grad()
    def _perturb(self, in_place: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """eps for the current gradients. ``in_place`` (the training step, which drops the
        gradients right after) computes eps in the gradient tensors themselves and T_w (only
        for eta > 0) in buffers kept from step to step: no parameter-sized tensor is allocated
        (and page-faulted) per step. Otherwise (the public :meth:`perturbation`) the gradients are
        left as they are. Either way every value comes from the same float operations in the
        same order, ``eps = ((g * T) * T) * scale``, so the two agree bitwise."""
        ps = [p for p in self.params if p.grad is not None]
        if not ps:
            return []
        es = [p.grad if in_place else p.grad.clone() for p in ps]           # g
        if self.adaptive:
            if self.eta:
                ts = self._t_buffers(ps, keep=in_place)
                torch._foreach_copy_(ts, ps)
                torch._foreach_abs_(ts)
                torch._foreach_add_(ts, self.eta)                           # T_w = |w| + eta
            else:
                # T_w = |w|, and w serves as well: g w is g |w| up to sign, so its norm is the
                # same, and (g w) w is exactly (g |w|) |w| (rounding is sign-symmetric).
                ts = ps
            torch._foreach_mul_(es, ts)                                     # T_w g
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(es)))
        scale = self.rho / (norm + 1e-12)
        if self.adaptive:
            torch._foreach_mul_(es, ts)                                     # T_w^2 g
        torch._foreach_mul_(es, scale)                                      # rho T^2 g / ||T g||
        return list(zip(ps, es))

    def _t_buffers(self, ps: list[torch.Tensor], keep: bool) -> list[torch.Tensor]:
        """One scratch tensor per parameter for T_w, like it (shape, dtype, device, memory
        format); with ``keep``, kept and made again only when a parameter changed (e.g. moved)."""
        if not keep:
            return [torch.empty_like(p) for p in ps]
        out = []
        for p in ps:
            b = self._scratch.get(id(p))
            if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device \
                    or b.stride() != p.stride():
                b = self._scratch[id(p)] = torch.empty_like(p)
            out.append(b)
        return out

    @torch.no_grad()
    def ascent_step(self) -> None:
        self._eps = self._perturb(in_place=True)
        if self._eps:
            torch._foreach_add_([p for p, _ in self._eps], [e for _, e in self._eps])
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def descent_step(self) -> None:
        if self._eps:
            torch._foreach_sub_([p for p, _ in self._eps], [e for _, e in self._eps])
        self._eps = []
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def rho_at(rho: float, lr_factor: float, schedule: str = "constant", rho_min: float = 0.0) -> float:
    """The SAM radius at a step whose learning rate is ``lr_factor`` times the base rate:
    ``rho`` for the constant schedule; for ``"lr"``, ``rho_min + (rho - rho_min) * lr_factor``
    (rho falls with the learning rate, from ``rho`` to ``rho_min``)."""
    if schedule == "constant":
        return rho
    if schedule == "lr":
        return rho_min + (rho - rho_min) * lr_factor
    raise ValueError(f"rho schedule: unknown value {schedule!r}; valid choices: constant, lr")


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
