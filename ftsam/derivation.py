"""A numerical check of the inner maximisation of FT-SAM (Section A of the supplement).

The perturbation FT-SAM adds to the weights ``w`` solves, to first order,

    max_{eps in S} eps . g,      S = {eps : ||T_w^-1 eps||_2 <= rho},   g = grad L(w),

with ``T_w = diag(|w| + eta)`` (or the identity when ``adaptive=False``). Writing
``eps = T_w eps~`` turns the ellipsoid ``S`` into the ball ``||eps~|| <= rho`` and the
objective into ``eps~ . (T_w g)``, whose maximiser over the ball is ``rho T_w g / ||T_w g||``;
mapping back gives eq. (4)::

    eps* = rho T_w^2 g / ||T_w g||_2

This module holds small helpers to test that claim three ways: against random feasible
points (none may do better), against projected gradient ascent (it must reach the same
optimum) and against :meth:`ftsam.sam.SAM.perturbation` on a real model (the optimizer must
apply exactly this ``eps``). Every vector here is one flat tensor over all perturbed
parameters (the norm in eq. 4 is one global norm); diagonal matrices are stored as their
diagonals. Randomness comes only from an explicit ``torch.Generator`` (seed 0 when none is
given), so every result is reproducible. Nothing here plots.

A note on ``eta = 0`` (the authors' setting): ``T_w`` is then singular wherever a weight is
exactly zero (e.g. freshly initialised BatchNorm biases). The feasible set is the image
``T_w {||eps~|| <= rho}``, so ``eps`` must be zero on those coordinates, and
``||T_w^-1 eps||`` is read as the norm over the other coordinates (infinite if ``eps`` is
non-zero where ``T_w`` is zero).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ftsam.config import SAMConfig
from ftsam.sam import SAM


# ---- the geometry of the constraint -------------------------------------------------------
def scaling(w: torch.Tensor, eta: float = 0.0, adaptive: bool = True) -> torch.Tensor:
    """The diagonal of ``T_w``: ``|w| + eta`` (adaptive) or all ones (plain SAM, ``T_w = I``)."""
    return w.abs() + eta if adaptive else torch.ones_like(w)


def constraint_norm(eps: torch.Tensor, w: torch.Tensor, eta: float = 0.0, adaptive: bool = True) -> torch.Tensor:
    """``||T_w^-1 eps||_2``: ``eps`` is feasible when this is ``<= rho``.

    ``eps`` may be one vector ``[d]`` or a batch of them ``[n, d]`` (one norm per row)."""
    t = scaling(w, eta, adaptive)
    whitened = torch.where(t > 0, eps / t.clamp_min(torch.finfo(t.dtype).tiny),
                           torch.where(eps == 0, 0.0, torch.inf).to(eps.dtype))
    return torch.linalg.vector_norm(whitened, dim=-1)


def scale_to_boundary(direction: torch.Tensor, w: torch.Tensor, rho: float, eta: float = 0.0,
                      adaptive: bool = True) -> torch.Tensor:
    """``direction`` rescaled so that it lies on the boundary ``||T_w^-1 eps|| = rho``.

    Components where ``T_w`` is zero (which no feasible ``eps`` can have) are dropped first."""
    direction = torch.where(scaling(w, eta, adaptive) > 0, direction, 0.0)
    return direction * (rho / constraint_norm(direction, w, eta, adaptive))


def ellipse_2d(w: torch.Tensor, rho: float, eta: float = 0.0, adaptive: bool = True,
               n: int = 361) -> torch.Tensor:
    """``n`` points ``[n, 2]`` around the boundary of ``S`` for a two-parameter ``w``."""
    if w.numel() != 2:
        raise ValueError(f"ellipse_2d needs a two-parameter w, got {w.numel()} parameters")
    angle = torch.linspace(0.0, 2 * torch.pi, n, dtype=w.dtype)
    circle = rho * torch.stack([angle.cos(), angle.sin()], dim=1)   # the ball ||eps~|| = rho
    return circle * scaling(w, eta, adaptive)                       # eps = T_w eps~


# ---- the objective and its closed-form maximiser ------------------------------------------
def linearised_gain(eps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``eps . g``: the first-order increase of the loss, ``L(w + eps) - L(w) ~ eps . g``.

    Works on one ``eps`` ``[d]`` or a batch ``[n, d]`` (one gain per row)."""
    return eps @ g


def closed_form_eps(g: torch.Tensor, w: torch.Tensor, rho: float, eta: float = 0.0,
                    adaptive: bool = True) -> torch.Tensor:
    """Eq. (4): ``eps* = rho T_w^2 g / ||T_w g||_2``, the maximiser of ``eps . g`` over ``S``."""
    t = scaling(w, eta, adaptive)
    tg = t * g                                        # T_w g: the gradient in whitened coordinates
    return rho * t * tg / torch.linalg.vector_norm(tg)


# ---- competitors: random feasible points and projected gradient ascent --------------------
def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def random_feasible(w: torch.Tensor, rho: float, n: int, eta: float = 0.0, adaptive: bool = True, *,
                    generator: torch.Generator | None = None, on_boundary: bool = False) -> torch.Tensor:
    """``n`` random points ``[n, d]`` of ``S``: uniform in the ball ``||eps~|| <= rho`` (or on its
    sphere when ``on_boundary``), mapped to the ellipsoid by ``eps = T_w eps~``."""
    gen = _generator(generator)
    d = w.numel()
    z = torch.randn(n, d, generator=gen, dtype=w.dtype)
    direction = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)          # uniform on the sphere
    if on_boundary:
        radius = torch.full((n, 1), rho, dtype=w.dtype)
    else:
        radius = rho * torch.rand(n, 1, generator=gen, dtype=w.dtype) ** (1.0 / d)  # uniform in the ball
    return radius * direction * scaling(w, eta, adaptive)


def random_gains(g: torch.Tensor, w: torch.Tensor, rho: float, n: int, eta: float = 0.0,
                 adaptive: bool = True, *, generator: torch.Generator | None = None,
                 on_boundary: bool = False, chunk: int = 16) -> torch.Tensor:
    """The gains ``eps . g`` of ``n`` points from :func:`random_feasible`, drawn ``chunk`` at a
    time so that a model with many parameters never holds all ``n`` points in memory."""
    gen = _generator(generator)
    gains = []
    for start in range(0, n, chunk):
        eps = random_feasible(w, rho, min(chunk, n - start), eta, adaptive, generator=gen, on_boundary=on_boundary)
        gains.append(linearised_gain(eps, g))
    return torch.cat(gains)


class PGAResult(NamedTuple):
    eps: torch.Tensor               # the final iterate, mapped back: eps = T_w eps~
    path: torch.Tensor | None       # [steps + 1, d] iterates eps (only with keep_path=True)


def projected_gradient_ascent(g: torch.Tensor, w: torch.Tensor, rho: float, eta: float = 0.0,
                              adaptive: bool = True, *, steps: int = 40, lr: float = 1.0,
                              generator: torch.Generator | None = None,
                              keep_path: bool = False) -> PGAResult:
    """Maximise ``eps . g`` over ``S`` numerically, without using eq. (4).

    The search runs in the whitened variable ``eps~ = T_w^-1 eps``, where ``S`` is the ball
    ``||eps~|| <= rho`` and projecting onto it is just a rescaling. Start from a random point
    of the ball; each step takes the gradient of ``(T_w eps~) . g`` by autograd, moves
    ``lr * rho`` along its direction (normalised, so ``lr`` is scale free) and projects back::

        eps~ <- P(eps~ + lr * rho * grad / ||grad||),     P(v) = v * min(1, rho / ||v||)

    With ``lr = 1``, once ``eps~`` is on the sphere each step exactly halves its angle to the
    optimum (the step and ``eps~`` have the same length ``rho``), so 40 steps reach about
    1e-12 from any start.
    """
    t = scaling(w, eta, adaptive)
    gen = _generator(generator)
    x = random_feasible(torch.ones_like(w), rho, 1, generator=gen)[0]          # a random eps~ in the ball
    path = [t * x] if keep_path else None
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(linearised_gain(t * x, g), x)
        with torch.no_grad():
            x = x + lr * rho * grad / torch.linalg.vector_norm(grad)
            x = x * torch.clamp(rho / torch.linalg.vector_norm(x), max=1.0)   # project onto the ball
        if keep_path:
            path.append(t * x)
    eps = (t * x).detach()
    return PGAResult(eps, torch.stack(path) if keep_path else None)


# ---- the perturbation ftsam.sam.SAM applies on a real model -------------------------------
def flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat float64 vector on the CPU (a detached copy)."""
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors])


def flat_grad(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """The gradients of ``params`` as one flat float64 vector (zeros where a gradient is None)."""
    return flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in params)


@dataclass
class SAMProbe:
    """One pass-1 snapshot: flat float64 CPU copies of ``w``, ``g`` and the ``eps`` SAM would
    add, over the parameters SAM perturbs, in the order SAM keeps them (``names``)."""
    w: torch.Tensor
    g: torch.Tensor
    sam_eps: torch.Tensor
    loss: float
    names: list[str]


def sam_probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sam_cfg: SAMConfig,
              label_smoothing: float = 0.0) -> SAMProbe:
    """Run FT-SAM's pass 1 on one batch (loss, backward) and ask :class:`ftsam.sam.SAM` for
    its perturbation, without applying it. ``x`` is a float batch in [0, 1].

    The model is used in whatever mode it is in (train mode, as in fine-tuning, also
    updates BatchNorm running statistics once, exactly as pass 1 does). Gradients are left
    in ``.grad``; the weights are not changed."""
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
    loss.backward()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.0), model, rho=sam_cfg.rho, eta=sam_cfg.eta,
              adaptive=sam_cfg.adaptive, perturb=sam_cfg.perturb)
    pairs = sam.perturbation()
    params = [p for p, _ in pairs]
    names = {id(p): n for n, p in model.named_parameters()}
    return SAMProbe(w=flat(params), g=flat_grad(params), sam_eps=flat(e for _, e in pairs),
                    loss=loss.item(), names=[names[id(p)] for p in params])
